"""Every error the package raises, by its message: the argument, the value, the fix."""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
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


@pytest.mark.parametrize("build,fix", [
    (lambda lr: rmsprop(lr), "pass maximize=True"),
    (lambda lr: presets.pytorch(lr), "pass maximize=True"),
    (lambda lr: presets.keras(lr), "negate the objective"),  # Keras has no maximize
], ids=["rmsprop", "pytorch", "keras"])
def test_a_negative_learning_rate_is_pointed_to_a_way_to_climb(build, fix):
  with pytest.raises(ValueError, match=r"keep the step size positive and " + fix):
    build(-0.01)
  with pytest.raises(ValueError) as error:  # not for a rate that is not finite
    build(float("nan"))
  assert "climb" not in str(error.value)


def test_concrete_array_hyperparameters_are_checked_too():
  with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\)"):
    rmsprop(0.1, decay=jnp.asarray(2.0))


def test_nesterov_without_momentum_is_rejected():
  with pytest.raises(ValueError, match=r"nesterov=True needs a momentum, but got momentum=None.*pass momentum=0.9"):
    rmsprop(0.1, nesterov=True)


def test_caution_without_momentum_is_rejected():
  with pytest.raises(ValueError, match=r"^rmsprop: caution=True needs a momentum, but got momentum=None\..*Pass momentum=0\.9"):
    rmsprop(0.1, caution=True)


def _assert_steps_are_optax_zero_momentum_nesterov(update_fns, state):
  params, grads = jnp.array([0.2, 0.4, 0.6], jnp.float32), jnp.array([-0.5, 0.3, 0.24], jnp.float32)
  theirs = optax.rmsprop(0.1, momentum=0.0, nesterov=True)
  expected_state = theirs.init(params)
  for update in update_fns:
    updates, state = update(grads, state, params)
    expected, expected_state = theirs.update(grads, expected_state, params)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


@pytest.mark.parametrize("momentum", [0, 0.0])
def test_a_zero_momentum_with_nesterov_is_the_plain_step_as_in_optax(momentum):
  ours = rmsprop(0.1, momentum=momentum, nesterov=True)
  _assert_steps_are_optax_zero_momentum_nesterov([ours.update] * 3, ours.init(jnp.zeros(3)))


def test_tree_set_of_an_int_zero_momentum_with_nesterov_works_outside_jit():
  # inject_hyperparams keeps a Python int as it is, so outside jit the 0 reaches rmsprop as a
  # constant; inside jit it would be an array. Both must take the same step.
  ours = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, momentum=0.9, nesterov=True)
  state = optax.tree_utils.tree_set(ours.init(jnp.zeros(3)), momentum=0)
  _assert_steps_are_optax_zero_momentum_nesterov([ours.update, jax.jit(ours.update)], state)


def test_an_injected_zero_momentum_with_nesterov_is_accepted_as_it_may_rise():
  # An array is not static: inject_hyperparams may start momentum at 0 and raise it later.
  params, grads = jnp.array([0.2, 0.4, 0.6], jnp.float32), jnp.array([-0.5, 0.3, 0.24], jnp.float32)
  ours = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, momentum=0.0, nesterov=True)
  theirs = optax.rmsprop(0.1, momentum=0.0, nesterov=True)
  state, expected_state = ours.init(params), theirs.init(params)
  for momentum in (0.0, 0.0, 0.9, 0.9):
    state.hyperparams["momentum"] = jnp.asarray(momentum)
    theirs = optax.rmsprop(0.1, momentum=momentum, nesterov=True)
    updates, state = ours.update(grads, state, params)
    expected, expected_state = theirs.update(grads, expected_state, params)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


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


