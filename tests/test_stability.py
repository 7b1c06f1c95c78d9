"""Type stability: one trace for many steps, the same state types in and out, injectable numbers.

A train step that retraces on its second call, or whose state comes back with another dtype
or weak type, recompiles silently (or breaks `lax.scan` and `lax.cond`). These tests trace,
scan and branch over the optimizer and compare the numbers with the float64 reference.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from rmsprop_optax import presets, rmsprop, scale_by_rms

SHAPES = ((3, 4), (5,))


# Schedules written twice: in JAX (strict promotion, float32) and in NumPy (float64), so the
# reference sees the same values.
def lr_schedule(t):
  return 0.02 / (1.0 + t.astype(jnp.float32) / 10.0)


def decay_schedule(t):
  return 0.9 + 0.09 * (1.0 - jnp.exp(-t.astype(jnp.float32) / 20.0))


def eps_schedule(t):
  return 1e-6 * jnp.exp2(-t.astype(jnp.float32) / 10.0)


def lr_numpy(t):
  return 0.02 / (1.0 + t / 10.0)


def decay_numpy(t):
  return 0.9 + 0.09 * (1.0 - np.exp(-t / 20.0))


def eps_numpy(t):
  return 1e-6 * 2.0 ** (-t / 10.0)


class ScheduledEpsReference(helpers.ReferenceRMSProp):
  """The reference with an eps schedule (its config holds a number: set it before each step)."""

  def __init__(self, cfg, params, eps):
    super().__init__(cfg, params)
    self.eps_at = eps

  def step(self, params, grads):
    self.cfg.eps = self.eps_at(self.t)
    return super().step(params, grads)


def test_jitted_step_traces_once_over_many_steps_with_scheduled_hyperparameters():
  problem = helpers.Quadratic(SHAPES, seed=1, steps=40)
  # (Not centered: with bias correction a centered first step divides by sqrt(eps) alone.)
  opt = rmsprop(lr_schedule, decay=decay_schedule, eps=eps_schedule, momentum=0.9, bias_correction=True)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = [jnp.asarray(p) for p in problem.params()]
  state = opt.init(params)
  reference = ScheduledEpsReference(
      helpers.RefConfig(lr_numpy, decay=decay_numpy, momentum=0.9, bias_correction=True),
      problem.params(), eps_numpy,
  )
  expected = problem.params()
  for t in range(problem.steps):
    params, state = step(params, state, [jnp.asarray(g) for g in problem.grads(params, t)])
    expected = reference.step(expected, problem.grads(expected, t))
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="scheduled run")
  assert int(state.count) == problem.steps


# ---------------------------------------------------------------------------------------------
# The state's abstract values do not change across an update.

CONFIGS = {
    "plain": lambda: rmsprop(0.01),
    "everything": lambda: rmsprop(
        0.01, centered=True, momentum=0.9, nesterov=True, bias_correction=True, weight_decay=0.1,
        decoupled_weight_decay=True,
    ),
    "bf16_state_stochastic_rounding": lambda: rmsprop(
        0.01, momentum=0.9, nu_dtype=jnp.bfloat16, momentum_dtype=jnp.bfloat16, stochastic_rounding=True,
    ),
    "schedules": lambda: rmsprop(lr_schedule, decay=decay_schedule, eps=eps_schedule, momentum=0.9),
    "decay_schedule_bias_correction": lambda: rmsprop(0.01, decay=decay_schedule, bias_correction=True),
    "preset_pytorch": lambda: presets.pytorch(lr=0.01, momentum=0.9, weight_decay=0.1, centered=True),
    "preset_keras": lambda: presets.keras(momentum=0.9, weight_decay=0.01),
    "preset_tf1": lambda: presets.tf1(0.01, momentum=0.9),
    "preset_optax": lambda: presets.optax(0.01, momentum=0.9, bias_correction=True),
    "preset_timm_tf": lambda: presets.timm_tf(momentum=0.9, weight_decay=0.01, lr_in_momentum=False),
}


def _mixed_precision_params():
  rng = np.random.default_rng(0)
  return {
      "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
      "half": jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16),
      "scalar": jnp.asarray(rng.normal(), jnp.float32),
  }


def _avals(tree):
  """(shape, dtype, weak_type) of every leaf, in order."""
  return [(tuple(x.shape), jnp.dtype(x.dtype), bool(x.weak_type)) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_state_avals_are_identical_between_init_and_update(config):
  opt = CONFIGS[config]()
  params = _mixed_precision_params()
  grads = jax.tree.map(lambda p: (p * 0.5).astype(p.dtype), params)
  state = opt.init(params)
  initial = _avals([jax.typeof(x) for x in jax.tree.leaves(state)])
  # The abstract result of two updates (no compilation needed to see the types).
  def two_updates(grads, state, params):
    _, state = opt.update(grads, state, params)
    return opt.update(grads, state, params)

  updates, after = jax.eval_shape(two_updates, grads, state, params)
  assert jax.tree.structure(after) == jax.tree.structure(state)
  assert _avals(after) == initial
  assert _avals(updates) == _avals([jax.typeof(x) for x in jax.tree.leaves(grads)])
  # No leaf of the state is weakly typed: a weak leaf would retrace once it became strong.
  assert not any(weak for _, _, weak in initial)


# Whether the state keeps a step count: exactly where the update reads one.
COUNT_KEPT = {
    "plain": (lambda: rmsprop(0.01), False),
    "centered_nesterov_weight_decay": (
        lambda: rmsprop(0.01, centered=True, momentum=0.9, nesterov=True, weight_decay=0.1), False,
    ),
    "bf16_state_nearest": (
        lambda: rmsprop(0.01, momentum=0.9, nu_dtype=jnp.bfloat16, momentum_dtype=jnp.bfloat16), False,
    ),
    "scale_by_rms": (lambda: scale_by_rms(centered=True), False),
    "bias_correction": (lambda: rmsprop(0.01, bias_correction=True), True),
    "stochastic_rounding": (lambda: rmsprop(0.01, nu_dtype=jnp.bfloat16, stochastic_rounding=True), True),
    "learning_rate_schedule": (lambda: rmsprop(helpers.constant_schedule(0.01)), True),
    "decay_schedule": (lambda: rmsprop(0.01, decay=helpers.constant_schedule(0.9)), True),
    "eps_schedule": (lambda: rmsprop(0.01, eps=helpers.constant_schedule(1e-8)), True),
    "momentum_schedule": (lambda: rmsprop(0.01, momentum=helpers.constant_schedule(0.9)), True),
    "weight_decay_schedule": (lambda: rmsprop(0.01, weight_decay=helpers.constant_schedule(0.1)), True),
}


@pytest.mark.parametrize("config", list(COUNT_KEPT))
def test_state_keeps_a_step_count_exactly_where_the_update_reads_it(config):
  make, kept = COUNT_KEPT[config]
  opt = make()
  params = _mixed_precision_params()
  grads = jax.tree.map(lambda p: (p * 0.5).astype(p.dtype), params)
  state = opt.init(params)
  update = jax.jit(opt.update)
  for _ in range(3):
    _, state = update(grads, state, params)
  if kept:
    assert state.count.dtype == jnp.int32 and int(state.count) == 3
  else:
    assert state.count is None


def _jax_quadratic(problem):
  """The helpers' quadratic in JAX, for use inside `lax.scan` (float32)."""
  a = [jnp.asarray(x, jnp.float32) for x in problem.a]
  b = [jnp.asarray(x, jnp.float32) for x in problem.b]
  noise = [jnp.asarray(x, jnp.float32) for x in problem.noise]

  def grads(params, t):
    out = []
    for p, ai, bi, ni in zip(params, a, b, noise):
      flat = p.reshape(-1)
      g = ai.T @ (ai @ flat - bi) + ni[t]
      out.append(g.reshape(p.shape))
    return out

  return grads


