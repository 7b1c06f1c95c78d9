"""`rmsprop`: the complete optimizer, every framework's variant behind one set of flags."""

from __future__ import annotations

from typing import Any

import optax

from rmsprop_optax._transform import Scalar, ScalarOrSchedule, _Config, build, validate
from rmsprop_optax._validation import is_static_zero


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    *,
    eps_in_sqrt: bool = True,
    initial_scale: Scalar = 0.0,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    lr_in_momentum: bool = True,
    caution: bool = False,
    bias_correction: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    weight_decay_mask: Any = None,
    maximize: bool = False,
    nu_dtype: Any = None,
    momentum_dtype: Any = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSProp: gradient steps divided by the root of a leaky average of squared gradients.

  Each coordinate gets its own step size from :math:`v`, an exponentially weighted average
  of its squared gradients that remembers about :math:`1 / (1 - \rho)` steps. With
  :math:`\eta_t` the learning rate at step :math:`t` and :math:`\mu` the momentum:

  .. math::

    g_t &\leftarrow \pm g_t + \lambda\, p_{t-1}
        \quad\text{(sign: maximize; } \lambda \text{: coupled weight decay)} \\
    v_t &= \rho\, v_{t-1} + (1 - \rho)\, |g_t|^2, \qquad
    m_t = \rho\, m_{t-1} + (1 - \rho)\, g_t \ \text{(centered)} \\
    u_t &= g_t \,/\, \sqrt{\hat v_t - |\hat m_t|^2 + \epsilon}
        \quad\text{or}\quad g_t \,/\, (\sqrt{\hat v_t - |\hat m_t|^2} + \epsilon) \\
    b_t &= \mu\, b_{t-1} + \eta_t u_t,\ s_t = b_t
        \quad\text{or, with lr\_in\_momentum=False,}\quad
        b_t = \mu\, b_{t-1} + u_t,\ s_t = \eta_t b_t \\
    p_t &= p_{t-1} - s_t - \eta_t \lambda\, p_{t-1} \quad\text{(decoupled weight decay)}

  The hats divide by :math:`1 - \rho^t` with ``bias_correction``; the :math:`m` terms appear
  only with ``centered``; without momentum :math:`s_t = \eta_t u_t`; with ``nesterov``
  :math:`s_t = \eta_t u_t + \mu b_t` (resp. :math:`\eta_t (u_t + \mu b_t)`). Updates are
  returned for `optax.apply_updates`, in the gradients' dtype; arithmetic is at least float32.

  A schedulable decay: early in training the gradient scale moves fast and a short memory
  (decay 0.9, about 10 steps) adapts quickly; late in training a long memory (0.999, about
  1000 steps) averages out minibatch noise and gives steadier per-coordinate step sizes.
  Passing a schedule that rises toward 1 (for example
  ``lambda t: 1 - 0.1 / (1 + t / 1000)``) gets both, which no other RMSProp offers.

  Args:
    learning_rate: step size :math:`\eta`, a number or a schedule of the step count (an
      Optax schedule; the count is 0 on the first update).
    decay: :math:`\rho` in [0, 1), a number or a schedule (see above).
    eps: stabiliser in the denominator, >= 0, a number or a schedule.
    eps_in_sqrt: True adds ``eps`` inside the square root (Optax, Keras, TF1); False adds it
      outside (PyTorch).
    initial_scale: first value of :math:`v`; 0 in PyTorch, Keras and Optax, 1 in TF1 and timm.
    centered: divide by the root of the variance :math:`v - m^2` instead of the raw second
      moment (Graves, 2013); keeps the gradient average :math:`m` in the state.
    momentum: :math:`\mu` in [0, 1), or None for no momentum buffer at all.
    nesterov: Nesterov's look-ahead on the momentum buffer (needs ``momentum``; with a
      momentum of 0 it is the plain step, as in Optax).
    lr_in_momentum: True accumulates learning-rate-scaled steps in the buffer (Optax, Keras,
      TF1); False accumulates raw preconditioned gradients and scales the buffer by the
      learning rate when applying it (PyTorch). They differ once the learning rate changes.
    caution: cautious momentum (Liang et al., 2024; timm's ``caution``): the step's
      coordinates that point against the current gradient (:math:`s g \le 0`) are zeroed
      and the rest divided by the fraction kept in the leaf (at least 1e-3), before the
      learning rate when it is applied outside the buffer. Needs ``momentum``, and as in
      timm acts only while it is positive: at 0 (a schedule's or an injected value) it
      changes nothing. The fraction is a mean over each leaf: a leaf sharded over devices
      costs one scalar all-reduce.
    bias_correction: divide the averages by :math:`1 - \rho^t` (as Adam does), removing the
      bias toward zero of averages that start at 0 (``initial_scale=0``). With a nonzero
      ``initial_scale`` it weighs that first value more, not less. With a decay schedule
      the divisor is 1 minus the product of the decays applied so far, which the state
      keeps (as its log), and so it does for a decay given as a JAX array, which may
      change between steps (as under `optax.inject_hyperparams`).
    weight_decay: :math:`\lambda >= 0`, or None (the default) for no weight decay; a Python
      or NumPy 0 also turns it off. Without it ``update`` needs no ``params``. (A default of 0
      would be injected as an array by `optax.inject_hyperparams` and keep decay on.)
    decoupled_weight_decay: False adds :math:`\lambda p` to the gradient before everything
      (PyTorch, timm's default); True subtracts :math:`\eta_t \lambda p` from the parameters
      beside the step (Keras, AdamW, timm's ``decoupled_decay``).
    weight_decay_mask: None (decay every leaf), a tree of booleans with the params' structure
      (or a prefix of it), or a callable from params to such a tree; False leaves are not
      decayed. Under `optax.inject_hyperparams`, list a callable mask in ``static_args``:
      it would otherwise be called as a schedule, with the step count (``update`` refuses
      the single boolean that comes back when the params have more than one leaf).
    maximize: ascend the objective instead of descending it (PyTorch's ``maximize``).
    nu_dtype: storage dtype of :math:`v` and :math:`m`, e.g. ``jnp.bfloat16``; None keeps the
      param's precision, at least float32. Arithmetic stays at least float32; each step
      reads the buffers as stored. For complex params it sets the precision of the real
      :math:`v`, while :math:`m` stays complex, at least complex64. Under
      `optax.inject_hyperparams`, which calls ``jnp.bfloat16`` as a schedule, pass the
      name (``'bfloat16'``) or list the argument in ``static_args``.
    momentum_dtype: storage dtype of the momentum buffer; None as for ``nu_dtype``, and
      for complex params likewise at least complex64.
    stochastic_rounding: when state is stored in a dtype narrower than the arithmetic,
      round stochastically (unbiased) instead of to nearest, so a bfloat16 average keeps
      learning at decays close to 1.
    seed: seed of the stochastic rounding's random bits, combined with the step count so the
      same inputs always give the same result.

  Returns:
    An `optax.GradientTransformationExtraArgs` (its update accepts and ignores extra keyword
    arguments, as Optax's optimizers do) whose state is an `RMSPropState`.

  Raises:
    ValueError: a concrete hyperparameter is out of range or not a scalar, a complex one
      has a nonzero imaginary part, or ``nesterov`` or ``caution`` has no momentum.
    TypeError: a hyperparameter is not a number, a scalar array or a schedule (None
      included), a structural option is not True or False, ``seed`` is not an integer, or
      a dtype argument is not a real floating dtype of at least 16 bits.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from rmsprop_optax import rmsprop
    >>> opt = rmsprop(learning_rate=0.01, decay=0.9)
    >>> params = jnp.array([0.2, 0.4, 0.6])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([-0.5, 0.3, 0.24]), state, params)
    >>> optax.apply_updates(params, updates)  # doctest: +SKIP
    Array([0.23162277, 0.36837724, 0.56837726], dtype=float32)

  References:
    Tieleman and Hinton, Lecture 6.5 - RMSProp: Divide the gradient by a running average of
    its recent magnitude, COURSERA: Neural Networks for Machine Learning, 2012.
    Graves, Generating Sequences With Recurrent Neural Networks, 2013.
    Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019.
    Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with One Line of
    Code, 2024.
  """
  return make(
      "rmsprop", {}, learning_rate, decay, eps, eps_in_sqrt=eps_in_sqrt,
      initial_scale=initial_scale, centered=centered, momentum=momentum, nesterov=nesterov,
      lr_in_momentum=lr_in_momentum, caution=caution, bias_correction=bias_correction,
      weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
      weight_decay_mask=weight_decay_mask, maximize=maximize, nu_dtype=nu_dtype,
      momentum_dtype=momentum_dtype, stochastic_rounding=stochastic_rounding, seed=seed,
  )


def make(
    fn: str, arg_names: dict, learning_rate: Any, decay: Any, eps: Any, *,
    weight_decay: Any = None, **flags: Any,
) -> optax.GradientTransformationExtraArgs:
  """`rmsprop` as called by `fn`, whose errors name arguments by `arg_names` (ours -> theirs).

  Flags not given take `rmsprop`'s defaults.
  """
  if learning_rate is None:
    lr_name = arg_names.get("learning_rate", "learning_rate")
    raise TypeError(
        f"{fn}: `{lr_name}` must be a number, a scalar array or a schedule (a callable of the "
        f"step count), but got {lr_name}=None. Pass a step size such as 1e-3; for the "
        "preconditioner alone, without a learning rate, use rmsprop_optax.scale_by_rms."
    )
  defaults = dict(
      eps_in_sqrt=True, initial_scale=0.0, centered=False, momentum=None, nesterov=False,
      lr_in_momentum=True, caution=False, bias_correction=False, decoupled_weight_decay=False,
      weight_decay_mask=None, maximize=False, nu_dtype=None, momentum_dtype=None,
      stochastic_rounding=False, seed=0,
  )
  config = validate(_Config(
      fn=fn, learning_rate=learning_rate, decay=decay, eps=eps,
      # None or a Python or NumPy 0 means no weight decay: no params needed, no work done.
      weight_decay=None if is_static_zero(weight_decay) else weight_decay,
      arg_names=arg_names, **{**defaults, **flags},
  ))
  return build(config)
