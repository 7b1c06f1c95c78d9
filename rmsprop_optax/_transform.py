"""The RMSProp update: one elementwise pass per leaf, shared by `rmsprop` and `scale_by_rms`."""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable, NamedTuple, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_optax import _rounding, _validation
from rmsprop_optax._state import RMSPropState, filled_like, increment, zero_scalar

Scalar = Union[float, jax.Array]
ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], Any]]

# Stochastic rounding streams: each (leaf, field) pair draws its own bits.
_NU, _MU, _MOMENTUM = 0, 1, 2


class _Config(NamedTuple):
  """Everything that fixes the update, resolved and validated once at construction."""

  fn: str
  learning_rate: ScalarOrSchedule | None  # None: the preconditioner alone, no sign flip.
  decay: ScalarOrSchedule
  eps: ScalarOrSchedule
  eps_in_sqrt: bool
  initial_scale: Scalar
  centered: bool
  momentum: ScalarOrSchedule | None
  nesterov: bool
  lr_in_momentum: bool
  caution: bool
  bias_correction: bool
  weight_decay: ScalarOrSchedule | None  # None: no weight decay and no params needed.
  decoupled_weight_decay: bool
  weight_decay_mask: Any
  maximize: bool
  nu_dtype: Any
  momentum_dtype: Any
  stochastic_rounding: bool
  seed: int
  # The caller's own names for the arguments (a preset's `alpha` for `decay`), for errors.
  arg_names: dict = {}


def _at(config: _Config, arg: str, count: jax.Array | None) -> Any:
  """The hyperparameter `arg` at step `count`: its value, or its schedule's (a scalar)."""
  value = getattr(config, arg)
  if not callable(value):
    return value
  value = value(count)
  _validation.check_schedule_output(config.fn, config.arg_names.get(arg, arg), value)
  return value


def _keeps_count(config: _Config) -> bool:
  """Whether the update reads the step count, so the state must carry one.

  Without a schedule, bias correction or stochastic rounding nothing reads it, and a count
  would cost every step a buffer to pass in and out and a kernel to increment it (a few
  microseconds a call, which is most of the gap to Optax for a small model).
  """
  scheduled = (config.learning_rate, config.decay, config.eps, config.momentum, config.weight_decay)
  return config.bias_correction or config.stochastic_rounding or any(map(callable, scheduled))


def _keeps_decay_product(config: _Config) -> bool:
  """Whether the state must carry the log of the decays' product: bias correction divides by
  1 - (product of the decays so far), which is 1 - decay**t only while the decay is constant.

  The choice is made from the decay's type, never its value (which may be traced). A Python
  or NumPy number is constant. A schedule may change at any step, and so may a JAX array:
  `optax.inject_hyperparams` hands its float hyperparameters over as arrays, a schedule's
  value anew each step, and lets a run set them between steps.
  """
  return config.bias_correction and (callable(config.decay) or isinstance(config.decay, jax.Array))


# Below log(smallest float64), about -745, exp is 0 in every float dtype.
_LOG_PRODUCT_FLOOR = -1000.0


