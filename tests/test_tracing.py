"""Tracing: each leaf's arithmetic is traced once per signature, not once per leaf.

Inside a trace the update stages each leaf's arithmetic through an inner `jax.jit`
(`_transform._staged`), so a tree of a thousand leaves of a few shapes traces and lowers a
few small functions instead of a thousand copies of them: most of the compile time JAX adds
to XLA's. These tests check the mechanism in the jaxpr (one trace per signature, the flags and
Python numbers part of it), that it changes no value (bitwise against the same update traced
inline), and that the transformations a research loop wraps an update in (vmap, scan, grad
through an injected learning rate) still give the float64 NumPy reference's results.
"""

from __future__ import annotations

import collections
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from rmsprop_optax import _transform, rmsprop, scale_by_rms

# Three shapes, seven leaves each.
SHAPES = [(8, 4), (5,), (3, 3)] * 7


def _tree(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {f"leaf{i:02d}": jnp.asarray(rng.normal(size=shape), jnp.float32) for i, shape in enumerate(SHAPES)}


def _staged_calls(opt, params) -> collections.Counter:
  """How many times the update calls each distinct staged function, by (name, trace)."""
  jaxpr = jax.make_jaxpr(opt.update)(params, opt.init(params), params).jaxpr
  calls = [eqn for eqn in jaxpr.eqns if eqn.params.get("name", "").startswith("rmsprop_leaf")]
  return collections.Counter((eqn.params["name"], id(eqn.params["jaxpr"])) for eqn in calls)


@pytest.mark.parametrize("kwargs, traces", [
    (dict(), {"rmsprop_leaf_update": 3}),
    (dict(nu_dtype=jnp.bfloat16, momentum=0.9), {"rmsprop_leaf_update": 3}),
    # Nesterov's step reads the state through a barrier: state and step are staged apart.
    (dict(centered=True, momentum=0.9, nesterov=True, bias_correction=True),
     {"rmsprop_leaf_state": 3, "rmsprop_leaf_step": 3}),
], ids=["plain", "bf16-nu", "centered-nesterov-bias"])
def test_each_shape_is_traced_once(kwargs, traces):
  """One trace per shape (per staged function), called by every leaf of that shape."""
  calls = _staged_calls(rmsprop(0.01, **kwargs), _tree(0))
  assert collections.Counter(name for name, _ in calls) == traces, calls
  assert set(calls.values()) == {7}, calls


def test_a_leafs_flags_are_part_of_its_signature():
  """A weight-decay mask that differs between leaves of one shape gives them separate traces
  (Python booleans decide the arithmetic at trace time); a mask given as arrays does not."""
  params = _tree(0)
  alternate = {name: i % 2 == 0 for i, name in enumerate(params)}
  calls = _staged_calls(rmsprop(0.01, weight_decay=0.1, weight_decay_mask=alternate), params)
  assert collections.Counter(name for name, _ in calls)["rmsprop_leaf_update"] == 6, calls
  as_arrays = {name: jnp.asarray(flag) for name, flag in alternate.items()}
  calls = _staged_calls(rmsprop(0.01, weight_decay=0.1, weight_decay_mask=as_arrays), params)
  assert collections.Counter(name for name, _ in calls)["rmsprop_leaf_update"] == 3, calls


def test_python_numbers_stay_literals_and_arrays_become_arguments():
  """A learning rate given as a Python number is a constant of the staged function; the same
  rate injected (an array, which may change between steps) is one of its arguments."""
  params = {"w": jnp.ones((4, 3))}

  def arguments(opt):
    jaxpr = jax.make_jaxpr(opt.update)(params, opt.init(params), params).jaxpr
    (call,) = [eqn for eqn in jaxpr.eqns if eqn.params.get("name") == "rmsprop_leaf_update"]
    return len(call.invars)

  # The gradient and the average alone; injected, the hyperparameters too.
  assert arguments(rmsprop(0.01)) == 2
  assert arguments(optax.inject_hyperparams(rmsprop)(learning_rate=0.01)) > 2


def _inline(monkeypatch):
  """Builds without staging: each leaf's arithmetic traced inline, as before staging."""
  monkeypatch.setattr(_transform, "_staged", lambda fn, name, structure: fn)


MIXED = {
    "w": np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32),
    "v": np.random.default_rng(6).normal(size=(16, 8)).astype(np.float32),
    "b": np.random.default_rng(2).normal(size=(8,)).astype(np.float32),
    "z": (np.random.default_rng(3).normal(size=(5,)) + 1j * np.random.default_rng(4).normal(size=(5,))).astype(np.complex64),
    "h": np.random.default_rng(5).normal(size=(16, 8)).astype(jnp.bfloat16),
}

