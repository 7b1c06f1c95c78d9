"""Stochastic rounding into a narrower floating dtype, with counter-based random bits.

Round-to-nearest makes a low-precision leaky average stall: `decay * v + (1 - decay) * g**2`
rounds back to `v` once the increment is under half an ulp of `v`. Rounding up with
probability equal to the distance from the lower neighbour (in units of the gap between the
two neighbours) keeps the stored value unbiased, so the average keeps moving in expectation.

The random bits come from a hash of (seed, step, leaf, field, element index): no key to
thread through the state, the same inputs give the same bits on every backend (integer
arithmetic only), and being elementwise in the element index, the computation partitions
across devices with no communication.
"""

from __future__ import annotations

from typing import Any

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


def _seed_bits(seed: int) -> jax.Array:
  """A Python int seed as 32 bits: as itself in [-2**31, 2**32), else every word hashed in.

  Seeds an int32 or uint32 can hold keep their bits (an injected seed arrives as int32);
  larger ones, such as 64-bit seeds, are folded word by word, so 2**32 + s is not s.
  """
  bits = jnp.uint32(seed & 0xFFFFFFFF)
  if -2**31 <= seed < 2**32:
    return bits
  rest = seed >> 32
  while True:
    bits = _mix(bits ^ _GOLDEN) ^ jnp.uint32(rest & 0xFFFFFFFF)
    if rest in (0, -1):  # the sign word is hashed in too: -2**40 is not 2**40's mirror
      return bits
    rest >>= 32


def stream_key(seed: int, count: jax.Array, stream: int) -> jax.Array:
  """A uint32 scalar naming one (seed, step, stream) triple; streams separate leaves and fields."""
  if isinstance(seed, (jax.Array, np.ndarray)):  # injected by optax.inject_hyperparams
    seed_bits = jnp.asarray(seed).astype(jnp.uint32)
  else:
    seed_bits = _seed_bits(int(seed))
  h = _mix(seed_bits ^ _GOLDEN)
  h = _mix(h ^ count.astype(jnp.uint32))
  return _mix(h ^ (jnp.uint32(stream & 0xFFFFFFFF) * _GOLDEN))


def random_bits(shape: tuple[int, ...], key: jax.Array) -> jax.Array:
  """Uint32 hash bits, one per element of an array of `shape`: a pure function of `key` and position.

  Elements are numbered row-major modulo 2**32, so in a leaf of more than 2**32 elements,
  elements 2**32 apart share their bits (harmless for unbiasedness, which is per element).
  """
  flat = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    position = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    flat = flat + position * np.uint32(stride & 0xFFFFFFFF)
    stride *= shape[axis]
  # The key enters by XOR after the Weyl step, not by addition: with `flat * G + key`, the
  # stream of one key would be the stream of any other shifted by a fixed number of elements.
  return _mix((flat * _GOLDEN) ^ key)


def uniform_like(x: jax.Array, key: jax.Array) -> jax.Array:
  """Float32 numbers in [0, 1), multiples of 2**-24, one per element of `x` (see `random_bits`)."""
  # The top 24 bits give every float32 multiple of 2**-24 in [0, 1) exactly once.
  return (random_bits(x.shape, key) >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def round_stochastic(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
  """Rounds real floating `x` to the narrower `dtype`, unbiased: E[result] = x.

  A value between two neighbours ``lo < x < hi`` of `dtype` becomes ``hi`` with probability
  ``(x - lo) / (hi - lo)`` and ``lo`` otherwise; values `dtype` holds exactly come back
  unchanged. Subnormals of `dtype` are neighbours like any other. The probability is resolved
  to 2**-16 for float32 into bfloat16 and 2**-24 otherwise: exact for float32 inputs into
  bfloat16 (which carry at most 16 bits beyond it) and into float16's normal range (13 bits
  beyond it); a bias under 2**-24 of a gap for float32 inputs below that range and for
  float64 inputs.

  Corners:

  * infinities and NaN are returned as they are; signed zeros keep their sign;
  * near overflow it rounds to nearest: a finite value that round-to-nearest sends to an
    infinity becomes that infinity, and one between the largest finite value and that
    threshold becomes the largest finite value. Stochastic rounding thus never creates an
    infinity that round-to-nearest would not, nor hides one that it would. (Saturating
    instead would be no safer for RMSProp: a centered average of squares clipped below the
    square of its mean gives a zero variance and a step of g / sqrt(eps).)

  Cost: one integer hash per element plus a few elementwise operations, fused by XLA with
  the rest of the update. Float32 into bfloat16, the common case, adds the random bits below
  bfloat16's precision to the float32 bit pattern and truncates: about half the work of the
  general path, and exact for float32 subnormals even where the platform flushes them.
  """
  dtype = jnp.dtype(dtype)
  if not (jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(
        f"round_stochastic: needs real floating input and target dtypes, but got "
        f"{x.dtype.name} into {dtype.name}."
    )
  if x.dtype == jnp.float32 and dtype == jnp.bfloat16:
    return _float32_to_bfloat16(x, key)
  return _round_general(x, dtype, key)


def _nearest_at_the_edges(rounded: jax.Array, x: jax.Array) -> jax.Array:
  """`rounded`, except round-to-nearest wherever either rounding is infinite or NaN."""
  nearest = x.astype(rounded.dtype)
  return jnp.where(jnp.isfinite(rounded) & jnp.isfinite(nearest), rounded, nearest)


def _float32_to_bfloat16(x: jax.Array, key: jax.Array) -> jax.Array:
  """Bfloat16 keeps the top 16 bits of a float32. Adding 16 uniform bits to the 16 it drops
  carries into the kept ones with probability (dropped bits) / 2**16, the distance to the
  neighbour nearer zero in units of the gap: for either sign (the format is sign-magnitude),
  across binades (a carry into the exponent is the next binade's first value) and among
  subnormals (linear in the bits), that is unbiased rounding."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  kept = ((bits + (random_bits(x.shape, key) >> 16)) >> 16).astype(jnp.uint16)
  # A carry out of the largest finite value gives an infinity, and only NaN bit patterns can
  # overflow the uint32 sum: both are settled by round-to-nearest.
  return _nearest_at_the_edges(jax.lax.bitcast_convert_type(kept, jnp.bfloat16), x)


def _round_general(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
  """Any wider real dtype into any narrower one, from the two neighbours found by `nextafter`.

  Where the platform flushes subnormals of `x`'s dtype to zero (XLA on CPU does for
  float32), such an `x` is rounded to nearest: below 1.2e-38, the difference is immaterial.
  """
  nearest = x.astype(dtype)
  back = nearest.astype(x.dtype)
  # The neighbour on the other side of `x` (an infinity beyond the largest finite value).
  toward = jnp.where(back > x, jnp.array(-jnp.inf, dtype), jnp.array(jnp.inf, dtype))
  other = jnp.nextafter(nearest, toward)
  lo = jnp.minimum(nearest, other)
  hi = jnp.maximum(nearest, other)
  lo_back = lo.astype(x.dtype)
  gap = hi.astype(x.dtype) - lo_back
  use_nearest = (back == x) | ~jnp.isfinite(gap)  # exact, non-finite, or at the edge of the range
  # `x - lo_back` is exact (the two are within a factor of two, or lo is zero).
  p_up = jnp.where(use_nearest, jnp.zeros_like(gap), (x - lo_back) / jnp.where(use_nearest, 1, gap))
  u = uniform_like(x, key).astype(x.dtype)
  rounded = jnp.where(u < p_up, hi, lo)
  return jnp.where(use_nearest, nearest, rounded)
