"""Every error the package raises, by its message: the argument, the value, the fix."""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rmsprop_optax import presets, rmsprop, scale_by_rms


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan")])
def test_decay_outside_unit_interval_is_rejected(value):
  with pytest.raises(ValueError, match=r"rmsprop: `decay` must be in \[0, 1\).*got decay=" + re.escape(repr(value))):
    rmsprop(0.1, decay=value)


@pytest.mark.parametrize("value", [1.0, -0.5])
def test_momentum_outside_unit_interval_is_rejected(value):
  with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\).*got momentum=" + re.escape(repr(value))):
    rmsprop(0.1, momentum=value)


@pytest.mark.parametrize("value", [-1e-8, float("nan"), float("inf")])
def test_negative_or_non_finite_eps_is_rejected(value):
  with pytest.raises(ValueError, match=r"`eps` must be a finite number >= 0.*got eps=" + re.escape(repr(value))):
    rmsprop(0.1, eps=value)


@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf"), float("-inf")])
def test_negative_or_non_finite_learning_rate_is_rejected(value):
  with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number >= 0.*got learning_rate="):
    rmsprop(value)


def test_concrete_array_hyperparameters_are_checked_too():
  with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\)"):
    rmsprop(0.1, decay=jnp.asarray(2.0))


def test_nesterov_without_momentum_is_rejected():
  with pytest.raises(ValueError, match=r"nesterov=True needs a momentum, but got momentum=None.*pass momentum=0.9"):
    rmsprop(0.1, nesterov=True)
  with pytest.raises(ValueError, match=r"nesterov=True needs a momentum, but got momentum=0.0"):
    rmsprop(0.1, momentum=0.0, nesterov=True)


def test_negative_weight_decay_and_initial_scale_are_rejected():
  with pytest.raises(ValueError, match=r"`weight_decay` must be a finite number >= 0.*got weight_decay=-0.1"):
    rmsprop(0.1, weight_decay=-0.1)
  with pytest.raises(ValueError, match=r"`initial_scale` must be a finite number >= 0.*got initial_scale=-1.0"):
    scale_by_rms(initial_scale=-1.0)


def test_non_floating_state_dtypes_are_rejected():
  with pytest.raises(TypeError, match=r"`nu_dtype` must be None or a real floating dtype.*got nu_dtype=int32"):
    rmsprop(0.1, nu_dtype=jnp.int32)
  with pytest.raises(TypeError, match=r"`momentum_dtype` must be None or a real floating dtype.*complex64"):
    rmsprop(0.1, momentum=0.9, momentum_dtype=jnp.complex64)
  with pytest.raises(TypeError, match=r"`nu_dtype` must be None or a floating dtype.*not a dtype"):
    scale_by_rms(nu_dtype="half-precision-please")


def test_dtype_arrays_from_inject_hyperparams_get_a_clear_error():
  with pytest.raises(TypeError, match=r"`nu_dtype` must be None or a floating dtype, but got an array.*nu_dtype='bfloat16'"):
    optax.inject_hyperparams(rmsprop)(learning_rate=0.1, nu_dtype=jnp.bfloat16).init(jnp.ones(3, jnp.float32))
  # The suggested fix works.
  state = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, nu_dtype="bfloat16").init(jnp.ones(3, jnp.float32))
  assert state.inner_state.nu.dtype == jnp.bfloat16


def test_seed_must_be_an_int():
  with pytest.raises(TypeError, match=r"`seed` must be an int \(or an integer scalar array\), but got seed=1.5"):
    rmsprop(0.1, stochastic_rounding=True, seed=1.5)


@pytest.mark.parametrize(
    "factory,pattern",
    [
        (lambda: presets.pytorch(alpha=1.2), r"presets.pytorch: `alpha` must be in \[0, 1\).*alpha=1.2"),
        (lambda: presets.pytorch(lr=-1.0), r"presets.pytorch: `lr` must be a finite number >= 0.*lr=-1.0"),
        (lambda: presets.keras(epsilon=-1e-7), r"presets.keras: `epsilon` must be.*epsilon=-1e-07"),
        (lambda: presets.keras(rho=1.0), r"presets.keras: `rho` must be in \[0, 1\)"),
        (lambda: presets.tf1(0.1, momentum=1.1), r"presets.tf1: `momentum` must be in \[0, 1\)"),
        (lambda: presets.optax(0.1, nesterov=True), r"presets.optax: nesterov=True needs a momentum"),
        (lambda: presets.timm_tf(weight_decay=-1), r"presets.timm_tf: `weight_decay` must be.*weight_decay=-1"),
    ],
)
def test_presets_name_arguments_in_their_frameworks_words(factory, pattern):
  with pytest.raises(ValueError, match=pattern):
    factory()


