"""Low-precision state: dtypes that stay put, float32 arithmetic, and stochastic rounding.

Expected values come from NumPy (float32/float64 arithmetic, `ml_dtypes` and `np.float16` for
the narrow formats) or from closed forms, never from the package alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from rmsprop_optax import _rounding, rmsprop, scale_by_rms

BF16 = jnp.dtype(jnp.bfloat16)
F16 = jnp.dtype(jnp.float16)
F32 = jnp.dtype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Independent NumPy model of the two neighbours of a float32 value in a narrow format.


def neighbours(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
  """The largest `dtype` value <= x and the smallest >= x, as float64 (equal when exact)."""
  x = np.asarray(x, np.float32)
  if jnp.dtype(dtype) == BF16:
    # bfloat16 is the top half of a float32: clearing the low 16 bits rounds toward zero,
    # adding one unit of the kept bits steps away from zero.
    bits = x.view(np.uint32)
    toward_zero = bits & np.uint32(0xFFFF0000)
    away = np.where(toward_zero == bits, bits, toward_zero + np.uint32(0x10000))
    a = toward_zero.view(np.float32).astype(np.float64)
    b = away.view(np.float32).astype(np.float64)
    return np.minimum(a, b), np.maximum(a, b)
  nearest = x.astype(np.float16)
  up = np.nextafter(nearest, np.float16(np.inf))
  down = np.nextafter(nearest, np.float16(-np.inf))
  wide = x.astype(np.float64)
  near64 = nearest.astype(np.float64)
  lo = np.where(near64 <= wide, near64, down.astype(np.float64))
  hi = np.where(near64 >= wide, near64, up.astype(np.float64))
  return lo, hi


def round_to_nearest(x: np.ndarray, dtype) -> np.ndarray:
  """NumPy's round-to-nearest-even of float32 `x` into `dtype`, back as float32."""
  narrow = ml_dtypes.bfloat16 if jnp.dtype(dtype) == BF16 else np.float16
  with np.errstate(over="ignore"):  # overflow to infinity is part of what is modelled
    return np.asarray(x, np.float32).astype(narrow).astype(np.float32)


def key(count: int = 0, seed: int = 0, stream: int = 0) -> jax.Array:
  return _rounding.stream_key(seed, jnp.int32(count), stream)


# Compiled once per shape and dtype: eager dispatch of its few dozen operations is slow.
round_stochastic = jax.jit(_rounding.round_stochastic, static_argnums=1)


# ---------------------------------------------------------------------------------------------
# Storage dtypes, update dtypes, and float32 arithmetic.

STORAGE = [None, jnp.bfloat16, jnp.float16]
PARAM_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}


@pytest.mark.parametrize("storage", STORAGE, ids=lambda d: "default" if d is None else jnp.dtype(d).name)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_state_dtypes_never_change_and_updates_come_back_in_the_gradient_dtype(storage, stochastic):
  opt = rmsprop(
      0.01, 0.99, centered=True, momentum=0.9, bias_correction=True, weight_decay=1e-2,
      nu_dtype=storage, momentum_dtype=storage, stochastic_rounding=stochastic,
  )
  # One leaf per parameter dtype; the default storage is float32 for all of them.
  params = {
      name: jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).astype(dtype).reshape(3, 4)
      for name, dtype in PARAM_DTYPES.items()
  }
  expected_state = F32 if storage is None else jnp.dtype(storage)
  state = opt.init(params)
  step = jax.jit(opt.update)
  rng = np.random.default_rng(0)
  for _ in range(4):
    grads = {
        name: jnp.asarray(rng.normal(size=(3, 4)), jnp.float32).astype(dtype)
        for name, dtype in PARAM_DTYPES.items()
    }
    updates, state = step(grads, state, params)
    assert state.count.dtype == jnp.int32
    for name, dtype in PARAM_DTYPES.items():
      assert updates[name].dtype == jnp.dtype(dtype), name
      assert state.nu[name].dtype == expected_state, name
      assert state.mu[name].dtype == expected_state, name
      assert state.trace[name].dtype == expected_state, name
      assert np.all(np.isfinite(np.asarray(updates[name], np.float32)))