def test_state_is_a_lax_scan_carry_for_hundreds_of_steps():
  problem = helpers.Quadratic(SHAPES, seed=2, steps=300)
  opt = rmsprop(lr_schedule, decay=decay_schedule, centered=True, momentum=0.9)
  grads_at = _jax_quadratic(problem)

  def body(carry, t):
    params, state = carry
    updates, state = opt.update(grads_at(params, t), state, params)
    return (optax.apply_updates(params, updates), state), None

  params = [jnp.asarray(p) for p in problem.params()]
  (final, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(problem.steps)))(
      (params, opt.init(params))
  )
  assert int(state.count) == problem.steps

  reference = helpers.ReferenceRMSProp(
      helpers.RefConfig(lr_numpy, decay=decay_numpy, centered=True, momentum=0.9), problem.params()
  )
  expected = problem.params()
  for t in range(problem.steps):
    # The reference takes its gradients in float64 from its own float64 params.
    flat = [np.asarray(p, np.float64).ravel() for p in expected]
    g = [(a.T @ (a @ f - b) + n[t]).reshape(p.shape) for f, a, b, n, p in zip(flat, problem.a, problem.b, problem.noise, expected)]
    expected = reference.step(expected, g)
  helpers.assert_close_to_scale(final, expected, rtol=1e-4, what="scan carry")


