"""Checks on concrete hyperparameters and on trees, with messages that say how to fix them.

Hyperparameters may arrive as traced arrays (`optax.inject_hyperparams`, a schedule, a value
under `jit`): those cannot be inspected and pass through. Only concrete numbers are checked.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Where a warning should not point: the frames of this package and of the libraries that call
# it (optax's wrappers, jax's tracing), so that it names the user's line.
_LIBRARY_DIRS = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (sys.modules[__package__], optax, jax)
)


def _user_stacklevel() -> int:
  """The `stacklevel` of `warnings.warn`, called from this function's caller, that points
  at the first frame outside the library directories."""
  level, frame = 1, sys._getframe(1)
  while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
    level, frame = level + 1, frame.f_back
  return level


def concrete_number(value: Any) -> float | None:
  """`value` as a Python float when it is a known scalar; None for schedules and tracers."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float, np.number)):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    try:
      return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
      return None
  return None


def _is_number(value: Any) -> bool:
  """A Python int or float (not a bool)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_static_number(value: Any) -> bool:
  """A Python or NumPy number (not a bool): fixed when the optimizer is built. Arrays (an
  injected hyperparameter) are not: they may change between steps."""
  return _is_number(value) or isinstance(value, (np.integer, np.floating))


def is_static_zero(value: Any) -> bool:
  """True for a Python or NumPy number equal to zero (such as a config file's 0.0 or np.float32(0)).

  The presets follow their frameworks, which allocate no momentum buffer and read no params
  when momentum or weight decay is the number 0. Arrays (an injected hyperparameter) are
  never static: they may change later, so they keep the buffer and the params.
  """
  return is_static_number(value) and value == 0


def _is_real_array(value: Any) -> bool:
  """An array (concrete or traced, of any shape) of real floating or integer numbers."""
  if not isinstance(value, (jax.Array, np.ndarray, np.generic, jax.core.Tracer)):
    return False
  return jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)


def _binds(value: Any, *args: Any) -> bool:
  """Whether the callable `value` can be called with `args`, by its signature (False where
  it has none that Python can read, as some builtins: those are taken as schedules)."""
  try:
    inspect.signature(value).bind(*args)
  except (TypeError, ValueError):
    return False
  return True


def takes_no_argument(value: Any) -> bool:
  """Whether `value` is a callable that can be called with no argument and not with one."""
  return _binds(value) and not _binds(value, 0)


def callable_with_no_argument(value: Any) -> bool:
  """Whether `value` can be called with no argument, its arguments' defaults included: as
  Keras calls a learning rate that is a callable but not a `LearningRateSchedule`."""
  return callable(value) and _binds(value)


def check_number(fn: str, name: str, value: Any, *, schedulable: bool = True) -> None:
  """Checks that `value` is a number, a real scalar array (traced or not) or, if
  `schedulable`, a callable of the step count; raises naming the argument otherwise."""
  if schedulable and callable(value):
    if takes_no_argument(value):
      raise TypeError(
          f"{fn}: `{name}` is a callable that takes no argument, but a schedule is called "
          f"with the step count (0 on the first update). Write it as a function of the count, "
          f"such as lambda count: {_EXAMPLES.get(name, '0.1')}, or pass the number itself."
      )
    return
  numeric = _is_real_array(value)
  allowed = "a number, a scalar array or a schedule (a callable of the step count)"
  if not schedulable:
    allowed = "a number or a scalar array"
  if not (_is_number(value) or numeric):
    raise TypeError(
        f"{fn}: `{name}` must be {allowed}, but got {name}={value!r} (of type "
        f"{type(value).__name__}). Pass a number such as {_EXAMPLES.get(name, '0.1')}."
    )
  if numeric and np.ndim(value) != 0:
    raise ValueError(
        f"{fn}: `{name}` must be a scalar, but got an array of shape {np.shape(value)}. One "
        f"value applies to every coordinate; pass a number such as {_EXAMPLES.get(name, '0.1')}, "
        "or use optax.masked or optax.multi_transform to give leaves different values."
    )


def real_part(fn: str, name: str, value: Any) -> Any:
  """`value`, with a complex scalar array replaced by its real part (checked to be all of it
  where concrete): the value optax.inject_hyperparams meant before casting it to complex."""
  arrays = (jax.Array, np.ndarray, np.generic, jax.core.Tracer)
  # Only NumPy and JAX values: another library's tensor has a dtype NumPy cannot read, and
  # check_number then names it in its message.
  if callable(value) or not isinstance(value, arrays) or not jnp.iscomplexobj(value):
    return value
  if not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0 and np.imag(np.asarray(value)) != 0:
    raise ValueError(
        f"{fn}: `{name}` must be real, but got {name}={value!r}, with a nonzero imaginary "
        f"part. Pass a real number such as {_EXAMPLES.get(name, '0.1')}."
    )
  return jnp.real(value)


def check_schedule_output(fn: str, name: str, value: Any) -> None:
  """Checks that a schedule's value at one step is a real scalar (traced or not)."""
  if _is_number(value) or (_is_real_array(value) and np.ndim(value) == 0):
    return
  if _is_real_array(value):
    raise ValueError(
        f"{fn}: the schedule given as `{name}` returned an array of shape {np.shape(value)}, "
        "but a hyperparameter must be a scalar at every step. Make the schedule return one "
        "number (such as an Optax schedule does)."
    )
  raise TypeError(
      f"{fn}: the schedule given as `{name}` returned {value!r} (of type "
      f"{type(value).__name__}), but a schedule must return a real number at every step. "
      "Check that the function ends with a `return` of its value, as an Optax schedule does."
  )


def check_flag(fn: str, name: str, value: Any, *, inert: str | None = None, none_allowed: bool = False) -> None:
  """Checks that an option is a Python (or NumPy) bool (or None, where `none_allowed`).

  A structural option chooses what is computed. An `inert` one is a framework's argument
  that changes nothing here, kept so that the framework's call runs unchanged; `inert` says
  what it chooses there, for the message.
  """
  if value is None and none_allowed:
    return
  if not isinstance(value, (bool, np.bool_)):
    allowed = "True, False or None" if none_allowed else "True or False"
    why = (
        f"It chooses {inert}, which changes nothing here (it is accepted so that the "
        "framework's call runs unchanged)"
        if inert is not None
        else "It selects what the update computes, so it cannot be a string, a number or an array"
    )
    raise TypeError(
        f"{fn}: `{name}` must be {allowed}, but got {name}={value!r} (of type "
        f"{type(value).__name__}). {why}: pass {name}=True or {name}=False"
        + (", or leave it out." if inert is not None or none_allowed else ".")
    )


def _narrow_hint(value: Any) -> str:
  """For a half-precision array: how its value may have been rounded, and the fix."""
  dtype = getattr(value, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits > 16:
    return ""
  return (
      f" The value arrived as a {np.dtype(dtype).name} array, which keeps only a few "
      "significant digits (bfloat16 rounds 0.999 to 1): optax.inject_hyperparams casts "
      "hyperparameters to the params' dtype unless given hyperparam_dtype=jnp.float32."
  )


# An example value per argument, in the caller's names too, for the messages above.
_EXAMPLES = {
    "learning_rate": "1e-3", "lr": "1e-2", "decay": "0.9", "alpha": "0.99", "rho": "0.9",
    "eps": "1e-8", "epsilon": "1e-7", "momentum": "0.9", "weight_decay": "1e-4",
    "initial_scale": "0.0", "loss_scale_factor": "1024.0", "ema_momentum": "0.99",
}


def check_unit_interval(fn: str, name: str, value: Any, meaning: str) -> None:
  """Checks `0 <= value < 1` for a concrete value."""
  number = concrete_number(value)
  if number is None:
    return
  if not (0.0 <= number < 1.0):
    raise ValueError(
        f"{fn}: `{name}` must be in [0, 1) ({meaning}), but got {name}={value!r}. "
        f"Pass a value such as 0.9 or 0.99; values near 1 give a longer memory."
        + _narrow_hint(value)
    )


def check_nonnegative(fn: str, name: str, value: Any, meaning: str, negative_fix: str = "") -> None:
  """Checks that a concrete value is finite and at least 0; `negative_fix`, if given, is
  added to the message for a negative one."""
  number = concrete_number(value)
  if number is None:
    return
  if not (math.isfinite(number) and number >= 0.0):
    fix = f" {negative_fix}" if negative_fix and number < 0 else ""
    raise ValueError(
        f"{fn}: `{name}` must be a finite number >= 0 ({meaning}), but got "
        f"{name}={value!r}. Pass a non-negative finite value.{fix}"
    )


def check_dtype(fn: str, name: str, dtype: Any) -> Any:
  """Returns `dtype` as a NumPy dtype, or raises unless it is None or a real floating dtype."""
  if dtype is None:
    return None
  if isinstance(dtype, (jax.Array, np.ndarray)):
    raise TypeError(
        f"{fn}: `{name}` must be None or a floating dtype, but got an array ({dtype!r}). "
        "optax.inject_hyperparams calls dtype classes such as jnp.bfloat16 as if they were "
        f"schedules: pass {name}='bfloat16' (a string), or list '{name}' in its static_args."
    )
  try:
    resolved = jnp.dtype(dtype)
  except TypeError as error:
    raise TypeError(
        f"{fn}: `{name}` must be None or a floating dtype such as jnp.float32 or "
        f"jnp.bfloat16, but got {name}={dtype!r}, which is not a dtype."
    ) from error
  if not jnp.issubdtype(resolved, jnp.floating):
    raise TypeError(
        f"{fn}: `{name}` must be None or a real floating dtype such as jnp.float32 or "
        f"jnp.bfloat16, but got {name}={resolved.name}. Storage of a running average needs "
        "a real floating type; leave it None to use the parameter's precision."
    )
  info = jnp.finfo(resolved)
  if info.bits < 16:
    squares = (f": a gradient above {math.sqrt(float(info.max)):.3g} overflows it once squared"
               if name == "nu_dtype" else "")
    raise TypeError(
        f"{fn}: `{name}` must be a floating dtype of at least 16 bits, but got "
        f"{name}={resolved.name}, which holds {info.nmant} mantissa "
        f"bit{'s' if info.nmant != 1 else ''} and values up to "
        f"{float(info.max):g}{squares}. Pass 'bfloat16', which has float32's range, with "
        "stochastic_rounding=True to keep a narrow state unbiased."
    )
  return resolved


def available_dtype(fn: str, name: str, dtype: Any) -> Any:
  """`dtype` as JAX stores it; warns, naming the argument, where a 64-bit one becomes 32."""
  if dtype is None:
    return None
  stored = jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
  if stored != dtype:
    warnings.warn(
        f"{fn}: `{name}`={jnp.dtype(dtype).name} is not available while jax_enable_x64 is "
        f"off, so the state is stored as {stored.name}. Enable it before init "
        f"(jax.config.update('jax_enable_x64', True)), or pass {name}=jnp.{stored.name}.",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )
  return stored


def check_int(fn: str, name: str, value: Any, example: str) -> None:
  """Checks that `value` is an int or an integer scalar array (traced or not); `example`
  completes the message's fix ("such as 0; ...")."""
  # An integer scalar array passes too: optax.inject_hyperparams turns every int into one.
  if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0 and jnp.issubdtype(value.dtype, jnp.integer):
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise TypeError(
        f"{fn}: `{name}` must be an int (or an integer scalar array), but got "
        f"{name}={value!r}. Pass an integer such as {example}."
    )


def _leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(path) or "<root>", leaf) for path, leaf in leaves]


