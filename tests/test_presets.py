"""Each preset against the real framework (PyTorch, Keras 3 on JAX, Optax, timm) or a transcription.

Random least-squares problems, 100 steps, a learning rate that changes at every step, float32
throughout; agreement within 1e-5 of the parameters' scale.
"""

from __future__ import annotations

import inspect
import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax as optax_lib
import pytest
import torch

import helpers
from rmsprop_optax import RMSPropState, presets

STEPS = 100
SHAPES = ((4, 3), (6,))


def _schedule(lrs):
  table = jnp.asarray(lrs)
  return lambda count: table[count]


# --- PyTorch --------------------------------------------------------------------------------


def _torch_run(problem, lrs, **kwargs):
  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in problem.params()]
  opt = torch.optim.RMSprop(params, lr=float(lrs[0]), foreach=False, **kwargs)
  for t in range(STEPS):
    grads = problem.grads([p.detach().numpy() for p in params], t)
    for p, g in zip(params, grads):
      p.grad = torch.from_numpy(g)
    for group in opt.param_groups:
      group["lr"] = float(lrs[t])
    opt.step()
  return [p.detach().numpy() for p in params]


TORCH_CASES = list(itertools.product([False, True], [0, 0.9], [0, 0.05], [False, True]))


@pytest.mark.parametrize(
    "centered,momentum,weight_decay,maximize", TORCH_CASES,
    ids=[f"centered={c}-momentum={m}-wd={w}-maximize={x}" for c, m, w, x in TORCH_CASES],
)
def test_pytorch_preset_matches_torch_optim_rmsprop(centered, momentum, weight_decay, maximize):
  problem = helpers.Quadratic(SHAPES, seed=TORCH_CASES.index((centered, momentum, weight_decay, maximize)),
                              steps=STEPS, negate=maximize)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=2)
  kwargs = dict(alpha=0.99, eps=1e-8, weight_decay=weight_decay, momentum=momentum,
                centered=centered, maximize=maximize)
  expected = _torch_run(problem, lrs, **kwargs)
  ours = helpers.run_optax(presets.pytorch(_schedule(lrs), **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


def test_pytorch_preset_treats_complex_parts_as_independent_reals_like_torch():
  problem = helpers.Quadratic(((3,), (2, 2)), seed=21, steps=STEPS, complex_leaves=(0,))
  lrs = helpers.lr_table(STEPS, base=0.01, seed=3)
  kwargs = dict(alpha=0.9, eps=1e-8, momentum=0.5, centered=True)
  expected = _torch_run(problem, lrs, **kwargs)
  ours = helpers.run_optax(presets.pytorch(_schedule(lrs), **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


def test_pytorch_preset_defaults_are_torch_defaults():
  problem = helpers.Quadratic(SHAPES, seed=22, steps=STEPS)
  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in problem.params()]
  opt = torch.optim.RMSprop(params)  # lr 1e-2, alpha 0.99, eps 1e-8
  for t in range(STEPS):
    for p, g in zip(params, problem.grads([p.detach().numpy() for p in params], t)):
      p.grad = torch.from_numpy(g)
    opt.step()
  ours = helpers.run_optax(presets.pytorch(), problem, STEPS)
  helpers.assert_close_to_scale(ours, [p.detach().numpy() for p in params])


# --- Keras 3 (JAX backend) ------------------------------------------------------------------


def _keras_run(problem, lrs, learning_rate=None, **kwargs):
  """Keras's RMSprop on `problem`, with the table `lrs` as its schedule or, if given,
  `learning_rate` as Keras takes it."""
  import keras

  class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, table):
      self.table = keras.ops.convert_to_tensor(table)

    def __call__(self, step):
      return keras.ops.take(self.table, keras.ops.cast(step, "int32"))

  with helpers.standard_promotion():
    variables = [keras.Variable(p.copy(), dtype="float32") for p in problem.params()]
    opt = keras.optimizers.RMSprop(learning_rate=learning_rate or TableSchedule(lrs), **kwargs)
    for t in range(STEPS):
      grads = problem.grads([np.asarray(v.numpy()) for v in variables], t)
      opt.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], variables))
    return [np.asarray(v.numpy()) for v in variables]


KERAS_CASES = list(itertools.product([False, True], [0.0, 0.9], [None, 0.05]))