@pytest.mark.parametrize("config", ["everything", "bf16_state_stochastic_rounding"])
def test_state_passes_through_both_branches_of_lax_cond(config):
  opt = CONFIGS[config]()
  params = _mixed_precision_params()
  grads = jax.tree.map(lambda p: (p * 0.5 - 0.25).astype(p.dtype), params)
  update = jax.jit(opt.update)
  _, state = update(grads, opt.init(params), params)  # a state that is not all zeros

  @jax.jit
  def maybe_update(pred, grads, state, params):
    def apply(grads, state, params):
      return opt.update(grads, state, params)

    def skip(grads, state, params):
      del params
      return jax.tree.map(jnp.zeros_like, grads), state

    # lax.cond demands identical types from both branches: the update must return the
    # state's own types.
    return jax.lax.cond(pred, apply, skip, grads, state, params)

  skipped_updates, skipped_state = maybe_update(jnp.bool_(False), grads, state, params)
  chex.assert_trees_all_equal(skipped_state, state)
  chex.assert_trees_all_equal(skipped_updates, jax.tree.map(jnp.zeros_like, grads))

  taken_updates, taken_state = maybe_update(jnp.bool_(True), grads, state, params)
  direct_updates, direct_state = update(grads, state, params)
  chex.assert_trees_all_close(taken_updates, direct_updates, rtol=1e-6)
  chex.assert_trees_all_close(
      jax.tree.map(lambda x: x.astype(jnp.float32), taken_state),
      jax.tree.map(lambda x: x.astype(jnp.float32), direct_state), rtol=1e-6,
  )
  assert int(taken_state.count) == int(state.count) + 1


# ---------------------------------------------------------------------------------------------
# optax.inject_hyperparams: every number can become state.

def _run(opt, problem, steps, params=None, state=None, start=0):
  """`steps` jitted updates on `problem` (gradients from NumPy); returns params and state."""
  params = [jnp.asarray(p) for p in problem.params()] if params is None else params
  state = opt.init(params) if state is None else state
  step = jax.jit(lambda p, s, g: _apply(opt, p, s, g))
  for t in range(start, start + steps):
    params, state = step(params, state, [jnp.asarray(g) for g in problem.grads(params, t)])
  return params, state


