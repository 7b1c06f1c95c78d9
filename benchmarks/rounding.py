"""What does a bfloat16 `nu` cost per step, rounded to nearest and stochastically?

Times, in one process and interleaved in random order each round, the train step of
`rmsprop` (update + `optax.apply_updates`, params and state donated) with the average of
squares stored in float32, in bfloat16 rounded to nearest, and in bfloat16 with
`stochastic_rounding=True`, on the same parameters and gradients. Prints the median seconds
per step and the median within-round ratio of each against the float32 state. Usage::

    python benchmarks/rounding.py --size 1e7 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics

import jax.numpy as jnp

import rmsprop_optax
from contenders import DECAY, EPS, LEARNING_RATE, Problem, jax_grads, make_jax
from measure import interleaved, median_ratio, warm_up

STATES = {
    "float32": {},
    "bfloat16, nearest": {"nu_dtype": jnp.bfloat16},
    "bfloat16, stochastic": {"nu_dtype": jnp.bfloat16, "stochastic_rounding": True},
}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
  """Prints and returns, for each state, the median seconds per step and ratio to float32."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=float, default=1e7, help="parameters, in one leaf")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--sample-seconds", type=float, default=0.2)
  args = parser.parse_args(argv)
  problem = Problem.make(int(args.size), leaves=1)
  grads = jax_grads(problem)
  contenders = {}
  for name, flags in STATES.items():
    contenders[name] = make_jax(rmsprop_optax.rmsprop(LEARNING_RATE, DECAY, EPS, **flags), problem, grads)
    if not warm_up(contenders[name])["donated"]:
      raise RuntimeError(f"the {name} step did not update its buffers in place.")
  samples = interleaved(contenders, args.rounds, args.sample_seconds)
  print(f"{int(args.size):.3g} parameters in one leaf, {len(samples['float32'])} rounds")
  results = {}
  for name, seconds in samples.items():
    results[name] = {
        "seconds": statistics.median(seconds),
        "vs_float32": median_ratio(seconds, samples["float32"]),
    }
    print(
        f"{name:>22}: {results[name]['seconds'] * 1e3:8.2f} ms per step, "
        f"{results[name]['vs_float32']:5.2f}x the float32 state's"
    )
  return results


if __name__ == "__main__":
  main()