def path_at(tree: Any, index: int) -> str:
  """The path of `tree`'s leaf number `index`, for a message. Found only when a message needs
  it: `keystr` on every leaf of a large tree at every trace would cost tracing time."""
  return _leaves_with_paths(tree)[index][0]


def check_init_params(fn: str, params: Any) -> None:
  """Raises TypeError naming the first leaf of `params` that is not a floating array."""
  for path, leaf in _leaves_with_paths(params):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None and isinstance(leaf, (bool, int, float, complex)):
      dtype = np.result_type(leaf)
    if dtype is None:
      raise TypeError(
          f"{fn}.init: the parameter at {path} is a {type(leaf).__name__} ({leaf!r:.60}), but "
          "every leaf of the params must be an array or a number. Keep other values out of "
          "the params tree, or set such a leaf to None (a node with no leaves)."
      )
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"{fn}.init: the parameter at {path} has dtype {np.dtype(dtype).name}, but "
          "RMSProp needs floating (or complex) parameters to keep a running average. "
          "Cast it to a floating dtype, or leave it out of the optimizer with "
          "optax.masked or optax.multi_transform (or set it to None)."
      )


# What each optional field of the state holds and which option keeps it, for the message
# below; and, for a field that checkpoints of earlier versions lack, how to rebuild it.
_FIELDS = {
    "count": ("a step count", "a schedule, bias_correction or stochastic_rounding", ""),
    "mu": ("an average of gradients", "centered=True", ""),
    "trace": ("a momentum buffer", "a momentum", ""),
    "log_decay_product": (
        "the log of the decays' product",
        "bias_correction and a decay that may change (a schedule, or a JAX array such as "
        "optax.inject_hyperparams passes)",
        " For a state restored from a checkpoint that predates the field, set it to the sum of "
        "the logs of the decays applied so far: state._replace(log_decay_product="
        "jnp.float32(sum(math.log(decay(i)) for i in range(int(state.count))))), or for a "
        "constant decay given as an array, to int(state.count) * math.log(float(decay)). Under "
        "optax.inject_hyperparams, whose states saved before this field was kept for an "
        "injected decay lack it too, set it in state.inner_state, as the README's "
        "Checkpointing section shows.",
    ),
}