@pytest.mark.parametrize(
    "centered,momentum,weight_decay", KERAS_CASES,
    ids=[f"centered={c}-momentum={m}-wd={w}" for c, m, w in KERAS_CASES],
)
def test_keras_preset_matches_keras_optimizers_rmsprop(centered, momentum, weight_decay):
  problem = helpers.Quadratic(SHAPES, seed=40 + KERAS_CASES.index((centered, momentum, weight_decay)), steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=5)
  kwargs = dict(rho=0.9, momentum=momentum, epsilon=1e-7, centered=centered, weight_decay=weight_decay)
  expected = _keras_run(problem, lrs, **kwargs)
  ours = helpers.run_optax(presets.keras(_schedule(lrs), **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


@pytest.mark.parametrize(
    "learning_rate", [lambda: 0.002, lambda step=0: 0.002 * 0.5**step], ids=["no_argument", "a_default"]
)
def test_keras_preset_takes_a_learning_rate_of_no_argument_as_keras_does(learning_rate):
  # Keras calls a callable learning rate with no argument (and a LearningRateSchedule with
  # the step), one whose argument has a default too; the preset does the same.
  problem = helpers.Quadratic(SHAPES, seed=41, steps=STEPS)
  expected = _keras_run(problem, None, learning_rate=learning_rate, rho=0.9, momentum=0.5)
  ours = helpers.run_optax(presets.keras(learning_rate=learning_rate, rho=0.9, momentum=0.5), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


KERAS_CLIPPING = [dict(clipnorm=3.0), dict(global_clipnorm=5.0), dict(clipvalue=2.0)]


@pytest.mark.parametrize("clipping", KERAS_CLIPPING, ids=lambda c: next(iter(c)))
@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.9)], ids=["plain", "centered-momentum"])
def test_keras_preset_clips_gradients_as_keras_does(clipping, centered, momentum):
  # Thresholds below the problem's gradients (norms about 3 and 10, coordinates up to 8), so
  # that clipping changes the run: ours must follow Keras's clipped run, not its unclipped one.
  problem = helpers.Quadratic(SHAPES, seed=42, steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=6)
  kwargs = dict(rho=0.9, momentum=momentum, epsilon=1e-7, centered=centered, weight_decay=0.05)
  expected = _keras_run(problem, lrs, **kwargs, **clipping)
  unclipped = _keras_run(problem, lrs, **kwargs)
  ours = helpers.run_optax(presets.keras(_schedule(lrs), **kwargs, **clipping), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)
  scale = max(np.abs(e).max() for e in expected)
  assert max(np.abs(e - u).max() for e, u in zip(expected, unclipped)) > 100 * 1e-5 * scale


def test_keras_preset_refuses_two_clippings_as_keras_does():
  import keras

  with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
    keras.optimizers.RMSprop(clipnorm=1.0, clipvalue=1.0)
  with pytest.raises(ValueError, match=r"only one of `clipnorm`, `clipvalue` and `global_clipnorm` may be set.*clipnorm=1.0, clipvalue=1.0"):
    presets.keras(clipnorm=1.0, clipvalue=1.0)
  with pytest.raises(ValueError, match=r"`global_clipnorm` must be a finite number >= 0.*got global_clipnorm=-1.0"):
    presets.keras(global_clipnorm=-1.0)


@pytest.mark.parametrize("name", ["clipnorm", "global_clipnorm", "clipvalue"])
def test_keras_preset_clipping_injected_as_an_array_may_change_and_0_turns_it_off(name):
  problem = helpers.Quadratic(SHAPES, seed=43, steps=5)
  params = [jnp.asarray(p) for p in problem.params()]
  grads = [jnp.asarray(g) for g in problem.grads(problem.params(), 0)]
  injected = optax_lib.inject_hyperparams(presets.keras)(learning_rate=0.01, **{name: 2.0})
  state = injected.init(params)
  expected_state = presets.keras(0.01).init(params)
  step = jax.jit(injected.update)
  for value in (2.0, 0.0, 1.0):
    state.hyperparams[name] = jnp.asarray(value, jnp.float32)
    updates, state = step(grads, state, params)
    # Clipping keeps no state: the preset built with this step's value carries the run on.
    _, unclipped = presets.keras(0.01).update(grads, expected_state, params)
    expected, expected_state = presets.keras(0.01, **{name: value}).update(grads, expected_state, params)
    for u, e in zip(updates, expected):
      np.testing.assert_allclose(u, e, rtol=1e-6)
    # The thresholds are below the gradients (coordinates up to about 8), so clipping shows
    # in the average of squares (a first step hides it: g / sqrt(0.1 g**2) ignores g's scale).
    changed = any(not np.allclose(e, n, rtol=1e-3) for e, n in zip(expected_state.nu, unclipped.nu))
    assert changed == (value > 0), (value, changed)


def test_keras_preset_clipping_leaves_bad_gradients_to_the_updates_own_errors():
  opt = presets.keras(clipnorm=1.0)
  params = {"w": jnp.ones(2, jnp.float32), "b": 1.5}  # a Python float leaf is fine
  updates, _ = opt.update({"w": jnp.full(2, 3.0, jnp.float32), "b": 4.0}, opt.init(params), params)
  assert np.isfinite(np.asarray(updates["b"])) and updates["w"].shape == (2,)
  with pytest.raises(TypeError, match=re.escape("the gradient at ['w'] has dtype int32")):
    opt.update({"w": jnp.ones(2, jnp.int32), "b": 1.0}, opt.init(params), params)


@pytest.mark.parametrize("clipping", KERAS_CLIPPING, ids=lambda c: next(iter(c)))
def test_keras_preset_clipping_passes_a_tree_with_nothing_to_clip(clipping):
  # optax.masked with every leaf masked out hands the preset a tree of MaskedNodes: no leaves.
  params = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(3, jnp.float32)}
  opt = optax_lib.masked(presets.keras(0.01, **clipping), {"a": False, "b": False})
  updates, _ = opt.update(params, opt.init(params), params)
  chex.assert_trees_all_equal(updates, params)