EQUIVALENCE_CASES = {
    "many-flags": lambda: rmsprop(
        0.01, centered=True, momentum=0.9, nesterov=True, bias_correction=True, weight_decay=0.1,
        maximize=True, eps_in_sqrt=False, lr_in_momentum=False,
        weight_decay_mask={"w": True, "v": False, "b": False, "z": True, "h": jnp.asarray(True)},
    ),
    "decoupled-bf16-state": lambda: rmsprop(
        0.01, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True, nu_dtype=jnp.bfloat16,
        momentum_dtype=jnp.bfloat16,
    ),
    # float32 hyperparameters: Optax cannot pick one dtype for mixed params under strict promotion.
    "injected": lambda: optax.inject_hyperparams(rmsprop, hyperparam_dtype=jnp.float32)(
        learning_rate=optax.linear_schedule(0.01, 0.001, 4), decay=0.95, centered=True, momentum=0.9,
        nesterov=True, weight_decay=0.1, bias_correction=True,
    ),
    # Stochastic rounding traces each leaf's state alone; Nesterov's step is staged still.
    "stochastic-nesterov": lambda: rmsprop(
        0.01, centered=True, momentum=0.9, nesterov=True, nu_dtype=jnp.bfloat16,
        momentum_dtype=jnp.bfloat16, stochastic_rounding=True, seed=3,
    ),
    "scale-by-rms": lambda: optax.chain(scale_by_rms(centered=True, bias_correction=True), optax.scale(-0.01)),
}


@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_staging_changes_no_value(case, monkeypatch):
  """Three jitted steps of a tree of real, complex and bfloat16 leaves (three of one shape: two
  decayed differently, one of another dtype), staged and inline: the same bits in every
  update and state."""
  params = {k: jnp.asarray(v) for k, v in MIXED.items()}
  grads = [jax.tree.map(lambda p, s=s: (p * (0.3 + s)).astype(p.dtype), params) for s in range(3)]

  def run():
    opt = EQUIVALENCE_CASES[case]()
    step = jax.jit(opt.update)
    state, out = opt.init(params), []
    for g in grads:
      updates, state = step(g, state, params)
      out.append((updates, state))
    return jax.tree.map(np.asarray, out)

  staged = run()
  _inline(monkeypatch)
  inline = run()
  for a, b in zip(jax.tree.leaves(staged), jax.tree.leaves(inline)):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


# The reference's configuration for rmsprop(0.01, centered=True, momentum=0.9, weight_decay=0.1).
REF = helpers.RefConfig(learning_rate=lambda t: 0.01, centered=True, momentum=0.9, weight_decay=0.1)
STEPS = 6


def _grads(examples: int) -> np.ndarray:
  """Gradients [step, example, 5, 3], fixed in advance (the reference steps on given ones)."""
  return np.random.default_rng(7).normal(size=(STEPS, examples, 5, 3)).astype(np.float32)