def check_state(fn: str, state: Any, state_type: type, expected: dict[str, bool]) -> None:
  """Checks that `state` is a `state_type` whose optional fields are present exactly where
  `expected` says this configuration keeps them: a state from another configuration (a
  checkpoint of an earlier run, say) would otherwise fail deep inside the update, or lose a
  buffer without a word."""
  if not isinstance(state, state_type):
    raise TypeError(
        f"{fn}.update: the state must be the {state_type.__name__} returned by this "
        f"optimizer's init, but got one of type {type(state).__name__}. Pass the state that init (or the "
        "previous update) returned; restore a checkpoint with that state as its target, so "
        "that it comes back as the same type."
    )
  for field, keeps in expected.items():
    held = getattr(state, field) is not None
    if held == keeps:
      continue
    what, option, rebuild = _FIELDS[field]
    if keeps:
      problem = f"this optimizer, configured with {option}, needs {what} (`{field}`), which "
      problem += "the state lacks"
    else:
      problem = f"the state holds {what} (`{field}`), which this optimizer, not configured "
      problem += f"with {option}, does not keep"
    raise ValueError(
        f"{fn}.update: the state was made by a differently configured optimizer: {problem}. "
        "Call init of this optimizer for a fresh state, or build the optimizer with the "
        "options of the one that made the state." + (rebuild if keeps else "")
    )