def test_updates_follow_a_bfloat16_gradient_even_with_float32_params_and_state():
  opt = rmsprop(0.01, momentum=0.5)
  params = jnp.ones(5, jnp.float32)
  updates, state = opt.update(jnp.full(5, 0.5, jnp.bfloat16), opt.init(params), params)
  assert updates.dtype == BF16
  assert state.nu.dtype == F32 and state.trace.dtype == F32


def test_bfloat16_state_steps_with_the_average_as_stored():
  # Arithmetic is float32; the step divides by the average as stored (rounded to bfloat16),
  # so a step depends only on what a checkpoint holds, and XLA reads the buffer it just wrote.
  lr, decay, eps = 0.01, 0.9, 1e-8
  grads = np.array([-0.5, 0.3, 0.24, 1.7e-3, 3.3], np.float32)
  opt = rmsprop(lr, decay, eps, nu_dtype=jnp.bfloat16)
  updates, state = opt.update(jnp.asarray(grads), opt.init(jnp.zeros(5, jnp.float32)))
  # What is stored is the nearest bfloat16 of the float32 average.
  v1_f32 = np.float32(decay) * np.float32(0) + np.float32(1 - decay) * (grads * grads)
  v1_stored = round_to_nearest(v1_f32, BF16).astype(np.float64)
  np.testing.assert_array_equal(np.asarray(state.nu, np.float64), v1_stored)
  expected = -lr * grads / np.sqrt(v1_stored + eps)
  np.testing.assert_allclose(updates, expected, rtol=2e-6)
  # The tolerance tells the two choices apart: the unrounded average gives another step.
  unrounded = -lr * grads / np.sqrt(v1_f32.astype(np.float64) + eps)
  assert np.max(np.abs(unrounded / expected - 1)) > 1e-4

  # The second step starts from the stored value, again in float32 arithmetic.
  grads2 = np.array([0.1, -0.2, 0.3, -0.4, 0.5], np.float32)
  updates2, state2 = opt.update(jnp.asarray(grads2), state)
  v2_f32 = np.float32(decay) * v1_stored.astype(np.float32) + np.float32(1 - decay) * (grads2 * grads2)
  v2_stored = round_to_nearest(v2_f32, BF16).astype(np.float64)
  np.testing.assert_array_equal(np.asarray(state2.nu, np.float64), v2_stored)
  np.testing.assert_allclose(updates2, -lr * grads2 / np.sqrt(v2_stored + eps), rtol=2e-6)


@pytest.mark.parametrize("flags", [
    dict(nu_dtype=jnp.bfloat16),
    dict(nu_dtype=jnp.bfloat16, centered=True, momentum=0.9, momentum_dtype=jnp.bfloat16),
    dict(nu_dtype=jnp.bfloat16, stochastic_rounding=True),
    dict(centered=True, momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(centered=True, momentum=0.9, nesterov=True, lr_in_momentum=False, eps_in_sqrt=False),
    dict(nu_dtype=jnp.bfloat16, momentum=0.9, nesterov=True, stochastic_rounding=True),
    dict(weight_decay=0.1),
    dict(centered=True, momentum=0.9, weight_decay=0.1, maximize=True),
], ids=["bf16", "bf16-centered-momentum", "bf16-stochastic", "f32-centered-momentum",
        "f32-nesterov", "f32-centered-nesterov-lr-out-eps-out", "bf16-nesterov-stochastic",
        "coupled-decay", "coupled-decay-centered-momentum-maximize"])
def test_a_donated_step_updates_state_in_place_without_temporaries(flags):
  # Reading the buffers as stored lets XLA write each new buffer over the old one. Had the
  # step recomputed from the old buffer, XLA would copy it first (a state-sized temporary).
  # Nesterov reads the preconditioned gradient twice, and coupled weight decay's g + wd * p
  # feeds the state and the step: on CPU the step's loop recomputes each, where XLA would
  # otherwise store it in a parameter-sized temporary.
  opt = rmsprop(1e-3, **flags)
  params = jnp.ones(1 << 16, jnp.float32)

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return params + updates, state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params), params).compile()
  entry = compiled.as_text().split("ENTRY", 1)[1]
  # Copies of scalars (the step count) cost nothing; copies of arrays are the regression.
  array_copies = [line for line in entry.splitlines() if " copy(" in line and "[]" not in line.split("=")[1]]
  assert not array_copies
  assert compiled.memory_analysis().temp_size_in_bytes < params.nbytes // 4