def test_keras_preset_clipvalue_names_a_complex_gradient():
  opt = presets.keras(clipvalue=1.0)
  params = {"z": jnp.ones(2, jnp.complex64)}
  with pytest.raises(TypeError, match=re.escape("the gradient at ['z'] is complex, which has no order")):
    opt.update(params, opt.init(params), params)


KERAS_ACCUMULATION = [
    dict(),
    dict(centered=True, momentum=0.9, weight_decay=0.05, clipnorm=3.0),
    dict(momentum=0.5, loss_scale_factor=64.0, global_clipnorm=1.0),
]


@pytest.mark.parametrize("kwargs", KERAS_ACCUMULATION, ids=["plain", "centered-momentum-wd-clipnorm", "loss-scale-global-clipnorm"])
def test_keras_preset_accumulates_gradients_as_keras_does(kwargs):
  # Four micro-batches a step: 25 steps over 100 gradients, with Keras's learning rate read
  # at its count of gradients, not of steps. optax.MultiSteps around the preset without that
  # reading (the learning rate of step k taken at k) must be far off, so the test tells.
  problem = helpers.Quadratic(SHAPES, seed=44 + KERAS_ACCUMULATION.index(kwargs), steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=7)
  expected = _keras_run(problem, lrs, gradient_accumulation_steps=4, **kwargs)
  ours = helpers.run_optax(presets.keras(_schedule(lrs), gradient_accumulation_steps=4, **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)
  naive = optax_lib.MultiSteps(presets.keras(_schedule(lrs), **kwargs), every_k_schedule=4)
  with helpers.standard_promotion():  # MultiSteps's running mean divides by its int32 count
    misread = helpers.run_optax(naive.gradient_transformation(), problem, STEPS)
  scale = max(np.abs(e).max() for e in expected)
  assert max(np.abs(e - m).max() for e, m in zip(expected, misread)) > 100 * 1e-5 * scale


def test_keras_preset_accumulation_under_inject_hyperparams_matches_keras():
  # inject_hyperparams counts every call, micro-batches included, as Keras does: the
  # schedule it evaluates is read where Keras reads it, and the steps arrive as an array.
  problem = helpers.Quadratic(SHAPES, seed=47, steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=8)
  expected = _keras_run(problem, lrs, gradient_accumulation_steps=3, momentum=0.9)
  injected = optax_lib.inject_hyperparams(presets.keras)(
      learning_rate=_schedule(lrs), momentum=0.9, gradient_accumulation_steps=3)
  helpers.assert_close_to_scale(helpers.run_optax(injected, problem, STEPS), expected)


def test_keras_preset_unscales_gradients_by_the_loss_scale_factor_as_keras_does():
  # The clipping threshold sits below the unscaled gradients' norms and far below the
  # scaled ones', and eps is large enough that the gradients' scale shows in every step: a
  # preset that ignored the factor would follow Keras's unscaled run instead.
  problem = helpers.Quadratic(SHAPES, seed=48, steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=9)
  kwargs = dict(epsilon=0.1, clipnorm=1.0, momentum=0.5)
  expected = _keras_run(problem, lrs, loss_scale_factor=0.25, **kwargs)
  unscaled = _keras_run(problem, lrs, **kwargs)
  ours = helpers.run_optax(presets.keras(_schedule(lrs), loss_scale_factor=0.25, **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)
  scale = max(np.abs(e).max() for e in expected)
  assert max(np.abs(e - u).max() for e, u in zip(expected, unscaled)) > 100 * 1e-5 * scale


def test_keras_preset_takes_a_keras_call_with_every_argument_in_keras_order():
  import keras

  ours = list(inspect.signature(presets.keras).parameters)
  theirs = [n for n in inspect.signature(keras.optimizers.RMSprop).parameters if n != "kwargs"]
  assert ours == theirs
  # EMA settings and the name, read by Keras only for what an Optax update cannot do, are
  # taken and change nothing.
  params = {"w": jnp.arange(3.0)}
  grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
  plain = presets.keras(0.01)
  labelled = presets.keras(0.01, ema_momentum=0.9, ema_overwrite_frequency=5, name="opt")
  chex.assert_trees_all_equal(
      labelled.update(grads, labelled.init(params), params), plain.update(grads, plain.init(params), params))


def test_keras_preset_refuses_what_it_cannot_do_and_keras_refuses():
  import keras

  with pytest.raises(ValueError, match="must be an integer >= 2"):
    keras.optimizers.RMSprop(gradient_accumulation_steps=1)
  with pytest.raises(ValueError, match=r"`gradient_accumulation_steps` must be at least 2, as in Keras, but got gradient_accumulation_steps=1\."):
    presets.keras(gradient_accumulation_steps=1)
  with pytest.raises(TypeError, match=r"`gradient_accumulation_steps` must be an int.*got gradient_accumulation_steps=2.5\. Pass an integer such as 4"):
    presets.keras(gradient_accumulation_steps=2.5)
  with pytest.raises(ValueError, match=r"`use_ema=True` makes Keras keep a moving average.*optax.incremental_update"):
    presets.keras(use_ema=True)
  with pytest.raises(ValueError, match=r"`loss_scale_factor` must be a finite number > 0.*got loss_scale_factor=0\.0"):
    presets.keras(loss_scale_factor=0.0)
  opt = presets.keras(gradient_accumulation_steps=2)
  with pytest.raises(TypeError, match=re.escape("the param at ['z'] is complex")):
    opt.init({"w": jnp.ones(2), "z": jnp.ones(2, jnp.complex64)})
  params = {"w": jnp.ones(2)}
  with pytest.raises(TypeError, match="the state is the optax.MultiStepsState this optimizer's init returns, but got one of type RMSPropState"):
    opt.update(params, presets.keras().init(params), params)
  # The sum of integer gradients is not divided into floats behind the update's check.
  with pytest.raises(TypeError, match=re.escape("the gradient at ['w'] has dtype int32")):
    opt.update({"w": jnp.ones(2, jnp.int32)}, opt.init(params), params)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_keras_preset_accumulates_in_at_least_float32_and_in_float64_for_float64_params(dtype):
  with jax.enable_x64(dtype == "float64"):
    params = {"w": jnp.ones(3, dtype), "b": jnp.ones((), jnp.float32)}
    opt = presets.keras(0.01, gradient_accumulation_steps=2)
    state = opt.init(params)
    expected = jnp.float64 if dtype == "float64" else jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(state.acc_grads)} == {jnp.dtype(expected)}
    # A float64 gradient below float32's resolution next to 1 survives the mean.
    g = {"w": jnp.full(3, 1 + 2.0**-40, dtype), "b": jnp.ones((), jnp.float32)}
    _, state = opt.update(g, state, params)
    if dtype == "float64":
      np.testing.assert_array_equal(np.asarray(state.acc_grads["w"]), np.full(3, 1 + 2.0**-40))


# --- Optax ----------------------------------------------------------------------------------

OPTAX_CASES = [
    dict(centered=c, momentum=m, nesterov=n, eps_in_sqrt=e, bias_correction=b, initial_scale=s)
    for c, (m, n), e, b, s in itertools.product(
        [False, True], [(None, False), (0.9, False), (0.9, True)], [True, False], [False, True], [0.0, 0.5]
    )
]


@pytest.mark.parametrize("kwargs", OPTAX_CASES, ids=["-".join(f"{k}={v}" for k, v in c.items()) for c in OPTAX_CASES])
def test_optax_preset_matches_optax_rmsprop(kwargs):
  problem = helpers.Quadratic(SHAPES, seed=60 + OPTAX_CASES.index(kwargs), steps=STEPS,
                              zero_first_step=kwargs["centered"] and kwargs["bias_correction"])
  lrs = helpers.lr_table(STEPS, base=0.01, seed=6)
  with helpers.standard_promotion():  # optax's bias correction mixes a float and the int32 count
    expected = helpers.run_optax(optax_lib.rmsprop(_schedule(lrs), decay=0.9, eps=1e-6, **kwargs), problem, STEPS)
  ours = helpers.run_optax(presets.optax(_schedule(lrs), decay=0.9, eps=1e-6, **kwargs), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


@pytest.mark.parametrize("centered", [False, True])
def test_optax_preset_with_an_injected_constant_decay_matches_optax_under_bias_correction(centered):
  # Injected, the decay is an array and our state sums the logs of the decays, where Optax
  # takes the current decay to the power of the count: while it stays constant they agree.
  problem = helpers.Quadratic(SHAPES, seed=58, steps=STEPS, zero_first_step=centered)
  kwargs = dict(learning_rate=0.01, decay=0.99, eps=1e-6, centered=centered, momentum=0.9, bias_correction=True)
  with helpers.standard_promotion():  # optax's bias correction mixes a float and the int32 count
    expected = helpers.run_optax(optax_lib.inject_hyperparams(optax_lib.rmsprop)(**kwargs), problem, STEPS)
  injected = optax_lib.inject_hyperparams(presets.optax)(**kwargs)
  assert injected.init([np.zeros(3, np.float32)]).inner_state.log_decay_product is not None
  helpers.assert_close_to_scale(helpers.run_optax(injected, problem, STEPS), expected)


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_optax_preset_takes_nesterov_without_momentum_as_optax_does(momentum):
  # Optax accepts nesterov=True with no momentum or momentum 0, and runs the plain step.
  problem = helpers.Quadratic(SHAPES, seed=59, steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=7)
  expected = helpers.run_optax(optax_lib.rmsprop(_schedule(lrs), momentum=momentum, nesterov=True), problem, STEPS)
  ours = helpers.run_optax(presets.optax(_schedule(lrs), momentum=momentum, nesterov=True), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


# --- TF1 and timm, against transcriptions of their equations ---------------------------------


def _transcription_run(reference, problem):
  params = [p.astype(np.float64) for p in problem.params()]
  for t in range(STEPS):
    params = reference.step(params, problem.grads(params, t))
  return params


TF1_CASES = list(itertools.product([False, True], [0.0, 0.9]))


@pytest.mark.parametrize("centered,momentum", TF1_CASES, ids=[f"centered={c}-momentum={m}" for c, m in TF1_CASES])
def test_tf1_preset_matches_the_tf1_kernel_equations(centered, momentum):
  problem = helpers.Quadratic(SHAPES, seed=80 + TF1_CASES.index((centered, momentum)), steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=7)
  expected = _transcription_run(
      helpers.TF1Reference(problem.params(), lambda t: float(lrs[t]), decay=0.9, momentum=momentum,
                           epsilon=1e-10, centered=centered), problem)
  ours = helpers.run_optax(presets.tf1(_schedule(lrs), 0.9, momentum, 1e-10, centered=centered), problem, STEPS)
  helpers.assert_close_to_scale(ours, expected)


def test_tf1_preset_rounds_its_numbers_to_float32_as_tf1_does():
  # A decay of 0.9999 is 0.99989998 in float32, as TF1 uses it: 1 - decay is 1.7e-4 larger.
  # Large gradients make the average forget its start at 1, so the difference shows: the
  # exact decay moves the params 7e-5 further, relatively, after 50 steps.
  g, steps = np.full(3, 100.0), 50
  reference = helpers.TF1Reference([np.zeros(3)], lambda t: 0.01, decay=0.9999, epsilon=1e-10)
  expected = [np.zeros(3)]
  for _ in range(steps):
    expected = reference.step(expected, [g])
  opt = presets.tf1(0.01, decay=0.9999)
  params = jnp.zeros(3, jnp.float32)
  state = opt.init(params)
  for _ in range(steps):
    updates, state = opt.update(jnp.asarray(g, jnp.float32), state)
    params = optax_lib.apply_updates(params, updates)
  np.testing.assert_allclose(params, expected[0], rtol=1e-5)


def test_pytorch_and_tf1_presets_take_their_frameworks_arguments_in_order():
  ours = list(inspect.signature(presets.pytorch).parameters)
  assert ours == list(inspect.signature(torch.optim.RMSprop).parameters)[1:]  # after params
  assert list(inspect.signature(presets.tf1).parameters) == [
      "learning_rate", "decay", "momentum", "epsilon", "use_locking", "centered", "name"]


def test_arguments_that_choose_how_a_framework_runs_change_nothing():
  # Called with the framework's positional arguments, a preset must read each where the
  # framework does: TF1's fifth is use_locking, PyTorch's seventh capturable, and those
  # change nothing, where reading them as `centered` or `maximize` would.
  problem = helpers.Quadratic(SHAPES, seed=23, steps=10)
  cases = [
      (presets.tf1(0.01, 0.9, 0.0, 1e-10, True, False, "rms"), presets.tf1(0.01)),
      (presets.pytorch(0.01, 0.99, 1e-8, 0, 0, False, True, True, False, True), presets.pytorch(0.01)),
      (presets.pytorch(0.01, 0.99, 1e-8, 0, 0, False, False, False), presets.pytorch(0.01)),
  ]
  for given, plain in cases:
    chex.assert_trees_all_equal(helpers.run_optax(given, problem, 10), helpers.run_optax(plain, problem, 10))
  # Torch's ninth positional argument is maximize, and it is read as maximize.
  ascending = helpers.run_optax(presets.pytorch(0.01, 0.99, 1e-8, 0, 0, False, False, None, True), problem, 10)
  chex.assert_trees_all_equal(ascending, helpers.run_optax(presets.pytorch(0.01, maximize=True), problem, 10))


# Weight decay: none, coupled, decoupled, decoupled and corrected (lr**2 / max_lr).
TIMM_DECAYS = [(0, False, False), (0.05, False, False), (0.05, True, False), (0.05, True, True)]
TIMM_CASES = [
    dict(centered=c, momentum=m, lr_in_momentum=lim, weight_decay=w, decoupled_decay=d,
         corrected_weight_decay=cw, caution=caution)
    for c, (m, lim), (w, d, cw), caution in itertools.product(
        [False, True], [(0.0, True), (0.9, True), (0.9, False)], TIMM_DECAYS, [False, True]
    )
]
TIMM_IDS = ["-".join(f"{k}={v}" for k, v in c.items()) for c in TIMM_CASES]
# The learning rate timm's optimizer is built with (its defaults['lr'], corrected decay's
# max_lr): above the schedule's values, so that the corrected decay differs.
TIMM_MAX_LR = 0.02


def _timm_run(problem, lrs, **kwargs):
  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in problem.params()]
  opt = helpers.timm_rmsprop_tf()(params, lr=TIMM_MAX_LR, **kwargs)
  for t in range(STEPS):
    grads = problem.grads([p.detach().numpy() for p in params], t)
    for p, g in zip(params, grads):
      p.grad = torch.from_numpy(g)
    for group in opt.param_groups:  # as timm's schedulers set it
      group["lr"] = float(lrs[t])
    opt.step()
  return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("kwargs", TIMM_CASES, ids=TIMM_IDS)
def test_timm_tf_preset_matches_timm_rmsproptf(kwargs):
  problem = helpers.Quadratic(SHAPES, seed=300 + TIMM_CASES.index(kwargs), steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=9)
  expected = _timm_run(problem, lrs, alpha=0.9, eps=1e-10, **kwargs)
  ours = helpers.run_optax(
      presets.timm_tf(_schedule(lrs), alpha=0.9, eps=1e-10, **kwargs, max_lr=TIMM_MAX_LR), problem, STEPS
  )
  helpers.assert_close_to_scale(ours, expected)


@pytest.mark.parametrize("kwargs", TIMM_CASES, ids=TIMM_IDS)
def test_timm_tf_preset_matches_rmsproptf_equations(kwargs):
  problem = helpers.Quadratic(SHAPES, seed=100 + TIMM_CASES.index(kwargs), steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=8)
  expected = _transcription_run(
      helpers.TimmRMSpropTFReference(problem.params(), lambda t: float(lrs[t]), alpha=0.9, eps=1e-10,
                                     **kwargs, max_lr=TIMM_MAX_LR),
      problem)
  ours = helpers.run_optax(
      presets.timm_tf(_schedule(lrs), alpha=0.9, eps=1e-10, **kwargs, max_lr=TIMM_MAX_LR), problem, STEPS
  )
  helpers.assert_close_to_scale(ours, expected)


def test_timm_tf_cases_tell_caution_and_corrected_decay_apart():
  # The comparisons above could pass with either option ignored only if it changed nothing
  # on these problems: each changes the run far beyond their tolerance.
  problem = helpers.Quadratic(SHAPES, seed=7, steps=STEPS)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=9)
  base = dict(momentum=0.9, weight_decay=0.05, decoupled_decay=True, max_lr=TIMM_MAX_LR)
  plain = helpers.run_optax(presets.timm_tf(_schedule(lrs), **base), problem, STEPS)
  for option in ("caution", "corrected_weight_decay"):
    changed = helpers.run_optax(presets.timm_tf(_schedule(lrs), **base, **{option: True}), problem, STEPS)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(changed, plain))
    assert gap > 1e-3, option