def check_state_buffers(fn: str, buffers: dict[str, Any]) -> None:
  """Checks that the state's buffers (`nu` first, then those it keeps of `mu` and `trace`) are
  floating arrays of one tree structure and one shape per leaf. `nu` is checked against the
  gradients next; a buffer changed by hand, or a state put together from several, would
  otherwise fail deep inside the update, in JAX's words."""
  (first, reference), *others = buffers.items()
  reference_def = jax.tree.structure(reference)
  fix = ("Call init for a fresh state, or restore a checkpoint into the state that init "
         "returns, so that every buffer comes back as it was saved.")
  for name, tree in others:
    if jax.tree.structure(tree) != reference_def:
      raise ValueError(
          f"{fn}.update: the state's `{name}` does not have the tree structure of its "
          f"`{first}`: {jax.tree.structure(tree)} against {reference_def}. {fix}"
      )
  for name, tree in buffers.items():
    for index, (leaf, like) in enumerate(zip(jax.tree.leaves(tree), jax.tree.leaves(reference))):
      dtype = getattr(leaf, "dtype", None)
      if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        got = np.dtype(dtype).name if dtype is not None else type(leaf).__name__
        raise TypeError(
            f"{fn}.update: the state's `{name}` at {path_at(tree, index)} is {got}, but the "
            f"optimizer's buffers are floating (or complex) arrays. {fix}"
        )
      if tuple(np.shape(leaf)) != tuple(np.shape(like)):
        raise ValueError(
            f"{fn}.update: the state's `{name}` at {path_at(tree, index)} has shape "
            f"{tuple(np.shape(leaf))}, but its `{first}` there has shape "
            f"{tuple(np.shape(like))}. {fix}"
        )