@pytest.mark.parametrize("name", ["nu_dtype", "momentum_dtype"])
def test_a_float64_state_without_x64_warns_as_jax_does_and_stores_float32(name):
  opt = rmsprop(0.1, momentum=0.9, centered=True, **{name: jnp.float64})
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = opt.init(jnp.ones(3, jnp.float32))
  # One warning, ours, naming the argument (not also JAX's, which names none).
  assert len(caught) == 1 and caught[0].category is UserWarning, [str(w.message) for w in caught]
  assert re.search(rf"`{name}`=float64 is not available while jax_enable_x64 is off.*pass {name}=jnp.float32",
                   str(caught[0].message))
  assert caught[0].filename == __file__  # points at the caller's init
  # Through Optax's wrappers and jax's tracing too, not at their code.
  for wrapped in (optax.chain(optax.clip(1.0), opt), optax.masked(opt, lambda p: True)):
    for init in (wrapped.init, jax.jit(wrapped.init)):
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init(jnp.ones(3, jnp.float32))
      assert [w.filename for w in caught] == [__file__]
  assert {"nu_dtype": state.nu, "momentum_dtype": state.trace}[name].dtype == jnp.float32
  with jax.enable_x64(True), warnings.catch_warnings():
    warnings.simplefilter("error")
    state = opt.init(jnp.ones(3, jnp.float32))
  assert {"nu_dtype": state.nu, "momentum_dtype": state.trace}[name].dtype == jnp.float64


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", jnp.float8_e4m3fn])
@pytest.mark.parametrize("name", ["nu_dtype", "momentum_dtype"])
def test_eight_bit_state_dtypes_are_rejected(name, dtype):
  # float8_e4m3fn turns a squared gradient above 448 into NaN; e5m2 keeps 2 mantissa bits.
  with pytest.raises(TypeError, match=rf"`{name}` must be a floating dtype of at least 16 bits, but got {name}=float8_e.*'bfloat16'"):
    rmsprop(0.1, momentum=0.9, **{name: dtype})


@pytest.mark.parametrize("zero", [0, 0.0, np.float32(0), np.float64(0)], ids=lambda z: type(z).__name__)
def test_a_python_or_numpy_zero_weight_decay_is_off_and_needs_no_params(zero):
  grads = jnp.array([-0.5, 0.3, 0.24], jnp.float32)
  ours, theirs = rmsprop(0.1, weight_decay=zero), optax.rmsprop(0.1)
  updates, _ = ours.update(grads, ours.init(jnp.zeros(3)))  # no params
  np.testing.assert_array_equal(updates, theirs.update(grads, theirs.init(jnp.zeros(3)))[0])
  # An array is not constant (an injected coefficient may rise later): it keeps the params.
  with pytest.raises(ValueError, match=r"weight_decay needs the current parameters"):
    rmsprop(0.1, weight_decay=jnp.float32(0)).update(grads, ours.init(jnp.zeros(3)))


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
        (lambda: presets.optax(0.1, momentum=1.5), r"presets.optax: `momentum` must be in \[0, 1\)"),
        (lambda: presets.timm_tf(weight_decay=-1), r"presets.timm_tf: `weight_decay` must be.*weight_decay=-1"),
    ],
)
def test_presets_name_arguments_in_their_frameworks_words(factory, pattern):
  with pytest.raises(ValueError, match=pattern):
    factory()


@pytest.mark.parametrize(
    "factory,pattern",
    [
        (lambda: rmsprop(0.1, decay=None), r"rmsprop: `decay` must be a number, a scalar array or a schedule.*got decay=None \(of type NoneType\)"),
        (lambda: rmsprop(0.1, eps="1e-8"), r"`eps` must be a number.*got eps='1e-8' \(of type str\)"),
        (lambda: rmsprop(True), r"`learning_rate` must be a number.*got learning_rate=True \(of type bool\)"),
        (lambda: rmsprop(0.1, momentum=[0.9]), r"`momentum` must be a number.*\(of type list\)"),
        (lambda: scale_by_rms(initial_scale=None), r"`initial_scale` must be a number or a scalar array, but got initial_scale=None"),
        (lambda: presets.keras(rho="0.9"), r"presets.keras: `rho` must be a number.*Pass a number such as 0.9"),
    ],
)
def test_hyperparameters_that_are_not_numbers_are_rejected_at_construction(factory, pattern):
  with pytest.raises(TypeError, match=pattern):
    factory()


@pytest.mark.parametrize("factory,name", [(rmsprop, "learning_rate"), (presets.pytorch, "lr"), (presets.optax, "learning_rate")])
def test_a_learning_rate_of_none_is_rejected_and_scale_by_rms_suggested(factory, name):
  # A None learning rate would otherwise give the bare preconditioner, a step uphill.
  with pytest.raises(TypeError, match=rf"`{name}` must be a number.*got {name}=None.*use rmsprop_optax.scale_by_rms"):
    factory(None)