@pytest.mark.parametrize("flags", [
    dict(momentum=0.9, nesterov=True),
    dict(centered=True, momentum=0.9, nesterov=True, bias_correction=True, weight_decay=0.1),
    dict(centered=True, momentum=0.9, nesterov=True, lr_in_momentum=False, eps_in_sqrt=False),
    dict(nu_dtype=jnp.bfloat16, momentum=0.9, nesterov=True, momentum_dtype=jnp.bfloat16),
    dict(weight_decay=0.1, maximize=True),
    dict(centered=True, momentum=0.9, weight_decay=0.1, weight_decay_mask={"w": True, "b": False}),
], ids=["nesterov", "centered-bias-decay", "lr-out-eps-out", "bf16", "coupled-decay-maximize",
        "coupled-decay-masked"])
def test_recomputing_instead_of_a_temporary_changes_no_bit(flags, monkeypatch):
  # On CPU the step's loop recomputes Nesterov's preconditioned gradient (from the state as
  # stored) and coupled weight decay's g + wd * p, where XLA would otherwise read each from a
  # temporary. The same arithmetic on the same values: every bit of the updates and the state
  # must match a build that computes each once.
  from rmsprop_optax import _transform  # noqa: PLC0415

  rng = np.random.default_rng(7)
  params = {"w": jnp.asarray(rng.normal(size=(64, 33)), jnp.float32), "b": jnp.ones(33, jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params) for _ in range(4)]

  def run():
    opt = rmsprop(0.01, **flags)
    update = jax.jit(opt.update)
    state, history = opt.init(params), []
    for g in grads:
      updates, state = update(g, state, params)
      history.append((updates, state))
    return history

  recomputed = run()
  monkeypatch.setattr(_transform, "_for_recomputing", lambda buffers: buffers)
  shared = run()
  for ours, theirs in zip(recomputed, shared):
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_float16_state_keeps_its_eps_because_arithmetic_is_float32():
  # eps = 1e-8 is 0 in float16, and the average (1 - decay) * g**2 = 1e-7 is a float16
  # subnormal: the step adds eps in float32 to the average as stored.
  lr, decay, eps = 0.01, 0.9, 1e-8
  assert np.float16(eps) == 0
  grads = jnp.full(4, 1e-3, jnp.float16)
  opt = rmsprop(lr, decay, eps, nu_dtype=jnp.float16)
  updates, state = opt.update(grads, opt.init(jnp.zeros(4, jnp.float16)))
  g = np.float32(np.float16(1e-3))
  stored = np.float16(np.float32(1 - decay) * (g * g))
  np.testing.assert_array_equal(np.asarray(state.nu), np.full(4, stored))
  expected = -lr * float(g) / np.sqrt(float(stored) + eps)
  assert updates.dtype == F16
  np.testing.assert_allclose(np.asarray(updates, np.float64), expected, rtol=1e-3)
  # Without eps (as float16 arithmetic would have it) the step would be 4% larger.
  assert abs(expected - (-lr * float(g) / np.sqrt(float(stored)))) > 0.03 * abs(expected)


def test_stochastic_rounding_changes_nothing_when_state_is_float32():
  grads = jnp.asarray(np.random.default_rng(1).normal(size=(20, 16)), jnp.float32)

  @functools.partial(jax.jit, static_argnums=0)
  def run(stochastic):
    opt = rmsprop(0.01, 0.999, centered=True, momentum=0.9, stochastic_rounding=stochastic, seed=5)

    def body(state, g):
      updates, state = opt.update(g, state)
      return state, updates

    return jax.lax.scan(body, opt.init(jnp.zeros(16, jnp.float32)), grads)

  (plain_state, plain_updates), (sr_state, sr_updates) = run(False), run(True)
  np.testing.assert_array_equal(plain_updates, sr_updates)
  np.testing.assert_array_equal(plain_state.nu, sr_state.nu)


# ---------------------------------------------------------------------------------------------
# A bfloat16 average at decay 0.999: stalls under round-to-nearest, learns under stochastic
# rounding.

