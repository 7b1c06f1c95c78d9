"""`rmsprop` in the libraries around it: Flax (NNX and TrainState), Equinox, Orbax.

Models are tiny (a 1 -> 16 -> 1 regression) so each test trains in a second on a CPU; the
first step of each is also checked against the float64 reference.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen, nnx, serialization
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import helpers
from rmsprop_optax import RMSPropState, rmsprop

X = np.linspace(-2.0, 2.0, 64, dtype=np.float32).reshape(-1, 1)
Y = np.sin(X).astype(np.float32)


def _mse(prediction, target):
  return jnp.mean(jnp.square(prediction - target))


def _assert_first_step_matches_reference(before, grads, after, cfg):
  """One optimizer step from a fresh state, leaf by leaf, against the float64 reference."""
  before, grads, after = (jax.tree.leaves(t) for t in (before, grads, after))
  ref = helpers.ReferenceRMSProp(cfg, [np.asarray(p) for p in before])
  expected = ref.step([np.asarray(p) for p in before], [np.asarray(g) for g in grads])
  # Gradients taken outside the jitted step round differently in their last bits, and with
  # v_0 = 0 a tiny gradient meets eps: float32 agreement, not bitwise.
  helpers.assert_close_to_scale(after, expected, rtol=5e-6, what="first step")


# ---------------------------------------------------------------------------------------------
# Flax


class NNXRegressor(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(1, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


# flax 0.12.7 renamed nnx.pure to nnx.as_pure; the test extra allows flax 0.12.0, the one
# 0.12 release that runs on jax 0.8.0.
_as_pure = getattr(nnx, "as_pure", None) or nnx.pure


def test_flax_nnx_optimizer_trains_a_model():
  model = NNXRegressor(nnx.Rngs(0))
  tx = rmsprop(0.01, momentum=0.5, weight_decay=1e-4)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = jnp.asarray(X), jnp.asarray(Y)

  def loss_fn(model):
    return _mse(model(x), y)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  # The first step, against the reference.
  before = jax.tree.map(np.asarray, _as_pure(nnx.state(model, nnx.Param)))
  grads = _as_pure(nnx.state(nnx.jit(nnx.grad(loss_fn))(model), nnx.Param))
  first_loss = float(train_step(model, optimizer))
  after = _as_pure(nnx.state(model, nnx.Param))
  _assert_first_step_matches_reference(
      before, grads, after, helpers.RefConfig(lambda t: 0.01, momentum=0.5, weight_decay=1e-4)
  )

  for _ in range(60):
    loss = float(train_step(model, optimizer))
  assert loss < 0.1 * first_loss, (first_loss, loss)
  assert isinstance(_as_pure(optimizer.opt_state), RMSPropState)
  assert int(optimizer.step[...]) == 61


class LinenRegressor(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(jnp.tanh(linen.Dense(16)(x)))


def test_flax_train_state_applies_rmsprop():
  module = LinenRegressor()
  with helpers.standard_promotion():  # Linen's initialisers mix Python and array dtypes
    params = module.init(jax.random.key(0), jnp.asarray(X))["params"]
  state = train_state.TrainState.create(
      apply_fn=module.apply, params=params, tx=rmsprop(0.01, centered=True, momentum=0.5)
  )
  x, y = jnp.asarray(X), jnp.asarray(Y)

  def loss_fn(params):
    return _mse(state.apply_fn({"params": params}, x), y)

  @jax.jit
  def train_step(state):
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  grads = jax.jit(jax.grad(loss_fn))(state.params)
  new_state, first_loss = train_step(state)
  _assert_first_step_matches_reference(
      state.params, grads, new_state.params,
      helpers.RefConfig(lambda t: 0.01, centered=True, momentum=0.5),
  )
  state = new_state
  for _ in range(60):
    state, loss = train_step(state)
  assert float(loss) < 0.1 * float(first_loss)
  assert isinstance(state.opt_state, RMSPropState)
  assert int(state.step) == 61


# ---------------------------------------------------------------------------------------------
# Equinox


def test_equinox_model_trains_with_filtered_params():
  model = eqx.nn.MLP(1, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
  opt = rmsprop(0.01, momentum=0.5, weight_decay=1e-4, decoupled_weight_decay=True)
  opt_state = opt.init(eqx.filter(model, eqx.is_array))
  x, y = jnp.asarray(X), jnp.asarray(Y)

  def loss_fn(model):
    return _mse(jax.vmap(model)(x), y)

  @eqx.filter_jit
  def train_step(model, opt_state):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss

  before = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_jit(eqx.filter_grad(loss_fn))(model)
  model, opt_state, first_loss = train_step(model, opt_state)
  _assert_first_step_matches_reference(
      before, grads, eqx.filter(model, eqx.is_array),
      helpers.RefConfig(lambda t: 0.01, momentum=0.5, weight_decay=1e-4, decoupled_weight_decay=True),
  )
  for _ in range(60):
    model, opt_state, loss = train_step(model, opt_state)
  assert float(loss) < 0.1 * float(first_loss)
  assert isinstance(opt_state, RMSPropState)


# ---------------------------------------------------------------------------------------------
# Orbax

CHECKPOINT_CONFIGS = {
    # nu only: the count, mu and momentum are None.
    "empty_placeholders": lambda: rmsprop(0.02),
    # Every buffer, bfloat16 storage and stochastic rounding (whose bits depend on the count).
    "every_buffer_bf16": lambda: rmsprop(
        0.02, centered=True, momentum=0.9, nu_dtype=jnp.bfloat16, momentum_dtype=jnp.bfloat16,
        stochastic_rounding=True, seed=11,
    ),
    # Bias correction under a decay schedule: a count and the log of the decays' product.
    "decay_schedule_bias_correction": lambda: rmsprop(
        0.02, decay=lambda count: 0.9 + 0.09 * (count >= 2).astype(jnp.float32), momentum=0.9,
        bias_correction=True,
    ),
    # Injected numbers: the decay arrives as an array, so the state keeps the product.
    "injected_bias_correction": lambda: optax.inject_hyperparams(rmsprop)(
        0.02, decay=0.9, momentum=0.9, bias_correction=True
    ),
}


def _problem_params(shapes=((16, 4), (8,)), seed=0):
  rng = np.random.default_rng(seed)
  return {f"p{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}


def _train_step(opt):
  @jax.jit
  def step(params, state, t):
    # Gradients that depend on the params and the step number: a restored run that lost the
    # params, the buffers or (where the state keeps one) the count would drift.
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p + t) + 0.1 * p, params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _run(step, params, state, start, steps):
  for t in range(start, start + steps):
    params, state = step(params, state, jnp.float32(t))
  return params, state


def _trained(config, steps):
  """The optimizer of `config`, its jitted step, and params and state after `steps` steps."""
  opt = CHECKPOINT_CONFIGS[config]()
  step = _train_step(opt)
  params = jax.tree.map(jnp.asarray, _problem_params())
  params, state = _run(step, params, opt.init(params), 0, steps)
  return opt, step, params, state


def _assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("config", list(CHECKPOINT_CONFIGS))
def test_flax_serialization_round_trip_continues_bitwise_identically(config):
  opt, step, params, state = _trained(config, 3)
  saved = serialization.to_bytes({"params": params, "opt_state": state})
  uninterrupted = _run(step, params, state, 3, 3)

  # A fresh process rebuilds the template from scratch and fills it from the bytes.
  template_params = jax.tree.map(jnp.asarray, _problem_params())
  template = {"params": template_params, "opt_state": opt.init(template_params)}
  restored = serialization.from_bytes(template, saved)
  assert type(restored["opt_state"]) is type(state)  # RMSPropState, or inject's state around one
  _assert_bitwise(restored, {"params": params, "opt_state": state})
  _assert_bitwise(_run(step, restored["params"], restored["opt_state"], 3, 3), uninterrupted)


@pytest.mark.parametrize("config", list(CHECKPOINT_CONFIGS))
def test_orbax_restored_run_continues_bitwise_identically(config, tmp_path):
  opt, step, params, state = _trained(config, 4)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  uninterrupted = _run(step, params, state, 4, 4)

  # Two restore targets: the saved arrays' own shapes, and what a fresh process builds
  # without any arrays.
  abstract_params = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _problem_params()))
  targets = {
      "saved_shapes": jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": state}),
      "eval_shape": {"params": abstract_params, "opt_state": jax.eval_shape(opt.init, abstract_params)},
  }
  for name, abstract in targets.items():
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    assert type(restored["opt_state"]) is type(state), name
    # Equal tree structures: the same fields hold None (count, mu, momentum where unused).
    _assert_bitwise(restored, {"params": params, "opt_state": state})
    resumed = _run(step, restored["params"], restored["opt_state"], 4, 4)
    _assert_bitwise(resumed, uninterrupted)


def _four_fields(state):
  """The README's recipe: the fields of an `RMSPropState` (abstract or not) that a checkpoint
  written before `log_decay_product` existed holds, as a dict to restore into."""
  return {name: value for name, value in state._asdict().items() if name != "log_decay_product"}


class _FourFieldState(NamedTuple):
  """RMSPropState as checkpoints written before `log_decay_product` existed hold it."""

  count: Any
  nu: Any
  mu: Any
  trace: Any


@pytest.mark.parametrize("config", ["empty_placeholders", "decay_schedule_bias_correction"])
def test_orbax_checkpoint_of_the_four_field_state_restores_as_the_readme_says(config, tmp_path):
  opt, step, params, state = _trained(config, 4)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": _FourFieldState(*state[:4])})
  checkpointer.wait_until_finished()
  uninterrupted = _run(step, params, state, 4, 4)

  # The README's recipe: restore into the fields the checkpoint has, then build the state.
  abstract_params = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _problem_params()))
  four = _four_fields(jax.eval_shape(opt.init, abstract_params))
  restored = checkpointer.restore(tmp_path / "ckpt", {"params": abstract_params, "opt_state": four})
  restored_state = RMSPropState(**restored["opt_state"])
  if config == "decay_schedule_bias_correction":
    # The log of the product of the decays the first `count` updates applied: 0.9, 0.9, 0.99, 0.99.
    decays = np.float32([0.9, 0.9, 0.99, 0.99])
    assert int(restored_state.count) == len(decays)
    log_product = np.sum(np.log(decays.astype(np.float64)))
    restored_state = restored_state._replace(log_decay_product=jnp.float32(log_product))
    resumed = _run(step, restored["params"], restored_state, 4, 4)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  else:
    _assert_bitwise(_run(step, restored["params"], restored_state, 4, 4), uninterrupted)


def test_orbax_checkpoint_of_an_injected_state_without_the_product_restores_as_the_readme_says(tmp_path):
  # Saved before the state kept the decays' product for an injected decay: the field is None.
  opt, step, params, state = _trained("injected_bias_correction", 4)
  assert state.inner_state.log_decay_product is not None
  saved = state._replace(inner_state=state.inner_state._replace(log_decay_product=None))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": saved})
  checkpointer.wait_until_finished()
  uninterrupted = _run(step, params, state, 4, 4)

  # The README's recipe: restore into a target whose field is None, then set it.
  abstract_params = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _problem_params()))
  target = jax.eval_shape(opt.init, abstract_params)
  target = target._replace(inner_state=target.inner_state._replace(log_decay_product=None))
  restored = checkpointer.restore(tmp_path / "ckpt", {"params": abstract_params, "opt_state": target})
  inner = restored["opt_state"].inner_state
  assert int(inner.count) == 4
  decay = float(restored["opt_state"].hyperparams["decay"])
  restored_state = restored["opt_state"]._replace(inner_state=inner._replace(
      log_decay_product=jnp.float32(int(inner.count) * math.log(decay))))
  resumed = _run(step, restored["params"], restored_state, 4, 4)
  assert jax.tree.structure(resumed) == jax.tree.structure(uninterrupted)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_flax_bytes_of_the_four_field_state_restore_as_the_readme_says():
  opt, step, params, state = _trained("every_buffer_bf16", 3)
  saved = serialization.to_bytes({"params": params, "opt_state": _FourFieldState(*state[:4])})
  uninterrupted = _run(step, params, state, 3, 3)

  template_params = jax.tree.map(jnp.asarray, _problem_params())
  four = _four_fields(opt.init(template_params))
  restored = serialization.from_bytes({"params": template_params, "opt_state": four}, saved)
  restored_state = RMSPropState(**restored["opt_state"])
  _assert_bitwise(_run(step, restored["params"], restored_state, 3, 3), uninterrupted)


def _layout(mesh, spec_of):
  """A restore target placing each leaf with `spec_of(leaf)` on `mesh`."""

  def target(tree):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec_of(x))), tree
    )

  return target


def _split_first_axis(x):
  return P("data") if x.ndim >= 1 else P()


def test_orbax_state_saved_8_ways_restores_onto_other_layouts(tmp_path):
  devices = np.array(jax.devices())
  eight = Mesh(devices, ("data",))
  opt = CHECKPOINT_CONFIGS["every_buffer_bf16"]()
  step = _train_step(opt)
  params = jax.device_put(
      _problem_params(), jax.tree.map(lambda x: NamedSharding(eight, _split_first_axis(x)), _problem_params())
  )
  params, state = _run(step, params, opt.init(params), 0, 3)
  assert state.nu["p0"].sharding.spec == P("data")  # saved as 8 shards

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  uninterrupted = _run(step, params, state, 3, 3)

  four = Mesh(devices[:4], ("data",))
  destinations = {
      "replicated_on_8": (eight, _layout(eight, lambda x: P())),
      "split_4_ways": (four, _layout(four, _split_first_axis)),
  }
  for name, (mesh, target) in destinations.items():
    abstract = target({"params": params, "opt_state": state})
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
      assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim), name
      assert leaf.sharding.device_set == set(mesh.devices.flat), name
    _assert_bitwise(restored, {"params": params, "opt_state": state})

    resumed = _run(step, restored["params"], restored["opt_state"], 3, 3)
    # Elementwise arithmetic does not depend on the layout, and stochastic rounding draws its
    # bits from global positions: the resumed run is the uninterrupted one, bit for bit.
    _assert_bitwise(resumed, uninterrupted)
    for leaf, want in zip(jax.tree.leaves(resumed[1].nu), jax.tree.leaves(abstract["opt_state"].nu)):
      assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim), name
