"""Optax's wrappers around `rmsprop`, and the trees it is given.

Each wrapper is checked on its result: against the float64 reference fed what the wrapper
should hand the optimizer (clipped gradients, averaged micro-batches, only the trained
leaves), and bitwise where the wrapper promises to leave something alone (frozen params, the
state after a rejected NaN step).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

import helpers
from rmsprop_optax import RMSPropState, rmsprop, scale_by_rms

SHAPES = ((3, 4), (5,))


def _jnp(leaves):
  return [jnp.asarray(x) for x in leaves]


def _step_fn(opt, promotion=None, donate=False):
  """A jitted step returning params, state and updates. `promotion` is a context for wrappers
  written for JAX's standard promotion (the jit cache keys on it: every call uses it);
  `donate` donates params and state."""

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def jitted(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  def step(params, state, grads):
    if promotion is None:
      return jitted(params, state, grads)
    with promotion():
      return jitted(params, state, grads)

  return step


# ---------------------------------------------------------------------------------------------
# optax.chain


class _TenfoldGradients(helpers.Quadratic):
  """The quadratic with gradients ten times larger, well above the clipping norm."""

  def grads(self, params, t):
    return [np.float32(10.0) * g for g in super().grads(params, t)]


def test_clip_by_global_norm_then_rmsprop_sees_the_clipped_gradients():
  problem = _TenfoldGradients(SHAPES, seed=0, steps=15)
  max_norm = 0.5
  # A large eps makes the update depend on the gradient's scale, which clipping changes.
  kwargs = dict(decay=0.9, eps=1e-1, centered=True, momentum=0.9)
  opt = optax.chain(optax.clip_by_global_norm(max_norm), rmsprop(0.01, **kwargs))
  step = _step_fn(opt)

  params = _jnp(problem.params())
  state = opt.init(params)
  clipped_ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, **kwargs), problem.params())
  plain_ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, **kwargs), problem.params())
  expected, unclipped = problem.params(), problem.params()
  for t in range(problem.steps):
    params, state, _ = step(params, state, _jnp(problem.grads(params, t)))
    grads = [np.float64(g) for g in problem.grads(expected, t)]
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
    assert norm > max_norm  # clipping is active at every step
    expected = clipped_ref.step(expected, [g * (max_norm / norm) for g in grads])
    unclipped = plain_ref.step(unclipped, problem.grads(unclipped, t))
  helpers.assert_close_to_scale(params, expected, rtol=2e-5, what="clipped")
  # Clipping matters here: without it the run ends elsewhere.
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, unclipped))
  assert gap > 1e-3


SPLIT_VARIANTS = {
    "plain": (dict(decay=0.9, eps=1e-8), 0.01),
    "centered_eps_outside_bias_corrected": (
        dict(decay=0.95, eps=1e-6, eps_in_sqrt=False, centered=True, bias_correction=True, initial_scale=0.1),
        0.01,
    ),
    "schedules": (
        dict(decay=lambda t: 0.8 + 0.1 * jnp.tanh(t.astype(jnp.float32) / 5.0), eps=1e-8),
        lambda t: 0.02 / (1.0 + t.astype(jnp.float32)),
    ),
}


@pytest.mark.parametrize("variant", list(SPLIT_VARIANTS))
def test_scale_by_rms_then_scale_by_learning_rate_equals_rmsprop(variant):
  kwargs, lr = SPLIT_VARIANTS[variant]
  problem = helpers.Quadratic(SHAPES, seed=1, steps=10)
  chained = optax.chain(scale_by_rms(**kwargs), optax.scale_by_learning_rate(lr))
  whole = rmsprop(lr, **kwargs)
  outputs = []
  for opt in (chained, whole):
    step = _step_fn(opt)
    params = _jnp(problem.params())
    state = opt.init(params)
    for t in range(problem.steps):
      params, state, _ = step(params, state, _jnp(problem.grads(params, t)))
    outputs.append((params, state))
  (chain_params, chain_state), (params, state) = outputs
  chex.assert_trees_all_close(chain_params, params, rtol=1e-6, atol=1e-7)
  rms_state = chain_state[0]
  assert isinstance(rms_state, RMSPropState)
  chex.assert_trees_all_close((rms_state.count, rms_state.nu, rms_state.mu), (state.count, state.nu, state.mu), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# optax.MultiSteps


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_multisteps_applies_rmsprop_to_the_mean_of_each_group_of_micro_batches(dtype):
  k, groups = 3, 4
  problem = helpers.Quadratic(SHAPES, seed=2, steps=k * groups)
  # A schedule makes the state keep a count, which shows how often the inner step was applied.
  opt = optax.MultiSteps(rmsprop(helpers.constant_schedule(0.01), momentum=0.9), every_k_schedule=k)
  # MultiSteps divides float sums by int counts and mixes its float32 accumulator with
  # bfloat16 gradients: it needs standard promotion.
  step = _step_fn(opt, helpers.standard_promotion)

  params = [jnp.asarray(p, dtype) for p in problem.params()]
  with helpers.standard_promotion():
    state = opt.init(params)
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, momentum=0.9), problem.params())
  expected = [np.asarray(p, dtype) for p in problem.params()]
  for group in range(groups):
    # The params do not move while a group accumulates: every micro-batch sees the same ones.
    at = [np.asarray(p, np.float32) for p in params]
    micro = [[g.astype(dtype) for g in problem.grads(at, group * k + i)] for i in range(k)]
    for i, grads in enumerate(micro):
      before = params
      params, state, _ = step(params, state, [jnp.asarray(g) for g in grads])
      if i < k - 1:  # accumulating: nothing moves
        chex.assert_trees_all_equal(params, before)
    mean = [np.mean([np.asarray(m[j], np.float64) for m in micro], axis=0) for j in range(len(SHAPES))]
    if dtype == jnp.bfloat16:
      # The wrapper hands the optimizer the mean in the params' dtype, and the params are
      # stored in bfloat16 after each applied step.
      mean = [np.asarray(m.astype(np.float32).astype(dtype), np.float64) for m in mean]
      expected = [p.astype(np.float32).astype(dtype) for p in ref.step(expected, mean)]
    else:
      expected = ref.step(expected, mean)
  assert int(state.gradient_step) == groups
  assert int(state.inner_opt_state.count) == groups
  assert all(p.dtype == dtype for p in params)
  if dtype == jnp.bfloat16:
    # The params are rounded to bfloat16 at every step, in both runs, and a value near a
    # rounding boundary can go either way: agreement to two bfloat16 ulps (the params move
    # by about 0.25 over the run, thirty times that).
    for a, e in zip(params, expected):
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=2**-6, atol=2**-8)
  else:
    helpers.assert_close_to_scale(params, expected, rtol=1e-5, what="MultiSteps")


# ---------------------------------------------------------------------------------------------
# Freezing: optax.masked and optax.multi_transform


def _model_params(seed=3):
  rng = np.random.default_rng(seed)
  return {
      "encoder": {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)},
      "head": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
  }


def _model_grads(params, t):
  """Gradients that depend on the params and the step, the same in JAX and in NumPy."""
  return jax.tree.map(lambda p: np.asarray(np.cos(3.0 * np.asarray(p, np.float64) + t), np.float32), params)


def _bitwise_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_masked_rmsprop_updates_only_the_masked_in_leaves():
  """optax.masked passes the other leaves' gradients through untouched."""
  mask = {"encoder": False, "head": True}
  opt = optax.masked(rmsprop(0.02, momentum=0.9, weight_decay=0.1), mask)
  step = _step_fn(opt)
  params = jax.tree.map(jnp.asarray, _model_params())
  state = opt.init(params)
  assert isinstance(state.inner_state.nu["encoder"], optax.MaskedNode)
  head = [np.asarray(params["head"]["kernel"])]
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.02, momentum=0.9, weight_decay=0.1), head)
  for t in range(5):
    grads = _model_grads(params, t)
    params, state, updates = step(params, state, jax.tree.map(jnp.asarray, grads))
    assert _bitwise_equal(updates["encoder"], grads["encoder"])
    head = ref.step(head, [grads["head"]["kernel"]])
  helpers.assert_close_to_scale([params["head"]["kernel"]], head, rtol=1e-5)