def test_non_scalar_hyperparameters_and_schedules_are_rejected():
  with pytest.raises(ValueError, match=r"`learning_rate` must be a scalar, but got an array of shape \(3,\).*optax.masked"):
    rmsprop(jnp.array([0.1, 0.2, 0.3]))
  with pytest.raises(ValueError, match=r"`alpha` must be a scalar, but got an array of shape \(2,\)"):
    presets.pytorch(alpha=np.array([0.9, 0.99]))
  opt = presets.pytorch(lr=0.1, alpha=lambda count: jnp.full(3, 0.9))
  params = jnp.ones(3, jnp.float32)
  with pytest.raises(ValueError, match=r"presets.pytorch: the schedule given as `alpha` returned an array of shape \(3,\)"):
    opt.update(params, opt.init(params), params)


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


def test_update_rejects_a_weight_decay_mask_that_does_not_fit_the_params():
  params = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float32)}
  for mask in ({"a": True}, [True, False]):
    opt, state = _state(params, weight_decay=0.1, weight_decay_mask=mask)
    with pytest.raises(ValueError, match=r"`weight_decay_mask` must have the params' tree structure.*does not match"):
      opt.update(params, state, params)


@pytest.mark.parametrize("entry", [0.5, -1.0, "yes", jnp.asarray(1.0)], ids=["half", "negative", "string", "float-array"])
def test_update_rejects_weight_decay_mask_entries_that_are_not_booleans(entry):
  # A number would scale the decay, and a negative one would get past weight_decay >= 0.
  params = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float32)}
  opt, state = _state(params, weight_decay=0.1, weight_decay_mask={"a": entry, "b": True})
  for update in (opt.update, jax.jit(opt.update)):
    with pytest.raises(TypeError, match=re.escape("every entry of `weight_decay_mask` must be True or False (or a "
                                                  "boolean array), but the entry for the parameter at ['a'] is ")):
      update(params, state, params)


def test_update_rejects_a_boolean_array_mask_entry_of_another_shape_than_its_parameter():
  params = {"a": jnp.ones((2, 2), jnp.float32), "b": jnp.ones(3, jnp.float32)}
  fine = {"a": jnp.asarray([[True, False], [False, True]]), "b": jnp.asarray(False)}
  opt, state = _state(params, weight_decay=0.1, weight_decay_mask=fine)
  jax.jit(opt.update)(params, state, params)
  opt, state = _state(params, weight_decay=0.1, weight_decay_mask={"a": jnp.asarray([True, False]), "b": True})
  for update in (opt.update, jax.jit(opt.update)):
    with pytest.raises(ValueError, match=re.escape("a boolean array in `weight_decay_mask` must be a scalar or have its "
                                                  "parameter's shape, but the entry for the parameter at ['a'] has "
                                                  "shape (2,) where the parameter has shape (2, 2).")):
      update(params, state, params)


@pytest.mark.parametrize("as_array", [True, False], ids=["returns-array", "returns-python-bool"])
def test_a_callable_mask_under_inject_hyperparams_needs_static_args(as_array):
  params = {"w": jnp.ones((2, 2), jnp.float32), "b": jnp.ones(2, jnp.float32)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  flag = jnp.asarray if as_array else bool
  mask = lambda p: jax.tree.map(lambda x: flag(x.ndim > 1), p)  # noqa: E731
  # inject_hyperparams calls the mask with the step count: one value comes back (False: the
  # count has no dimensions), which would turn weight decay off for every leaf unnoticed.
  injected = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask,
                                               decoupled_weight_decay=True)
  with pytest.raises(TypeError, match=r"got the single value .* for params with 2 leaves.*static_args"):
    injected.update(zeros, injected.init(params), params)
  # The documented fix: the mask is then called with the params, and decays only `w`.
  fixed = optax.inject_hyperparams(rmsprop, static_args=("weight_decay_mask",))(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=mask, decoupled_weight_decay=True)
  updates, _ = fixed.update(zeros, fixed.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], np.zeros(2))


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(centered=True)])
def test_update_rejects_real_gradients_for_complex_params_and_the_reverse(kwargs):
  opt, state = _state({"z": jnp.ones(2, jnp.complex64)}, **kwargs)
  with pytest.raises(TypeError, match=re.escape("the gradient at ['z'] is real (float32), but the parameter given to init for that leaf was complex")):
    opt.update({"z": jnp.ones(2, jnp.float32)}, state)
  opt, state = _state({"x": jnp.ones(2, jnp.float32)}, **kwargs)
  with pytest.raises(TypeError, match=re.escape("the gradient at ['x'] is complex (complex64), but the parameter given to init for that leaf was real")):
    opt.update({"x": jnp.ones(2, jnp.complex64)}, state)


