"""Stochastic rounding into a narrower floating dtype, with counter-based random bits.

Round-to-nearest makes a low-precision leaky average stall: `decay * v + (1 - decay) * g**2`
rounds back to `v` once the increment is under half an ulp of `v`. Rounding up with
probability equal to the distance to the lower neighbour (in ulps) keeps the stored value
unbiased, so the average keeps moving in expectation.

The random bits come from a hash of (seed, step, leaf, field, element index): no key to
thread through the state, the same inputs give the same bits, and being elementwise in the
element index, the computation partitions across devices with no communication.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)


def _mix(h: jax.Array) -> jax.Array:
  """A 32-bit avalanche finaliser (MurmurHash3's fmix32): every input bit moves every output bit."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def stream_key(seed: int, count: jax.Array, stream: int) -> jax.Array:
  """A uint32 scalar naming one (seed, step, stream) triple; streams separate leaves and fields."""
  h = _mix(jnp.uint32(seed & 0xFFFFFFFF) ^ _GOLDEN)
  h = _mix(h ^ count.astype(jnp.uint32))
  return _mix(h ^ (jnp.uint32(stream & 0xFFFFFFFF) * _GOLDEN))


def uniform_like(x: jax.Array, key: jax.Array) -> jax.Array:
  """Float32 numbers in [0, 1), one per element of `x`, a pure function of `key` and position."""
  # Row-major flat index of each element (modulo 2**32), built from per-axis iotas.
  flat = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in range(x.ndim - 1, -1, -1):
    position = jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    flat = flat + position * np.uint32(stride & 0xFFFFFFFF)
    stride *= x.shape[axis]
  bits = _mix(flat * _GOLDEN + key)
  # The top 24 bits give every float32 multiple of 2**-24 in [0, 1) exactly once.
  return (bits >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def round_stochastic(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
  """Rounds `x` to `dtype`, up with probability equal to its distance from the value below.

  `x` must be a real floating array wider than `dtype`. Values exactly representable in
  `dtype`, infinities and NaN come back as round-to-nearest gives them.
  """
  nearest = x.astype(dtype)
  back = nearest.astype(x.dtype)
  # The neighbour of `nearest` on the other side of `x`.
  toward = jnp.where(back > x, jnp.array(-jnp.inf, dtype), jnp.array(jnp.inf, dtype))
  other = jnp.nextafter(nearest, toward)
  other_back = other.astype(x.dtype)
  below = jnp.minimum(back, other_back)
  above = jnp.maximum(back, other_back)
  gap = above - below
  p_up = jnp.where(gap > 0, (x - below) / gap, 0)
  u = uniform_like(x, key)
  rounded = jnp.where(u < p_up, jnp.maximum(nearest, other), jnp.minimum(nearest, other))
  exact = (back == x) | ~jnp.isfinite(x) | ~jnp.isfinite(other_back)
  return jnp.where(exact, nearest, rounded)