DECAY = 0.999
STEPS = 4000
COORDS = 256


@functools.lru_cache(maxsize=None)
def _average_trajectory(kind: str, nu_dtype, stochastic: bool) -> np.ndarray:
  """The stored average of squares after every step, float32, shape (STEPS, COORDS)."""
  tx = scale_by_rms(decay=DECAY, eps=1e-8, nu_dtype=nu_dtype, stochastic_rounding=stochastic, seed=11)
  grads = _gradients(kind)

  @jax.jit
  def run(grads):
    def body(state, g):
      _, state = tx.update(g, state)
      return state, state.nu.astype(jnp.float32)

    return jax.lax.scan(body, tx.init(jnp.zeros(COORDS, jnp.float32)), grads)[1]

  return np.asarray(run(jnp.asarray(grads)))


def _gradients(kind: str) -> np.ndarray:
  if kind == "ones":
    return np.ones((STEPS, COORDS), np.float32)
  return np.random.default_rng(7).normal(size=(STEPS, COORDS)).astype(np.float32)


def _float64_average(grads: np.ndarray) -> np.ndarray:
  v = np.zeros(grads.shape[1])
  out = np.empty(grads.shape)
  for t, g in enumerate(grads.astype(np.float64)):
    v = DECAY * v + (1 - DECAY) * g * g
    out[t] = v
  return out