def _wide_float() -> Any:
  """The widest float JAX has enabled: float64 under jax_enable_x64, else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _compute_dtype(*dtypes: Any) -> Any:
  """The dtype arithmetic runs in: complex if any input is, at least 32 bits, else the widest.

  Written out instead of `jnp.promote_types`, which refuses complex-with-real under strict
  promotion and would widen bfloat16 with float16 to float32 anyway.
  """
  is_complex = any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
  wide = any(jnp.finfo(d).bits >= 64 for d in dtypes)
  if is_complex:
    return jnp.dtype(jnp.complex128 if wide else jnp.complex64)
  return jnp.dtype(jnp.float64 if wide else jnp.float32)


def _storage_dtype(param_dtype: Any, chosen: Any, *, real: bool) -> Any:
  """Storage dtype of one state leaf: `chosen`, else the param's, at least float32.

  Averages of squared magnitudes (`real=True`) are real for complex params too; the other
  buffers of a complex param stay complex, at least as precise as `chosen`.
  """
  base = _compute_dtype(param_dtype)
  if real:
    return chosen if chosen is not None else jnp.finfo(base).dtype
  if chosen is None:
    return base
  return _compute_dtype(chosen, base) if jnp.issubdtype(base, jnp.complexfloating) else chosen


def _store(value: jax.Array, dtype: Any, config: _Config, key_fn: Callable[[], jax.Array]) -> jax.Array:
  """Casts a freshly computed state leaf to its storage dtype, rounding stochastically if asked."""
  narrower = (
      config.stochastic_rounding
      and jnp.issubdtype(dtype, jnp.floating)
      and jnp.issubdtype(value.dtype, jnp.floating)
      and jnp.finfo(dtype).nmant < jnp.finfo(value.dtype).nmant
  )
  if narrower:
    # The barrier makes the step read the rounded buffer, as written: XLA would otherwise
    # redo the hash inside the step's own loop, from a copy of the old buffer.
    return lax.optimization_barrier(_rounding.round_stochastic(value, dtype, key_fn()))
  return _cast(value, dtype)


def _abs_sq(x: jax.Array) -> jax.Array:
  """|x|^2, real: the square of a real number, re^2 + im^2 of a complex one."""
  if jnp.iscomplexobj(x):
    return lax.add(lax.square(lax.real(x)), lax.square(lax.imag(x)))
  return lax.square(x)


def _as_array(x: Any) -> Any:
  """`x` as a JAX array: Python numbers and NumPy arrays take the dtype JAX gives them (a
  NumPy float64 becomes float32 unless `jax_enable_x64` is on, as `jnp.asarray` does it). A
  `jax.ShapeDtypeStruct` (params described, not allocated, as Optax's init accepts them)
  becomes zeros of its shape and dtype, placed by its sharding where it has one."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jnp.zeros(x.shape, x.dtype, device=x.sharding)
  return x if isinstance(x, (jax.Array, jax.core.Tracer)) else jnp.asarray(x)


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
  """`x` in `dtype`, without tracing a no-op conversion when it already is."""
  return x if x.dtype == dtype else lax.convert_element_type(x, dtype)


class _Hyper(NamedTuple):
  """One step's scalar hyperparameters (None where the configuration has none)."""

  decay: Any
  one_minus_decay: Any
  eps: Any
  lr: Any
  neg_lr: Any
  momentum: Any
  weight_decay: Any
  inv_correction: Any

  def in_dtype(self, dtype: Any) -> "_Hyper":
    """The hyperparameters in `dtype`, for arithmetic with a leaf computed in it.

    Python numbers become NumPy scalars of `dtype`, rounded once here, which trace to
    literals; a bare Python float would reach lax as float64 under `jax_enable_x64` and clash
    with a float32 leaf. Arrays (schedules, injected values) are converted. Called once per
    dtype, not once per leaf, so a tree of a thousand leaves traces a handful of conversions.
    """

    def convert(value):
      if value is None:
        return None
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.asarray(value, dtype)[()]
      return jnp.asarray(value, dtype)

    converted = _Hyper(*map(convert, self))
    eps = converted.eps
    if eps is not None and not jnp.issubdtype(dtype, jnp.complexfloating):
      # At least the smallest normal number of the arithmetic's dtype (float32 or float64):
      # an eps of 0 (given, or 1e-8 rounded to 0 by optax.inject_hyperparams, which casts
      # hyperparameters to float16 params' dtype) made a coordinate whose gradient and
      # average are 0 step 0 / 0 = NaN, where now it steps 0. Below 1.2e-38, the floor moves
      # no other step.
      tiny = np.asarray(jnp.finfo(dtype).tiny, dtype)[()]
      eps = np.maximum(eps, tiny) if isinstance(eps, np.generic) else jnp.maximum(eps, tiny)
    # -lr is taken in `dtype`: taken first, an unsigned integer learning rate (a uint8
    # array, say) would wrap around to a huge positive number.
    return converted._replace(eps=eps, neg_lr=None if converted.lr is None else -converted.lr)


def _leaf_mask(fn: str, mask: Any, updates: Any, params: Any) -> list[Any]:
  """One weight-decay flag per gradient leaf (True where there is no mask)."""
  treedef = jax.tree.structure(updates)
  if mask is None:
    return [True] * treedef.num_leaves
  if callable(mask):
    mask = mask(params)
  if treedef.num_leaves > 1 and jax.tree_util.treedef_is_leaf(jax.tree.structure(mask)):
    # optax.inject_hyperparams takes any callable for a schedule: it calls a mask function
    # with the step count and passes on what comes back, one value for the whole tree (a
    # Python bool from `lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`), which would
    # silently decay every leaf or none. A single flag for many leaves says nothing a mask
    # is needed for, so it is refused wherever it comes from.
    raise TypeError(
        f"{fn}: `weight_decay_mask` must be a tree of booleans shaped like the params (or a "
        f"prefix of it), or a callable that returns one, but got the single value {mask!r} "
        f"for params with {treedef.num_leaves} leaves. Under optax.inject_hyperparams, "
        "which calls every callable argument with the step count, list 'weight_decay_mask' "
        "in its static_args. To decay every leaf, leave the mask out; to decay none, pass "
        "weight_decay=None."
    )
  # `mask` may be a prefix of the params tree: broadcast each flag over its subtree.
  try:
    full = jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: flag, sub), mask, updates)
  except ValueError as error:
    raise ValueError(
        f"{fn}: `weight_decay_mask` must have the params' tree structure, or a prefix of it, "
        f"but its structure {jax.tree.structure(mask)} does not match the gradients' "
        f"{treedef}. Build it from the params, for example jax.tree.map(lambda p: p.ndim > 1, "
        "params), or pass a callable that does."
    ) from error
  flags = treedef.flatten_up_to(full)
  leaves = treedef.flatten_up_to(updates)
  for index, flag in enumerate(flags):
    if isinstance(flag, (bool, np.bool_)):
      flags[index] = bool(flag)  # a NumPy bool is as fixed as a Python one
    elif not (isinstance(flag, (jax.Array, np.ndarray, jax.core.Tracer)) and flag.dtype == np.bool_):
      # A number would scale the decay (a negative one past the check on weight_decay).
      raise TypeError(
          f"{fn}: every entry of `weight_decay_mask` must be True or False (or a boolean "
          f"array), but the entry for the parameter at {_validation.path_at(updates, index)} "
          f"is {flag!r} (of type {type(flag).__name__}). Build the mask from comparisons, for "
          "example jax.tree.map(lambda p: p.ndim > 1, params); to scale the decay per leaf, "
          "use optax.masked or optax.multi_transform with separate optimizers."
      )
    elif np.shape(flag) not in ((), np.shape(leaves[index])):
      raise ValueError(
          f"{fn}: a boolean array in `weight_decay_mask` must be a scalar or have its "
          f"parameter's shape, but the entry for the parameter at "
          f"{_validation.path_at(updates, index)} has shape {np.shape(flag)} where the "
          f"parameter has shape {np.shape(leaves[index])}. Pass one flag per leaf, or an "
          "array of the parameter's shape to decay some of its elements."
      )
  return flags


