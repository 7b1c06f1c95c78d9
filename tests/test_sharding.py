"""Sharded state: every state leaf lives where its parameter lives, and updates never talk.

The suite runs on eight CPU devices (see conftest). Params are laid out over a 4 x 2 mesh
(rows and columns, one axis, replicated, all mixed in one tree) and over a flat mesh of 8;
the state must follow each parameter's layout after an eager `init` and after
`jax.jit(opt.init)` with no `out_shardings`, for meshes with automatic axes and with explicit
axes (under `jax.set_mesh`). The compiled update must contain no collective, since RMSProp is
elementwise, and a ten-billion-parameter state must be plannable with `jax.eval_shape`.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rmsprop_optax import RMSPropState, _transform, presets, rmsprop, scale_by_rms
from rmsprop_optax._state import filled_like

import helpers

# Substrings of the HLO ops that move data between devices (their async -start/-done forms
# contain the same names).
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

# Param leaves: name -> (shape, partition spec over a 4 x 2 mesh of "rows" and "cols").
LEAVES = {
    "grid": ((8, 6), P("rows", "cols")),
    "transposed": ((6, 8), P("cols", "rows")),
    "rows": ((12,), P("rows")),
    "cols": ((3, 4), P(None, "cols")),
    "both_axes_on_one_dim": ((16, 3), P(("rows", "cols"), None)),
    "replicated": ((5, 3), P()),
    "scalar": ((), P()),
}
# Each layout: mesh shape, axis names, and its leaves. The single layouts reuse the mixed
# tree's leaves (eager ops compile once per shape and sharding).
TWO_D = ((4, 2), ("rows", "cols"))
LAYOUTS = {
    "rows_and_columns": (*TWO_D, {k: LEAVES[k] for k in ["grid"]}),
    "columns_and_rows": (*TWO_D, {k: LEAVES[k] for k in ["transposed"]}),
    "one_axis": (*TWO_D, {k: LEAVES[k] for k in ["rows", "cols"]}),
    "replicated": (*TWO_D, {k: LEAVES[k] for k in ["replicated", "scalar"]}),
    "mixed": (*TWO_D, LEAVES),
    "flat_mesh_of_eight": (
        (8,), ("data",),
        {"kernel": ((16, 3), P("data")), "bias": ((3,), P()), "column": ((5, 8), P(None, "data"))},
    ),
}

# A smaller tree for the compiled updates (compiling is what costs time here): a leaf split
# over both mesh axes, one over one axis.
STEP_TREE = {k: LEAVES[k] for k in ["grid", "cols"]}


def _mesh(shape, names, axis_type):
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def _place(mesh, spec_tree, seed=0):
  """Random float32 params with the given shapes, each put on the mesh with its spec."""
  rng = np.random.default_rng(seed)
  return {
      name: jax.device_put(rng.normal(size=shape).astype(np.float32), NamedSharding(mesh, spec))
      for name, (shape, spec) in spec_tree.items()
  }


def _mesh_context(mesh, axis_type):
  """Explicit axes are used under `jax.set_mesh` (as their documentation says); automatic
  axes without it, as code written before explicit sharding does."""
  return jax.set_mesh(mesh) if axis_type == AxisType.Explicit else contextlib.nullcontext()


def _shard_shapes(x):
  return sorted((shard.device.id, shard.data.shape) for shard in x.addressable_shards)


def _assert_same_layout(leaf, param, what):
  """`leaf` is split over the same devices, in the same pieces, as `param`."""
  assert leaf.sharding.is_equivalent_to(param.sharding, param.ndim), (
      f"{what}: state sharding {leaf.sharding} differs from the parameter's {param.sharding}"
  )
  assert _shard_shapes(leaf) == _shard_shapes(param), (
      f"{what}: state shards {_shard_shapes(leaf)} differ from the parameter's {_shard_shapes(param)}"
  )


def _state_fields(state):
  """(field name, tree) for every field of an RMSPropState that holds per-parameter leaves."""
  return [(f, getattr(state, f)) for f in ("nu", "mu", "trace") if getattr(state, f) is not None]


# A configuration whose state has all three buffers, in two dtypes, with a non-zero first value.
def _full_state_optimizer():
  return rmsprop(0.1, initial_scale=1.0, centered=True, momentum=0.9, nu_dtype=jnp.bfloat16)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto_axes", "explicit_axes"])
@pytest.mark.parametrize("init_mode", ["eager", "jit_without_out_shardings"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_state_leaf_has_its_parameters_sharding_after_init(layout, init_mode, axis_type):
  mesh_shape, names, spec_tree = LAYOUTS[layout]
  mesh = _mesh(mesh_shape, names, axis_type)
  params = _place(mesh, spec_tree)
  opt = _full_state_optimizer()
  init = opt.init if init_mode == "eager" else jax.jit(opt.init)
  with _mesh_context(mesh, axis_type):
    state = init(params)

  assert isinstance(state, RMSPropState)
  # nu_dtype stores both averages (nu and mu); the momentum buffer keeps float32.
  expected_fill = {"nu": (1.0, jnp.bfloat16), "mu": (0.0, jnp.bfloat16), "trace": (0.0, jnp.float32)}
  fields = _state_fields(state)
  assert [f for f, _ in fields] == ["nu", "mu", "trace"]
  for field, tree in fields:
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    value, dtype = expected_fill[field]
    for name, param in params.items():
      leaf = tree[name]
      _assert_same_layout(leaf, param, f"{layout} {field}[{name!r}]")
      assert leaf.dtype == dtype
      np.testing.assert_array_equal(np.asarray(leaf, np.float32), np.full(param.shape, value, np.float32))
  assert state.count is None  # nothing in this configuration reads the step count


def test_jitted_zeros_like_replicates_where_filled_like_keeps_the_layout():
  """The failure `filled_like` exists for: under `jit` with automatic axes, a plain
  `zeros_like` has no operand to take a layout from and comes out whole on every device."""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  x = jax.device_put(np.ones((8, 6), np.float32), NamedSharding(mesh, P("rows", "cols")))
  plain = jax.jit(jnp.zeros_like)(x)
  ours = jax.jit(lambda x: filled_like(x, 0.0, jnp.float32))(x)
  assert plain.addressable_shards[0].data.shape == (8, 6)
  _assert_same_layout(ours, x, "filled_like under jit")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_filled_like_holds_exactly_the_value_whatever_the_input_holds(jit):
  x = jnp.array([[np.nan, np.inf], [-np.inf, -0.0], [1e38, 3.0]], jnp.float32)
  z = jnp.array([np.nan + 1j * np.inf, 2.0 - 1j], jnp.complex64)
  fill = jax.jit(filled_like, static_argnums=(1, 2)) if jit else filled_like
  np.testing.assert_array_equal(np.asarray(fill(x, 0.5, jnp.float32)), np.full((3, 2), 0.5, np.float32))
  real = fill(z, 1.0, jnp.float32)
  assert real.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(real), np.ones(2, np.float32))
  cplx = fill(z, 0.0, jnp.complex64)
  assert cplx.dtype == jnp.complex64
  np.testing.assert_array_equal(np.asarray(cplx), np.zeros(2, np.complex64))
  low = fill(x, 1.0, jnp.bfloat16)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(low, np.float32), np.ones((3, 2), np.float32))


def _train_step(opt):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("init_mode", ["eager", "jit_without_out_shardings"])
def test_state_scalars_are_usable_in_the_next_jitted_update_after_being_committed(init_mode):
  """A restored checkpoint commits every leaf to the sharding it was saved with. The state's
  scalars (the count, the decays' product) must live on the params' devices then, or the
  jitted update refuses to mix devices."""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  params = _place(mesh, STEP_TREE)
  # Schedules: the state keeps a count, and with bias correction the decays' product too.
  opt = rmsprop(helpers.constant_schedule(0.1), decay=helpers.constant_schedule(0.9), momentum=0.9,
                bias_correction=True)
  state = (opt.init if init_mode == "eager" else jax.jit(opt.init))(params)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert state.log_decay_product.dtype == jnp.float32 and state.log_decay_product.shape == ()
  committed = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))

  grads = jax.tree.map(lambda p: jnp.float32(0.5) * p, params)
  # A scalar on one device fails here: "Received incompatible devices for jitted computation".
  new_params, new_state = jax.jit(_train_step(opt))(params, committed, grads)
  assert int(new_state.count) == 1
  for scalar in ("count", "log_decay_product"):
    devices = [getattr(s, scalar).sharding.device_set for s in (committed, new_state)]
    assert devices == [set(mesh.devices.flat)] * 2, scalar
  names = sorted(params)
  reference = helpers.ReferenceRMSProp(
      helpers.RefConfig(lambda t: 0.1, momentum=0.9, bias_correction=True), [params[k] for k in names]
  )
  expected = reference.step([np.asarray(params[k]) for k in names], [np.asarray(grads[k]) for k in names])
  helpers.assert_close_to_scale([new_params[k] for k in names], expected, rtol=1e-6)


def test_state_scalars_follow_params_committed_to_one_device():
  device = jax.devices()[3]
  params = jax.device_put({"w": jnp.ones((4, 4), jnp.float32)}, device)
  opt = rmsprop(0.1, decay=helpers.constant_schedule(0.9), bias_correction=True)  # count and product
  state = opt.init(params)
  for scalar in (state.count, state.log_decay_product):
    assert scalar.sharding.device_set == {device} and scalar.committed
  committed = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
  grads = jax.device_put({"w": jnp.full((4, 4), 0.5, jnp.float32)}, device)
  # A scalar on the default device fails here: "Received incompatible devices".
  new_params, new_state = jax.jit(_train_step(opt))(params, committed, grads)
  assert int(new_state.count) == 1 and new_params["w"].sharding.device_set == {device}


def test_init_takes_params_described_by_shape_dtype_structs_as_optax_does():
  # Params described, not allocated: the state is made where their shardings say.
  mesh = _mesh(*TWO_D, AxisType.Auto)
  described = {name: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))
               for name, (shape, spec) in STEP_TREE.items()}
  state = rmsprop(0.1, momentum=0.9, bias_correction=True, initial_scale=0.5).init(described)
  for name, like in described.items():
    for buffer, value in ((state.nu, 0.5), (state.trace, 0.0)):
      np.testing.assert_array_equal(buffer[name], np.full(like.shape, value, np.float32))
      assert buffer[name].sharding.is_equivalent_to(like.sharding, len(like.shape))
  assert state.count.sharding.is_equivalent_to(NamedSharding(mesh, P()), 0) and int(state.count) == 0


@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=optax.linear_schedule(0.1, 0.01, 10)),
    dict(learning_rate=0.1, bias_correction=True),
    dict(learning_rate=0.1, nu_dtype=jnp.bfloat16, stochastic_rounding=True),
], ids=["schedule", "bias-correction", "stochastic-rounding"])
@pytest.mark.parametrize("placement", ["devices", "meshes", "mesh-and-device"])
def test_params_committed_to_several_devices_update_outside_jit(kwargs, placement):
  # Leaves put on devices of their own by hand, or each on a mesh of its own: the state's
  # scalars (the count the schedule, the correction and the random bits read) stay
  # uncommitted, as Optax's count, so that an eager update can combine them with every leaf.
  rng = np.random.default_rng(5)
  if placement == "devices":
    shardings = dict(zip("ab", map(jax.sharding.SingleDeviceSharding, jax.devices()[1:3])))
  elif placement == "meshes":
    meshes = [jax.make_mesh((4,), ("x",), devices=jax.devices()[i:i + 4]) for i in (0, 4)]
    shardings = {name: NamedSharding(mesh, P("x")) for name, mesh in zip("ab", meshes)}
  else:  # one leaf over a mesh, the other on one of the mesh's own devices
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
    shardings = {"a": NamedSharding(mesh, P("x")), "b": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  params = {name: rng.normal(size=(4, 2)).astype(np.float32) for name in shardings}
  grads = {name: rng.normal(size=(4, 2)).astype(np.float32) for name in shardings}
  opt = rmsprop(decay=0.9, eps=1e-8, **kwargs)

  def placed(tree):
    return {name: jax.device_put(value, shardings[name]) for name, value in tree.items()}

  updates, state = opt.update(placed(grads), opt.init(placed(params)), placed(params))
  for name, sharding in shardings.items():
    g = grads[name].astype(np.float64)
    v = 0.1 * g**2 / (0.1 if kwargs.get("bias_correction") else 1.0)
    # bfloat16 rounds the stored average to 2**-8 relative, its root's step to half that.
    rtol = 4e-3 if "nu_dtype" in kwargs else 1e-6
    np.testing.assert_allclose(updates[name], -0.1 * g / np.sqrt(v + 1e-8), rtol=rtol)
    assert updates[name].sharding.device_set == sharding.device_set


@pytest.mark.parametrize("make", [
    lambda: rmsprop(0.1, momentum=0.9, nesterov=True, centered=True),
    lambda: rmsprop(0.1, weight_decay=0.1),
    lambda: presets.pytorch(0.1, weight_decay=0.1),
], ids=["nesterov", "coupled-decay", "preset-pytorch-decay"])
def test_steps_that_compute_a_value_twice_update_leaves_on_several_devices_outside_jit(make):
  # Nesterov's step and a coupled decay's compute a value a second time instead of sharing
  # it, from buffers passed through an optimization barrier under jit. Outside jit there is
  # nothing to merge: one barrier over every leaf was one computation, which failed for
  # leaves committed to different devices.
  rng = np.random.default_rng(6)
  devices = dict(zip("ab", jax.devices()[1:3]))
  params = {name: rng.normal(size=(4, 2)).astype(np.float32) for name in devices}
  grads = {name: rng.normal(size=(4, 2)).astype(np.float32) for name in devices}

  def placed(tree):
    return {name: jax.device_put(value, devices[name]) for name, value in tree.items()}

  opt = make()
  updates, state = opt.update(placed(grads), opt.init(placed(params)), placed(params))
  together, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  for name, device in devices.items():
    np.testing.assert_allclose(updates[name], together[name], rtol=1e-6)
    assert updates[name].devices() == {device}
  assert all(leaf.devices() <= set(devices.values()) for leaf in jax.tree.leaves(state) if leaf.ndim)


# ---------------------------------------------------------------------------------------------
# The compiled update moves no data between devices.

def _standard(schedule):
  """An Optax schedule evaluated under standard promotion (it mixes ints and floats)."""

  def evaluate(count):
    with helpers.standard_promotion():
      return schedule(count)

  return evaluate


CONFIGS = {
    "plain": lambda: rmsprop(0.05),
    "centered": lambda: rmsprop(0.05, centered=True),
    "momentum": lambda: rmsprop(0.05, momentum=0.9),
    "nesterov": lambda: rmsprop(0.05, momentum=0.9, nesterov=True),
    "lr_outside_momentum": lambda: rmsprop(0.05, momentum=0.9, lr_in_momentum=False),
    "bias_correction": lambda: rmsprop(0.05, decay=0.99, bias_correction=True, centered=True),
    "coupled_weight_decay": lambda: rmsprop(0.05, weight_decay=0.1),
    "decoupled_weight_decay_masked": lambda: rmsprop(
        0.05, weight_decay=0.1, decoupled_weight_decay=True,
        weight_decay_mask=lambda p: {k: k == "grid" for k in p},
    ),
    "bf16_state_stochastic_rounding": lambda: rmsprop(
        0.05, decay=0.999, centered=True, momentum=0.9, nu_dtype=jnp.bfloat16,
        momentum_dtype=jnp.bfloat16, stochastic_rounding=True, seed=3,
    ),
    "schedules": lambda: rmsprop(
        _standard(optax.cosine_decay_schedule(0.05, 10)),
        decay=lambda t: 1.0 - 0.1 / (1.0 + t.astype(jnp.float32) / 5.0),
        eps=_standard(optax.exponential_decay(1e-6, 5, 0.5)),
        momentum=_standard(optax.linear_schedule(0.5, 0.9, 5)),
        weight_decay=_standard(optax.constant_schedule(0.01)),
        bias_correction=True,  # with a decay schedule: the state keeps the decays' product
    ),
    "preset_pytorch": lambda: presets.pytorch(lr=0.05, momentum=0.9, weight_decay=0.01, centered=True),
    "preset_keras": lambda: presets.keras(learning_rate=0.05, momentum=0.9, weight_decay=0.01),
    "preset_tf1": lambda: presets.tf1(0.05, momentum=0.9, centered=True),
    "preset_optax": lambda: presets.optax(0.05, momentum=0.9, nesterov=True, bias_correction=True),
    "preset_timm_tf": lambda: presets.timm_tf(lr=0.05, momentum=0.9, weight_decay=0.01, decoupled_decay=True),
    "scale_by_rms_in_a_chain": lambda: optax.chain(
        scale_by_rms(centered=True), optax.scale_by_learning_rate(0.05)
    ),
}


def _collectives_in(compiled_text):
  return [op for op in COLLECTIVES if op in compiled_text]


def _rms_states(state):
  """The RMSPropState(s) inside a possibly chained optimizer state."""
  return [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, RMSPropState))
          if isinstance(s, RMSPropState)]




def _sharded_run(opt, mesh, axis_type, steps=3):
  """Params on the mesh, `steps` jitted updates; the compiled HLO text and the results."""
  params = _place(mesh, STEP_TREE, seed=1)
  rng = np.random.default_rng(2)
  grads = [
      {k: jax.device_put(rng.normal(size=v.shape).astype(np.float32), v.sharding) for k, v in params.items()}
      for _ in range(max(steps, 1))
  ]
  step = jax.jit(_train_step(opt))
  with _mesh_context(mesh, axis_type):
    state = opt.init(params)
    text = step.lower(params, state, grads[0]).compile().as_text()
    new_params = params
    for g in grads[:steps]:
      new_params, state = step(new_params, state, g)
  return params, grads, text, new_params, state


def _single_device_run(opt, params, grads):
  """The same updates on one device, from host copies of the same numbers."""
  local = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)  # noqa: E731
  params = local(params)
  state = opt.init(params)
  step = jax.jit(_train_step(opt))
  for g in grads:
    params, state = step(params, state, local(g))
  return params, state


def _assert_state_follows_params(state, params, what):
  rms = _rms_states(state)
  assert rms, f"{what}: no RMSPropState in the optimizer state"
  for s in rms:
    for field, tree in _state_fields(s):
      for name, param in params.items():
        _assert_same_layout(tree[name], param, f"{what} {field}[{name!r}] after updates")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_compiled_update_has_no_collective_and_keeps_the_state_sharded(config):
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  params, _, text, new_params, state = _sharded_run(CONFIGS[config](), mesh, AxisType.Auto)
  assert _collectives_in(text) == [], f"{config}: the compiled update communicates"
  _assert_state_follows_params(state, params, config)
  for name, param in params.items():
    _assert_same_layout(new_params[name], param, f"{config} params[{name!r}] after updates")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_compiled_update_has_no_collective_with_explicit_mesh_axes(config):
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Explicit)
  params, _, text, new_params, state = _sharded_run(CONFIGS[config](), mesh, AxisType.Explicit)
  assert _collectives_in(text) == [], f"{config}: the compiled update communicates"
  _assert_state_follows_params(state, params, config)
  for name, param in params.items():
    _assert_same_layout(new_params[name], param, f"{config} params[{name!r}] after updates")


def test_collective_check_catches_a_global_norm():
  """The check above can fail: clipping by the global norm needs a sum over all devices.
  (Compiled, not run: XLA:CPU's simulated devices can deadlock on collectives.)"""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  opt = optax.chain(optax.clip_by_global_norm(1.0), rmsprop(0.05))
  _, _, text, _, _ = _sharded_run(opt, mesh, AxisType.Auto, steps=0)
  assert "all-reduce" in _collectives_in(text)


def test_caution_keeps_the_state_sharded_and_sums_each_leaf_across_devices():
  """Caution's fraction of kept coordinates is a mean over the whole leaf: one all-reduce of
  a scalar per leaf split over devices, and the state still stays where its param is.
  (Compiled, not run, as above.)"""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  opt = rmsprop(0.05, momentum=0.9, caution=True)
  params = _place(mesh, STEP_TREE, seed=1)
  with _mesh_context(mesh, AxisType.Auto):
    state = opt.init(params)
    compiled = jax.jit(_train_step(opt)).lower(params, state, params).compile()
  assert "all-reduce" in _collectives_in(compiled.as_text())
  _, state_shardings = compiled.output_shardings
  for name, param in params.items():
    assert state_shardings.trace[name].is_equivalent_to(param.sharding, param.ndim), name
    assert state_shardings.nu[name].is_equivalent_to(param.sharding, param.ndim), name


def test_caution_inside_shard_map_keeps_each_shards_own_fraction():
  # Inside shard_map the update sees only its shard: the fraction of kept coordinates is the
  # shard's, as if each shard were a leaf of its own (README, Sharding).
  mesh = jax.make_mesh((2,), ("x",), devices=jax.devices()[:2])
  opt = rmsprop(0.05, momentum=0.9, caution=True)
  rng = np.random.default_rng(9)
  params = rng.normal(size=(8,)).astype(np.float32)
  first, second = (rng.normal(size=(8,)).astype(np.float32) for _ in range(2))
  # The second gradient turns against the buffer on 3 of the first shard's 4 coordinates and
  # on 1 of the second's: fractions 1/4 and 3/4, where the whole leaf's would be 1/2.
  second = np.abs(second) * np.sign(first) * np.asarray([-1, -1, -1, 1, -1, 1, 1, 1], np.float32)

  def two_steps(p, g1, g2):
    state = opt.init(p)
    _, state = opt.update(g1, state, p)
    return opt.update(g2, state, p)[0]

  placed = [jax.device_put(x, NamedSharding(mesh, P("x"))) for x in (params, first, second)]
  sharded = jax.jit(jax.shard_map(two_steps, mesh=mesh, in_specs=P("x"), out_specs=P("x")))(*placed)
  per_shard = np.concatenate([two_steps(params[i:i + 4], first[i:i + 4], second[i:i + 4]) for i in (0, 4)])
  whole = two_steps(params, first, second)
  np.testing.assert_allclose(sharded, per_shard, rtol=1e-6)
  assert not np.allclose(sharded, whole, rtol=1e-3)


# Ours and Optax's equivalent, each run inside shard_map below.
SHARD_MAP_CASES = {
    "plain": (lambda: rmsprop(0.05), lambda: optax.rmsprop(0.05)),
    "centered": (lambda: rmsprop(0.05, centered=True), lambda: optax.rmsprop(0.05, centered=True)),
    "nesterov": (lambda: rmsprop(0.05, momentum=0.9, nesterov=True),
                 lambda: optax.rmsprop(0.05, momentum=0.9, nesterov=True)),
    "coupled_weight_decay": (lambda: rmsprop(0.05, weight_decay=0.1),
                             lambda: optax.chain(optax.add_decayed_weights(0.1), optax.rmsprop(0.05))),
}


@pytest.mark.parametrize("merged", [False, True], ids=["default_form", "merged_form"])
@pytest.mark.parametrize("case", list(SHARD_MAP_CASES))
def test_update_inside_shard_map_takes_a_sharded_and_a_replicated_leaf_as_optax_does(case, merged, monkeypatch):
  # A kernel split over the mesh beside a replicated bias: inside shard_map the two vary over
  # different mesh axes, which the values the step computes twice (Nesterov's, coupled weight
  # decay's, every output's in the form for XLA's multi-output fusion) must keep apart.
  if merged:
    monkeypatch.setattr(_transform, "_cpu_fuses_sibling_loops", lambda: True)
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
  specs = {"kernel": P("d", None), "bias": P()}
  rng = np.random.default_rng(11)
  shapes = {"kernel": (16, 3), "bias": (3,)}
  trees = [{k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()} for _ in range(3)]
  placed = [{k: jax.device_put(t[k], NamedSharding(mesh, specs[k])) for k in t} for t in trees]

  def run(make):
    opt = make()

    def two_steps(params, g1, g2):
      state = opt.init(params)
      for g in (g1, g2):
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
      return params

    return jax.jit(jax.shard_map(two_steps, mesh=mesh, in_specs=(specs,) * 3, out_specs=specs))(*placed)

  ours, expected = (run(make) for make in SHARD_MAP_CASES[case])
  for name in shapes:
    helpers.assert_close_to_scale([np.asarray(ours[name])], [np.asarray(expected[name])], rtol=1e-6, what=name)


def _assert_close_per_dtype(actual, expected, what):
  """Float32 leaves to 1e-6 relative; bfloat16 state to one bfloat16 ulp."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert a.dtype == e.dtype, what
    rtol = 2.0**-7 if a.dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=1e-7, err_msg=what
    )


@pytest.mark.parametrize("config", ["bf16_state_stochastic_rounding", "schedules", "preset_pytorch"])
def test_sharded_updates_equal_single_device_updates(config):
  """Splitting the work changes no number: stochastic rounding draws its bits from each
  element's global position, not from its position within a shard."""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  params, grads, _, new_params, state = _sharded_run(CONFIGS[config](), mesh, AxisType.Auto)
  local_params, local_state = _single_device_run(CONFIGS[config](), params, grads)
  assert jax.tree.structure(state) == jax.tree.structure(local_state)
  _assert_close_per_dtype(new_params, local_params, f"{config} params")
  _assert_close_per_dtype(state, local_state, f"{config} state")


# ---------------------------------------------------------------------------------------------
# Planning a state too large to allocate.

# 5e9 + 2 x 2.5e9 = 1e10 parameters.
BIG = {
    "embedding": ((100_000, 50_000), jnp.bfloat16, P("rows", "cols")),
    "blocks": [((50_000, 50_000), jnp.float32, P(None, "cols")) for _ in range(2)],
}


def _abstract_params(mesh):
  def sds(spec):
    shape, dtype, pspec = spec
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, pspec))

  return {"embedding": sds(BIG["embedding"]), "blocks": [sds(b) for b in BIG["blocks"]]}


