"""The one state type shared by `rmsprop` and `scale_by_rms`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

#: What a state field holds when the configuration does not use it: a pytree node with no
#: leaves, so the state's structure depends only on the configuration and the params.
EMPTY = optax.EmptyState()


class RMSPropState(NamedTuple):
  """State of `rmsprop` and `scale_by_rms`, the same type for every configuration.

  Attributes:
    count: int32 scalar, the number of updates applied so far. It saturates at the largest
      int32 instead of wrapping, so schedules and bias correction never see a negative step.
    nu: leaky average of squared gradient magnitudes, one real leaf per parameter.
    mu: leaky average of gradients (``centered=True`` only, else an empty placeholder).
    momentum: momentum buffer (``momentum`` set, else an empty placeholder).
  """

  count: jax.Array
  nu: Any
  mu: Any
  momentum: Any


def filled_like(x: jax.Array, value: float, dtype: Any) -> jax.Array:
  """An array of `value` with `x`'s shape and, under `jit` too, `x`'s sharding.

  A constant has no operand to inherit a sharding from, so under `jit` XLA is free to put
  all of it on one device (the out-of-memory on device 0 that a plain `zeros_like` risks at
  scale). Selecting between `x` and the constant with an all-false predicate ties the
  result to `x`, and SPMD propagation gives it `x`'s layout; the result holds exactly
  `value`, whatever `x` holds (inf and NaN included).
  """
  source = jnp.real(x) if not jnp.issubdtype(dtype, jnp.complexfloating) else x
  fill = jnp.full(x.shape, value, dtype)
  return jax.lax.select(jnp.zeros(x.shape, jnp.bool_), source.astype(dtype), fill)


def increment(count: jax.Array) -> jax.Array:
  """Adds one to an int32 counter, stopping at the largest int32 instead of wrapping."""
  limit = jnp.iinfo(jnp.int32).max
  return jnp.where(count < limit, count + jnp.int32(1), jnp.int32(limit))