@pytest.mark.parametrize("wrapper", ["masked_with_set_to_zero", "multi_transform"])
def test_frozen_subtree_stays_bitwise_unchanged(wrapper):
  inner = rmsprop(0.02, centered=True, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True)
  if wrapper == "multi_transform":
    labels = {"encoder": "frozen", "head": "trained"}
    opt = optax.multi_transform({"trained": inner, "frozen": optax.set_to_zero()}, labels)
  else:
    trained = {"encoder": False, "head": True}
    frozen = {"encoder": True, "head": False}
    opt = optax.chain(optax.masked(optax.set_to_zero(), frozen), optax.masked(inner, trained))
  step = _step_fn(opt)
  initial = jax.tree.map(jnp.asarray, _model_params())
  params, state = initial, opt.init(initial)
  head = [np.asarray(initial["head"]["kernel"])]
  ref = helpers.ReferenceRMSProp(
      helpers.RefConfig(lambda t: 0.02, centered=True, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True),
      head,
  )
  for t in range(5):
    grads = _model_grads(params, t)
    params, state, _ = step(params, state, jax.tree.map(jnp.asarray, grads))
    head = ref.step(head, [grads["head"]["kernel"]])
  assert _bitwise_equal(params["encoder"], initial["encoder"])
  helpers.assert_close_to_scale([params["head"]["kernel"]], head, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# optax.apply_if_finite


def test_apply_if_finite_rejects_a_nan_gradient_and_leaves_everything_bitwise_unchanged():
  problem = helpers.Quadratic(SHAPES, seed=4, steps=6)
  # A schedule makes the state keep a count: the rejected step must not advance it.
  opt = optax.apply_if_finite(
      rmsprop(helpers.constant_schedule(0.01), centered=True, momentum=0.9), max_consecutive_errors=3
  )
  step = _step_fn(opt)
  params = _jnp(problem.params())
  state = opt.init(params)
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, centered=True, momentum=0.9), problem.params())
  expected = problem.params()
  bad_step = 2
  for t in range(problem.steps):
    grads = problem.grads(params, t)
    if t == bad_step:
      grads[1] = grads[1].copy()
      grads[1][3] = np.nan
      before_params, before_inner = params, state.inner_state
      params, state, updates = step(params, state, _jnp(grads))
      assert _bitwise_equal(params, before_params)
      assert _bitwise_equal(state.inner_state, before_inner)
      assert jax.tree.structure(state.inner_state) == jax.tree.structure(before_inner)
      assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
      assert all(np.all(np.asarray(u) == 0) for u in updates)
      continue
    params, state, _ = step(params, state, _jnp(grads))
    expected = ref.step(expected, problem.grads(expected, t))
  # The run equals one that never saw the bad step.
  assert int(state.inner_state.count) == problem.steps - 1
  assert int(state.total_notfinite) == 1
  helpers.assert_close_to_scale(params, expected, rtol=1e-5, what="after a rejected step")


