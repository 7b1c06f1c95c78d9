"""One function per framework: that framework's RMSProp, step for step, in its own names.

Each preset takes the framework's argument names and defaults, accepts a schedule (a callable
of the step count, 0 on the first update) wherever it takes a learning rate, and returns an
`optax.GradientTransformationExtraArgs` whose trajectory matches the framework's optimizer.
The equations behind each one are in the README's framework table.

Where a framework decides structure from a number (PyTorch and Keras keep no momentum
buffer when momentum is 0), so do the presets, but only for Python and NumPy numbers: an
array, such as one injected by `optax.inject_hyperparams`, keeps the buffer, since it may
change later. For the same reason `momentum` and `weight_decay` default to None where the framework's
default is 0: the same step, but `inject_hyperparams` leaves None alone, where it would
inject a 0 as an array that keeps a momentum buffer as large as the params, or keeps weight
decay on and makes every update need the params. Pass `momentum=0.0` to inject a momentum
that a run may raise later.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_optax._alias import make
from rmsprop_optax._state import RMSPropState
from rmsprop_optax._transform import ScalarOrSchedule, _abs_sq, _as_array, _compute_dtype
from rmsprop_optax._validation import (
    callable_with_no_argument, check_flag, check_int, check_nonnegative, check_number, concrete_number,
    is_static_number, is_static_zero, path_at, real_part,
)

__all__ = ["keras", "optax", "pytorch", "tf1", "timm_tf"]

_optax = optax


def _momentum_or_none(momentum: Any) -> Any:
  return None if is_static_zero(momentum) else momentum


def _complex_as_real(
    inner: _optax.GradientTransformationExtraArgs,
) -> _optax.GradientTransformationExtraArgs:
  """Runs `inner` on complex leaves viewed as pairs of reals (PyTorch's `view_as_real`).

  PyTorch keeps a separate average of squares for the real and the imaginary part of each
  complex parameter, where `rmsprop` keeps one average of |g|^2. A complex leaf of shape S
  is given to `inner` as a real leaf of shape S + (2,), and its update is turned back.
  """

  def to_real(tree):
    return jax.tree.map(
        lambda x: jnp.stack([x.real, x.imag], axis=-1) if jnp.iscomplexobj(x) else x, tree
    )

  def to_complex(updates, like):
    return jax.tree.map(
        lambda u, g: jax.lax.complex(u[..., 0], u[..., 1]) if jnp.iscomplexobj(g) else u,
        updates, like,
    )

  def init_fn(params):
    # Params described by ShapeDtypeStructs become zeros first: a description has no parts.
    described = lambda x: _as_array(x) if isinstance(x, jax.ShapeDtypeStruct) else x  # noqa: E731
    return inner.init(to_real(jax.tree.map(described, params)))

  def check_kinds(updates, state):
    """A gradient of the wrong kind or shape for a complex parameter, named in the caller's
    terms: the state's (..., 2) view would otherwise surface as a puzzling shape mismatch."""
    if not isinstance(state, RMSPropState) or jax.tree.structure(updates) != jax.tree.structure(state.nu):
      return  # the inner update explains these
    for index, (g, nu) in enumerate(zip(jax.tree.leaves(updates), jax.tree.leaves(state.nu))):
      shape, kept = tuple(jnp.shape(g)), tuple(nu.shape)
      if not jnp.iscomplexobj(g) and kept == shape + (2,):
        raise TypeError(
            f"presets.pytorch.update: the gradient at {path_at(updates, index)} is real with shape {shape}, but "
            f"the state for that leaf was made for a complex parameter of shape {shape} (kept, "
            f"as PyTorch does, as pairs of reals), or a real one of shape {kept}. Pass gradients "
            "of the parameters' own kind (jax.grad of a complex parameter is complex), or re-run "
            "init on the parameters you optimize."
        )
      if jnp.iscomplexobj(g) and kept != shape + (2,):
        raise ValueError(
            f"presets.pytorch.update: the gradient at {path_at(updates, index)} is complex with shape {shape}, but "
            f"the state for that leaf has shape {kept}, not the {shape + (2,)} of a complex "
            "parameter of that shape kept as pairs of reals. The gradients must have the "
            "shapes and kinds of the params given to init; re-run init if the model changed."
        )

  def update_fn(updates, state, params=None, **extra_args):
    check_kinds(updates, state)
    real_updates, state = inner.update(
        to_real(updates), state, None if params is None else to_real(params), **extra_args
    )
    return to_complex(real_updates, updates), state

  return _optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pytorch(
    lr: ScalarOrSchedule = 1e-2,
    alpha: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    momentum: ScalarOrSchedule | None = None,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> _optax.GradientTransformationExtraArgs:
  r"""`torch.optim.RMSprop`: eps outside the root, learning rate outside the momentum buffer.

  .. math::

    g \leftarrow \pm g + \lambda p,\quad v = \alpha v + (1-\alpha) g^2,\quad
    d = \sqrt{v - m^2} + \epsilon,\quad b = \mu b + g / d,\quad p \leftarrow p - \eta b

  with :math:`v_0 = 0`, :math:`m` only when centered, and :math:`p - \eta g / d` without
  momentum. Complex parameters are treated as independent real and imaginary parts, as
  PyTorch does. Where PyTorch's centered variance goes negative and gives NaN, this one
  clamps it at zero. The arguments follow PyTorch's order, so a PyTorch call runs unchanged;
  ``capturable`` (CUDA graphs), ``foreach`` (a multi-tensor kernel) and ``differentiable``
  (autograd through the step, which JAX always allows) choose how PyTorch runs the step,
  not what it computes, and change nothing here.
  """
  fn = "presets.pytorch"
  check_flag(fn, "capturable", capturable, inert="whether PyTorch's step can be captured in a CUDA graph")
  check_flag(fn, "foreach", foreach, inert="whether PyTorch steps every tensor in one multi-tensor kernel", none_allowed=True)
  check_flag(fn, "differentiable", differentiable, inert="whether autograd can run through PyTorch's step")
  inner = make(
      "presets.pytorch", {"learning_rate": "lr", "decay": "alpha"}, lr, alpha, eps,
      eps_in_sqrt=False, initial_scale=0.0, centered=centered,
      momentum=_momentum_or_none(momentum), lr_in_momentum=False, weight_decay=weight_decay,
      decoupled_weight_decay=False, maximize=maximize,
  )
  return _complex_as_real(inner)


def keras(
    learning_rate: ScalarOrSchedule = 1e-3,
    rho: ScalarOrSchedule = 0.9,
    momentum: ScalarOrSchedule | None = None,
    epsilon: ScalarOrSchedule = 1e-7,
    centered: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    use_ema: bool = False,
    ema_momentum: float | None = None,
    ema_overwrite_frequency: int | None = None,
    loss_scale_factor: float | None = None,
    gradient_accumulation_steps: int | None = None,
    name: str | None = None,
) -> _optax.GradientTransformationExtraArgs:
  r"""Keras 3 `keras.optimizers.RMSprop`: eps inside the root, learning rate inside momentum.

  .. math::

    p \leftarrow p - \eta \lambda p,\quad v = \rho v + (1-\rho) g^2,\quad
    b = \mu b + \eta g / \sqrt{v - m^2 + \epsilon},\quad p \leftarrow p - b

  with :math:`v_0 = 0`, :math:`m` only when centered, and decoupled weight decay applied
  only when ``weight_decay`` is set. Besides a schedule of the step count (a Keras
  ``LearningRateSchedule`` too), ``learning_rate`` may be any other callable that can be
  called with no argument (``lambda: 0.01``, or ``lambda step=0: ...`` with its default):
  Keras calls it so for the current value, and the preset does too, at every update (under
  ``jit``, once per trace, as in a Keras train step compiled by JAX).

  Keras's gradient clipping, at most one of the three, is applied to the gradients first,
  with Keras's arithmetic: ``clipnorm`` scales each leaf's gradient to an L2 norm of at most
  ``clipnorm`` (:math:`g c / \max(\|g\|, c)`), ``global_clipnorm`` scales all of them by
  :math:`c \min(1/N, 1/c)` for their joint norm :math:`N` (NaN where :math:`N` is not
  finite, as in Keras), ``clipvalue`` clips each coordinate to :math:`[-c, c]`. As in Keras a
  value of 0 means no clipping.

  ``loss_scale_factor``, as in Keras, divides the gradients (of a loss multiplied by it)
  before anything else. ``gradient_accumulation_steps`` = n (an int >= 2, as in Keras)
  steps the params once every n updates, with the mean of the n gradients, through
  `optax.MultiSteps` (its state holds this one's as ``inner_opt_state``); the updates in
  between are zeros. As in Keras, schedules are called with the number of gradients seen
  (micro-batches), not of steps taken: the k-th step (from 0) reads them at k n + n - 1.
  ``use_ema=True`` is refused (a moving average of the weights is a second set of params,
  which an Optax update cannot return); ``ema_momentum`` (Keras's default 0.99; None here,
  so that `optax.inject_hyperparams` does not carry it) and ``ema_overwrite_frequency``,
  which Keras reads only with ``use_ema``, are ignored, and so is ``name``, which labels
  Keras's variables: they are accepted so that a Keras call runs unchanged.
  """
  fn = "presets.keras"
  check_flag(fn, "use_ema", use_ema)
  if ema_momentum is not None:
    check_number(fn, "ema_momentum", ema_momentum, schedulable=False)
  if ema_overwrite_frequency is not None:
    check_int(fn, "ema_overwrite_frequency", ema_overwrite_frequency, "100 (steps between overwrites)")
  _check_name(fn, name, "rmsprop")
  if use_ema:
    raise ValueError(
        f"{fn}: `use_ema=True` makes Keras keep a moving average of the weights beside the "
        "optimizer, but an Optax update returns only the step for the params, so the preset "
        "cannot keep it. Pass use_ema=False and keep the average in your train step: after "
        "each update, ema = optax.incremental_update(params, ema, step_size=1 - ema_momentum) "
        "with Keras's ema_momentum of 0.99 unless you set another (Keras starts the average "
        "at the params after the first update)."
    )
  steps = gradient_accumulation_steps
  if steps is not None:
    check_int(fn, "gradient_accumulation_steps", steps, "4 (the gradients averaged per step)")
    if is_static_number(steps) and steps < 2:
      raise ValueError(
          f"{fn}: `gradient_accumulation_steps` must be at least 2, as in Keras, but got "
          f"gradient_accumulation_steps={steps!r}. Pass the number of micro-batches to "
          "average per step, or None to step on every gradient."
      )
  if callable_with_no_argument(learning_rate):
    current = learning_rate
    learning_rate = lambda count: current()  # noqa: E731
  if steps is not None:
    learning_rate, rho, momentum, epsilon, weight_decay = (
        _at_keras_iteration(value, steps)
        for value in (learning_rate, rho, momentum, epsilon, weight_decay)
    )
  inner = make(
      fn, {"decay": "rho", "eps": "epsilon"}, learning_rate, rho, epsilon,
      eps_in_sqrt=True, initial_scale=0.0, centered=centered, momentum=_momentum_or_none(momentum), lr_in_momentum=True,
      weight_decay=weight_decay,
      decoupled_weight_decay=True,
  )
  opt = _keras_clipping(inner, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm)
  if steps is not None:
    opt = _keras_accumulation(opt, steps)
  if loss_scale_factor is not None:
    opt = _keras_loss_scale(opt, loss_scale_factor)
  return opt


def _finite_positive(fn: str, name: str, value: Any, meaning: str, fix: str) -> Any:
  """`value`, a number or a scalar array (no schedule), checked to be finite and > 0 where
  concrete, and returned as its real part, as `optax.inject_hyperparams` may cast it."""
  check_number(fn, name, value, schedulable=False)
  value = real_part(fn, name, value)
  number = concrete_number(value)
  if number is not None and not (math.isfinite(number) and number > 0):
    raise ValueError(
        f"{fn}: `{name}` must be a finite number > 0 ({meaning}), but got {name}={value!r}. {fix}"
    )
  return value


def _check_name(fn: str, name: Any, example: str) -> None:
  """A framework's `name`, which labels its variables and nothing here: a string or None."""
  if name is not None and not isinstance(name, str):
    raise TypeError(
        f"{fn}: `name` must be a string or None, as the framework takes it, but got "
        f"name={name!r} (of type {type(name).__name__}). Pass a label such as {example!r}, "
        "or leave it out."
    )


def _at_keras_iteration(value: Any, steps: Any) -> Any:
  """A schedule read at Keras's iteration count under gradient accumulation: `optax.MultiSteps`
  counts the steps taken, k, where Keras counts the gradients seen, k * steps + steps - 1 at
  the k-th step. Anything but a schedule is returned as it is."""
  if not callable(value):
    return value
  return lambda count: value(count * steps + (steps - 1))


def _keras_accumulation(opt: _optax.GradientTransformationExtraArgs, steps: Any) -> _optax.GradientTransformationExtraArgs:
  """`opt` stepping once every `steps` gradients on their mean, through `optax.MultiSteps`.

  As in Keras, the gradients are summed and the sum divided by `steps`. MultiSteps mixes
  its int32 counters with floats and booleans, which strict dtype promotion refuses, so its
  update runs under standard promotion (ours needs neither). The sum is kept in float32, or
  float64 where a param is (Keras keeps it in each variable's dtype; float32 keeps bfloat16
  params' gradients more exactly). Complex params are refused: `optax.MultiSteps` keeps one
  real accumulator dtype.
  """
  fn = "presets.keras"

  def mean(g):
    if not jnp.issubdtype(g.dtype, jnp.inexact):
      return g  # left for the update's own check, which names the leaf
    return g / jnp.asarray(steps).astype(g.dtype)

  def mean_update(updates, state, params=None, **extra_args):
    return opt.update(jax.tree.map(mean, updates), state, params, **extra_args)

  on_mean = _optax.GradientTransformationExtraArgs(opt.init, mean_update)

  def multi_steps(dtype):
    return _optax.MultiSteps(
        on_mean, every_k_schedule=lambda step: steps, use_grad_mean=False, accumulator_dtype=dtype
    )

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    for index, leaf in enumerate(leaves):
      if jnp.iscomplexobj(leaf):
        raise TypeError(
            f"{fn}.init: gradient_accumulation_steps needs real params, but the param at "
            f"{path_at(params, index)} is complex, and optax.MultiSteps, which accumulates "
            "the gradients, keeps them in one real dtype. Optimize the real and imaginary "
            "parts as separate real params, or leave gradient_accumulation_steps=None."
        )
    # Other leaves are left for the inner init's check, which names them.
    floating = [d for d in map(jnp.result_type, leaves) if jnp.issubdtype(d, jnp.floating)]
    return multi_steps(_compute_dtype(jnp.float32, *floating)).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if not isinstance(state, _optax.MultiStepsState):
      raise TypeError(
          f"{fn}.update: with gradient_accumulation_steps the state is the "
          f"optax.MultiStepsState this optimizer's init returns, but got one of type "
          f"{type(state).__name__}. Pass the state from init (a checkpoint of a run without "
          "accumulation holds its RMSPropState alone: restore it as that state's "
          "inner_opt_state)."
      )
    accumulated = jax.tree.leaves(state.acc_grads)
    dtype = accumulated[0].dtype if accumulated else jnp.float32
    with jax.numpy_dtype_promotion("standard"):
      return multi_steps(dtype).update(updates, state, params, **extra_args)

  return _optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _keras_loss_scale(opt: _optax.GradientTransformationExtraArgs, factor: Any) -> _optax.GradientTransformationExtraArgs:
  """`opt` on the gradients divided by `factor`, in each gradient's dtype, as Keras's
  `apply` unscales them before accumulating or clipping. Stateless."""
  factor = _finite_positive(
      "presets.keras", "loss_scale_factor", factor, "the factor the loss was multiplied by",
      "Pass the factor your loss was scaled by, such as 1024.0, or None for an unscaled loss.",
  )

  def unscale(g):
    g = jnp.asarray(g)
    if not jnp.issubdtype(g.dtype, jnp.inexact):
      return g  # left for the update's own check, which names the leaf
    return g / jnp.asarray(factor).astype(g.dtype)

  def update_fn(updates, state, params=None, **extra_args):
    return opt.update(jax.tree.map(unscale, updates), state, params, **extra_args)

  return _optax.GradientTransformationExtraArgs(opt.init, update_fn)


def _keras_clipping(inner: _optax.GradientTransformationExtraArgs, **clipping: Any) -> _optax.GradientTransformationExtraArgs:
  """`inner` after Keras's `_clip_gradients`: the one clipping argument given, if any.

  Stateless, so the state stays `inner`'s. A concrete value of 0 turns clipping off, as in
  Keras, and a concrete negative one is refused; an array (an injected value) is applied
  where it is above 0, so it may change, and under `jit` a negative one, which cannot be
  checked, turns clipping off, as in Keras.
  """
  fn = "presets.keras"
  given = {name: value for name, value in clipping.items() if value is not None}
  if len(given) > 1:
    listed = ", ".join(f"{name}={value!r}" for name, value in given.items())
    raise ValueError(
        f"{fn}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` may be set, as in "
        f"Keras, but got {listed}. Keep the one you mean and leave the others None."
    )
  if not given:
    return inner
  ((name, value),) = given.items()
  check_number(fn, name, value, schedulable=False)
  value = real_part(fn, name, value)
  check_nonnegative(fn, name, value, "the clipping threshold; 0 turns clipping off")
  if is_static_zero(value):
    return inner

  def clip(updates):
    leaves, treedef = jax.tree.flatten(updates)
    leaves = [jnp.asarray(g) for g in leaves]  # Python floats too, as Optax takes them
    if not leaves or not all(jnp.issubdtype(g.dtype, jnp.inexact) for g in leaves):
      # Nothing to clip (optax.masked with every leaf masked out), or a bad gradient, left
      # for the update's own check, which names the leaf.
      return updates
    # Each leaf in at least float32 (complex stays complex); norms in the widest real dtype.
    wide = [g.astype(_compute_dtype(g.dtype)) for g in leaves]
    real = jnp.finfo(_compute_dtype(*[g.dtype for g in wide])).dtype
    c = jnp.asarray(value).astype(real)

    def squared_norm(g):
      return jnp.sum(_abs_sq(g)).astype(real)

    if name == "clipnorm":
      clipped = []
      for g in wide:
        l2sum = squared_norm(g)
        positive = l2sum > 0  # Keras's two-sided where: no NaN from the root of 0
        norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, l2sum, jnp.ones_like(l2sum))), l2sum)
        clipped.append(g * c.astype(g.dtype) / jnp.maximum(norm, c).astype(g.dtype))
    elif name == "global_clipnorm":
      norm = jnp.sqrt(jnp.sum(jnp.stack([squared_norm(g) for g in wide])))
      scale = c * jnp.minimum(1 / norm, 1 / c) + (norm - norm)  # NaN for a non-finite norm
      clipped = [g * scale.astype(g.dtype) for g in wide]
    else:
      for index, g in enumerate(wide):
        if jnp.iscomplexobj(g):
          raise TypeError(
              f"{fn}.update: `clipvalue` clips each coordinate to [-clipvalue, clipvalue], but "
              f"the gradient at {path_at(updates, index)} is complex, which has no order. Pass "
              "clipnorm or global_clipnorm, which clip by magnitude."
          )
      clipped = [jnp.clip(g, -c.astype(g.dtype), c.astype(g.dtype)) for g in wide]
    if not is_static_number(value):  # an array, maybe 0: Keras's `c > 0`
      clipped = [jnp.where(c > 0, new, g) for new, g in zip(clipped, wide)]
    return treedef.unflatten([new.astype(g.dtype) for new, g in zip(clipped, leaves)])

  def update_fn(updates, state, params=None, **extra_args):
    return inner.update(clip(updates), state, params, **extra_args)

  return _optax.GradientTransformationExtraArgs(inner.init, update_fn)