def test_round_to_nearest_bfloat16_average_stalls_at_a_quarter():
  # Simulate the stored value step by step: float32 arithmetic, then NumPy's bfloat16 rounding.
  v = np.float32(0)
  expected = []
  for _ in range(STEPS):
    v = round_to_nearest(np.float32(DECAY) * v + np.float32(1 - DECAY) * np.float32(1), BF16)[()]
    expected.append(v)
  stored = _average_trajectory("ones", jnp.bfloat16, False)
  np.testing.assert_array_equal(stored, np.broadcast_to(np.array(expected)[:, None], stored.shape))
  # The closed form it should follow, 1 - decay**t, is 0.98 by the end; the stored value
  # stopped at 0.25, where the increment (1 - decay) * (1 - v) = 7.5e-4 is under half a
  # bfloat16 ulp of v (2**-10 = 9.8e-4) and rounds away.
  assert 1 - DECAY**STEPS > 0.98
  assert stored[-1, 0] == 0.25
  assert (1 - DECAY) * (1 - 0.25) < 0.5 * 2.0**-9
  assert stored[STEPS // 4, 0] == 0.25  # stalled long before the end


@pytest.mark.parametrize("kind", ["ones", "gaussian"])
def test_stochastic_rounding_keeps_a_bfloat16_average_within_a_few_percent_of_float32(kind):
  exact = _float64_average(_gradients(kind))
  fp32 = _average_trajectory(kind, jnp.float32, False)
  nearest = _average_trajectory(kind, jnp.bfloat16, False)
  stochastic = _average_trajectory(kind, jnp.bfloat16, True)
  # float32 state follows the float64 recursion closely.
  np.testing.assert_allclose(fp32, exact, rtol=2e-5)

  late = slice(99, None)  # from step 100 on, once the average has some history
  rel = stochastic[late] / exact[late] - 1
  # Each coordinate's trajectory: root-mean-square error of a few percent over thousands of
  # steps (the rounding noise of one stored value, not an average over coordinates).
  per_coordinate_rms = np.sqrt(np.mean(rel**2, axis=0))
  assert np.median(per_coordinate_rms) < 0.04, np.median(per_coordinate_rms)
  assert per_coordinate_rms.max() < 0.10, per_coordinate_rms.max()
  # No drift: the mean over coordinates is unbiased to well under a percent at every step.
  mean_rel = stochastic[late].mean(axis=1) / exact[late].mean(axis=1) - 1
  assert np.abs(mean_rel).max() < 0.01, np.abs(mean_rel).max()
  # Round-to-nearest is biased by tens of percent (down for ones, up for Gaussian noise).
  nearest_rel = nearest[-1].mean() / exact[-1].mean() - 1
  assert abs(nearest_rel) > 0.3, nearest_rel
  if kind == "ones":
    np.testing.assert_allclose(stochastic[-1], exact[-1], rtol=0.04)


@pytest.mark.parametrize("dtype, stochastic, decay, noise", [
    (np.float32, False, 0.9, 0.01), (np.float32, True, 0.999, 0.1), (np.complex64, True, 0.999, 0.1)],
    ids=["real-nearest", "real-stochastic", "complex-stochastic"])
def test_centered_bfloat16_steps_stay_within_a_few_times_the_exact_ones_where_the_variance_is_small(
    dtype, stochastic, decay, noise):
  # Gradients of high signal to noise, 1 + noise * N(0, 1): v - m^2 is a small part of v
  # (at decay 0.999 about 6% late in the run, as m still carries its start at 0; at 0.9 about
  # 1e-4), within the bfloat16 rounding of v and m (a few ulps, as a stochastically rounded
  # value wanders), so rounding can make v - m^2 negative. A clamp at 0 alone then stepped by
  # lr * g / sqrt(eps): 45 times the largest exact step with round-to-nearest at 0.9, over a
  # thousand times with stochastic rounding at 0.999. The floor at 2**-7 v bounds a step by
  # lr * g * 2**3.5 / sqrt(v): about 2.8 times the largest exact step at 0.999, and well
  # under it at 0.9, where the exact variance is below the floor.
  n, steps, lr, eps = 256, 3000, 1e-3, 1e-8
  rng = np.random.default_rng(4)
  grads = (1 + noise * rng.normal(size=(steps, n))).astype(dtype)
  v = np.zeros(n)
  m = np.zeros(n, np.complex128 if dtype == np.complex64 else np.float64)
  exact = []
  for g in grads.astype(m.dtype):
    v = decay * v + (1 - decay) * np.abs(g) ** 2
    m = decay * m + (1 - decay) * g
    exact.append(np.abs(lr * g / np.sqrt(v - np.abs(m) ** 2 + eps)))
  opt = rmsprop(lr, decay, eps, centered=True, nu_dtype=BF16, stochastic_rounding=stochastic)

  def body(state, g):
    u, state = opt.update(g, state)
    return state, jnp.max(jnp.abs(u))

  _, largest = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(opt.init(jnp.zeros(n, dtype)), jnp.asarray(grads))
  late = slice(steps // 3, None)  # once the variance is a small fraction of v
  ratio = np.max(largest[late]) / np.max(np.asarray(exact)[late])
  assert ratio < 3.5, ratio


@pytest.mark.parametrize("decay", [0.9999, 0.99999])
def test_a_float32_average_settles_within_its_stall_band_of_the_weights_fixed_point(decay):
  # v <- d32 * v + w with g**2 = 1 has the fixed point w / (1 - d32): with a Python decay
  # w is (1 - decay) rounded from double, with a float32 array decay 1 - d32, which sums
  # with d32 to 1. Rounding stops v short of it once the step (1 - d) |fixed - v| is under
  # half an ulp: within 2**-24 / (1 - d), one binade either side of 1.
  d32 = np.float32(decay)
  steps = int(40 / (1 - decay))
  band = 2.0**-24 / (1 - decay)
  fixed_points = {}
  for form, given, added in [("python", decay, np.float32(1 - decay)), ("array", jnp.float32(decay), 1 - d32)]:
    opt = rmsprop(1.0, given)
    body = lambda state, _: (opt.update(jnp.ones(1, jnp.float32), state)[1], None)  # noqa: E731
    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(opt.init(jnp.zeros(1)))
    fixed = float(added) / (1 - float(d32))
    settled = float(state.nu[0])
    assert fixed - 1.5 * band <= settled <= fixed + 2.0**-23, (form, settled, fixed, band)
    fixed_points[form] = fixed
  # The Python number's fixed point sits (1 - decay) / (1 - d32) of the way, as documented.
  np.testing.assert_allclose(fixed_points["python"], (1 - decay) / (1 - float(d32)), rtol=1e-7)
  assert fixed_points["array"] == 1.0


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_bfloat16_momentum_buffer_tracks_float32_only_with_stochastic_rounding(stochastic):
  # Buffer b = mu * b + lr * u with a constant u: at mu = 0.999 it should reach lr * u * (1 - mu**t) / (1 - mu).
  mu, lr, steps = 0.999, 1e-3, 3000
  opt = rmsprop(lr, decay=0.0, eps=0.0, momentum=mu, momentum_dtype=jnp.bfloat16,
                stochastic_rounding=stochastic, seed=2)

  @jax.jit
  def run():
    def body(state, _):
      _, state = opt.update(jnp.ones(COORDS, jnp.float32), state)
      return state, None

    return jax.lax.scan(body, opt.init(jnp.zeros(COORDS, jnp.float32)), None, length=steps)[0]

  buffer = np.asarray(run().trace, np.float64)
  expected = lr * (1 - mu**steps) / (1 - mu)  # with decay 0 and eps 0, u = g / |g| = 1
  rel = buffer / expected - 1
  if stochastic:
    assert abs(rel.mean()) < 0.01 and np.abs(rel).max() < 0.1, (rel.mean(), np.abs(rel).max())
  else:
    assert rel.mean() < -0.3, rel.mean()


# ---------------------------------------------------------------------------------------------
# round_stochastic on its own.

N_DRAWS = 1 << 18

UNBIASED_CASES = [
    # (target dtype, float32 value): mid-gap, negative, just below a power of two, a lopsided
    # probability each way, far from 1, float16 subnormals of either sign, a float32 subnormal.
    (BF16, 1 + 0.3 * 2.0**-7),
    (BF16, -(3 + 0.7 * 2.0**-6)),
    (BF16, 2 - 0.25 * 2.0**-7),
    (BF16, 1 + 2.0**-7 / 64),
    (BF16, 1 + 2.0**-7 * 63 / 64),
    (BF16, 3.3e-20),
    (BF16, -1e-40),
    (F16, 1 + 0.3 * 2.0**-10),
    (F16, -(1000 + 0.6 * 0.5)),
    (F16, 2 - 0.1 * 2.0**-11),
    (F16, 3e-8),
    (F16, -2e-8),
    (F16, 1.234e-6),
    (F16, 60000.5),
]


def _case_id(case):
  dtype, value = case
  return f"{jnp.dtype(dtype).name}:{value:.6g}"


@pytest.mark.parametrize("case", UNBIASED_CASES, ids=_case_id)
def test_round_stochastic_is_unbiased_over_many_positions_and_many_steps(case):
  dtype, value = case
  x32 = np.float32(value)
  lo, hi = (float(a[0]) for a in neighbours(np.array([x32]), dtype))
  assert lo < float(x32) < hi, "the case must not be exactly representable"
  p = (float(x32) - lo) / (hi - lo)

  across_positions = round_stochastic(jnp.full(N_DRAWS, x32), dtype, key(count=3))
  across_steps = jax.jit(jax.vmap(lambda c: _rounding.round_stochastic(
      jnp.full((1,), x32), dtype, _rounding.stream_key(0, c, 1))))(jnp.arange(N_DRAWS // 4, dtype=jnp.int32))
  for draws, n in [(across_positions, N_DRAWS), (across_steps, N_DRAWS // 4)]:
    assert draws.dtype == jnp.dtype(dtype)
    values = np.asarray(draws, np.float64).ravel()
    assert set(np.unique(values)) <= {lo, hi}
    # One rounding has mean x and standard deviation (hi - lo) * sqrt(p (1 - p)); the mean
    # of n independent ones is within 6 standard errors of x except with probability 2e-9.
    assert abs(values.mean() - float(x32)) <= 6 * (hi - lo) * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=lambda d: d.name)
def test_round_stochastic_always_returns_one_of_the_two_neighbours(dtype):
  rng = np.random.default_rng(3)
  n = 200_000
  # Log-uniform magnitudes over the target's whole range (subnormals included), both signs.
  low, high = (-45.0, 38.5) if dtype == BF16 else (-8.5, 4.8)
  x = (rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(low, high, n)).astype(np.float32)
  x[::7] = round_to_nearest(x[::7], dtype)  # some exactly representable values
  lo, hi = neighbours(x, dtype)
  for count in range(3):
    out = np.asarray(round_stochastic(jnp.asarray(x), dtype, key(count)), np.float64)
    assert np.all((out == lo) | (out == hi))
    exact = lo == hi
    np.testing.assert_array_equal(out[exact], x[exact].astype(np.float64))
    # Both neighbours occur: not a disguised round-to-nearest or truncation.
    assert np.mean(out[~exact] == hi[~exact]) == pytest.approx(
        np.mean((x[~exact] - lo[~exact]) / (hi[~exact] - lo[~exact])), abs=0.01)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=lambda d: d.name)
def test_round_stochastic_keeps_non_finite_values_and_signed_zeros_and_rounds_to_nearest_at_overflow(dtype):
  largest = float(jnp.finfo(dtype).max)
  ulp = 2.0 ** (np.floor(np.log2(largest)) - jnp.finfo(dtype).nmant)
  f32_max = float(np.finfo(np.float32).max)
  # Beyond the largest finite value: under half an ulp past it (nearest: the largest value),
  # at or past the half-way point (nearest: infinity), far beyond; both signs.
  beyond = [largest + 0.25 * ulp, largest + 0.5 * ulp, largest + 0.75 * ulp, min(1e6 * largest, f32_max)]
  beyond = beyond + [-b for b in beyond]
  x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, largest, -largest] + beyond, np.float32)
  expected = round_to_nearest(x, dtype).astype(np.float64)  # NumPy / ml_dtypes rounding
  assert np.isinf(expected[8]) and expected[7] == largest  # the cases straddle the threshold
  for count in range(16):
    out = np.asarray(round_stochastic(jnp.asarray(x), dtype, key(count)), np.float64)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.signbit(out[3:5]), [False, True])


@pytest.mark.parametrize("dtype", [BF16, F16], ids=lambda d: d.name)
def test_round_stochastic_is_deterministic_for_a_key_and_differs_across_keys(dtype):
  # Every element half-way between neighbours: two independent roundings differ with
  # probability 1/2.
  lo = 1.0
  gap = 2.0**-7 if dtype == BF16 else 2.0**-10
  x = jnp.full((64, 64), lo + gap / 2, jnp.float32)
  base = np.asarray(_rounding.round_stochastic(x, dtype, key(count=5, seed=1, stream=2)), np.float32)  # eager
  again = np.asarray(round_stochastic(x, dtype, key(count=5, seed=1, stream=2)), np.float32)  # compiled
  np.testing.assert_array_equal(base, again)
  for other in [key(count=6, seed=1, stream=2), key(count=5, seed=2, stream=2), key(count=5, seed=1, stream=3)]:
    out = np.asarray(round_stochastic(x, dtype, other), np.float32)
    # 4096 fair coin flips: the fraction that differ is 1/2 give or take 6 * 0.0078.
    assert abs(np.mean(out != base) - 0.5) < 0.05


def test_stream_keys_are_distinct_for_every_seed_step_and_stream():
  counts = jnp.arange(50, dtype=jnp.int32)
  keys = jax.jit(lambda c: jnp.stack([
      _rounding.stream_key(s, c, f) for s in range(4) for f in range(6)]))(counts)
  assert len(set(np.asarray(keys).ravel().tolist())) == 50 * 4 * 6


def test_seeds_beyond_32_bits_are_folded_in_not_dropped():
  count = jnp.int32(7)
  wide = [2**32, 2**32 + 1, 2**40, -2**40, 2**63 - 1, -2**63, 2**64, 2**100]
  keys = [int(_rounding.stream_key(s, count, 0)) for s in [0, 1, -1, 2**31 - 1, 2**32 - 2, *wide]]
  assert len(set(keys)) == len(keys)
  # An injected seed arrives as an int32 array: it must name the same stream as the int.
  for seed in [0, 5, -1, -2**31, 2**31 - 1]:
    assert int(_rounding.stream_key(jnp.int32(seed), count, 0)) == int(_rounding.stream_key(seed, count, 0))


def test_the_update_draws_its_own_stream_for_every_leaf_field_and_step(monkeypatch):
  # The keys the optimizer itself builds, for three leaves of the same shape with the average
  # of squares, the average of gradients and the momentum buffer all in bfloat16.
  used = []
  original = _rounding.round_stochastic

  def spy(value, dtype, stream):
    used.append(int(np.asarray(stream)))
    return original(value, dtype, stream)

  monkeypatch.setattr(_rounding, "round_stochastic", spy)
  opt = rmsprop(0.01, centered=True, momentum=0.9, nu_dtype=BF16, momentum_dtype=BF16,
                stochastic_rounding=True, seed=3)
  params = [jnp.full((8,), 1.0, jnp.float32)] * 3
  state = opt.init(params)
  for _ in range(4):  # eager, so that every key is a concrete number
    _, state = opt.update(params, state, params)
  assert len(used) == 4 * 3 * 3 and len(set(used)) == len(used)


def test_uniform_bits_are_uniform_and_serially_independent():
  n, bins = 1 << 16, 64
  # Over positions, for one key.
  over_positions = np.asarray(_rounding.uniform_like(jnp.zeros((256, 256)), key(9)), np.float64).ravel()
  # Over steps, for one position (what a single stored average sees).
  over_steps = np.asarray(jax.jit(jax.vmap(
      lambda c: _rounding.uniform_like(jnp.zeros((3,)), _rounding.stream_key(0, c, 4))))(
          jnp.arange(n, dtype=jnp.int32)), np.float64)[:, 1]
  critical = 131.37  # chi-square, 63 degrees of freedom, upper tail 1e-6 (scipy.stats.chi2.isf)
  for u in [over_positions, over_steps]:
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * bins).astype(int), minlength=bins)
    chi2 = np.sum((counts - n / bins) ** 2 / (n / bins))
    assert chi2 < critical, (chi2, critical)
    # Lag-one correlation of independent uniforms is ~ N(0, 1/n).
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n)