@pytest.mark.parametrize("params", [jnp.ones(2, jnp.float32), 1.0])
def test_a_complex_gradient_for_a_real_param_is_rejected_where_params_are_given(params):
  # Plain RMSProp keeps only the real average of squares, so the state cannot tell; the params can.
  opt = rmsprop(0.1)
  grads = jnp.ones(np.shape(params), jnp.complex64)
  with pytest.raises(TypeError, match=re.escape("the gradient at <root> is complex (complex64), but its parameter is real (float32)")):
    opt.update(grads, opt.init(params), params)
  with pytest.raises(TypeError, match=r"is complex \(complex64\), but its parameter is real"):
    jax.jit(opt.update)(grads, opt.init(params), params)


@pytest.mark.parametrize("kwargs", [{}, dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True)],
                         ids=["plain", "coupled-decay", "decoupled-decay"])
def test_a_real_gradient_for_a_complex_param_is_rejected_where_params_are_given(kwargs):
  # Without a complex buffer in the state, only the params tell; computed in the gradient's
  # real dtype, a decay saw only the parameter's real part.
  opt = rmsprop(0.1, **kwargs)
  params = jnp.asarray([1 + 1j, 2 - 2j], jnp.complex64)
  grads = jnp.asarray([0.5, -0.5], jnp.float32)
  with pytest.raises(TypeError, match=re.escape("the gradient at <root> is real (float32), but its parameter is complex (complex64)")):
    opt.update(grads, opt.init(params), params)
  with pytest.raises(TypeError, match=r"is real \(float32\), but its parameter is complex .* g\.astype\(p\.dtype\)\."):
    jax.jit(opt.update)(grads, opt.init(params), params)


def test_python_numbers_work_as_leaves_as_in_optax():
  params, grads = {"a": 1.5, "b": jnp.ones(2, jnp.float32)}, {"a": -0.5, "b": jnp.full(2, 0.25, jnp.float32)}
  ours, theirs = rmsprop(0.1, momentum=0.9), optax.rmsprop(0.1, momentum=0.9)
  state, expected_state = ours.init(params), theirs.init(params)
  for _ in range(3):
    updates, state = ours.update(grads, state, params)
    with helpers.standard_promotion():  # optax adds Python numbers and arrays freely
      expected, expected_state = theirs.update(grads, expected_state, params)
    for key in params:
      np.testing.assert_allclose(updates[key], expected[key], rtol=1e-6)
  assert updates["a"].dtype == jnp.float32


@pytest.mark.parametrize("decoupled", [False, True])
def test_python_number_leaves_work_with_weight_decay(decoupled):
  # Against one step of the equations, coupled (g + wd * p) or decoupled (- lr * wd * p).
  params, grads = {"a": 1.5, "b": jnp.ones(2, jnp.float32)}, {"a": -0.5, "b": jnp.full(2, 0.25, jnp.float32)}
  opt = rmsprop(0.1, weight_decay=0.2, decoupled_weight_decay=decoupled)
  updates, _ = opt.update(grads, opt.init(params), params)
  for key in params:
    p, g = np.asarray(params[key], np.float64), np.asarray(grads[key], np.float64)
    coupled_g = g if decoupled else g + 0.2 * p
    expected = -0.1 * coupled_g / np.sqrt(0.1 * coupled_g**2 + 1e-8) - (0.1 * 0.2 * p if decoupled else 0.0)
    np.testing.assert_allclose(updates[key], expected, rtol=1e-6)


def test_a_schedule_that_returns_none_is_rejected_not_followed_uphill():
  # Without the check, a learning-rate schedule missing its `return` gave the bare
  # preconditioner: steps of +g / sqrt(v), up the loss, with no error.
  def forgot_return(count):
    _ = jnp.float32(0.1) * count.astype(jnp.float32)  # computed, but never returned

  params = jnp.ones(3, jnp.float32)
  for opt, name in [(rmsprop(forgot_return), "learning_rate"), (rmsprop(0.1, decay=forgot_return), "decay"),
                    (presets.pytorch(lr=forgot_return), "lr")]:
    with pytest.raises(TypeError, match=rf"the schedule given as `{name}` returned None.*ends with a `return`"):
      opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("name", ["learning_rate", "decay", "eps", "momentum", "weight_decay"])