def _cautious(step: jax.Array, g: jax.Array, momentum: Any) -> jax.Array:
  """Caution (Liang et al., 2024): the step's coordinates that point against the gradient
  (Re(step * conj(g)) <= 0) are zeroed and the others scaled by 1 / (the fraction kept), at
  most 1000-fold, so that the step keeps its overall size: step * c / max(mean(c), 1e-3).
  The mean runs over the whole leaf, as timm's does over each tensor.

  As in timm, only with a positive `momentum` (a real scalar): at 0, where a schedule or
  `optax.inject_hyperparams` may set it, the step is the preconditioned gradient, which
  leans with the gradient wherever it is nonzero, and caution would only scale the step up
  by the fraction of zero gradients.
  """
  fixed = isinstance(momentum, (np.generic, float, int))  # else an array, decided in the step
  if fixed and not momentum > 0:
    return step
  rdt = jnp.finfo(step.dtype).dtype
  if jnp.iscomplexobj(step):
    agreement = lax.real(lax.mul(step, lax.conj(g)))
  else:
    agreement = lax.mul(step, g)  # as timm computes it: a product that underflows is not kept
  kept = _cast(lax.gt(agreement, np.zeros((), rdt)[()]), rdt)
  fraction = lax.div(jnp.sum(kept), np.asarray(max(kept.size, 1), rdt)[()])
  scale = lax.div(kept, lax.max(fraction, np.asarray(1e-3, rdt)[()]))
  if not fixed:
    scale = lax.select(lax.gt(momentum, np.zeros((), rdt)[()]), scale, lax.full_like(scale, 1))
  return lax.mul(step, _cast(scale, step.dtype))


def _precondition(
    config: _Config, g: jax.Array, nu_stored: jax.Array, mu_stored: jax.Array | None,
    r: "_Hyper", c: "_Hyper", rdt: Any,
) -> jax.Array:
  """The gradient over the root of its second moment, read from the buffers as stored.

  The step reads each buffer as stored. With float32 state this changes nothing; with a
  narrower one it costs at most half an ulp of the stored dtype (one ulp with stochastic
  rounding), and it lets XLA read the freshly written buffer instead of keeping a copy of
  the old one to recompute from. (Where XLA:CPU merges sibling loops, the step recomputes
  the buffers as stored, from its own copy of the old ones: the same values.)
  """
  cdt = g.dtype
  nu_hat = _cast(nu_stored, rdt)
  if config.bias_correction:
    nu_hat = lax.mul(nu_hat, r.inv_correction)
  if mu_stored is None:
    variance = nu_hat
  else:
    mu_hat = _cast(mu_stored, cdt)
    if config.bias_correction:
      mu_hat = lax.mul(mu_hat, c.inv_correction)
    # v - m^2 is a variance, >= 0 in exact arithmetic; rounding can push it below zero.
    # Where the square of a gradient overflows, v (and then m^2) is inf, and inf - inf NaN:
    # m^2 capped at the largest finite value leaves v's inf, so that coordinate's step is 0,
    # as it is without centering.
    largest = np.asarray(jnp.finfo(rdt).max, rdt)[()]
    mu_sq = lax.min(_abs_sq(mu_hat), largest)
    stored_bits = min(jnp.finfo(nu_stored.dtype).nmant, jnp.finfo(mu_stored.dtype).nmant)
    if stored_bits < jnp.finfo(rdt).nmant:
      # Stored in p mantissa bits, v and m^2 each carry a rounding error of up to 2**-p
      # of v, so a difference below that is rounding noise, not a variance: floored at
      # 2**-p v, a step stays within 2**(p/2) g / sqrt(v) (11 g / sqrt(v) for bfloat16)
      # where a clamp at 0 would give g / sqrt(eps).
      floor = lax.mul(nu_hat, np.asarray(2.0**-stored_bits, rdt)[()])
      variance = lax.max(lax.sub(nu_hat, mu_sq), floor)
    elif config.eps_in_sqrt:
      # The root of v - m^2 + eps, as Optax, Keras, TF1 and timm take it, wherever that is
      # positive: a variance rounded a little below 0 but above -eps gives their finite step.
      # Where it is not (their NaN, or inf at 0), the variance is taken as 0: the root of eps.
      # A NaN average fails the comparison and stays NaN.
      radicand = lax.add(lax.sub(nu_hat, mu_sq), r.eps)
      # full_like: eps with the radicand's sharding (explicit mesh axes) and, inside
      # shard_map, its variance over the mesh, as select needs of its operands.
      radicand = lax.select(lax.le(radicand, np.zeros((), rdt)[()]), lax.full_like(radicand, r.eps), radicand)
      return lax.mul(g, _cast(lax.rsqrt(radicand), cdt))
    else:
      # Clamped at 0, where PyTorch's root of a negative number is NaN, as v - min(m^2, v),
      # which is max(v - m^2, 0) bit for bit in one operation and one constant fewer: XLA's
      # compile time grows with the operations in every leaf's loops, and a centered
      # Nesterov step preconditions twice per leaf.
      variance = lax.sub(nu_hat, lax.min(mu_sq, nu_hat))
  if config.eps_in_sqrt:
    return lax.mul(g, _cast(lax.rsqrt(lax.add(variance, r.eps)), cdt))
  return lax.div(g, _cast(lax.add(lax.sqrt(variance), r.eps), cdt))


# In the configuration the per-leaf functions see (see _structure), a field that is given.
_GIVEN = object()

# Where _staged's signature holds an array: its value is an argument of the staged call.
_ARRAY = object()


# The staged functions of every configuration built so far, by name and structure (below).
_STAGED: dict[tuple, Callable] = {}


def _structure(config: _Config) -> _Config:
  """All that a configuration's per-leaf functions read of it: its flags and name, and of
  every other field (numbers, schedules, dtypes, the mask) only whether it is given (None or
  _GIVEN). Their hyperparameters arrive as arguments, so two configurations of one structure
  compute the same functions of their arguments and can share them."""
  return _Config(*(
      value if isinstance(value, (bool, np.bool_, str)) else None if value is None else _GIVEN
      for value in config
  ))


def _fixed(value: Any) -> tuple:
  """A fixed argument as a staged call's signature holds it: with its type, so that equal
  numbers of two dtypes stay apart, and a float with its sign, so that 0.0 and -0.0 do."""
  if isinstance(value, (float, np.floating)):
    return type(value), value, bool(np.signbit(value))
  return type(value), value