def test_timm_tf_preset_takes_timms_arguments_in_order():
  timm_args = list(inspect.signature(helpers.timm_rmsprop_tf()).parameters)[1:]  # after params
  assert list(inspect.signature(presets.timm_tf).parameters) == [*timm_args, "max_lr"]
  assert inspect.signature(presets.timm_tf).parameters["max_lr"].kind is inspect.Parameter.KEYWORD_ONLY


def test_timm_tf_corrected_decay_needs_max_lr_only_for_a_schedule():
  problem = helpers.Quadratic(SHAPES, seed=31, steps=10)
  decayed = dict(weight_decay=0.05, decoupled_decay=True)
  # A number lr is timm's defaults['lr'] itself: lr**2 / lr, the uncorrected decay.
  chex.assert_trees_all_equal(
      helpers.run_optax(presets.timm_tf(0.01, **decayed, corrected_weight_decay=True), problem, 10),
      helpers.run_optax(presets.timm_tf(0.01, **decayed), problem, 10),
  )
  with pytest.raises(ValueError, match=r"^presets\.timm_tf: `corrected_weight_decay=True` .* Pass max_lr="):
    presets.timm_tf(optax_lib.constant_schedule(0.01), **decayed, corrected_weight_decay=True)
  for bad in (0.0, -1e-2, float("inf")):
    with pytest.raises(ValueError, match=r"^presets\.timm_tf: `max_lr` must be a finite number > 0"):
      presets.timm_tf(0.01, max_lr=bad)