# ---------------------------------------------------------------------------------------------
# Stochastic rounding inside the optimizer.


def _run_bf16(seed: int, grads: np.ndarray):
  opt = rmsprop(0.01, 0.99, centered=True, momentum=0.9, nu_dtype=jnp.bfloat16,
                momentum_dtype=jnp.bfloat16, stochastic_rounding=True, seed=seed)

  def body(state, g):
    updates, state = opt.update(g, state)
    return state, (updates, state)

  return jax.jit(lambda g: jax.lax.scan(body, opt.init(jnp.zeros(grads.shape[1:], jnp.float32)), g))(grads)


def test_optimizer_with_stochastic_rounding_is_reproducible_for_a_seed_and_varies_with_it():
  grads = jnp.asarray(np.random.default_rng(4).normal(size=(30, 512)), jnp.float32)
  (final_a, (upd_a, _)), (final_b, (upd_b, _)) = _run_bf16(0, grads), _run_bf16(0, grads)
  final_c, (upd_c, _) = _run_bf16(1, grads)
  np.testing.assert_array_equal(upd_a, upd_b)
  np.testing.assert_array_equal(np.asarray(final_a.nu, np.float32), np.asarray(final_b.nu, np.float32))
  assert np.mean(np.asarray(final_a.nu, np.float32) != np.asarray(final_c.nu, np.float32)) > 0.2
  assert not np.array_equal(np.asarray(upd_a), np.asarray(upd_c))