# ---------------------------------------------------------------------------------------------
# Trees: None leaves, MaskedNode, containers, modules.


def test_none_leaves_and_masked_nodes_are_skipped():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(3, 2)).astype(np.float32)
  params = {"w": jnp.asarray(w), "unused": None, "masked": optax.MaskedNode()}
  opt = rmsprop(0.01, momentum=0.9, weight_decay=0.1)
  state = opt.init(params)
  assert state.nu["unused"] is None and isinstance(state.nu["masked"], optax.MaskedNode)
  g = rng.normal(size=(3, 2)).astype(np.float32)
  grads = {"w": jnp.asarray(g), "unused": None, "masked": optax.MaskedNode()}
  updates, state = jax.jit(opt.update)(grads, state, params)
  assert updates["unused"] is None and isinstance(updates["masked"], optax.MaskedNode)
  ref = helpers.ReferenceRMSProp(helpers.RefConfig(lambda t: 0.01, momentum=0.9, weight_decay=0.1), [w])
  helpers.assert_close_to_scale([optax.apply_updates(params, updates)["w"]], ref.step([w], [g]), rtol=1e-6)


def test_injected_state_of_a_scalar_param_can_be_donated():
  # Under inject_hyperparams init gets initial_scale as a float32 array, and a scalar param's
  # average filled from it must be a buffer of its own: the state holds both, and a step that
  # donates the state donates each buffer once. (Optax's init returns the same buffer twice.)
  make_params = lambda: {"temperature": jnp.float32(1.5), "w": jnp.linspace(-1.0, 1.0, 3)}  # noqa: E731
  params = make_params()
  grads = {"temperature": jnp.float32(0.3), "w": jnp.asarray([0.2, -0.1, 0.4])}
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.05)
  step = _step_fn(opt, donate=True)
  state = opt.init(params)
  reference = optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.05)
  reference_step = _step_fn(reference)  # not donated
  expected = make_params()
  expected_state = reference.init(expected)
  for _ in range(2):
    params, state, _ = step(params, state, grads)
    expected, expected_state, _ = reference_step(expected, expected_state, grads)
  for name in params:
    helpers.assert_close_to_scale([np.asarray(params[name])], [np.asarray(expected[name])], rtol=1e-6, what=name)