def _in_a_trace(leaves: list) -> bool:
  """Whether any of `leaves` is a tracer: the caller runs inside jit, vmap, grad or the like."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _staged(fn: Callable, name: str, structure: _Config) -> Callable:
  """`fn`, traced and lowered once per signature inside a trace instead of once per call.

  The update's arithmetic is the same for every leaf of one shape and dtype, but traced
  inline it is traced and lowered anew for each leaf: for a tree of a thousand leaves that
  was most of the time JAX spends before XLA starts. Staged through an inner `jax.jit`, it
  is traced and lowered once per signature (its arrays' shapes, dtypes and weak types, and
  the values of its other arguments), and each leaf calls it. XLA inlines the calls before
  it optimises anything, so the compiled step is the same.

  Only arrays become arguments of the staged call. The rest of a call's arguments (flags,
  dtypes, and hyperparameters given as Python numbers, already NumPy scalars) are part of its
  signature, so they reach the arithmetic as they would inline: numbers as literals, flags
  as Python. Outside any trace (an update called eagerly) `fn` runs as it is.

  The staged function is kept for the process, shared by every later build of the same
  `structure` (see _structure). `optax.inject_hyperparams` builds the optimizer anew at every
  update: with a staged function per build, an update under `vmap` or `grad` but outside
  `jit` traced and compiled each leaf's function again at every step.
  """
  shared = _STAGED.get((name, structure))
  if shared is not None:
    return shared

  def traced(signature, *arrays):
    treedef, entries = signature
    arrays = iter(arrays)
    leaves = [next(arrays) if entry is _ARRAY else entry[1] for entry in entries]
    return fn(*treedef.unflatten(leaves))

  traced.__name__ = traced.__qualname__ = name
  jitted = jax.jit(traced, static_argnums=0)

  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    if not _in_a_trace(leaves):
      return fn(*args)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
    entries = tuple(_ARRAY if array else _fixed(leaf) for leaf, array in zip(leaves, is_array))
    return jitted((treedef, entries), *(leaf for leaf, array in zip(leaves, is_array) if array))

  _STAGED[(name, structure)] = call
  return call


def _for_recomputing(buffers: list) -> list:
  """`buffers`, from which the caller computes a value a second time instead of sharing it.

  Where one value feeds two loops (Nesterov's preconditioned gradient feeds the momentum
  buffer and the step; coupled weight decay's g + weight_decay * p feeds the average and
  the step), XLA:CPU writes it to a parameter-sized temporary that both loops read back.
  That temporary is allocated afresh every step, its pages mapped again, and at 1e7
  parameters it made the step 1.5x to 1.9x slower than recomputing the value in the second
  loop. (By default XLA:CPU has no multi-output fusion, which would make one loop of the
  two; see _cpu_fuses_sibling_loops for what the step does when it has.) So on
  CPU the buffers pass through an optimization barrier, which keeps XLA from merging the
  second computation into the first: the same arithmetic on the same values, bit for bit.
  Elsewhere they pass through untouched, and so do they outside a trace: an update called
  eagerly runs operation by operation, so there is nothing for XLA to merge, and one barrier
  over every leaf would be one computation, which fails for leaves on different devices.
  """
  if not _in_a_trace(jax.tree.leaves(buffers)):
    return buffers
  return lax.platform_dependent(buffers, cpu=_barrier, default=lambda same: same)


def _barrier(buffers: Any) -> Any:
  """`buffers` through one optimization barrier, or, inside `shard_map` where its arrays vary
  over different mesh axes (a sharded leaf beside a replicated one), through one barrier per
  set of axes: a barrier's outputs vary over every axis that any of its inputs varies over,
  and the untouched branch of `_for_recomputing` must give the same types."""
  leaves, treedef = jax.tree.flatten(buffers)
  groups: dict[Any, list[int]] = {}
  for index, leaf in enumerate(leaves):
    # The axes an array varies over: `manual_axis_type` in newer JAX, `vma` in older.
    aval = jax.typeof(leaf)
    groups.setdefault((getattr(aval, "manual_axis_type", None), getattr(aval, "vma", None)), []).append(index)
  if len(groups) <= 1:
    return lax.optimization_barrier(buffers)
  out = list(leaves)
  for indices in groups.values():
    for index, leaf in zip(indices, lax.optimization_barrier([leaves[i] for i in indices])):
      out[index] = leaf
  return treedef.unflatten(out)


_MULTI_OUTPUT_FUSION = "xla_cpu_use_multi_output_fusion"


@functools.cache
def _cpu_fuses_sibling_loops() -> bool:
  """Whether XLA:CPU, as this process set it up, makes one loop of loops that share inputs.

  By default XLA:CPU computes each output array in its own loop, and the step's loop reads
  the new average back from memory (28 B/param for the plain step, where one loop would
  move 20). Its opt-in multi-output fusion
  (`XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion`) merges sibling
  loops, those that share inputs, but not a loop with one that reads its output. Where it is
  on, the update computes each of a leaf's outputs from its own copy of the old buffers (see
  _for_recomputing), so that they are siblings and XLA makes one loop of them: the same
  arithmetic (though XLA's code for one loop may round a few elements differently, by an
  ulp or a few). Where it is off, that would make XLA copy each old buffer before the loop that
  overwrites it, so the update keeps its default form.

  XLA reads the option from `XLA_FLAGS` when its CPU backend starts, so without it there the
  answer is no. With it, the answer comes from compiling, once per process, a function of
  two outputs that share their inputs and looking for a fusion that returns both (the flag
  may have been set after the backend started, or this XLA may not know it). Any failure (no
  CPU backend, a compiler that prints its HLO otherwise) answers no, which keeps the default
  form.
  """
  if _MULTI_OUTPUT_FUSION not in os.environ.get("XLA_FLAGS", ""):
    return False
  try:
    cpu = jax.local_devices(backend="cpu")[0]
    spec = jax.ShapeDtypeStruct((256,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(cpu))
    hlo = jax.jit(lambda a, b: (lax.add(a, b), lax.sub(a, b))).lower(spec, spec).compile().as_text()
  except Exception:  # noqa: BLE001  (a probe for speed must never break an update)
    return False
  return re.search(r"= \([^=]*\) fusion\(", hlo) is not None


def build(config: _Config) -> optax.GradientTransformationExtraArgs:
  """The transformation for a validated configuration."""
  use_momentum = config.momentum is not None
  use_weight_decay = config.weight_decay is not None
  couple_decay = use_weight_decay and not config.decoupled_weight_decay
  # A decoupled decay is part of the step, scaled by the learning rate.
  decouple_decay = use_weight_decay and config.decoupled_weight_decay and config.learning_rate is not None
  keep_count = _keeps_count(config)
  keep_decay_product = _keeps_decay_product(config)
  keep_trace = config.learning_rate is not None and use_momentum
  # The per-leaf functions below are shared with later builds of the same structure (see
  # _staged), so they read only the structure: holding the numbers, schedules or mask would
  # keep this build's values (and any tracer among them) alive as long as the process.
  leaf_config = _structure(config)

  def leaf_weight_decay(flag, c, cdt):
    """A leaf's weight decay coefficient in `cdt`, its mask entry applied; None where it has none."""
    if flag is False:
      return None
    if flag is True:
      return c.weight_decay
    return lax.mul(c.weight_decay, _cast(jnp.asarray(flag), cdt))  # a traced mask entry

  def leaf_state(g_in, nu, mu, buf, p, flag, g_again, r, c, key=None):
    """One leaf's new state, as stored, and what its step needs: the gradient the step sees
    (decay coupled, sign flipped), that gradient preconditioned, and the new momentum buffer
    in the compute dtype. `key(field)` gives stochastic rounding's stream keys."""
    cdt = _compute_dtype(g_in.dtype, nu.dtype)
    rdt = jnp.finfo(cdt).dtype
    decay = leaf_weight_decay(flag, c, cdt) if couple_decay else None
    coupled = decay is not None

    def effective(g_in):
      """The gradient the average sees: in the compute dtype, sign flipped, decay coupled."""
      # lax, not jnp: the same arithmetic, without a jnp dispatch per operation.
      g = _cast(g_in, cdt)
      if leaf_config.maximize:
        g = lax.neg(g)
      if coupled:
        g = lax.add(g, lax.mul(decay, _cast(p, cdt)))
      return g

    g = effective(g_in)
    g_step = effective(g_again) if coupled and g_again is not None else g

    nu_stored = _store(
        lax.add(lax.mul(r.decay, _cast(nu, rdt)), lax.mul(r.one_minus_decay, _abs_sq(g))),
        nu.dtype, leaf_config, lambda: key(_NU),
    )
    mu_stored = buf_stored = buf_new = None
    if leaf_config.centered:
      mu_stored = _store(
          lax.add(lax.mul(c.decay, _cast(mu, cdt)), lax.mul(c.one_minus_decay, g)),
          mu.dtype, leaf_config, lambda: key(_MU),
      )
    u = _precondition(leaf_config, g_step, nu_stored, mu_stored, r, c, rdt)
    if keep_trace:
      added = lax.mul(c.lr, u) if leaf_config.lr_in_momentum else u
      buf_stored = _store(lax.add(lax.mul(c.momentum, _cast(buf, cdt)), added), buf.dtype, leaf_config,
                          lambda: key(_MOMENTUM))
      buf_new = _cast(buf_stored, cdt)
    return nu_stored, mu_stored, buf_stored, g_step, u, buf_new

  def leaf_step(g_step, u, buf_new, again, p, flag, r, c, dtype):
    """A leaf's update, in `dtype`, from what leaf_state gave; for Nesterov, `again` holds
    the state as stored to precondition the gradient from a second time (None: use `u`)."""
    if leaf_config.learning_rate is None:
      step = u
    elif not use_momentum:
      # Multiplying by -lr flips the sign within the product (exactly: rounding is symmetric),
      # which saves a negation per leaf.
      step = lax.mul(c.neg_lr, u)
    else:
      step = buf_new
      if leaf_config.nesterov:
        if again is not None:
          u = _precondition(leaf_config, g_step, *again, r, c, jnp.finfo(u.dtype).dtype)
        step = lax.add(lax.mul(c.lr, u) if leaf_config.lr_in_momentum else u, lax.mul(c.momentum, step))
      if leaf_config.caution:
        step = _cautious(step, g_step, r.momentum)
      # With the learning rate outside the buffer, multiplying by -lr flips the sign as well
      # (exactly, as above); with it inside, the step is negated.
      step = lax.neg(step) if leaf_config.lr_in_momentum else lax.mul(c.neg_lr, step)
    decay = leaf_weight_decay(flag, c, u.dtype) if decouple_decay else None
    if decay is not None:
      # Added after the sign flip, as (-lr * weight_decay) * p.
      step = lax.add(step, lax.mul(lax.mul(c.neg_lr, decay), _cast(p, step.dtype)))
    return _cast(step, dtype)

  def leaf_update(inputs, copies, flag, g_again, r, c, dtype, key=None):
    """A leaf's new state, as stored, and its update. `inputs` are its gradient, state and
    param; in the merged form (see _cpu_fuses_sibling_loops), `copies` holds the copies of
    them that the mean, the momentum buffer and the step each compute from (each call takes
    one output; XLA drops the rest of its arithmetic)."""
    if copies is None:
      nu_stored, mu_stored, buf_stored, g_step, u, buf_new = leaf_state(*inputs, flag, g_again, r, c, key)
    else:
      copy = iter(copies)
      nu_stored = leaf_state(*inputs, flag, None, r, c)[0]
      mu_stored = buf_stored = None
      if leaf_config.centered:
        mu_stored = leaf_state(*next(copy), flag, None, r, c)[1]
      if keep_trace:
        buf_stored = leaf_state(*next(copy), flag, None, r, c)[2]
      inputs = next(copy)
      *_, g_step, u, buf_new = leaf_state(*inputs, flag, None, r, c)
    update = leaf_step(g_step, u, buf_new, None, inputs[4], flag, r, c, dtype)
    return nu_stored, mu_stored, buf_stored, update

  # A leaf's state and its step are staged apart only for Nesterov's barrier between them.
  # Named after the caller, as it shows in jaxprs and profiles: presets_pytorch_leaf_update.
  prefix = config.fn.replace(".", "_")
  staged_update = _staged(leaf_update, f"{prefix}_leaf_update", leaf_config)
  staged_state = _staged(leaf_state, f"{prefix}_leaf_state", leaf_config)
  staged_step = _staged(leaf_step, f"{prefix}_leaf_step", leaf_config)

  def init_fn(params):
    _validation.check_init_params(config.fn, params)
    nu_dtype = _validation.available_dtype(config.fn, "nu_dtype", config.nu_dtype)
    momentum_dtype = (
        _validation.available_dtype(config.fn, "momentum_dtype", config.momentum_dtype)
        if use_momentum else None
    )
    params = jax.tree.map(_as_array, params)  # Python numbers too, as Optax accepts them

    def buffers(value, chosen, real):
      return jax.tree.map(
          lambda p: filled_like(p, value, _storage_dtype(p.dtype, chosen, real=real)), params
      )

    return RMSPropState(
        count=zero_scalar(params) if keep_count else None,
        nu=buffers(config.initial_scale, nu_dtype, True),
        mu=buffers(0.0, nu_dtype, False) if config.centered else None,
        trace=buffers(0.0, momentum_dtype, False) if use_momentum else None,
        # log(1): no decay applied yet.
        log_decay_product=zero_scalar(params, _wide_float()) if keep_decay_product else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args  # accepted, as by Optax's own optimizers (a loss value, say), and unused
    # A state that sums the decays' logs goes on summing them when the decay turns constant:
    # outside jit, optax.inject_hyperparams passes a Python number set with tree_set (a decay
    # of 0 rather than 0.0, say) on as it is, and the product so far must not be lost.
    sums_logs = keep_decay_product or (
        config.bias_correction and getattr(state, "log_decay_product", None) is not None
    )
    # Likewise a count that nothing reads is carried on: optax.tree_utils.tree_set(state,
    # count=...), meant for inject_hyperparams' count (to resume at a step), sets every field
    # of that name, this state's too.
    counts = keep_count or getattr(state, "count", None) is not None
    expected = {"count": counts, "log_decay_product": sums_logs}
    # Params given as None (no tree at all: an empty group of optax.multi_transform's, say)
    # have buffers that are None too, as a buffer this configuration does not keep is.
    no_params = getattr(state, "nu", None) is None
    if not no_params:
      expected.update(mu=config.centered, trace=use_momentum)
    _validation.check_state(config.fn, state, RMSPropState, expected)
    if not no_params:
      _validation.check_state_buffers(
          config.fn,
          {name: getattr(state, name) for name in ("nu", "mu", "trace") if getattr(state, name) is not None},
      )
    _validation.check_update_inputs(
        config.fn, updates, state.nu, params,
        "weight_decay" if use_weight_decay else None,
        state.trace if use_momentum else state.mu,
    )
    # A count set by hand, with tree_set(state, count=100), may be a Python int: an array
    # from here on, as every reader of the count (the rounding's bit stream too) needs one.
    count = None if state.count is None else jnp.asarray(state.count)
    new_count = increment(count) if counts else None
    decay = _at(config, "decay", count)
    # With a Python decay, 1 - decay is taken in double precision before rounding, so a decay
    # of 1 - 1e-9 still adds its sliver of the new gradient instead of rounding to zero.
    one_minus_decay = 1.0 - decay
    lr = None if config.learning_rate is None else _at(config, "learning_rate", count)
    inv_correction = new_log_decay_product = None
    if config.bias_correction:
      # 1 - (product of the decays so far) as -expm1(log of the product), accurate for decays
      # near 1 (where 1 - 0.999 * 0.999 in float32 loses digits), in the widest float JAX has
      # enabled (float64 under jax_enable_x64), then rounded per leaf. A constant decay's
      # product is decay**t; one that may change is summed in the state, one log per step.
      wide = _wide_float()
      log_decay = jnp.log1p(-jnp.asarray(one_minus_decay, wide))
      if sums_logs:
        stored = state.log_decay_product
        log_product = lax.add(stored.astype(wide), log_decay)
        # Stored finite, since a decay of 0 makes the log -inf (any floor below the log of the
        # smallest float64 gives the same product, 0), and in its own dtype, which switching
        # jax_enable_x64 on or off since init does not change.
        floor = np.asarray(_LOG_PRODUCT_FLOOR, wide)[()]
        new_log_decay_product = _cast(lax.max(log_product, floor), stored.dtype)
      else:
        log_product = lax.mul(new_count.astype(wide), log_decay)
      inv_correction = 1.0 / -jnp.expm1(log_product)
    hyper = _Hyper(
        decay=decay, one_minus_decay=one_minus_decay, eps=_at(config, "eps", count), lr=lr,
        neg_lr=None,  # -lr: taken by in_dtype, after the conversion
        momentum=_at(config, "momentum", count) if use_momentum else None,
        weight_decay=_at(config, "weight_decay", count) if use_weight_decay else None,
        inv_correction=inv_correction,
    )
    hyper_by_dtype = {}

    treedef = jax.tree.structure(updates)
    grads = [_as_array(g) for g in treedef.flatten_up_to(updates)]
    nus = treedef.flatten_up_to(state.nu)
    mus = treedef.flatten_up_to(state.mu) if config.centered else [None] * len(grads)
    bufs = treedef.flatten_up_to(state.trace) if use_momentum else [None] * len(grads)
    ps = [_as_array(p) for p in treedef.flatten_up_to(params)] if use_weight_decay else [None] * len(grads)
    masks = (
        _leaf_mask(config.fn, config.weight_decay_mask, updates, params) if use_weight_decay else [True] * len(grads)
    )

    inputs = list(zip(grads, nus, mus, bufs, ps))
    # Where XLA:CPU merges sibling loops (see _cpu_fuses_sibling_loops), each output of a leaf
    # is computed from inputs of its own, and XLA makes one loop of them. It merges only loops
    # whose outputs share a shape and a dtype, so a leaf's gradient, state and params (the
    # step's loop writes the new params, where apply_updates is in the same jit) must share
    # one; without params, they are taken to have their gradients' dtype, as jax.grad gives
    # them. Stochastic rounding is left out: its hash would run once per output.
    siblings = [False] * len(grads)
    if not config.stochastic_rounding and _cpu_fuses_sibling_loops():
      param_dtypes = [None] * len(grads)
      if params is not None and jax.tree.structure(params) == treedef:
        param_dtypes = [_as_array(p).dtype for p in jax.tree.leaves(params)]
      siblings = [
          len({x.dtype for x in arrays if x is not None} | {dtype} - {None}) == 1
          for arrays, dtype in zip(inputs, param_dtypes)
      ]
    own = [index for index, sibling in enumerate(siblings) if sibling]
    # The average reads the inputs themselves, and every other output a copy of its own: then
    # no two loops share a value (a coupled decay's g + weight_decay * p, the new average
    # that the momentum buffer and the step read), which XLA would write to a temporary.
    n_copies = int(config.centered) + int(keep_trace) + 1
    copies = dict(zip(own, _for_recomputing([(inputs[i],) * n_copies for i in own])))

    # Coupled weight decay feeds g + weight_decay * p to the state's loops and to the step's:
    # the step computes it again, from these (see _for_recomputing).
    shared = [i for i in range(len(grads)) if not siblings[i]] if couple_decay else []
    grads_again = dict(zip(shared, _for_recomputing([grads[i] for i in shared])))

    def hypers(g_in, nu):
      """The hyperparameters in a leaf's real and (possibly complex) compute dtypes."""
      cdt = _compute_dtype(g_in.dtype, nu.dtype)
      for dtype in (jnp.finfo(cdt).dtype, cdt):
        if dtype not in hyper_by_dtype:
          hyper_by_dtype[dtype] = hyper.in_dtype(dtype)
      return hyper_by_dtype[jnp.finfo(cdt).dtype], hyper_by_dtype[cdt]

    # Each leaf of a shape shares one trace (see _staged), except with stochastic rounding,
    # which draws each leaf's bits from a stream of its own: those are traced one by one.
    def state_of(staged_fn, fn, index, *args):
      if not config.stochastic_rounding:
        return staged_fn(*args)
      return fn(*args, key=lambda field: _rounding.stream_key(config.seed, count, 3 * index + field))

    # A leaf's state and step in one call, except where Nesterov's step needs the state
    # through a barrier: those leaves' steps come after every state (see below).
    out_nu, out_mu, out_mom, out_updates, nesterov_leaves = [], [], [], [], {}
    for index, (leaf_inputs, flag) in enumerate(zip(inputs, masks)):
      g_in, nu = leaf_inputs[:2]
      r, c = hypers(g_in, nu)
      if config.nesterov and not siblings[index]:
        nu_stored, mu_stored, buf_stored, *leaf = state_of(
            staged_state, leaf_state, index, *leaf_inputs, flag, grads_again.get(index), r, c
        )
        nesterov_leaves[index] = (nu_stored, mu_stored, *leaf, r, c)
        update = None
      else:
        nu_stored, mu_stored, buf_stored, update = state_of(
            staged_update, leaf_update, index, leaf_inputs, copies.get(index), flag,
            grads_again.get(index), r, c, g_in.dtype,
        )
      out_nu.append(nu_stored)
      if config.centered:
        out_mu.append(mu_stored)
      if buf_stored is not None:
        out_mom.append(buf_stored)
      out_updates.append(update)

    # Nesterov's step adds the preconditioned gradient to the new buffer, so it reads that
    # gradient a second time: recomputed from the state as stored (see _for_recomputing).
    # The step rounds nothing stochastically, so it is staged with stochastic rounding too.
    stored = _for_recomputing([leaf[:2] for leaf in nesterov_leaves.values()])
    for (index, leaf), again in zip(nesterov_leaves.items(), stored):
      _, _, g_step, u, buf_new, r, c = leaf
      g_in, p = inputs[index][0], inputs[index][4]
      out_updates[index] = staged_step(g_step, u, buf_new, again, p, masks[index], r, c, g_in.dtype)

    unflatten = treedef.unflatten
    new_state = RMSPropState(
        count=new_count,
        nu=unflatten(out_nu),
        mu=unflatten(out_mu) if config.centered else None,
        trace=unflatten(out_mom) if use_momentum else None,
        log_decay_product=new_log_decay_product,
    )
    return unflatten(out_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The options that choose what the update computes, and the numbers it computes with.
_FLAGS = ("eps_in_sqrt", "centered", "nesterov", "lr_in_momentum", "caution", "bias_correction",
          "decoupled_weight_decay", "maximize", "stochastic_rounding")
_NUMBERS = ("learning_rate", "decay", "eps", "initial_scale", "momentum", "weight_decay")


def validate(config: _Config) -> _Config:
  """Checks a configuration's concrete numbers and flags; returns it with dtypes resolved."""
  fn = config.fn
  name = lambda arg: config.arg_names.get(arg, arg)  # noqa: E731
  for flag in _FLAGS:
    _validation.check_flag(fn, name(flag), getattr(config, flag))
  config = config._replace(**{
      arg: _validation.real_part(fn, name(arg), getattr(config, arg)) for arg in _NUMBERS
  })
  # None means no learning rate (scale_by_rms), no momentum or no weight decay.
  optional = {"learning_rate": config.learning_rate, "momentum": config.momentum,
              "weight_decay": config.weight_decay}
  for arg, value in {"decay": config.decay, "eps": config.eps, **optional}.items():
    if value is not None or arg not in optional:
      _validation.check_number(fn, name(arg), value)
  _validation.check_number(fn, name("initial_scale"), config.initial_scale, schedulable=False)
  if config.learning_rate is not None:
    # rmsprop and presets.pytorch take `maximize`; the other presets, like their frameworks, do not.
    ascend = "pass maximize=True" if config.fn in ("rmsprop", "presets.pytorch") else "negate the objective"
    _validation.check_nonnegative(
        fn, name("learning_rate"), config.learning_rate, "the step size",
        f"To climb an objective rather than descend it, keep the step size positive and {ascend}.",
    )
  _validation.check_unit_interval(fn, name("decay"), config.decay, "the weight the average keeps each step")
  _validation.check_nonnegative(fn, name("eps"), config.eps, "added to the denominator for stability")
  _validation.check_nonnegative(
      fn, name("initial_scale"), config.initial_scale, "the first value of the average of squares"
  )
  if config.momentum is not None:
    _validation.check_unit_interval(fn, name("momentum"), config.momentum, "the momentum buffer's decay")
  # A momentum of 0 is accepted, as Optax does: it is the plain step, and under
  # inject_hyperparams a 0 set by tree_set arrives as a Python int outside jit, an array inside.
  if config.nesterov and config.momentum is None:
    raise ValueError(
        f"{fn}: nesterov=True needs a momentum, but got momentum={config.momentum!r}. "
        "Nesterov's look-ahead is a property of the momentum buffer: pass momentum=0.9 "
        "(for example), or set nesterov=False."
    )
  if config.caution and config.momentum is None:
    raise ValueError(
        f"{fn}: {name('caution')}=True needs a momentum, but got "
        f"{name('momentum')}={config.momentum!r}. Caution zeroes the coordinates where the "
        "momentum buffer's step points against the current gradient; without a buffer every "
        f"step points with its gradient. Pass {name('momentum')}=0.9 (for example), or set "
        f"{name('caution')}=False."
    )
  if config.weight_decay is not None:
    _validation.check_nonnegative(
        fn, name("weight_decay"), config.weight_decay, "the weight decay coefficient"
    )
  _validation.check_int(
      fn, "seed", config.seed, "0; the random bits of stochastic rounding are derived from it"
  )
  return config._replace(
      nu_dtype=_validation.check_dtype(fn, "nu_dtype", config.nu_dtype),
      momentum_dtype=_validation.check_dtype(fn, "momentum_dtype", config.momentum_dtype),
  )


def scale_by_rms(
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    *,
    eps_in_sqrt: bool = True,
    initial_scale: Scalar = 0.0,
    centered: bool = False,
    bias_correction: bool = False,
    nu_dtype: Any = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Divides each gradient coordinate by the root of a leaky average of its squares.

  The preconditioner of RMSProp, without learning rate, momentum or sign flip, for building
  an optimizer with `optax.chain` (follow it with `optax.scale_by_learning_rate`). With
  :math:`\rho` the decay and :math:`t` the step count:

  .. math::

    v_t = \rho\, v_{t-1} + (1 - \rho)\, |g_t|^2, \qquad
    u_t = \frac{g_t}{\sqrt{\hat v_t - |\hat m_t|^2 + \epsilon}}
    \ \text{(eps inside the root)}, \quad
    u_t = \frac{g_t}{\sqrt{\hat v_t - |\hat m_t|^2} + \epsilon}\ \text{(outside)},

  where :math:`m_t = \rho\, m_{t-1} + (1 - \rho)\, g_t` is kept only when ``centered`` (else
  the :math:`m` term is absent), and the hats divide by :math:`1 - \rho^t` when
  ``bias_correction`` (else they are the plain averages). With a decay schedule, or a decay
  given as a JAX array (as `optax.inject_hyperparams` gives it), they divide by 1 minus the
  product of the decays so far, which the state keeps. The average remembers about
  :math:`1 / (1 - \rho)` steps.

  Args:
    decay: :math:`\rho` in [0, 1), or a schedule of the step count (0 on the first update).
    eps: non-negative stabiliser, or a schedule.
    eps_in_sqrt: add ``eps`` inside the square root (Optax, Keras, TF1) or outside (PyTorch).
    initial_scale: first value of :math:`v`: 0 (PyTorch, Keras, Optax) or 1 (TF1, timm).
    centered: divide by the root of the variance estimate :math:`v - m^2` (Graves, 2013).
    bias_correction: divide the averages by :math:`1 - \rho^t`, as Adam does (by 1 minus
      the product of the decays so far with a decay schedule, or a decay given as a JAX
      array).
    nu_dtype: storage dtype of :math:`v` and :math:`m` (arithmetic is at least float32);
      None keeps the param's precision, at least float32.
    stochastic_rounding: round stochastically when storing state in a narrower dtype, so a
      bfloat16 average keeps moving when decay is close to 1.
    seed: seed of the stochastic rounding's random bits (combined with the step count).

  Returns:
    An `optax.GradientTransformationExtraArgs` (its update accepts and ignores extra keyword
    arguments, as Optax's optimizers do) whose state is an `RMSPropState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from rmsprop_optax import scale_by_rms
    >>> opt = optax.chain(scale_by_rms(decay=0.9), optax.scale_by_learning_rate(0.01))
    >>> state = opt.init(jnp.zeros(3))

  References:
    Tieleman and Hinton, Lecture 6.5 - RMSProp, COURSERA: Neural Networks for Machine
    Learning, 2012. Graves, Generating Sequences With Recurrent Neural Networks, 2013.
  """
  config = validate(_Config(
      fn="scale_by_rms", learning_rate=None, decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt,
      initial_scale=initial_scale, centered=centered, momentum=None, nesterov=False,
      lr_in_momentum=True, caution=False, bias_correction=bias_correction, weight_decay=None,
      decoupled_weight_decay=False, weight_decay_mask=None, maximize=False,
      nu_dtype=nu_dtype, momentum_dtype=None, stochastic_rounding=stochastic_rounding,
      seed=seed,
  ))
  return build(config)
