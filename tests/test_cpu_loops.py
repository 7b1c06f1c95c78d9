"""How the step compiles on CPU with XLA's opt-in multi-output fusion: one loop per leaf.

With `--xla_backend_extra_options=xla_cpu_use_multi_output_fusion`, XLA:CPU merges loops that
share inputs. The update then computes each output of a leaf from its own copy of the old
buffers, so that XLA makes one loop of them. The expected traffic comes from the arrays'
sizes (each input read once, each output written once), the expected values from the float64
NumPy reference.

XLA reads its flags when its CPU backend starts, so the flagged checks run in a fresh
interpreter: this file, run as a script.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from rmsprop_optax import _transform, rmsprop, scale_by_rms

FUSION_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
STEPS = 20
# The NumPy reference's shapes; the compiled step's facts are read at larger ones.
SHAPES = ((16, 33), (33,), (1000,))

# name: rmsprop's keyword arguments. All but the last two keep every array of a leaf in one
# dtype, the condition for XLA to merge its loops.
CONFIGS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.9),
    "centered-nesterov": dict(centered=True, momentum=0.9, nesterov=True),
    "bias-correction": dict(bias_correction=True, initial_scale=0.5),
    "coupled-decay": dict(weight_decay=0.1),
    "decoupled-decay": dict(weight_decay=0.1, decoupled_weight_decay=True),
    "many-flags": dict(centered=True, momentum=0.9, nesterov=True, bias_correction=True, weight_decay=0.1,
                       maximize=True, eps_in_sqrt=False, lr_in_momentum=False),
    # Built otherwise by _optimizer: scale_by_rms then the learning rate, and every number
    # injected as an array.
    "scale-by-rms-centered": dict(centered=True),
    "injected": dict(centered=True, momentum=0.9, weight_decay=0.1),
    "bf16-nu": dict(nu_dtype=jnp.bfloat16, momentum=0.9),
    "stochastic-bf16": dict(nu_dtype=jnp.bfloat16, stochastic_rounding=True),
}
MIXED_DTYPES = ("bf16-nu", "stochastic-bf16")


def _compiled_facts(opt) -> dict:
  """Array copies, bytes accessed and temporaries of the donated train step, and the least
  bytes it could move: params, gradients and state read once, params and state written once."""
  rng = np.random.default_rng(3)
  params = {"w": rng.normal(size=(256, 33)), "b": rng.normal(size=(33,)), "v": rng.normal(size=(4096,))}
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  state = opt.init(params)

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  entry = compiled.as_text().split("\nENTRY", 1)[1]
  # Copies of scalars (the step count) cost nothing; a copy of an array is a regression.
  copies = [line for line in entry.splitlines() if " copy(" in line and "[]" not in line.split("=")[1]]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0)
  return {
      "copies": len(copies), "bytes": float(cost["bytes accessed"]),
      "temp": int(compiled.memory_analysis().temp_size_in_bytes),
      "least_bytes": 3 * sum(p.nbytes for p in params.values()) + 2 * state_bytes,
  }


def tracks_the_reference(opt, flags: dict) -> None:
  """`opt` follows the float64 NumPy reference for STEPS jitted, donated steps (raises if not)."""
  ref_flags = {k: v for k, v in flags.items() if k not in ("nu_dtype", "stochastic_rounding")}
  problem = helpers.Quadratic(shapes=SHAPES, seed=5, steps=STEPS, negate=flags.get("maximize", False),
                              zero_first_step=flags.get("centered", False) and flags.get("bias_correction", False))
  params = [p.astype(np.float64) for p in problem.params()]
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(learning_rate=lambda t: 0.01, decay=0.9, eps=1e-6, **ref_flags),
                                 params)
  for t in range(STEPS):
    params = ref.step(params, problem.grads(params, t))
  helpers.assert_close_to_scale(helpers.run_optax(opt, problem, STEPS), params, what=str(flags))


def _optimizer(name: str):
  flags = CONFIGS[name]
  if name == "scale-by-rms-centered":
    return optax.chain(scale_by_rms(decay=0.9, eps=1e-6, **flags), optax.scale_by_learning_rate(0.01))
  if name == "injected":
    return optax.inject_hyperparams(rmsprop)(learning_rate=0.01, decay=0.9, eps=1e-6, **flags)
  return rmsprop(0.01, decay=0.9, eps=1e-6, **flags)


def flagged_check(names: list[str]) -> dict:
  """What the flagged process reports: the probe's answer and each configuration's facts,
  after checking the values of those whose leaves XLA merges against the reference."""
  results = {}
  with jax.numpy_dtype_promotion("strict"):
    for name in names:
      if name not in MIXED_DTYPES:
        tracks_the_reference(_optimizer(name), CONFIGS[name])
      results[name] = _compiled_facts(_optimizer(name))
  # Asked last: the first answer came while a jitted step was being traced, and is cached.
  results["probe"] = _transform._cpu_fuses_sibling_loops()
  return results


@pytest.fixture(scope="module")
def flagged():
  env = dict(os.environ, XLA_FLAGS=FUSION_FLAG, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, str(pathlib.Path(__file__).resolve()), *CONFIGS],
      env=env, capture_output=True, text=True, timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_this_process_runs_xla_cpu_without_the_flag():
  # The rest of the suite checks the default form: its loops, temporaries and values.
  assert FUSION_FLAG not in os.environ.get("XLA_FLAGS", "")
  assert _transform._cpu_fuses_sibling_loops() is False


def test_a_flag_set_after_xla_started_is_not_taken_for_merging(monkeypatch):
  # XLA read its flags when this process's CPU backend started: the probe must compile to
  # find out, not trust the environment.
  jax.block_until_ready(jnp.zeros(4) + 1)
  monkeypatch.setenv("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} {FUSION_FLAG}")
  _transform._cpu_fuses_sibling_loops.cache_clear()
  try:
    assert _transform._cpu_fuses_sibling_loops() is False
  finally:
    _transform._cpu_fuses_sibling_loops.cache_clear()


def test_the_flagged_process_merges_sibling_loops(flagged):
  assert flagged["probe"] is True


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in MIXED_DTYPES])
def test_with_the_flag_each_leaf_is_one_loop(flagged, name):
  # The values were checked against the NumPy reference in the flagged process.
  facts = flagged[name]
  assert facts["copies"] == 0
  # Scalars (the count, the hyperparameters, injected ones in the state) add a few hundred
  # bytes to the arrays' least traffic.
  assert facts["least_bytes"] <= facts["bytes"] <= facts["least_bytes"] + 1024
  assert facts["temp"] < 4096


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in MIXED_DTYPES])
def test_without_the_flag_the_default_form_reads_state_back_without_copies(name):
  facts = _compiled_facts(_optimizer(name))
  assert facts["copies"] == 0
  assert facts["bytes"] > 1.1 * facts["least_bytes"]  # what the flag saves


@pytest.mark.parametrize("name", MIXED_DTYPES)
def test_with_the_flag_leaves_of_mixed_dtypes_keep_the_default_form(flagged, name):
  # XLA merges only loops whose outputs share a dtype: with a bfloat16 state the step keeps
  # reading the buffer it wrote, rather than make XLA copy the old one.
  default = _compiled_facts(_optimizer(name))
  assert flagged[name]["copies"] == 0
  # The same arrays' traffic; XLA may merge the scalars' small kernels differently.
  assert abs(flagged[name]["bytes"] - default["bytes"]) <= 256


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in MIXED_DTYPES])
def test_the_merged_form_tracks_the_reference_without_the_flag_too(name, monkeypatch):
  # Without the flag XLA copies the old buffers that the merged form reads more than once,
  # which is why the update keeps its default form here; its values are the same.
  monkeypatch.setattr(_transform, "_cpu_fuses_sibling_loops", lambda: True)
  assert _compiled_facts(_optimizer(name))["copies"] > 0  # the form really changed
  tracks_the_reference(_optimizer(name), CONFIGS[name])


def test_the_merged_form_with_caution_tracks_the_reference(monkeypatch):
  # Caution's mean over the leaf is a reduction, so its leaves are not one loop; the merged
  # form's copies of the old buffers must still give the step the reference takes.
  monkeypatch.setattr(_transform, "_cpu_fuses_sibling_loops", lambda: True)
  flags = dict(centered=True, momentum=0.9, nesterov=True, caution=True, weight_decay=0.1)
  tracks_the_reference(rmsprop(0.01, decay=0.9, eps=1e-6, **flags), flags)


if __name__ == "__main__":
  print(json.dumps(flagged_check(sys.argv[1:])))