def _apply(opt, params, state, grads):
  updates, state = opt.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def test_inject_hyperparams_wraps_rmsprop_with_its_default_arguments():
  """`seed` is an int, which inject_hyperparams turns into an array like every other number:
  the injected seed must be accepted and draw the same stochastic-rounding bits."""
  problem = helpers.Quadratic(SHAPES, seed=3, steps=4)
  # The dtype as a string: a dtype class is callable, and inject_hyperparams would take it
  # for a schedule. Numbers that round the same as Python floats and as float32 arrays.
  kwargs = dict(learning_rate=0.25, decay=0.5, nu_dtype="bfloat16", stochastic_rounding=True)
  injected = optax.inject_hyperparams(rmsprop)(**kwargs, seed=7)
  params, state = _run(injected, problem, problem.steps)
  assert int(state.hyperparams["seed"]) == 7
  runs = {seed: _run(rmsprop(**kwargs, seed=seed), problem, problem.steps) for seed in (7, 8)}
  chex.assert_trees_all_close(params, runs[7][0], rtol=1e-6)

  def bitwise_share(a, b):
    """The share of nu's elements that are bit-for-bit equal (each element is a rounding
    choice: another seed makes about a third of them differ)."""
    a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
    return np.mean(a.view(np.uint16) == b.view(np.uint16))

  nu = [np.asarray(x) for x in state.inner_state.nu]
  assert bitwise_share(nu, [np.asarray(x) for x in runs[7][1].nu]) > 0.95
  assert bitwise_share([np.asarray(x) for x in runs[8][1].nu], [np.asarray(x) for x in runs[7][1].nu]) < 0.9


INJECTED = {
    # name: (factory, keyword arguments, static_args)
    "rmsprop": (
        rmsprop,
        dict(learning_rate=0.01, decay=0.95, eps=1e-6, momentum=0.9, weight_decay=0.05, centered=True),
        ("seed",),
    ),
    "rmsprop_decoupled": (
        rmsprop,
        dict(learning_rate=0.02, decay=0.8, eps=1e-7, momentum=0.5, weight_decay=0.1,
             decoupled_weight_decay=True, initial_scale=0.5),
        ("seed",),
    ),
    "pytorch": (presets.pytorch, dict(lr=0.01, alpha=0.95, eps=1e-6, momentum=0.9, weight_decay=0.05), ()),
    "keras": (presets.keras, dict(learning_rate=0.01, rho=0.8, momentum=0.9, epsilon=1e-6, weight_decay=0.05), ()),
    "tf1": (presets.tf1, dict(learning_rate=0.01, decay=0.8, momentum=0.9, epsilon=1e-6), ()),
    "optax": (presets.optax, dict(learning_rate=0.01, decay=0.8, eps=1e-6, initial_scale=0.1, momentum=0.9), ()),
    "timm_tf": (presets.timm_tf, dict(lr=0.01, alpha=0.8, eps=1e-6, momentum=0.9, weight_decay=0.05), ()),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_injected_hyperparameters_give_the_non_injected_results(name):
  factory, kwargs, static = INJECTED[name]
  problem = helpers.Quadratic(SHAPES, seed=4, steps=5)
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  params, state = _run(injected, problem, problem.steps)
  numbers = {k for k, v in kwargs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  assert numbers <= set(state.hyperparams)
  expected, _ = _run(factory(**kwargs), problem, problem.steps)
  # The injected numbers are float32 arrays, so 1 - decay is rounded once more than with a
  # Python float decay: agreement to float32 round-off, not bitwise.
  chex.assert_trees_all_close(params, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory,kwargs,reference", [
    (rmsprop, dict(learning_rate=0.01), dict()),
    (presets.pytorch, dict(lr=0.01), dict(decay=0.99, eps_in_sqrt=False)),
    (presets.keras, dict(learning_rate=0.01), dict(eps=1e-7)),
    (presets.timm_tf, dict(lr=0.01), dict(eps=1e-10, initial_scale=1.0)),
], ids=["rmsprop", "pytorch", "keras", "timm_tf"])
def test_injected_defaults_keep_weight_decay_off_and_need_no_params(factory, kwargs, reference):
  # inject_hyperparams injects every numeric default; a default weight decay of 0 would come
  # in as an array, keep the decay path on and make `update` demand the params. Each run
  # follows the float64 reference of its framework's defaults, without weight decay.
  problem = helpers.Quadratic(SHAPES, seed=6, steps=3)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  params = [jnp.asarray(p) for p in problem.params()]
  state = injected.init(params)
  assert "weight_decay" not in state.hyperparams
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, **reference), problem.params())
  expected = problem.params()
  for t in range(problem.steps):
    grads = [jnp.asarray(g) for g in problem.grads(params, t)]
    updates, state = jax.jit(injected.update)(grads, state)  # no params
    params = optax.apply_updates(params, updates)
    expected = ref.step(expected, problem.grads(expected, t))
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="injected defaults")