def test_traced_hyperparameters_are_not_inspected():
  # Inside jit the values are tracers: validation must let them through.
  @jax.jit
  def step(lr, decay, eps, momentum, wd):
    opt = rmsprop(lr, decay, eps, momentum=momentum, weight_decay=wd)
    params = jnp.ones(3, jnp.float32)
    updates, _ = opt.update(jnp.ones(3, jnp.float32), opt.init(params), params)
    return updates

  assert np.all(np.isfinite(step(0.1, 0.9, 1e-8, 0.9, 0.01)))


# --- init -----------------------------------------------------------------------------------


class Layer(NamedTuple):
  kernel: jax.Array
  steps: jax.Array


@pytest.mark.parametrize("bad,dtype", [(jnp.arange(3), "int32"), (jnp.array([True, False]), "bool")])
def test_init_rejects_non_floating_leaves_by_path(bad, dtype):
  params = {"dense": Layer(kernel=jnp.ones((2, 2), jnp.float32), steps=bad)}
  with pytest.raises(TypeError, match=re.escape("rmsprop.init: the parameter at ['dense'].steps has dtype " + dtype)):
    rmsprop(0.1).init(params)


# --- update ---------------------------------------------------------------------------------


def _state(params, **kwargs):
  opt = rmsprop(0.1, **kwargs)
  return opt, opt.init(params)


def test_update_rejects_a_different_tree_structure():
  opt, state = _state({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float32)})
  with pytest.raises(ValueError, match=r"gradients' tree structure does not match the optimizer state's"):
    opt.update({"a": jnp.ones(2, jnp.float32)}, state)


def test_update_rejects_a_different_shape_by_leaf_path():
  opt, state = _state({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float32)})
  with pytest.raises(ValueError, match=re.escape("the gradient at ['b'] has shape (4,), but the optimizer state for that leaf has shape (3,)")):
    opt.update({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(4, jnp.float32)}, state)


@pytest.mark.parametrize("grad,dtype", [(jnp.ones(3, jnp.int32), "int32"), (jnp.ones(3, jnp.bool_), "bool")])
def test_update_rejects_integer_and_boolean_gradients_by_leaf_path(grad, dtype):
  opt, state = _state({"w": [jnp.ones(3, jnp.float32)]})
  with pytest.raises(TypeError, match=re.escape(f"the gradient at ['w'][0] has dtype {dtype}")):
    opt.update({"w": [grad]}, state)


def test_update_without_params_when_weight_decay_needs_them():
  opt, state = _state(jnp.ones(3, jnp.float32), weight_decay=0.01)
  with pytest.raises(ValueError, match=r"weight_decay needs the current parameters, but params=None was passed.*update\(grads, state, params\)"):
    opt.update(jnp.ones(3, jnp.float32), state)


def test_update_rejects_params_of_another_shape():
  opt, state = _state({"w": jnp.ones(3, jnp.float32)}, weight_decay=0.01)
  with pytest.raises(ValueError, match=re.escape("the parameter at ['w'] has shape (2,), but its gradient has shape (3,)")):
    opt.update({"w": jnp.ones(3, jnp.float32)}, state, {"w": jnp.ones(2, jnp.float32)})


def test_plain_rmsprop_needs_no_params():
  opt, state = _state(jnp.ones(3, jnp.float32), momentum=0.9, centered=True)
  updates, _ = opt.update(jnp.ones(3, jnp.float32), state)
  assert updates.shape == (3,)


def test_errors_surface_under_jit_at_trace_time():
  opt, state = _state({"a": jnp.ones(2, jnp.float32)})
  with pytest.raises(ValueError, match=re.escape("the gradient at ['a'] has shape (5,)")):
    jax.jit(opt.update)({"a": jnp.ones(5, jnp.float32)}, state)


def test_works_inside_optax_chain_error_paths():
  opt = optax.chain(optax.clip_by_global_norm(1.0), rmsprop(0.1))
  state = opt.init({"a": jnp.ones(2, jnp.float32)})
  with pytest.raises(ValueError, match=r"rmsprop.update: the gradients' tree structure"):
    opt.update({"a": jnp.ones(2, jnp.float32), "b": jnp.ones(1, jnp.float32)}, state)