def test_a_schedule_that_takes_no_step_count_is_refused_when_built(name):
  # Called with the count at the first update, it would fail there with Python's bare
  # "takes 0 positional arguments"; presets.keras alone takes such a callable, as Keras does.
  kwargs = {"learning_rate": 0.1, name: lambda: 0.5}
  with pytest.raises(TypeError, match=rf"`{name}` is a callable that takes no argument, but a schedule is called with the step count.*lambda count:"):
    rmsprop(**kwargs)
  with pytest.raises(TypeError, match=r"presets.pytorch: `lr` is a callable that takes no argument"):
    presets.pytorch(lr=lambda: 0.1)
  rmsprop(**{"learning_rate": 0.1, name: lambda count, *rest: 0.5})  # a schedule with extras


@pytest.mark.parametrize(
    "make,flag,none_allowed",
    [(presets.pytorch, "foreach", True), (presets.pytorch, "capturable", False),
     (presets.pytorch, "differentiable", False), (lambda **kw: presets.tf1(0.1, **kw), "use_locking", False)],
)
def test_a_frameworks_inert_flag_says_it_changes_nothing(make, flag, none_allowed):
  allowed = "True, False or None" if none_allowed else "True or False"
  with pytest.raises(TypeError, match=rf"`{flag}` must be {allowed}, but got {flag}='yes'.*which changes nothing here"):
    make(**{flag: "yes"})
  make(**{flag: True})
  if none_allowed:
    make(**{flag: None})


@pytest.mark.parametrize("flag", ["centered", "nesterov", "bias_correction", "maximize", "eps_in_sqrt", "caution"])
def test_structural_options_must_be_booleans(flag):
  with pytest.raises(TypeError, match=rf"`{flag}` must be True or False, but got {flag}='yes'"):
    rmsprop(0.1, momentum=0.9, **{flag: "yes"})
  with pytest.raises(TypeError, match=r"`centered` must be True or False, but got centered=1 \(of type int\)"):
    presets.pytorch(centered=1)


@pytest.mark.parametrize(
    "made_by,used_with,missing",
    [
        (dict(), dict(momentum=0.9), "needs a momentum buffer (`trace`), which the state lacks"),
        (dict(), dict(centered=True), "needs an average of gradients (`mu`), which the state lacks"),
        (dict(), dict(bias_correction=True), "needs a step count (`count`), which the state lacks"),
        (dict(momentum=0.9), dict(), "the state holds a momentum buffer (`trace`)"),
        (dict(centered=True), dict(), "the state holds an average of gradients (`mu`)"),
        (dict(bias_correction=True), dict(bias_correction=True, decay=helpers.constant_schedule(0.9)),
         "needs the log of the decays' product (`log_decay_product`), which the state lacks. Call init "
         "of this optimizer for a fresh state, or build the optimizer with the options of the one that "
         "made the state. For a state restored from a checkpoint that predates the field, set it to the "
         "sum of the logs of the decays applied so far: state._replace(log_decay_product="),
        (dict(bias_correction=True, decay=helpers.constant_schedule(0.9)), dict(decay=helpers.constant_schedule(0.9)),
         "the state holds the log of the decays' product (`log_decay_product`), which this optimizer, "
         "not configured with bias_correction and a decay that may change (a schedule, or a JAX array "
         "such as optax.inject_hyperparams passes), does not keep"),
    ],
)
def test_a_state_from_another_configuration_is_named_not_misread(made_by, used_with, missing):
  # A checkpoint of a run with other options used to fail deep inside the update, or to drop
  # a buffer without a word.
  params = {"w": jnp.ones(3, jnp.float32)}
  state = rmsprop(0.1, **made_by).init(params)
  with pytest.raises(ValueError, match=r"rmsprop.update: the state was made by a differently configured optimizer: .*" + re.escape(missing)):
    rmsprop(0.1, **used_with).update(params, state, params)