def _reference(params: np.ndarray, grads: np.ndarray) -> np.ndarray:
  """Each example's params after every step, from the float64 NumPy reference."""
  out = []
  for e in range(params.shape[0]):
    ref, p = helpers.ReferenceRMSProp(REF, [params[e]]), [params[e]]
    for t in range(STEPS):
      p = ref.step(p, [grads[t, e]])
    out.append(p[0])
  return np.stack(out)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vmap_over_independent_runs_matches_the_reference(jit):
  """Several runs batched with vmap (a hyperparameter sweep, say), outside and inside jit."""
  opt = rmsprop(0.01, centered=True, momentum=0.9, weight_decay=0.1)
  params = np.random.default_rng(8).normal(size=(3, 5, 3)).astype(np.float32)
  grads = _grads(3)

  def step(p, state, g):
    updates, state = opt.update(g, state, p)
    return optax.apply_updates(p, updates), state

  step = jax.vmap(step)
  step = jax.jit(step) if jit else step
  p, state = jnp.asarray(params), jax.vmap(opt.init)(jnp.asarray(params))
  for t in range(STEPS):
    p, state = step(p, state, jnp.asarray(grads[t]))
  helpers.assert_close_to_scale([np.asarray(p)], [_reference(params, grads)], what="vmap")


def test_scan_over_steps_matches_the_reference():
  opt = rmsprop(0.01, centered=True, momentum=0.9, weight_decay=0.1)
  params = np.random.default_rng(8).normal(size=(1, 5, 3)).astype(np.float32)
  grads = _grads(1)

  def body(carry, g):
    p, state = carry
    updates, state = opt.update(g, state, p)
    return (optax.apply_updates(p, updates), state), None

  p0 = jnp.asarray(params[0])
  (p, _), _ = jax.jit(lambda g: jax.lax.scan(body, (p0, opt.init(p0)), g))(jnp.asarray(grads[:, 0]))
  helpers.assert_close_to_scale([np.asarray(p)], [_reference(params, grads)[0]], what="scan")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gradient_through_an_injected_learning_rate(jit):
  """d(sum of the new params)/d(learning rate) after one plain step is -sum(u), with u the
  gradient over the root of its average (computed here in float64): it flows through the
  staged functions' differentiation rules."""
  rng = np.random.default_rng(9)
  params, grads = rng.normal(size=(2, 4, 6)).astype(np.float32)

  def new_params_sum(lr):
    opt = optax.inject_hyperparams(rmsprop)(learning_rate=lr, decay=0.9, eps=1e-8)
    updates, _ = opt.update(jnp.asarray(grads), opt.init(jnp.asarray(params)), jnp.asarray(params))
    return jnp.sum(optax.apply_updates(jnp.asarray(params), updates))

  grad = jax.grad(new_params_sum)
  grad = jax.jit(grad) if jit else grad
  g = grads.astype(np.float64)
  expected = -np.sum(g / np.sqrt(0.1 * g**2 + 1e-8))
  np.testing.assert_allclose(float(grad(jnp.float32(0.01))), expected, rtol=1e-5)


@pytest.fixture
def compilations():
  """Counts XLA compilations while the test runs, through JAX's monitoring events."""
  count = collections.Counter()

  def listen(event, seconds, **kwargs):
    if "backend_compile" in event:
      count["compilations"] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield count
  jax.monitoring.unregister_event_duration_listener(listen)


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_an_optimizer_built_anew_each_update_compiles_its_leaves_once(compilations, transform):
  # optax.inject_hyperparams builds the optimizer again at every update. Under vmap or grad
  # but outside jit each build staged and compiled every leaf's function afresh, so every
  # step compiled again (0.37 s a step for five leaves, where it now takes milliseconds).
  params = {f"leaf{i}": jnp.full((i + 2, 3), 0.5, jnp.float32) for i in range(5)}
  opt = optax.inject_hyperparams(rmsprop)(optax.linear_schedule(0.1, 0.01, 10), momentum=0.9)
  if transform == "vmap":
    params = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    state, update = jax.vmap(opt.init)(params), jax.vmap(opt.update)
  else:
    state = opt.init(params)

    def update(grads, state, params):
      # The gradient of the squared step with respect to the gradients: grad traces the update.
      def loss(g):
        return sum(jnp.sum(u**2) for u in jax.tree.leaves(opt.update(g, state, params)[0]))

      return jax.grad(loss)(grads), opt.update(grads, state, params)[1]

  _transform._STAGED.clear()  # cold, so that the first steps surely compile
  for step in range(4):
    if step == 2:
      assert compilations["compilations"] > 0, "no compilation counted: has JAX renamed the event?"
      compilations.clear()
    _, state = update(params, state, params)
  assert compilations["compilations"] == 0