def test_timm_tf_caution_without_momentum_changes_nothing_as_in_timm():
  problem = helpers.Quadratic(SHAPES, seed=32, steps=10)
  chex.assert_trees_all_equal(
      helpers.run_optax(presets.timm_tf(0.01, caution=True), problem, 10),
      helpers.run_optax(presets.timm_tf(0.01), problem, 10),
  )


@pytest.mark.parametrize("lr_in_momentum", [True, False], ids=["lr-in-momentum", "lr-outside"])
def test_timm_tf_caution_with_an_injected_zero_momentum_changes_nothing_as_in_timm(lr_in_momentum):
  # timm applies caution only with a momentum > 0. An injected momentum of 0.0 (the presets'
  # way to keep a buffer for a momentum raised later) keeps the buffer, and caution must
  # still change nothing: a gradient with exact zeros (rows of an embedding that no batch
  # used) had the rest of its step scaled up by the fraction of zeros.
  rng = np.random.default_rng(34)
  p0 = rng.normal(size=(6, 4)).astype(np.float32)
  grads = [rng.normal(size=(6, 4)).astype(np.float32) * (rng.random((6, 4)) < 0.5) for _ in range(6)]
  torch_p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  timm = helpers.timm_rmsprop_tf()([torch_p], lr=0.01, momentum=0.0, lr_in_momentum=lr_in_momentum, caution=True)
  opt = optax_lib.inject_hyperparams(presets.timm_tf)(
      lr=0.01, momentum=0.0, lr_in_momentum=lr_in_momentum, caution=True
  )
  params = jnp.asarray(p0)
  state = opt.init(params)
  assert state.inner_state.trace is not None  # the buffer is kept, and caution with it
  update = jax.jit(opt.update)
  for g in grads:
    torch_p.grad = torch.from_numpy(g)
    timm.step()
    updates, state = update(jnp.asarray(g), state, params)
    params = optax_lib.apply_updates(params, updates)
    np.testing.assert_allclose(params, torch_p.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_timm_tf_injected_corrected_decay_and_caution_match_the_fixed_ones():
  problem = helpers.Quadratic(SHAPES, seed=33, steps=20)
  kwargs = dict(momentum=0.9, weight_decay=0.05, decoupled_decay=True, corrected_weight_decay=True,
                caution=True, max_lr=TIMM_MAX_LR)
  injected = optax_lib.inject_hyperparams(presets.timm_tf)(lr=0.01, **kwargs)
  helpers.assert_close_to_scale(
      helpers.run_optax(injected, problem, 20),
      helpers.run_optax(presets.timm_tf(0.01, **kwargs), problem, 20),
      rtol=1e-6,
  )


def test_presets_keep_no_momentum_buffer_when_momentum_is_zero():
  params = {"w": jnp.ones(3, jnp.float32)}
  for opt in (presets.pytorch(), presets.keras(), presets.tf1(0.1), presets.timm_tf()):
    assert opt.init(params).trace is None
  assert presets.pytorch(momentum=0.9).init(params).trace["w"].shape == (3,)
  # A NumPy zero, as a config file read with NumPy gives it, is as constant as a Python one.
  for zero in (0, 0.0, np.float32(0), np.int64(0)):
    assert presets.pytorch(momentum=zero).init(params).trace is None


def _required(preset):
  """The arguments a preset cannot be called without (TF1's and Optax's learning rate)."""
  return {name: 0.1 for name, p in inspect.signature(preset).parameters.items() if p.default is p.empty}


@pytest.mark.parametrize("name", ["pytorch", "keras", "tf1", "timm_tf"])
def test_injected_presets_keep_no_momentum_buffer_unless_given_a_momentum(name):
  # inject_hyperparams turns every number into an array, and an array momentum keeps its
  # buffer; the default (None) is left alone, so the state is as small as without inject.
  preset = getattr(presets, name)
  params = {"w": jnp.ones(3, jnp.float32)}
  assert optax_lib.inject_hyperparams(preset)(**_required(preset)).init(params).inner_state.trace is None
  injected = optax_lib.inject_hyperparams(preset)(**_required(preset), momentum=0.0)
  assert injected.init(params).inner_state.trace["w"].shape == (3,)


@pytest.mark.parametrize("name", presets.__all__)
def test_every_argument_of_every_preset_is_named_as_the_preset_names_it(name):
  # A wrong value must be reported under the argument the user typed (timm's
  # `decoupled_decay`, not `rmsprop`'s `decoupled_weight_decay`), by the preset's name.
  preset = getattr(presets, name)
  for arg in inspect.signature(preset).parameters:
    wrong = 3 if arg == "name" else "yes"  # Keras's `name` is a string
    with pytest.raises(TypeError, match=rf"^presets\.{name}: `{arg}` must be .* got {arg}={wrong!r}"):
      preset(**{**_required(preset), arg: wrong})


def test_a_torch_tensor_learning_rate_is_named_in_the_message():
  # torch.optim.RMSprop takes a tensor lr; the preset asks for a number, in its own words.
  with pytest.raises(TypeError, match=r"^presets\.pytorch: `lr` must be a number.*got lr=tensor\(0\.0100\) \(of type Tensor\)"):
    presets.pytorch(lr=torch.tensor(0.01))


@pytest.mark.parametrize("kwargs,message", [
    (dict(decay=0.99999999), "`decay` must stay below 1 in float32, the precision TF1 uses it in, but got decay=0.99999999"),
    (dict(momentum=0.99999999), "`momentum` must stay below 1 in float32, the precision TF1 uses it in, but got momentum=0.99999999"),
    (dict(learning_rate=1e39), "`learning_rate` must fit in float32, the precision TF1 computes its hyperparameters in, but got learning_rate=1e+39"),
])
def test_tf1_preset_names_a_number_that_float32_cannot_hold_as_given(kwargs, message):
  # Rounded first and checked after, the message would show a decay of 1.0 or an infinite
  # learning rate that the caller never passed.
  with pytest.raises(ValueError, match=re.escape(f"presets.tf1: {message}")):
    presets.tf1(**{"learning_rate": 0.1, **kwargs})


def test_pytorch_preset_inits_from_shape_dtype_structs_complex_ones_too():
  # Complex leaves are viewed as pairs of reals, which a description without values has not.
  described = {"z": jax.ShapeDtypeStruct((3,), jnp.complex64), "w": jax.ShapeDtypeStruct((2,), jnp.float32)}
  state = presets.pytorch(momentum=0.9).init(described)
  for buffer in (state.nu, state.trace):
    np.testing.assert_array_equal(buffer["z"], np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(buffer["w"], np.zeros(2, np.float32))


# --- Centered, where v - m**2 rounds below zero -----------------------------------------------

# One step of decay 0.5 from averages chosen so that every value is exact in float32, in
# every framework's order of operations (m**2 too, so a fused multiply-add changes nothing):
# after the step m = 1 + j 2**-8 and v = m**2 - k 2**-22. With eps = 1e-6 the variance
# v - m**2 = -k 2**-22 lies in (-eps, 0] for k <= 4, where the frameworks' root of
# v - m**2 + eps is finite, and below -eps for k = 5, 6, where it is NaN.
_EDGE_DECAY, _EDGE_EPS, _EDGE_LR, _EDGE_G = 0.5, 1e-6, 0.01, 2.0**-4
_EDGE_J, _EDGE_K = np.meshgrid(np.arange(8), np.arange(7), indexing="ij")
_EDGE_M = 1 + _EDGE_J.ravel() * 2.0**-8
_EDGE_V = _EDGE_M**2 - _EDGE_K.ravel() * 2.0**-22
_EDGE_FINITE = _EDGE_K.ravel() * 2.0**-22 < _EDGE_EPS
# The averages before the step, exact too: v = (v_new - (1 - decay) g**2) / decay.
_EDGE_EXACT = ((_EDGE_M - (1 - _EDGE_DECAY) * _EDGE_G) / _EDGE_DECAY,
               (_EDGE_V - (1 - _EDGE_DECAY) * _EDGE_G**2) / _EDGE_DECAY, _EDGE_M, _EDGE_M**2, _EDGE_V)
_EDGE_MU0, _EDGE_NU0 = (x.astype(np.float32) for x in _EDGE_EXACT[:2])
_EDGE_GRAD = np.full(_EDGE_M.shape, _EDGE_G, np.float32)


def _edge_step_optax():
  opt = optax_lib.rmsprop(_EDGE_LR, decay=_EDGE_DECAY, eps=_EDGE_EPS, centered=True)
  inner, *rest = opt.init(jnp.zeros(_EDGE_M.shape))
  state = (inner._replace(mu=jnp.asarray(_EDGE_MU0), nu=jnp.asarray(_EDGE_NU0)), *rest)
  return np.asarray(opt.update(jnp.asarray(_EDGE_GRAD), state)[0])


def _edge_step_keras():
  import keras

  variable = keras.Variable(np.zeros(_EDGE_M.shape, np.float32))
  opt = keras.optimizers.RMSprop(learning_rate=_EDGE_LR, rho=_EDGE_DECAY, epsilon=_EDGE_EPS, centered=True)
  opt.build([variable])
  opt._velocities[0].assign(_EDGE_NU0)
  opt._average_gradients[0].assign(_EDGE_MU0)
  opt.apply_gradients([(keras.ops.convert_to_tensor(_EDGE_GRAD), variable)])
  return np.asarray(variable.numpy())


def _edge_step_timm():
  param = torch.nn.Parameter(torch.zeros(_EDGE_M.shape))
  opt = helpers.timm_rmsprop_tf()([param], lr=_EDGE_LR, alpha=_EDGE_DECAY, eps=_EDGE_EPS, centered=True)
  # A state already there is used as it is (timm fills an empty one at the first step).
  opt.state[param] = {"step": torch.tensor(0.0), "square_avg": torch.from_numpy(_EDGE_NU0.copy()),
                      "grad_avg": torch.from_numpy(_EDGE_MU0.copy())}
  param.grad = torch.from_numpy(_EDGE_GRAD)
  opt.step()
  return param.detach().numpy().copy()


_EDGE_FRAMEWORKS = {
    "optax": (_edge_step_optax, lambda: presets.optax(_EDGE_LR, decay=_EDGE_DECAY, eps=_EDGE_EPS, centered=True)),
    "keras": (_edge_step_keras, lambda: presets.keras(_EDGE_LR, rho=_EDGE_DECAY, epsilon=_EDGE_EPS, centered=True)),
    "timm_tf": (_edge_step_timm, lambda: presets.timm_tf(_EDGE_LR, alpha=_EDGE_DECAY, eps=_EDGE_EPS, centered=True)),
}


@pytest.mark.parametrize("framework", list(_EDGE_FRAMEWORKS))
def test_centered_presets_take_the_frameworks_root_where_the_variance_rounds_a_little_below_zero(framework):
  # A state taken over from the framework (a converted checkpoint) steps as the framework
  # does where its root is finite, and by the root of eps (the variance taken as 0) where its
  # root is of a negative number.
  for exact in _EDGE_EXACT:
    assert (exact.astype(np.float32) == exact).all(), "a value that float32 rounds"
  framework_step, preset = _EDGE_FRAMEWORKS[framework]
  with helpers.standard_promotion():
    expected = framework_step()
  opt = preset()
  state = jax.tree.map(
      lambda s: s._replace(nu=jnp.asarray(_EDGE_NU0), mu=jnp.asarray(_EDGE_MU0)) if isinstance(s, RMSPropState) else s,
      opt.init(jnp.zeros(_EDGE_M.shape)), is_leaf=lambda s: isinstance(s, RMSPropState),
  )
  updates = np.asarray(opt.update(jnp.asarray(_EDGE_GRAD), state, jnp.zeros(_EDGE_M.shape))[0])
  assert np.isnan(expected[~_EDGE_FINITE]).all(), "the framework's root of a negative number"
  np.testing.assert_allclose(updates[_EDGE_FINITE], expected[_EDGE_FINITE], rtol=1e-5)
  np.testing.assert_allclose(updates[~_EDGE_FINITE], -_EDGE_LR * _EDGE_G / np.sqrt(_EDGE_EPS), rtol=1e-5)