@pytest.mark.parametrize("field,value,error,message", [
    ("trace", {"w": jnp.ones(4, jnp.float32), "b": jnp.ones(2, jnp.float32)}, ValueError,
     "the state's `trace` at ['w'] has shape (4,), but its `nu` there has shape (3,)"),
    ("mu", {"w": jnp.ones(3, jnp.float32)}, ValueError,
     "the state's `mu` does not have the tree structure of its `nu`"),
    ("trace", [jnp.ones(3, jnp.float32), jnp.ones(2, jnp.float32)], ValueError,
     "the state's `trace` does not have the tree structure of its `nu`"),
    ("nu", {"w": jnp.ones(3, jnp.int32), "b": jnp.ones(2, jnp.float32)}, TypeError,
     "the state's `nu` at ['w'] is int32, but the optimizer's buffers are floating"),
])
def test_a_state_whose_buffers_disagree_is_named_not_misread(field, value, error, message):
  # A buffer changed by hand, or a state put together from several, used to fail inside
  # the update with JAX's own message (incompatible shapes, dict key mismatch).
  params = {"w": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}
  opt = rmsprop(0.1, momentum=0.9, centered=True)
  state = opt.init(params)._replace(**{field: value})
  for update in (opt.update, jax.jit(opt.update)):
    with pytest.raises(error, match=re.escape(f"rmsprop.update: {message}") + ".*Call init for a fresh state"):
      update(params, state, params)


def test_a_state_of_another_type_is_rejected_with_the_fix():
  params = {"w": jnp.ones(3, jnp.float32)}
  opt = rmsprop(0.1)
  for wrong in [(opt.init(params),), opt.init(params)._asdict()]:
    with pytest.raises(TypeError, match=r"the state must be the RMSPropState returned by this optimizer's init, but got one of type (tuple|dict)"):
      opt.update(params, wrong, params)


def test_a_decay_rounded_to_one_by_a_half_precision_injection_names_the_fix():
  params = jnp.ones(3, jnp.bfloat16)
  opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.1, decay=0.999)  # bfloat16(0.999) == 1
  with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\).*arrived as a bfloat16 array.*hyperparam_dtype=jnp.float32"):
    opt.update(params, opt.init(params), params)
  fixed = optax.inject_hyperparams(rmsprop, hyperparam_dtype=jnp.float32)(learning_rate=0.1, decay=0.999)
  fixed.update(params, fixed.init(params), params)


def test_a_complex_hyperparameter_must_be_real():
  with pytest.raises(ValueError, match=r"`decay` must be real, but got decay=.*nonzero imaginary part"):
    rmsprop(0.1, decay=np.complex64(0.9 + 0.1j))


def test_numpy_float64_inputs_without_x64_convert_silently_as_jnp_asarray_does():
  params, grads = {"w": np.ones(3)}, {"w": np.full(3, 0.1)}
  opt = rmsprop(0.1, momentum=0.9, weight_decay=0.1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    updates, state = opt.update(grads, opt.init(params), params)
  assert updates["w"].dtype == jnp.float32 and state.trace["w"].dtype == jnp.float32


def test_pytorch_preset_names_complex_leaves_in_the_callers_terms():
  # The preset keeps a complex leaf as (..., 2) reals, as PyTorch does; errors must not leak that view.
  params = {"w": jnp.ones(3, jnp.complex64)}
  opt = presets.pytorch(momentum=0.9)
  state = opt.init(params)
  with pytest.raises(TypeError, match=re.escape("presets.pytorch.update: the gradient at ['w'] is real with shape (3,), but the state for that leaf was made for a complex parameter of shape (3,)")):
    opt.update({"w": jnp.ones(3, jnp.float32)}, state, params)
  with pytest.raises(ValueError, match=re.escape("presets.pytorch.update: the gradient at ['w'] is complex with shape (4,), but the state for that leaf has shape (3, 2)")):
    opt.update({"w": jnp.ones(4, jnp.complex64)}, state, params)


def test_init_rejects_leaves_that_are_neither_arrays_nor_numbers_by_path():
  with pytest.raises(TypeError, match=re.escape("rmsprop.init: the parameter at ['name'] is a str ('dense'), but every leaf of the params must be an array or a number")):
    rmsprop(0.1).init({"name": "dense", "w": jnp.ones(2, jnp.float32)})