def test_stored_state_is_a_neighbour_of_the_float32_value_each_step():
  # Recompute each step's float32 averages in NumPy from the previous stored state: what is
  # stored must be one of the two bfloat16 values around them, and both must occur.
  decay = 0.99
  grads = np.random.default_rng(5).normal(size=(10, 512)).astype(np.float32)
  _, (_, states) = _run_bf16(3, jnp.asarray(grads))
  nu_prev = np.zeros(512, np.float32)
  mu_prev = np.zeros(512, np.float32)
  ups = downs = 0
  for t in range(len(grads)):
    g = grads[t]
    nu_f32 = np.float32(decay) * nu_prev + np.float32(1 - decay) * (g * g)
    mu_f32 = np.float32(decay) * mu_prev + np.float32(1 - decay) * g
    for stored, value in [(states.nu[t], nu_f32), (states.mu[t], mu_f32)]:
      stored = np.asarray(stored, np.float64)
      lo, hi = neighbours(value, BF16)
      assert np.all((stored == lo) | (stored == hi))
      ups += np.sum((stored == hi) & (lo < hi))
      downs += np.sum((stored == lo) & (lo < hi))
    nu_prev = np.asarray(states.nu[t], np.float32)
    mu_prev = np.asarray(states.mu[t], np.float32)
  assert ups > 1000 and downs > 1000