def test_optimizers_of_one_structure_share_staged_functions_but_not_their_numbers():
  # Two optimizers with the same flags share the staged functions; their numbers (Python
  # literals in the signature, arrays as arguments) still reach each one's arithmetic.
  g = np.linspace(-1.0, 2.0, 6, dtype=np.float32)
  p = jnp.ones(6, jnp.float32)
  for as_arrays in (False, True):
    for lr, decay in ((0.1, 0.9), (0.01, 0.5)):
      numbers = (jnp.float32(lr), jnp.float32(decay)) if as_arrays else (lr, decay)
      staged = len(_transform._STAGED)
      opt = rmsprop(*numbers, eps=1e-8, centered=as_arrays)
      updates, _ = jax.jit(opt.update)(jnp.asarray(g), opt.init(p))
      if lr == 0.01:
        assert len(_transform._STAGED) == staged, "the second optimizer staged functions of its own"
      g64 = g.astype(np.float64)
      second = (1 - decay) * g64**2 - (((1 - decay) * g64) ** 2 if as_arrays else 0)
      np.testing.assert_allclose(np.asarray(updates), -lr * g64 / np.sqrt(second + 1e-8), rtol=2e-5)


def test_shared_staged_functions_hold_no_value_of_the_optimizer_that_built_them():
  # They are kept for the process, so they may keep only the structure: a schedule (or a
  # mask, or a tracer where the optimizer was built inside jit) must go with its optimizer.
  params = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)}

  def schedule(count):
    return 0.1 / (1.0 + count.astype(jnp.float32))

  alive = weakref.ref(schedule)
  opt = rmsprop(schedule, momentum=0.9, weight_decay=0.1, weight_decay_mask={"w": True, "b": False})
  jax.block_until_ready(jax.jit(opt.update)(params, opt.init(params), params))
  del opt, schedule
  gc.collect()
  assert alive() is None, "a shared staged function keeps the first optimizer's schedule alive"

  @jax.jit
  def step(lr, grads, params):  # an optimizer built inside jit, from a traced learning rate
    opt = rmsprop(lr, momentum=0.9)
    return opt.update(grads, opt.init(params), params)[0]

  with jax.checking_leaks():
    jax.block_until_ready(step(jnp.float32(0.1), params, params))


def test_init_outside_jit_compiles_no_more_than_optaxs(compilations):
  # Outside jit every operation compiles once per new shape. The buffers' first values were
  # built by a select that sharding propagation needs under jit, five operations compiled
  # per leaf shape: an init of a thousand differently shaped leaves took minutes, Optax's
  # a second. Shapes no other test (nor the other library here) uses, so that no earlier
  # compilation answers.
  counts = {}
  for name, opt, width in (
      ("ours", rmsprop(0.1, centered=True, momentum=0.9), 983),
      ("optax", optax.rmsprop(0.1, centered=True, momentum=0.9), 977),
  ):
    opt.init({"w": jnp.ones(3, jnp.float32)})  # what compiles once per process, not per shape
    params = jax.block_until_ready({f"w{i}": jnp.ones((i + 1, width), jnp.float32) for i in range(6)})
    compilations.clear()
    jax.block_until_ready(opt.init(params))
    counts[name] = compilations["compilations"]
  compilations.clear()
  jax.block_until_ready(jnp.isnan(jnp.ones((5, 971))))  # an operation on a new shape compiles
  assert compilations["compilations"] > 0, "no compilation counted: has JAX renamed the event?"
  assert counts["ours"] <= counts["optax"], counts