def _tf_float32(name: str, value: Any) -> Any:
  """A Python number as TF1 uses it: TF1 makes its hyperparameters float32 tensors (cast to
  the variable's dtype only afterwards), so a decay of 0.9999 acts as float32(0.9999), whose
  1 - decay is larger by 1.7e-4 of itself. Arrays and schedules pass as they are. A number
  that float32 cannot hold as TF1 would need it is refused in its own words, before the
  rounded value would be reported as if the caller had passed it."""
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    return value
  with np.errstate(over="ignore"):
    rounded = float(np.float32(value))
  if math.isinf(rounded) and not math.isinf(value):
    raise ValueError(
        f"presets.tf1: `{name}` must fit in float32, the precision TF1 computes its "
        f"hyperparameters in, but got {name}={value!r}, beyond its largest value, 3.4e38. "
        "Pass a smaller number."
    )
  if name in ("decay", "momentum") and value < 1 <= rounded:
    raise ValueError(
        f"presets.tf1: `{name}` must stay below 1 in float32, the precision TF1 uses it in, "
        f"but got {name}={value!r}, which rounds to 1. Pass a {name} of at most 0.99999994, "
        "the largest float32 below 1."
    )
  return rounded


def tf1(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    momentum: ScalarOrSchedule | None = None,
    epsilon: ScalarOrSchedule = 1e-10,
    use_locking: bool = False,
    centered: bool = False,
    name: str = "RMSProp",
) -> _optax.GradientTransformationExtraArgs:
  r"""TensorFlow 1 `tf.compat.v1.train.RMSPropOptimizer`: the average of squares starts at 1.

  .. math::

    v = \rho v + (1 - \rho) g^2,\quad b = \mu b + \eta g / \sqrt{v - m^2 + \epsilon},\quad
    p \leftarrow p - b

  with :math:`v_0 = 1` (so the first steps are small, not large), :math:`m_0 = 0` when
  centered. TF1 always runs the momentum path; with momentum 0 it is the plain step. Python
  numbers are rounded to float32 first, as TF1 does. TF1 writes the average as
  :math:`v + (g^2 - v)(1 - \rho)`, equal up to rounding; at :math:`\rho = 0` that form
  rounds a :math:`g^2` below half an ulp of :math:`v` away (to 0 from :math:`v_0 = 1`),
  where this one keeps it. The arguments follow TF1's order, so a TF1 call runs unchanged;
  ``use_locking`` (locks around TF1's variable updates) and ``name`` (a label of its ops)
  change nothing here: a JAX update has no shared variables to lock.
  """
  fn = "presets.tf1"
  check_flag(fn, "use_locking", use_locking, inert="whether TF1 locks its variables while it updates them")
  _check_name(fn, name, "RMSProp")
  return make(
      "presets.tf1", {"eps": "epsilon"}, _tf_float32("learning_rate", learning_rate),
      _tf_float32("decay", decay), _tf_float32("epsilon", epsilon), eps_in_sqrt=True,
      initial_scale=1.0, centered=centered,
      momentum=_momentum_or_none(_tf_float32("momentum", momentum)), lr_in_momentum=True,
  )