def _expected_bytes(dtypes, per_device):
  """Bytes of nu, mu and momentum from NumPy itemsizes, total or on one device."""
  total = 0
  for spec in [BIG["embedding"], *BIG["blocks"]]:
    shape, _, pspec = spec
    count = math.prod(shape)
    if per_device:
      split = {"rows": 4, "cols": 2}
      for axes in pspec:
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
          count //= split.get(axis, 1)
    total += count * sum(np.dtype(d).itemsize for d in dtypes)
  return total


def _big_optimizer():
  return rmsprop(1e-3, centered=True, momentum=0.9, momentum_dtype=jnp.bfloat16)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto_axes", "explicit_axes"])
def test_eval_shape_plans_a_ten_billion_parameter_state(axis_type):
  mesh = _mesh((4, 2), ("rows", "cols"), axis_type)
  params = _abstract_params(mesh)
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 10**10
  with _mesh_context(mesh, axis_type):
    state = jax.eval_shape(_big_optimizer().init, params)

  assert state.count is None
  # bf16 params: nu and mu at least float32; momentum as asked.
  for field, dtype in [("nu", jnp.float32), ("mu", jnp.float32), ("trace", jnp.bfloat16)]:
    tree = getattr(state, field)
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    for leaf, param in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
      assert leaf.shape == param.shape and leaf.dtype == dtype
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state.nu, state.mu, state.trace)))
  assert total == _expected_bytes([np.float32, np.float32, jnp.bfloat16], per_device=False) == 10**11
  if axis_type == AxisType.Explicit:
    # Explicit axes carry the layout in the abstract values: per-device bytes follow.
    per_device = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
        for x in jax.tree.leaves((state.nu, state.mu, state.trace))
    )
    assert per_device == _expected_bytes([np.float32, np.float32, jnp.bfloat16], per_device=True)


def test_compiled_init_of_a_ten_billion_parameter_state_is_split_over_the_devices():
  """Compiling (not running) the jitted init gives the bytes each device will hold: the
  state's share, not all of it."""
  mesh = _mesh((4, 2), ("rows", "cols"), AxisType.Auto)
  compiled = jax.jit(_big_optimizer().init).lower(_abstract_params(mesh)).compile()
  memory = compiled.memory_analysis()
  expected = _expected_bytes([np.float32, np.float32, jnp.bfloat16], per_device=True) + 4  # + count
  assert expected <= memory.output_size_in_bytes <= expected + 1024
  # Replicated, every device would hold all 1e11 bytes; the least split leaf is halved.
  assert memory.output_size_in_bytes <= _expected_bytes([np.float32, np.float32, jnp.bfloat16], per_device=False) / 2