def test_new_injected_values_take_effect_without_recompiling():
  problem = helpers.Quadratic(SHAPES, seed=5, steps=12)
  opt = optax.inject_hyperparams(rmsprop, static_args=("seed",))(
      learning_rate=0.01, decay=0.9, eps=1e-8, momentum=0.5, weight_decay=0.02
  )
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    return _apply(opt, params, state, grads)

  # The reference changes its numbers at the same steps.
  changes = {4: dict(learning_rate=0.003, momentum=0.8), 8: dict(decay=0.99, eps=1e-6, weight_decay=0.1)}
  cfg = helpers.RefConfig(lambda t: 0.01, decay=0.9, eps=1e-8, momentum=0.5, weight_decay=0.02)
  reference = helpers.ReferenceRMSProp(cfg, problem.params())

  params = [jnp.asarray(p) for p in problem.params()]
  state = opt.init(params)
  expected = problem.params()
  for t in range(problem.steps):
    for name, value in changes.get(t, {}).items():
      old = state.hyperparams[name]
      state.hyperparams[name] = jnp.asarray(value, old.dtype)
      if name == "learning_rate":
        cfg.learning_rate = lambda _, value=value: value
      else:
        setattr(cfg, name, value)
    params, state = step(params, state, [jnp.asarray(g) for g in problem.grads(params, t)])
    expected = reference.step(expected, problem.grads(expected, t))
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="injected run")
  assert float(state.hyperparams["learning_rate"]) == np.float32(0.003)


def test_tree_set_changes_an_injected_momentum_and_leaves_the_buffer_alone():
  # Optax's way to change an injected number by name. The buffer is named `trace` (as in
  # Optax), so `momentum` names only the coefficient; a buffer of that name was overwritten.
  problem = helpers.Quadratic(((3,),), seed=7, steps=6)
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.01, momentum=0.5)
  cfg = helpers.RefConfig(lambda t: 0.01, momentum=0.5)
  reference = helpers.ReferenceRMSProp(cfg, problem.params())
  params = [jnp.asarray(p) for p in problem.params()]
  state, expected = opt.init(params), problem.params()
  for t in range(problem.steps):
    if t == 3:
      buffer = state.inner_state.trace
      state = optax.tree_utils.tree_set(state, momentum=jnp.float32(0.9))
      cfg.momentum = 0.9
      assert float(optax.tree_utils.tree_get(state, "momentum")) == np.float32(0.9)
      chex.assert_trees_all_equal(state.inner_state.trace, buffer)
    params, state = _apply(opt, params, state, [jnp.asarray(g) for g in problem.grads(params, t)])
    expected = reference.step(expected, problem.grads(expected, t))
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="momentum changed by tree_set")


def test_complex_params_under_inject_hyperparams():
  # inject_hyperparams casts the numbers to the params' widest dtype, complex here: their
  # real part is the value meant. Compared with the float64 reference on complex leaves.
  rng = np.random.default_rng(8)
  params = [rng.standard_normal(3) + 1j * rng.standard_normal(3), rng.standard_normal(2)]
  params = [params[0].astype(np.complex64), params[1].astype(np.float32)]
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.05, decay=0.9, momentum=0.5, weight_decay=0.1)
  reference = helpers.ReferenceRMSProp(
      helpers.RefConfig(lambda t: 0.05, decay=0.9, momentum=0.5, weight_decay=0.1), params
  )
  ours, expected = [jnp.asarray(p) for p in params], params
  with helpers.standard_promotion():  # optax finds the widest dtype by promoting complex with real
    state = opt.init(ours)
    assert state.hyperparams["decay"].dtype == jnp.complex64
    for t in range(4):
      grads = [(p * (1 + t)).astype(p.dtype) for p in params]
      ours, state = jax.jit(lambda p, s, g: _apply(opt, p, s, g))(ours, state, [jnp.asarray(g) for g in grads])
      expected = reference.step(expected, grads)
  assert state.inner_state.nu[0].dtype == jnp.float32 and ours[0].dtype == jnp.complex64
  helpers.assert_close_to_scale(ours, expected, rtol=2e-5, what="complex params, injected numbers")