NONE_PARAMS_CASES = [
    {}, {"momentum": 0.9}, {"centered": True}, {"centered": True, "momentum": 0.9, "nesterov": True},
    {"bias_correction": True}, {"weight_decay": 0.1}, {"decay": optax.linear_schedule(0.9, 0.99, 10)},
]


@pytest.mark.parametrize("kwargs", NONE_PARAMS_CASES, ids=[",".join(c) or "plain" for c in NONE_PARAMS_CASES])
@pytest.mark.parametrize("use_jit", [False, True])
def test_params_that_are_none_as_a_whole_update_to_none_as_in_optax(kwargs, use_jit):
  # Params of None, no tree at all (a group with nothing in it), make buffers of None, which
  # is also how a buffer that a configuration does not keep is marked.
  optax_kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
  for make in (lambda: optax.rmsprop(0.01, **optax_kwargs), lambda: rmsprop(0.01, **kwargs)):
    opt = optax.chain(optax.clip_by_global_norm(1.0), make())
    update = jax.jit(opt.update) if use_jit else opt.update
    state = opt.init(None)
    for _ in range(2):
      with helpers.standard_promotion():  # optax's bias correction mixes a float and the int32 count
        updates, state = update(None, state, None)
      assert updates is None
  ours = state[1]
  assert ours.nu is None and ours.mu is None and ours.trace is None
  # The count is kept as with params (the configurations that read it), and counts the steps.
  kept = rmsprop(0.01, **kwargs).init({"w": jnp.ones(2)}).count is not None
  assert (ours.count is not None) == kept
  assert not kept or int(ours.count) == 2


class Affine(NamedTuple):
  weight: jax.Array
  shift: jax.Array


