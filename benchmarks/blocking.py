"""Does walking a leaf in cache-sized chunks beat XLA:CPU's two loops? (It does not.)

RMSProp's plain step compiles to two loops on CPU: the average's (read g and nu, write nu)
and the parameter's (read g, the new nu and p, write p), 28 B/param. Done chunk by chunk,
the parameter's loop would find the gradient and the new average still in cache, and the
traffic would fall to 20 B/param. This script times, in one process and interleaved, the
plain step against the same step blocked with `lax.scan` and with `lax.fori_loop` over
`dynamic_update_slice`, all jitted with params and state donated. Usage::

    python benchmarks/blocking.py --size 4e7 --chunk 65536
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LEARNING_RATE, DECAY, EPS = 1e-3, 0.9, 1e-8


def _average(nu, g):
  return DECAY * nu + (1 - DECAY) * g * g


def _parameter(p, nu, g):
  return p - LEARNING_RATE * g / (jnp.sqrt(nu) + EPS)


def plain(p, nu, g):
  nu = _average(nu, g)
  return _parameter(p, nu, g), nu


def scanned(p, nu, g, chunk):
  """Chunks as the rows of a (size // chunk, chunk) view; the size must divide evenly."""
  rows = p.size // chunk

  def body(carry, x):
    p_i, nu_i, g_i = x
    nu_i = _average(nu_i, g_i)
    return carry, (_parameter(p_i, nu_i, g_i), nu_i)

  views = (a.reshape(rows, chunk) for a in (p, nu, g))
  _, (p, nu) = lax.scan(body, None, tuple(views))
  return p.reshape(-1), nu.reshape(-1)


def looped(p, nu, g, chunk):
  """Chunks cut with dynamic slices; the parameter's update reads the average written back."""

  def body(i, carry):
    p, nu = carry
    start = (i * chunk,)
    g_i = lax.dynamic_slice(g, start, (chunk,))
    nu = lax.dynamic_update_slice(nu, _average(lax.dynamic_slice(nu, start, (chunk,)), g_i), start)
    # Without the barrier XLA recomputes the average from the old buffer, which the update
    # above overwrites, and so copies that buffer every iteration.
    nu = lax.optimization_barrier(nu)
    nu_i = lax.dynamic_slice(nu, start, (chunk,))
    p_i = _parameter(lax.dynamic_slice(p, start, (chunk,)), nu_i, g_i)
    return lax.dynamic_update_slice(p, p_i, start), nu

  return lax.fori_loop(0, p.size // chunk, body, (p, nu))


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Prints and returns each step's median seconds."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=float, default=4e7)
  parser.add_argument("--chunk", type=int, default=65536)
  parser.add_argument("--rounds", type=int, default=9)
  args = parser.parse_args(argv)
  size = int(args.size) // args.chunk * args.chunk  # whole chunks only
  steps = {
      "plain": plain,
      "scan": lambda p, nu, g: scanned(p, nu, g, args.chunk),
      "fori_loop": lambda p, nu, g: looped(p, nu, g, args.chunk),
  }
  g = jax.random.normal(jax.random.PRNGKey(0), (size,), jnp.float32)
  buffers, jitted, times = {}, {}, {name: [] for name in steps}
  for name, step in steps.items():
    jitted[name] = jax.jit(step, donate_argnums=(0, 1))
    buffers[name] = jitted[name](jnp.zeros_like(g), jnp.ones_like(g), g)  # compiles
    for got, want in zip(buffers[name], buffers["plain"]):  # the same step, chunked
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  for _ in range(args.rounds):
    for name in steps:
      start = time.perf_counter()
      buffers[name] = jitted[name](*buffers[name], g)
      jax.block_until_ready(buffers[name])
      times[name].append(time.perf_counter() - start)
  print(f"{size:.3g} parameters in one leaf, chunks of {args.chunk}, {args.rounds} rounds")
  medians = {name: statistics.median(samples) for name, samples in times.items()}
  for name, median in medians.items():
    ratio = median / medians["plain"]
    print(f"{name:>10}: {median * 1e3:8.2f} ms per step, {ratio:5.2f}x the plain step")
  return medians


if __name__ == "__main__":
  main()
