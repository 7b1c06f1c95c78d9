"""The one state type shared by `rmsprop` and `scale_by_rms`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding


class RMSPropState(NamedTuple):
  """State of `rmsprop` and `scale_by_rms`, the same type for every configuration.

  A field the configuration does not use holds None, a pytree node with no leaves: the
  state's structure depends only on the configuration and the params, never on the step.

  Attributes:
    count: int32 scalar, the number of updates applied so far, kept where the update reads
      it: a schedule (any hyperparameter given as a callable), ``bias_correction`` or
      ``stochastic_rounding``; else None, as Optax keeps no count for a plain RMSProp. It
      saturates at the largest int32 instead of wrapping, so schedules and bias correction
      never see a negative step.
    nu: leaky average of squared gradient magnitudes, one real leaf per parameter.
    mu: leaky average of gradients (``centered=True`` only, else None).
    trace: momentum buffer (``momentum`` set, else None), named as in Optax's `optax.trace`
      and distinct from the ``momentum`` coefficient, so that
      ``optax.tree_utils.tree_set(state, momentum=...)`` under `optax.inject_hyperparams`
      changes the coefficient and leaves the buffer alone.
    log_decay_product: float32 scalar (float64 if ``jax_enable_x64`` was on at init), the
      log of the product of the decays applied so far, kept where ``bias_correction`` meets
      a decay that may change (a schedule, or a JAX array, as `optax.inject_hyperparams`
      passes it): the averages started at 0 then fall short of the gradients' moments
      by that product, not by the current decay to the power of the count. Else None. It
      comes last and defaults to None, so ``RMSPropState(count, nu, mu, trace)`` still
      builds a state (the README's Checkpointing section restores older checkpoints so).
      Once a decay of 0 makes the product 0, it holds -1000, not -inf: finite, and as good
      as -inf to ``exp``.
  """

  count: jax.Array | None
  nu: Any
  mu: Any
  trace: Any
  log_decay_product: jax.Array | None = None


def filled_like(x: jax.Array, value: float, dtype: Any) -> jax.Array:
  """An array of `value` with `x`'s shape and, under `jit` too, `x`'s sharding.

  A constant has no operand to inherit a sharding from, so under `jit` with automatic mesh
  axes XLA is free to replicate it on every device (the out-of-memory that a plain
  `zeros_like` risks at scale). The result is therefore selected, element by element, between
  `x` and the constant by a predicate computed from `x` that is always false (no number is
  both NaN and infinite) but that the compiler cannot fold away as it folds a constant
  predicate: the select depends on `x`, and sharding propagation gives it `x`'s layout. The
  result holds exactly `value`, whatever `x` holds (inf and NaN included). With explicit
  mesh axes, `full_like` carries `x`'s sharding in the type, as the select requires.

  Outside any trace there is nothing to propagate: the constant is built directly with
  `x`'s sharding (committed where `x` is). The select's five operations would each compile
  once per new shape there, about 0.17 s per leaf whose shape no other leaf has, so that an
  `init` outside `jit` of a model of a thousand differently shaped leaves took minutes.
  """
  fill = jax.lax.convert_element_type(value, dtype)
  if not isinstance(x, jax.core.Tracer) and not isinstance(fill, jax.core.Tracer):
    # Not under jit or eval_shape (where fill would be a tracer): an array to place.
    sharding = x.sharding if x.committed else None
    if sharding is None or isinstance(sharding, (NamedSharding, SingleDeviceSharding)):
      # From the host value: for a scalar x, `full` of an array fill returns that very array,
      # and a buffer that is also a hyperparameter (`initial_scale` under inject_hyperparams)
      # could not be donated with the state, which would hold it twice.
      return jax.lax.full(x.shape, np.asarray(fill), dtype, sharding=sharding)
  real = jnp.real(x)
  source = (x if jnp.issubdtype(dtype, jnp.complexfloating) else real).astype(dtype)
  # Tested on the real part: a complex number is both NaN and infinite when one part is NaN
  # and the other infinite, a real number never is.
  never = jnp.isnan(real) & jnp.isinf(real)
  return jax.lax.select(never, source, jax.lax.full_like(source, value))


def zero_scalar(params: Any, dtype: Any = np.int32) -> jax.Array:
  """A scalar zero of `dtype` on the devices that hold `params`: the step counter's first
  value (int32), or that of another scalar the state carries.

  Params sharded over a mesh (concrete arrays with a `NamedSharding`) get a scalar
  replicated over that same mesh. A scalar left on the default device works until something
  commits it there (a checkpoint restored from the state's own shapes and shardings, a
  `device_put`): the next jitted update then mixes arrays on device 0 with arrays on the
  whole mesh and fails with "incompatible devices". Under a trace (`jit`, `eval_shape`) the
  params have no concrete placement and the scalar is an ordinary zero, which `jit`
  places with its other outputs. Building it with `make_array_from_callback` also works
  when the mesh spans several processes (`jax.distributed.initialize()`).

  Params committed to one device (`device_put(params, device)`) get the scalar on that
  device. Params whose leaves were committed to different devices or meshes by hand get it
  uncommitted, as Optax's count is: committed to any one of them, it would make an update
  outside `jit` fail with "incompatible devices" on the leaves of the others.
  """
  meshes, devices = set(), set()
  for leaf in jax.tree.leaves(params):
    if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
      continue
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
      meshes.add(sharding.mesh)
    elif isinstance(sharding, SingleDeviceSharding) and leaf.committed:
      devices |= sharding.device_set
  if len(meshes) == 1 and not devices:
    replicated = NamedSharding(meshes.pop(), PartitionSpec())
    return jax.make_array_from_callback((), replicated, lambda _: np.zeros((), dtype))
  if not meshes and len(devices) == 1:
    return jax.device_put(np.zeros((), dtype), SingleDeviceSharding(*devices))
  return jnp.zeros([], dtype)


def increment(count: jax.Array) -> jax.Array:
  """Adds one to an int32 counter, stopping at the largest int32 instead of wrapping."""
  limit = jnp.iinfo(jnp.int32).max
  return jnp.where(count < limit, count + jnp.int32(1), jnp.int32(limit))