def _tree_builders():
  rng = np.random.default_rng(6)

  def arr(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  # Small models (building one compiles its initialisers, which is most of these tests' time).
  def flax_linen():
    module = linen.Dense(3)
    with helpers.standard_promotion():
      return module.init(jax.random.key(0), jnp.ones((1, 4), jnp.float32))["params"]

  def flax_nnx():
    return nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Param)

  def equinox():
    return eqx.filter(eqx.nn.Linear(4, 3, key=jax.random.key(1)), eqx.is_array)

  return {
      "dict": lambda: {"a": arr(2, 3), "b": arr(4)},
      "list": lambda: [arr(2, 3), arr(4), arr()],
      "tuple": lambda: (arr(2, 3), (arr(4), arr(1, 1))),
      "namedtuple": lambda: Affine(weight=arr(3, 3), shift=arr(3)),
      "nested_mix": lambda: {"layers": [Affine(arr(2, 2), arr(2)), (arr(3),)], "scale": arr()},
      "flax_linen_params": flax_linen,
      "flax_nnx_state": flax_nnx,
      "equinox_module": equinox,
  }


TREES = _tree_builders()


@pytest.mark.parametrize("kind", list(TREES))
def test_params_trees_of_every_kind(kind):
  params = TREES[kind]()
  kind_type = type(params)
  leaves, treedef = jax.tree.flatten(params)
  assert len(leaves) >= 2
  opt = rmsprop(0.01, centered=True, momentum=0.9, weight_decay=0.05)
  state = jax.jit(opt.init)(params)
  assert jax.tree.structure(state.nu) == treedef

  @jax.jit
  def step(params, state, t):
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p + t), params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  ref = helpers.ReferenceRMSProp(
      helpers.RefConfig(lambda t: 0.01, centered=True, momentum=0.9, weight_decay=0.05),
      [np.asarray(x) for x in leaves],
  )
  expected = [np.asarray(x, np.float64) for x in leaves]
  for t in range(3):
    params, state, updates = step(params, state, jnp.float32(t))
    expected = ref.step(expected, [np.cos(3.0 * p + t) for p in expected])
  assert jax.tree.structure(params) == treedef
  assert jax.tree.structure(updates) == treedef
  assert type(params) is kind_type
  helpers.assert_close_to_scale(jax.tree.leaves(params), expected, rtol=1e-5, what=kind)


@pytest.mark.parametrize("name", ["rmsprop", "scale_by_rms", "pytorch", "keras", "tf1", "optax", "timm_tf"])
def test_update_accepts_extra_arguments_as_optax_optimizers_do(name):
  # optax.rmsprop's update takes keyword arguments meant for other members of a chain (a
  # loss `value`, say); nnx.Optimizer.update forwards them. Ours accept and ignore them.
  from rmsprop_optax import presets

  opt = {"rmsprop": lambda: rmsprop(0.1, momentum=0.9), "scale_by_rms": scale_by_rms}.get(
      name, lambda: getattr(presets, name)(0.1))()
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  params = {"w": jnp.ones(3, jnp.float32), "z": jnp.ones(2, jnp.complex64)}
  grads = jax.tree.map(lambda p: p * 0.5, params)
  state = opt.init(params)
  chex.assert_trees_all_equal(opt.update(grads, state, params, value=1.0), opt.update(grads, state, params))


def test_reduce_on_plateau_reads_the_loss_value_through_rmsprop():
  # The loss reaches the plateau detector behind rmsprop, and the result matches
  # optax.rmsprop in the same chain.
  params = jnp.ones(3, jnp.float32)
  runs = []
  for inner in (rmsprop(0.1, momentum=0.9), optax.rmsprop(0.1, momentum=0.9)):
    opt = optax.chain(inner, optax.contrib.reduce_on_plateau(patience=1, factor=0.5, accumulation_size=1))
    p, state = params, opt.init(params)
    with helpers.standard_promotion():  # optax mixes Python numbers and float32 arrays
      for _ in range(6):  # a constant loss: the plateau halves the scale after each patience
        updates, state = opt.update(jnp.full(3, 0.5, jnp.float32), state, p, value=jnp.float32(1.0))
        p = optax.apply_updates(p, updates)
    runs.append((p, float(state[1].scale)))
  assert runs[0][1] == runs[1][1] < 1.0
  np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
