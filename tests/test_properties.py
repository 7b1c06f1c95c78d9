"""Finite in every corner, a few exact properties, and the policy for non-finite gradients.

The property tests compile one function per combination of structural flags and pass every
number (decay, eps, learning rate, ...) as an array, so hypothesis's examples reuse them.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import helpers
from rmsprop_optax import rmsprop

# Deterministic and modest: the same examples on every run, no example database, no deadline
# (the first example of each flag combination pays for a compilation).
PROPERTY_SETTINGS = dict(
    deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STEPS = 24
COORDS = 6


class Flags(NamedTuple):
  eps_in_sqrt: bool
  centered: bool
  momentum: str  # "none", "heavy-ball", "nesterov"
  lr_in_momentum: bool
  bias_correction: bool
  weight_decay: str  # "none", "coupled", "decoupled"
  maximize: bool
  nu_dtype: str  # "float32", "bfloat16"
  stochastic_rounding: bool


class Numbers(NamedTuple):
  learning_rate: jax.Array
  decay: jax.Array
  eps: jax.Array
  initial_scale: jax.Array
  momentum: jax.Array
  weight_decay: jax.Array


def _optimizer(flags: Flags, numbers: Numbers) -> optax.GradientTransformation:
  return rmsprop(
      numbers.learning_rate, numbers.decay, numbers.eps,
      eps_in_sqrt=flags.eps_in_sqrt, initial_scale=numbers.initial_scale,
      centered=flags.centered,
      momentum=None if flags.momentum == "none" else numbers.momentum,
      nesterov=flags.momentum == "nesterov", lr_in_momentum=flags.lr_in_momentum,
      bias_correction=flags.bias_correction,
      weight_decay=0.0 if flags.weight_decay == "none" else numbers.weight_decay,
      decoupled_weight_decay=flags.weight_decay == "decoupled", maximize=flags.maximize,
      nu_dtype=None if flags.nu_dtype == "float32" else jnp.dtype(flags.nu_dtype),
      momentum_dtype=None if flags.nu_dtype == "float32" else jnp.dtype(flags.nu_dtype),
      stochastic_rounding=flags.stochastic_rounding,
  )


@functools.lru_cache(maxsize=None)
def _trajectory_fn(flags: Flags):
  """Jitted (numbers, params, grads) -> (updates per step, state per step), one per flags."""

  def run(numbers, params, grads):
    opt = _optimizer(flags, numbers)  # numbers are traced here: built once per compilation

    def body(state, g):
      updates, state = opt.update(g, state, params)
      return state, (updates, state)

    return jax.lax.scan(body, opt.init(params), grads)[1]

  return jax.jit(run)


def _numbers(learning_rate=0.1, decay=0.9, eps=1e-8, initial_scale=0.0, momentum=0.9, weight_decay=0.01):
  return Numbers(*(jnp.asarray(v, jnp.float32) for v in
                   (learning_rate, decay, eps, initial_scale, momentum, weight_decay)))


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Strategies.

flag_sets = st.builds(
    Flags,
    eps_in_sqrt=st.booleans(), centered=st.booleans(),
    momentum=st.sampled_from(["none", "heavy-ball", "nesterov"]), lr_in_momentum=st.booleans(),
    bias_correction=st.booleans(), weight_decay=st.sampled_from(["none", "coupled", "decoupled"]),
    maximize=st.booleans(), nu_dtype=st.sampled_from(["float32", "bfloat16"]),
    stochastic_rounding=st.booleans(),
)
# Float32 values in [0, 1), with the corners drawn often.
decays = st.one_of(
    st.sampled_from([0.0, 0.5, 0.9, 0.999, float(np.float32(1 - 2.0**-24))]),
    st.floats(0.0, 1.0, exclude_max=True, width=32),
)
epsilons = st.one_of(
    st.sampled_from([1e-12, 1e-8, 1.0]),
    st.floats(-12.0, 0.0).map(lambda e: float(np.float32(10.0**e))),
)


@st.composite
def gradient_sequences(draw, steps=STEPS, coords=COORDS, low=-30, high=15):
  """float32 gradients: exact zeros, or magnitudes 10**e with e in [low, high] (1e-30 to 1e15 by
  default, where g**2 is still a finite float32), random signs, per step and coordinate."""
  shape = (steps, coords)
  exponents = draw(hnp.arrays(np.int32, shape, elements=st.integers(low - 1, high)))
  mantissas = draw(hnp.arrays(np.float64, shape, elements=st.floats(1.0, 9.99)))
  signs = draw(hnp.arrays(np.bool_, shape))
  magnitude = np.minimum(mantissas * 10.0 ** exponents.astype(np.float64), 10.0**high)
  values = np.where(exponents < low, 0.0, np.where(signs, -magnitude, magnitude))
  return values.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Finite in every corner.


@settings(max_examples=60, **PROPERTY_SETTINGS)
@given(
    flags=flag_sets, decay=decays, eps=epsilons, grads=gradient_sequences(),
    learning_rate=st.sampled_from([1e-4, 0.1, 1.0]), initial_scale=st.sampled_from([0.0, 1.0]),
    momentum=st.sampled_from([0.0, 0.9, 0.99]), weight_decay=st.sampled_from([0.0, 1e-4, 1.0]),
    params_scale=st.sampled_from([0.0, 1.0, 1e15]),
)
def test_updates_and_state_stay_finite_for_every_flag_combination(
    flags, decay, eps, grads, learning_rate, initial_scale, momentum, weight_decay, params_scale):
  params = jnp.asarray(params_scale * np.linspace(-1, 1, COORDS), jnp.float32)
  numbers = _numbers(learning_rate, decay, eps, initial_scale, momentum, weight_decay)
  run = _trajectory_fn(flags)
  updates, states = run(numbers, params, jnp.asarray(grads))
  assert _finite(updates), (flags, np.asarray(updates))
  assert _finite(states), flags
  assert updates.dtype == jnp.float32

  # Identical inputs give bitwise identical outputs (stochastic rounding included).
  again_updates, again_states = run(numbers, params, jnp.asarray(grads))
  np.testing.assert_array_equal(np.asarray(updates), np.asarray(again_updates))
  for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(again_states)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))

  if not flags.stochastic_rounding:
    # Coordinates are independent: permuting them permutes the updates, bit for bit.
    perm = np.roll(np.arange(COORDS), 1)
    perm_updates, _ = run(numbers, params[perm], jnp.asarray(grads[:, perm]))
    np.testing.assert_array_equal(np.asarray(perm_updates), np.asarray(updates)[:, perm])


def test_centered_variance_that_rounds_negative_on_a_first_bias_corrected_step_stays_finite():
  # On a first bias-corrected step m_hat = g and v_hat = g**2 exactly, so v - m**2 = 0; in
  # float32 it comes out a few ulps either side of zero. A root of the negative ones is NaN.
  lr, eps = 0.1, 1e-8
  g = np.random.default_rng(0).normal(size=4096).astype(np.float32) * np.float32(3.0)
  decays = [0.9, 0.99, 0.999]
  negative_somewhere = False
  for decay in decays:
    # The same float32 operations in NumPy: how often the raw variance is negative.
    omd = np.float32(1 - decay)
    inv = np.float32(1) / (np.float32(1) - np.float32(decay))
    v_hat = (omd * (g * g)) * inv
    m_hat = (omd * g) * inv
    negative_somewhere |= bool(np.any(v_hat - m_hat * m_hat < 0))
    for eps_in_sqrt in [True, False]:
      opt = rmsprop(lr, decay, eps, centered=True, bias_correction=True, eps_in_sqrt=eps_in_sqrt)
      updates, state = opt.update(jnp.asarray(g), opt.init(jnp.zeros_like(g)))
      updates = np.asarray(updates, np.float64)
      assert np.all(np.isfinite(updates)) and _finite(state)
      # Exact arithmetic gives lr * g / sqrt(eps) (or / eps outside the root). Outside the
      # root the clamp at 0 can only make the denominator larger. Inside, a variance rounded
      # into (-eps, 0) makes it smaller, as in Optax (whose step there is finite too), and
      # one rounded up, by a few ulps of v, larger.
      if eps_in_sqrt:
        noise = 8 * np.spacing(v_hat).astype(np.float64)
        assert np.all(np.abs(updates) >= lr * np.abs(g) / np.sqrt(eps + noise) * (1 - 1e-6))
      else:
        assert np.all(np.abs(updates) <= lr * np.abs(g) / eps * (1 + 1e-6))
      assert np.all(np.sign(updates) == -np.sign(g))
  assert negative_somewhere, "the inputs should exercise a negative float32 variance"


@pytest.mark.parametrize("momentum", [None, 0.9], ids=["plain", "momentum"])
@pytest.mark.parametrize("bias_correction", [False, True], ids=["raw", "bias-corrected"])
@pytest.mark.parametrize("eps_in_sqrt", [True, False], ids=["eps-inside", "eps-outside"])
def test_a_gradient_whose_square_overflows_steps_0_centered_or_not(eps_in_sqrt, bias_correction, momentum):
  # Past |g| = 1.8e19, g**2 is inf in float32: the average is inf and the step g / inf = 0. Centered,
  # m**2 overflows too (at once when bias-corrected, later otherwise) and inf - inf was NaN.
  g = np.array([1.0, 1e19, 2e19, 1e20, 1e21, 1e30, 3e38], np.float32)
  overflows = np.square(g.astype(np.float64)) > np.finfo(np.float32).max
  for centered in (False, True):
    opt = rmsprop(0.1, 0.9, 1e-8, centered=centered, bias_correction=bias_correction, eps_in_sqrt=eps_in_sqrt,
                  momentum=momentum)
    state = opt.init(jnp.zeros_like(g))
    # Unbiased, m**2 = (0.1 g)**2 at first: it reaches inf within steps. Eagerly and compiled:
    # where XLA fuses v - m*m into one rounding, inf - (finite product) stays inf.
    for update in [opt.update] * 5 + [jax.jit(opt.update)] * 25:
      updates, state = update(jnp.asarray(g), state)
      updates = np.asarray(updates)
      assert not np.any(np.isnan(updates)), (centered, updates)
      np.testing.assert_array_equal(updates[overflows], 0.0)
      assert np.all(updates[~overflows] < 0)


@pytest.mark.parametrize("eps_in_sqrt", [True, False], ids=["eps-inside", "eps-outside"])
def test_centered_variance_of_a_constant_gradient_stays_finite_as_it_vanishes(eps_in_sqrt):
  # A constant gradient g: v - m**2 = decay**t (1 - decay**t) g**2 in exact arithmetic, which
  # falls below float32 resolution within a few dozen steps at decay 0.5 and is then rounding
  # noise of either sign.
  lr, decay, eps, steps = 0.01, 0.5, 1e-10, 100
  g = (np.random.default_rng(1).normal(size=256) * 3).astype(np.float32)
  opt = rmsprop(lr, decay, eps, centered=True, eps_in_sqrt=eps_in_sqrt)

  def body(state, _):
    updates, state = opt.update(jnp.asarray(g), state)
    return state, (updates, state.nu, state.mu)

  _, (updates, nu, mu) = jax.jit(lambda: jax.lax.scan(body, opt.init(jnp.zeros(256)), None, length=steps))()
  updates = np.asarray(updates, np.float64)
  assert np.all(np.isfinite(updates))
  nu, mu = np.asarray(nu), np.asarray(mu)
  if not eps_in_sqrt:  # clamped at 0: never a step above lr * g / eps
    assert np.all(np.abs(updates) <= lr * np.abs(g) / eps * (1 + 1e-6))
  else:
    # The root of v - m**2 + eps where that is positive, as in Optax, else of eps: each step
    # is that of the stored state, with v - m**2 rounded once (a fused multiply-add) or twice.
    f32 = np.float32
    variances = {"twice": nu - mu * mu, "once": (nu.astype(np.float64) - mu.astype(np.float64) ** 2).astype(f32)}
    matches = np.zeros(updates.shape, bool)
    for variance in variances.values():
      radicand = variance + f32(eps)
      radicand = np.where(radicand <= 0, f32(eps), radicand).astype(np.float64)
      matches |= np.isclose(updates, -lr * g / np.sqrt(radicand), rtol=1e-5, atol=0)
    assert matches.all(), np.argwhere(~matches)[:5]
    # Both sides of -eps occur: a variance in (-eps, 0), and one below -eps.
    variance = variances["twice"]
    assert np.any((variance < 0) & (variance > -f32(eps))) and np.any(variance <= -f32(eps))
  # The float32 state really does produce negative raw variances along the way.
  assert np.mean(nu - mu * mu < 0) > 0.05


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("eps_in_sqrt", [True, False], ids=["eps-inside", "eps-outside"])
@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
def test_zero_gradients_on_half_precision_params_give_finite_zero_updates(dtype, eps_in_sqrt, centered):
  # eps = 1e-8 is zero in float16: were the arithmetic float16, 0 / sqrt(0 + 0) would be NaN.
  assert np.float16(1e-8) == 0
  params = jnp.asarray([0.5, -2.0, 3.0, 0.0], dtype)
  zeros = jnp.zeros(4, dtype)
  for nu_dtype in [None, dtype]:
    for bias_correction, momentum in [(False, None), (True, 0.9)]:
      opt = rmsprop(1e-2, 0.9, 1e-8, eps_in_sqrt=eps_in_sqrt, centered=centered, momentum=momentum,
                    bias_correction=bias_correction, nu_dtype=nu_dtype, momentum_dtype=nu_dtype)
      state = opt.init(params)
      for _ in range(3):
        updates, state = opt.update(zeros, state, params)
        assert updates.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(updates, np.float32), np.zeros(4, np.float32))
        assert _finite(state)


@pytest.mark.parametrize("eps_in_sqrt", [True, False], ids=["eps-inside", "eps-outside"])
@pytest.mark.parametrize("source", ["eps-0", "injected-float16"])
def test_a_zero_eps_steps_a_zero_gradient_on_a_zero_average_by_0_not_nan(source, eps_in_sqrt):
  # 0 / sqrt(0 + 0) is NaN; an eps of 0 is taken as float32's smallest normal number. Under
  # optax.inject_hyperparams with float16 params, Optax casts eps = 1e-8 to float16: 0.
  dtype = jnp.float16 if source == "injected-float16" else jnp.float32
  params = jnp.asarray([0.5, -2.0, 3.0], dtype)
  grads = jnp.asarray([0.0, 0.5, -0.25], dtype)
  if source == "eps-0":
    opt = rmsprop(0.01, 0.9, eps=0.0, eps_in_sqrt=eps_in_sqrt)
  else:
    opt = optax.inject_hyperparams(rmsprop)(learning_rate=0.01, decay=0.9, eps=1e-8, eps_in_sqrt=eps_in_sqrt)
    assert float(opt.init(params).hyperparams["eps"]) == 0.0
  state = opt.init(params)
  for _ in range(3):
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert updates[0] == 0
  # The other coordinates are RMSProp's with no eps: lr * g / sqrt(v), v = 0.271 g**2 after
  # three steps (0.1, then 0.19).
  g = np.asarray(grads[1:], np.float64)
  np.testing.assert_allclose(np.asarray(updates[1:], np.float64), -0.01 * g / np.sqrt(0.271 * g**2), rtol=2e-3)


# ---------------------------------------------------------------------------------------------
# Exact properties.

PLAIN_FLAGS = [
    Flags(eps_in_sqrt, False, "none", True, False, "none", maximize, "float32", False)
    for eps_in_sqrt, maximize in itertools.product([True, False], [False, True])
]


@settings(max_examples=40, **PROPERTY_SETTINGS)
@given(
    flags=st.sampled_from(PLAIN_FLAGS), decay=decays, eps=epsilons, grads=gradient_sequences(),
    learning_rate=st.sampled_from([1e-3, 0.5]),
)
def test_plain_step_never_exceeds_lr_over_root_of_one_minus_decay(flags, decay, eps, grads, learning_rate):
  # With v_0 = 0, v_t >= (1 - decay) g_t**2, so |g_t| / sqrt(v_t) <= 1 / sqrt(1 - decay), and
  # eps (either placement) only shrinks the step. Slack: float32 rounding, 1e-5 relative.
  numbers = _numbers(learning_rate, decay, eps, initial_scale=0.0)
  updates, _ = _trajectory_fn(flags)(numbers, jnp.zeros(COORDS, jnp.float32), jnp.asarray(grads))
  bound = np.float32(learning_rate) / np.sqrt(1.0 - np.float64(np.float32(decay)))
  assert np.all(np.abs(np.asarray(updates, np.float64)) <= bound * (1 + 1e-5))
  # Directions follow the (possibly maximised) gradient; zero where the gradient is zero (a
  # nonzero gradient's step may underflow to zero after a huge one).
  sign = 1 if flags.maximize else -1
  updates = np.asarray(updates)
  moved = updates != 0
  np.testing.assert_array_equal(np.sign(updates[moved]), sign * np.sign(grads[moved]))
  assert np.all(updates[grads == 0] == 0)


SCALE_FLAGS = [
    Flags(eps_in_sqrt, centered, momentum, lr_in, bias, "none", False, "float32", False)
    for eps_in_sqrt, centered, (momentum, lr_in), bias in itertools.product(
        [True, False], [False, True],
        [("none", True), ("heavy-ball", True), ("heavy-ball", False), ("nesterov", True)],
        [False, True])
]


@settings(max_examples=40, **PROPERTY_SETTINGS)
@given(
    flags=st.sampled_from(SCALE_FLAGS), decay=decays, grads=gradient_sequences(low=-4, high=4),
    power=st.integers(-16, 16), eps=epsilons, initial_scale=st.sampled_from([0.0, 1.0]),
)
def test_scaling_gradients_by_a_power_of_two_with_eps_and_initial_scale_changes_no_bit(
    flags, decay, grads, power, eps, initial_scale):
  # RMSProp is homogeneous of degree 0 in (g, v_0, eps): g -> c g, v_0 -> c**2 v_0 and eps ->
  # c**2 eps (inside the root) or c eps (outside) leave every step unchanged, and with c a
  # power of two every float32 operation scales exactly, so no bit may change.
  c = 2.0**power
  eps_scaled = eps * (c * c if flags.eps_in_sqrt else c)
  base = _numbers(0.1, decay, eps, initial_scale)
  scaled = _numbers(0.1, decay, eps_scaled, initial_scale * c * c)
  run = _trajectory_fn(flags)
  params = jnp.zeros(COORDS, jnp.float32)
  updates, _ = run(base, params, jnp.asarray(grads))
  updates_scaled, _ = run(scaled, params, jnp.asarray(grads * np.float32(c)))
  np.testing.assert_array_equal(np.asarray(updates_scaled), np.asarray(updates))


@settings(max_examples=30, **PROPERTY_SETTINGS)
@given(
    flags=st.sampled_from([f for f in SCALE_FLAGS if not f.centered]), decay=st.floats(0.0, 0.999),
    grads=gradient_sequences(low=-3, high=3), scale=st.floats(1e-3, 1e3),
)
def test_scaling_gradients_leaves_the_update_unchanged_as_eps_vanishes(flags, decay, grads, scale):
  # Any c > 0, eps = 0: the same steps up to float32 rounding. Nonzero gradients only.
  grads = np.where(grads == 0, np.float32(1.0), grads)
  numbers = _numbers(0.1, decay, 0.0, 0.0)
  run = _trajectory_fn(flags)
  params = jnp.zeros(COORDS, jnp.float32)
  updates = np.asarray(run(numbers, params, jnp.asarray(grads))[0], np.float64)
  updates_scaled = np.asarray(run(numbers, params, jnp.asarray(grads * np.float32(scale)))[0], np.float64)
  # A momentum buffer sums steps of both signs: compare to the size of what it sums.
  scale_of_sum = 0.1 / np.sqrt(1 - decay) / (1 - 0.9) if flags.momentum != "none" else 0.0
  np.testing.assert_allclose(updates_scaled, updates, rtol=1e-5, atol=1e-5 * scale_of_sum)
  # And small eps is the same limit: eps = 1e-30 changes nothing measurable.
  tiny = np.asarray(run(numbers._replace(eps=jnp.float32(1e-30)), params, jnp.asarray(grads))[0], np.float64)
  np.testing.assert_allclose(tiny, updates, rtol=1e-6, atol=1e-6 * scale_of_sum)


# ---------------------------------------------------------------------------------------------
# Non-finite gradients: propagate by default.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("momentum", [None, 0.9], ids=["no-momentum", "momentum"])
def test_non_finite_gradient_propagates_to_its_own_coordinate_only(bad, centered, momentum):
  rng = np.random.default_rng(6)
  grads = rng.normal(size=(6, 5)).astype(np.float32)
  grads[2, 1] = bad  # one bad coordinate at step 3
  lr, decay = 0.01, 0.9
  opt = rmsprop(lr, decay, centered=centered, momentum=momentum)
  reference = helpers.ReferenceRMSProp(
      helpers.RefConfig(learning_rate=lambda t: lr, decay=decay, centered=centered, momentum=momentum),
      [np.zeros(5)])
  state = opt.init(jnp.zeros(5, jnp.float32))
  with np.errstate(invalid="ignore", over="ignore"):
    for t, g in enumerate(grads):
      updates, state = opt.update(jnp.asarray(g), state)
      updates = np.asarray(updates, np.float64)
      expected = reference.step([np.zeros(5)], [g])[0]  # params 0, so the new params are the step
      healthy = np.arange(5) != 1
      np.testing.assert_allclose(updates[healthy], expected[healthy], rtol=2e-5, atol=1e-9)
      if t < 2:
        assert np.all(np.isfinite(updates))
      elif t == 2:
        # The bad gradient reaches the update (inf * rsqrt(inf) is NaN) and the average.
        assert not np.isfinite(updates[1])
        assert not np.isfinite(np.asarray(state.nu)[1])
      # From then on the average holds inf or NaN on that coordinate: it never heals silently.
      if t >= 2:
        assert not np.isfinite(np.asarray(state.nu)[1])
        assert np.all(np.isfinite(np.asarray(state.nu)[healthy]))
        if np.isnan(bad):  # a NaN average gives NaN steps, never a made-up finite one
          assert np.isnan(updates[1])


def test_apply_if_finite_skips_the_bad_step_and_leaves_the_state_untouched():
  lr, decay = 0.01, 0.9
  opt = optax.apply_if_finite(rmsprop(lr, decay, centered=True, momentum=0.9), max_consecutive_errors=5)
  rng = np.random.default_rng(8)
  good = rng.normal(size=(3, 4)).astype(np.float32)
  bad = good[1].copy()
  bad[2] = np.nan
  params = jnp.zeros(4, jnp.float32)
  step = jax.jit(opt.update)

  state = opt.init(params)
  updates0, state = step(jnp.asarray(good[0]), state, params)
  before = state
  skipped, state = step(jnp.asarray(bad), state, params)
  np.testing.assert_array_equal(np.asarray(skipped), np.zeros(4, np.float32))
  for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(before.inner_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
  updates1, state = step(jnp.asarray(good[1]), state, params)
  updates2, state = step(jnp.asarray(good[2]), state, params)
  assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1

  # The run continues exactly as if the bad step had never been seen: compare with the
  # float64 reference fed only the good gradients (params held at zero).
  reference = helpers.ReferenceRMSProp(
      helpers.RefConfig(learning_rate=lambda t: lr, decay=decay, centered=True, momentum=0.9), [np.zeros(4)])
  for got, g in zip([updates0, updates1, updates2], good):
    expected = reference.step([np.zeros(4)], [g])[0]
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("kwargs", [
    {}, dict(momentum=0.9, nesterov=True), dict(momentum=0.9, lr_in_momentum=False),
    dict(weight_decay=0.1, decoupled_weight_decay=True),
], ids=["plain", "nesterov", "lr-outside-momentum", "decoupled-decay"])
@pytest.mark.parametrize("lr", [np.uint32(1), np.uint8(1), "uint8 array"], ids=["uint32", "uint8", "uint8-array"])
def test_an_unsigned_integer_learning_rate_steps_as_its_float_value(lr, kwargs):
  # The step multiplies by -lr: negated before its conversion to the leaf's dtype, an
  # unsigned 1 wrapped around to 4294967295 (or 255).
  lr = jnp.asarray(1, jnp.uint8) if isinstance(lr, str) else lr
  params = jnp.asarray([1.0, 2.0, -3.0], jnp.float32)
  grads = jnp.asarray([0.5, -0.5, 0.25], jnp.float32)
  for given in (lr, 1.0):
    opt = rmsprop(given, **kwargs)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    updates, _ = opt.update(grads, state, params)
    if given is lr:
      unsigned = updates
  np.testing.assert_array_equal(unsigned, updates)