def check_update_inputs(
    fn: str, updates: Any, nu: Any, params: Any, needs_params: str | None, buffers: Any = None
) -> None:
  """Checks structure, shapes and dtypes of `updates` (and `params`) against the state.

  `buffers`, a state tree that is complex where the params given to init were (the momentum
  buffer or the average of gradients), or None where the state has none.
  """
  update_def = jax.tree.structure(updates)
  state_def = jax.tree.structure(nu)
  if update_def != state_def:
    raise ValueError(
        f"{fn}.update: the gradients' tree structure does not match the optimizer state's. "
        f"Gradients: {update_def}; state (from init): {state_def}. Call init on params with "
        "the same structure as the gradients you pass to update."
    )
  grads = jax.tree.leaves(updates)
  path_of = lambda index: path_at(updates, index)  # noqa: E731
  like = jax.tree.leaves(buffers) if buffers is not None else [None] * len(grads)
  for index, (g, n, buffer) in enumerate(zip(grads, jax.tree.leaves(nu), like)):
    dtype = getattr(g, "dtype", None)
    if dtype is None and isinstance(g, (int, float, complex)):
      dtype = jnp.result_type(g)  # a Python number, as JAX would convert it
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      name = np.dtype(dtype).name if dtype is not None else type(g).__name__
      raise TypeError(
          f"{fn}.update: the gradient at {path_of(index)} has dtype {name}, but gradients must "
          "be floating (or complex) arrays. Differentiate with respect to floating "
          "parameters, or cast the gradient with .astype(jnp.float32)."
      )
    if tuple(np.shape(g)) != tuple(n.shape):
      raise ValueError(
          f"{fn}.update: the gradient at {path_of(index)} has shape {tuple(np.shape(g))}, but "
          f"the optimizer state for that leaf has shape {tuple(n.shape)}. The gradients must "
          "have the shapes of the params given to init; re-run init if the model changed."
      )
    gradient_complex = jnp.issubdtype(dtype, jnp.complexfloating)
    if buffer is not None and gradient_complex != jnp.issubdtype(buffer.dtype, jnp.complexfloating):
      kinds = ("complex", "real") if gradient_complex else ("real", "complex")
      raise TypeError(
          f"{fn}.update: the gradient at {path_of(index)} is {kinds[0]} "
          f"({np.dtype(dtype).name}), but the parameter given to init for that leaf was "
          f"{kinds[1]}, and its state is {buffer.dtype.name}. Pass gradients of the "
          "parameters' own kind (jax.grad of a complex parameter is complex), or re-run init "
          "on the parameters you optimize."
      )
  if needs_params is not None:
    if params is None and update_def.num_leaves:  # a tree without leaves needs none
      raise ValueError(
          f"{fn}.update: {needs_params} needs the current parameters, but params=None was "
          "passed. Call update(grads, state, params)."
      )
    if jax.tree.structure(params) != update_def:
      raise ValueError(
          f"{fn}.update: the params' tree structure does not match the gradients'. Params: "
          f"{jax.tree.structure(params)}; gradients: {update_def}. Pass the params the "
          "gradients were taken of."
      )
  if params is None or jax.tree.structure(params) != update_def:
    return  # params the update does not read, passed in some other shape: left alone
  for index, (p, g) in enumerate(zip(jax.tree.leaves(params), grads)):
    if needs_params is not None and tuple(np.shape(p)) != tuple(np.shape(g)):
      raise ValueError(
          f"{fn}.update: the parameter at {path_of(index)} has shape {tuple(np.shape(p))}, but "
          f"its gradient has shape {tuple(np.shape(g))}. Pass the params the gradients were "
          "taken of."
      )
    # The buffers cannot tell a real parameter's state from a complex one's where all are
    # real (plain RMSProp keeps only the real `nu`), but the params can.
    if jnp.iscomplexobj(g) != jnp.iscomplexobj(p):
      if jnp.iscomplexobj(g):
        kinds = ("complex", "real")
        why = ("the step's imaginary part could not be applied, yet it would enter the average "
               "of squares. Pass jnp.real of the gradient, or make the parameter complex and "
               "re-run init.")
      else:
        kinds = ("real", "complex")
        why = ("the update would be computed in the real dtype, and a weight decay would see "
               "only the parameter's real part. Pass gradients of the parameters' own kind "
               "(jax.grad of a complex parameter is complex), for instance g.astype(p.dtype).")
      raise TypeError(
          f"{fn}.update: the gradient at {path_of(index)} is {kinds[0]} "
          f"({jnp.result_type(g).name}), but its parameter is {kinds[1]} "
          f"({jnp.result_type(p).name}): {why}"
      )