def optax(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> _optax.GradientTransformationExtraArgs:
  r"""`optax.rmsprop`: its chain (rms or stddev, scale by -lr, trace) as one transformation.

  .. math::

    v = \rho v + (1-\rho) |g|^2,\quad u = -\eta\, g / \sqrt{\hat v - |\hat m|^2 + \epsilon},
    \quad b = u + \mu b

  with the learning-rate schedule evaluated at the count before the update, as Optax does.
  As in Optax, ``nesterov`` without a momentum (None or 0) is the plain step. With
  ``bias_correction`` and a decay that changes between steps (one injected by
  `optax.inject_hyperparams` and set anew, or a schedule), the divisor is 1 minus the
  product of the decays applied so far, where Optax takes the current decay to the power of
  the count; while the decay stays constant the two agree, up to rounding.
  """
  # Optax builds no trace for momentum=None, where its Nesterov step is the plain one and
  # `rmsprop` would reject the flag.
  check_flag("presets.optax", "nesterov", nesterov)
  nesterov = nesterov and momentum is not None
  return make(
      "presets.optax", {}, learning_rate, decay, eps, eps_in_sqrt=eps_in_sqrt,
      initial_scale=initial_scale, centered=centered, momentum=momentum, nesterov=nesterov,
      lr_in_momentum=True, bias_correction=bias_correction,
  )


def timm_tf(
    lr: ScalarOrSchedule = 1e-2,
    alpha: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-10,
    weight_decay: ScalarOrSchedule | None = None,
    momentum: ScalarOrSchedule | None = None,
    centered: bool = False,
    decoupled_decay: bool = False,
    corrected_weight_decay: bool = False,
    lr_in_momentum: bool = True,
    caution: bool = False,
    *,
    max_lr: Any = None,
) -> _optax.GradientTransformationExtraArgs:
  r"""timm's `RMSpropTF`: TF1's equations (:math:`v_0 = 1`, eps inside) in PyTorch.

  Weight decay is coupled (:math:`g \leftarrow g + \lambda p`) or, with ``decoupled_decay``,
  :math:`p \leftarrow p (1 - \eta\lambda)`; with ``corrected_weight_decay`` as well,
  :math:`p \leftarrow p (1 - \eta^2 \lambda / \eta_{max})`, so that the decay follows the
  learning rate's schedule. :math:`\eta_{max}` is the learning rate `RMSpropTF` was built
  with (its ``defaults['lr']``, the base that timm's schedulers scale): ``lr`` itself when it
  is a number, and ``max_lr``, which must then be given, when it is a schedule or an array.
  ``lr_in_momentum`` chooses TF1's buffer of lr-scaled steps or PyTorch's buffer of raw
  steps. ``caution`` (Liang et al., 2024) zeroes the coordinates where the momentum buffer
  points against the gradient and scales the rest by 1 / (the fraction kept), as timm does
  only with a positive momentum: without one, or with one of 0, it changes nothing. The arguments follow timm 1.0's
  order, so a timm call runs unchanged.
  """
  fn = "presets.timm_tf"
  for flag, value in (("decoupled_decay", decoupled_decay),
                      ("corrected_weight_decay", corrected_weight_decay), ("caution", caution)):
    check_flag(fn, flag, value)
  if max_lr is not None:
    max_lr = _finite_positive(
        fn, "max_lr", max_lr, "the learning rate RMSpropTF was built with",
        "Pass the peak of your schedule, such as 1e-2.",
    )
  decayed = weight_decay is not None and not is_static_zero(weight_decay)
  if corrected_weight_decay and decoupled_decay and decayed:
    weight_decay = _timm_corrected_decay(fn, weight_decay, lr, max_lr)
  momentum = _momentum_or_none(momentum)
  return make(
      fn,
      {"learning_rate": "lr", "decay": "alpha", "decoupled_weight_decay": "decoupled_decay"},
      lr, alpha, eps,
      eps_in_sqrt=True, initial_scale=1.0, centered=centered,
      momentum=momentum, lr_in_momentum=lr_in_momentum,
      caution=bool(caution) and momentum is not None,
      weight_decay=weight_decay, decoupled_weight_decay=decoupled_decay,
  )


def _timm_corrected_decay(fn: str, weight_decay: Any, lr: Any, max_lr: Any) -> Any:
  """timm's corrected decoupled decay as a weight decay for `rmsprop`, which multiplies it by
  the learning rate: weight_decay * lr / max_lr, a schedule where either is one."""
  # Checked here, in the caller's names, before they are combined into one number.
  check_number(fn, "lr", lr)
  check_number(fn, "weight_decay", weight_decay)
  check_nonnegative(fn, "weight_decay", weight_decay, "the weight decay coefficient")
  if max_lr is None:
    if not is_static_number(lr):
      raise ValueError(
          f"{fn}: `corrected_weight_decay=True` scales the decay by lr**2 / max_lr, where "
          "max_lr is the learning rate RMSpropTF was built with (its defaults['lr'], the "
          f"base its scheduler scales), but lr={lr!r} is a schedule or an array, which does "
          "not tell it. Pass max_lr=, the learning rate you gave RMSpropTF (the peak of the "
          "schedule, such as max_lr=1e-2)."
      )
    return weight_decay  # lr**2 / lr: the decay is the uncorrected one
  if not (callable(weight_decay) or callable(lr)):
    return weight_decay * lr / max_lr

  def at(value, count):
    return value(count) if callable(value) else value

  return lambda count: at(weight_decay, count) * at(lr, count) / max_lr