@pytest.mark.parametrize("use_jit", [False, True])
def test_tree_set_of_the_count_to_resume_a_run_keeps_the_update_working(use_jit):
  # tree_set(state, count=...) is how a run resumes at a step under inject_hyperparams; it
  # sets every field named count, this state's too, where the configuration keeps none. The
  # update carries that count on, and the step is the plain one (nothing reads the count).
  problem = helpers.Quadratic(((3,),), seed=9, steps=4)
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.01)
  reference = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01), problem.params())
  params = [jnp.asarray(p) for p in problem.params()]
  state = optax.tree_utils.tree_set(opt.init(params), count=jnp.int32(100))
  update = jax.jit(opt.update) if use_jit else opt.update
  expected = problem.params()
  for t in range(problem.steps):
    grads = [jnp.asarray(g) for g in problem.grads(params, t)]
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    expected = reference.step(expected, problem.grads(expected, t))
  assert int(state.count) == int(state.inner_state.count) == 100 + problem.steps
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="count set by tree_set")


def _steps_counted(opt):
  params = {"w": jnp.ones(3)}
  state = opt.init(params)
  for _ in range(3):
    state = opt.update({"w": jnp.full(3, 0.5)}, state, params)[1]
  return state


@pytest.mark.parametrize("wrap", ["inject_hyperparams", "scale_by_schedule"])
def test_tree_get_of_the_count_with_the_readmes_filter_finds_what_optax_finds(wrap):
  # The state's unused count field holds None, which tree_get finds by name as well: the
  # README's filter leaves it out, and the count found is the one Optax's RMSProp gives.
  def build(make):
    if wrap == "inject_hyperparams":
      return optax.inject_hyperparams(make)(learning_rate=0.1)
    return optax.chain(make(1.0), optax.scale_by_schedule(optax.linear_schedule(0.1, 0.0, 10)))

  expected = optax.tree_utils.tree_get(_steps_counted(build(optax.rmsprop)), "count")
  state = _steps_counted(build(rmsprop))
  found = optax.tree_utils.tree_get(state, "count", filtering=lambda path, value: value is not None)
  assert int(expected) == int(found) == 3
  with pytest.raises(KeyError, match="multiple values"):  # as the README says, unfiltered
    optax.tree_utils.tree_get(state, "count")


def test_a_count_set_as_a_python_int_works_outside_jit_with_stochastic_rounding():
  # The rounding draws its bits from the count. A count set by hand as a Python int (the
  # README's tree_set(state, count=100)) must give, outside jit, the bits an int32 100 gives.
  params = [jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32)]
  grads = [jnp.cos(jnp.arange(64, dtype=jnp.float32))]
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, nu_dtype="bfloat16", stochastic_rounding=True)
  results = []
  for count in (100, jnp.int32(100)):
    state = optax.tree_utils.tree_set(opt.init(params), count=count)
    for _ in range(2):
      updates, state = opt.update(grads, state, params)
    results.append((updates, state.inner_state.nu, state.inner_state.count))
  (u_int, nu_int, c_int), (u_arr, nu_arr, c_arr) = results
  assert int(c_int) == int(c_arr) == 102
  np.testing.assert_array_equal(np.asarray(nu_int[0], np.float32), np.asarray(nu_arr[0], np.float32))
  np.testing.assert_array_equal(np.asarray(u_int[0]), np.asarray(u_arr[0]))
