"""`rmsprop` against the float64 NumPy reference of its equations, for every flag combination."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from rmsprop_optax import rmsprop, scale_by_rms

STEPS = 100


def test_seed_example_matches_the_published_numbers():
  # The seed document's example: eps inside the root, decay 0.9, lr 0.01, v_0 = 0.
  opt = rmsprop(learning_rate=0.01, decay=0.9, eps=1e-8)
  params = jnp.array([0.2, 0.4, 0.6], jnp.float32)
  updates, _ = opt.update(jnp.array([-0.5, 0.3, 0.24], jnp.float32), opt.init(params), params)
  np.testing.assert_allclose(
      optax.apply_updates(params, updates), [0.23162277, 0.36837724, 0.56837725], rtol=1e-7, atol=1e-7
  )


def test_first_step_size_is_lr_over_root_of_one_minus_decay():
  # With v_0 = 0 and no bias correction, each coordinate's first step is lr / sqrt(1 - decay).
  lr, decay = 0.03, 0.99
  opt = rmsprop(lr, decay, eps=0.0)
  grads = jnp.array([1e-3, -2.0, 50.0], jnp.float32)
  updates, _ = opt.update(grads, opt.init(jnp.zeros(3, jnp.float32)))
  np.testing.assert_allclose(np.abs(updates), lr / np.sqrt(1 - decay), rtol=1e-6)


# Every combination of the boolean flags, with momentum off / on / Nesterov, lr inside and
# outside the buffer, and weight decay off / coupled / decoupled.
MOMENTUM_MODES = [(None, False, True), (0.9, False, True), (0.9, False, False), (0.8, True, True), (0.8, True, False)]
DECAY_MODES = [(0.0, False), (0.05, False), (0.05, True)]
COMBINATIONS = list(itertools.product(
    [True, False],  # eps_in_sqrt
    [False, True],  # centered
    MOMENTUM_MODES,
    [False, True],  # bias_correction
    DECAY_MODES,
    [False, True],  # maximize
))


def _case_id(case):
  eps_in_sqrt, centered, (mom, nesterov, lr_in), bias, (wd, decoupled), maximize = case
  parts = ["eps_in" if eps_in_sqrt else "eps_out"]
  parts += ["centered"] * centered
  if mom is not None:
    parts.append(("nesterov" if nesterov else "momentum") + ("" if lr_in else "_lr_out"))
  parts += ["bias"] * bias
  if wd:
    parts.append("decoupled_wd" if decoupled else "coupled_wd")
  parts += ["maximize"] * maximize
  return "-".join(parts)


def _configs(case, lrs):
  eps_in_sqrt, centered, (mom, nesterov, lr_in), bias, (wd, decoupled), maximize = case
  # initial_scale varies with the case so that both 0 and a positive start are covered.
  initial_scale = 0.5 if (centered != bias) else 0.0
  kwargs = dict(
      eps=1e-6, eps_in_sqrt=eps_in_sqrt, initial_scale=initial_scale, centered=centered,
      momentum=mom, nesterov=nesterov, lr_in_momentum=lr_in, bias_correction=bias,
      weight_decay=wd, decoupled_weight_decay=decoupled, maximize=maximize,
  )
  table = jnp.asarray(lrs)
  ours = rmsprop(lambda count: table[count], decay=0.9, **kwargs)
  ref = helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.9, **kwargs)
  return ours, ref


def _reference_run(ref_cfg, problem):
  params = [p.astype(np.complex128 if np.iscomplexobj(p) else np.float64) for p in problem.params()]
  ref = helpers.ReferenceRMSProp(ref_cfg, params)
  for t in range(STEPS):
    params = ref.step(params, problem.grads(params, t))
  return params


@pytest.mark.parametrize("case", COMBINATIONS, ids=[_case_id(c) for c in COMBINATIONS])
def test_every_flag_combination_tracks_the_numpy_reference(case):
  problem = helpers.Quadratic(
      shapes=((3, 4), (5,)), seed=COMBINATIONS.index(case), steps=STEPS, negate=case[-1],
      zero_first_step=case[1] and case[3],  # centered and bias-corrected
  )
  lrs = helpers.lr_table(STEPS, base=0.01, seed=1)
  ours, ref_cfg = _configs(case, lrs)
  expected = _reference_run(ref_cfg, problem)
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=True), expected, what="jit")
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=False), expected, what="eager")


# Caution with every momentum mode, weight decay off / coupled / decoupled, and centered
# with maximize or neither.
CAUTION_CASES = list(itertools.product(MOMENTUM_MODES[1:], DECAY_MODES, [False, True]))


@pytest.mark.parametrize(
    "case", CAUTION_CASES,
    ids=[_case_id((True, both, mode, False, decay, both)) for mode, decay, both in CAUTION_CASES],
)
def test_caution_tracks_the_numpy_reference(case):
  (mom, nesterov, lr_in), (wd, decoupled), both = case
  problem = helpers.Quadratic(shapes=((3, 4), (5,)), seed=400 + CAUTION_CASES.index(case), steps=STEPS, negate=both)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=3)
  kwargs = dict(eps=1e-6, centered=both, momentum=mom, nesterov=nesterov, lr_in_momentum=lr_in, weight_decay=wd,
                decoupled_weight_decay=decoupled, maximize=both)
  table = jnp.asarray(lrs)
  ours = rmsprop(lambda count: table[count], decay=0.9, caution=True, **kwargs)
  ref = helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.9, caution=True, **kwargs)
  expected = _reference_run(ref, problem)
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS), expected)
  # Caution changes these runs: without it they end elsewhere.
  uncautious = _reference_run(helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.9, **kwargs), problem)
  assert max(np.max(np.abs(a - b)) for a, b in zip(uncautious, expected)) > 1e-3


def test_caution_on_complex_parameters_keeps_the_coordinates_whose_step_leans_with_the_gradient():
  # Re(step * conj(g)) > 0: the step and the gradient less than 90 degrees apart.
  problem = helpers.Quadratic(shapes=((3,), (2, 2)), seed=6, steps=STEPS, complex_leaves=(0,))
  lrs = helpers.lr_table(STEPS, seed=4)
  table = jnp.asarray(lrs)
  ours = rmsprop(lambda c: table[c], decay=0.9, momentum=0.9, caution=True)
  expected = _reference_run(
      helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.9, momentum=0.9, caution=True), problem
  )
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=True), expected)
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=False), expected, what="eager")


def test_caution_scales_the_kept_coordinates_by_at_most_a_thousand():
  # One coordinate of 2000 agrees with its gradient: the fraction kept, 5e-4, is floored at
  # 1e-3, so that coordinate moves 1000 times its uncautioned step, not 2000 times.
  opt = rmsprop(0.01, momentum=0.9, caution=True)
  params = jnp.zeros(2000, jnp.float32)
  state = opt.init(params)
  _, state = opt.update(jnp.ones(2000, jnp.float32), state)
  g = jnp.full(2000, -1.0, jnp.float32).at[0].set(1.0)
  updates, state = opt.update(g, state)
  # Coordinate 0 saw g = 1 twice: v = 0.1, then 0.19; the buffer 0.9 * b1 + 0.01 / sqrt(v2 + eps).
  first = 0.01 / np.sqrt(0.1 + 1e-8)
  buffer = 0.9 * first + 0.01 / np.sqrt(0.19 + 1e-8)
  np.testing.assert_allclose(updates[0], -1000 * buffer, rtol=1e-6)
  np.testing.assert_array_equal(updates[1:], 0.0)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("momentum", [0.0, "injected 0.0"])
def test_caution_changes_nothing_at_a_momentum_of_zero_as_in_timm(momentum, nesterov):
  # With momentum 0 the step is the preconditioned gradient, which leans with the gradient
  # wherever that is nonzero; caution (timm applies it only with a momentum > 0) would only
  # scale the step up by the fraction of exact zeros in the gradient.
  rng = np.random.default_rng(41)
  grads = [jnp.asarray(rng.normal(size=(8, 5)) * (rng.random((8, 5)) < 0.5), jnp.float32) for _ in range(4)]
  params = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  if momentum == 0.0:
    build = functools.partial(rmsprop, 0.01, momentum=0.0, nesterov=nesterov)
  else:
    build = functools.partial(optax.inject_hyperparams(rmsprop), 0.01, momentum=0.0, nesterov=nesterov)
  outcomes = []
  for caution in (True, False):
    opt = build(caution=caution)
    state, updates = opt.init(params), []
    for g in grads:
      update, state = jax.jit(opt.update)(g, state, params)
      updates.append(update)
    outcomes.append(updates)
  chex.assert_trees_all_equal(*outcomes)
  # Caution applied anyway would have changed them: the gradients have exact zeros.
  assert not np.allclose(helpers.cautious(np.asarray(outcomes[1][0]), np.asarray(grads[0])), outcomes[1][0])


def test_decay_and_eps_schedules_follow_the_step_count():
  problem = helpers.Quadratic(shapes=((6,), (2, 3)), seed=7, steps=STEPS)
  decays = np.linspace(0.5, 0.99, STEPS)
  epss = np.geomspace(1e-3, 1e-8, STEPS)
  lrs = helpers.lr_table(STEPS, seed=3)
  d_table, e_table, l_table = (jnp.asarray(x, jnp.float32) for x in (decays, epss, lrs))
  ours = rmsprop(lambda c: l_table[c], decay=lambda c: d_table[c], eps=lambda c: e_table[c], centered=True)
  params = [p.astype(np.complex128 if np.iscomplexobj(p) else np.float64) for p in problem.params()]
  # The reference sees each schedule's float32 value, as the package does.
  ref = helpers.ReferenceRMSProp(
      helpers.RefConfig(
          learning_rate=lambda t: float(lrs[t]), decay=lambda t: float(np.float32(decays[t])),
          eps=0.0, centered=True,
      ),
      params,
  )
  for t in range(STEPS):
    ref.cfg.eps = float(np.float32(epss[t]))
    params = ref.step(params, problem.grads(params, t))
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=True), params)


def test_bias_correction_under_a_decay_schedule_divides_by_one_minus_the_product_of_its_decays():
  # The decay jumps from 0.9 to 0.999 after 30 steps, when the average has forgotten its zero
  # start (0.9**30 = 0.04). The right correction, 1 - 0.9**30 * 0.999**(t - 30), is near 1;
  # 1 - 0.999**t from the current decay alone is 0.03 at t = 31 and would shrink the steps
  # about sixfold.
  problem = helpers.Quadratic(shapes=((6,), (2, 3)), seed=8, steps=STEPS, zero_first_step=True)
  decays = np.where(np.arange(STEPS) < 30, 0.9, 0.999).astype(np.float32)
  table = jnp.asarray(decays)
  flags = dict(centered=True, momentum=0.5, bias_correction=True)
  schedule = lambda c: table[c]  # noqa: E731
  expected = _reference_run(
      helpers.RefConfig(learning_rate=lambda t: 0.01, decay=lambda t: float(decays[t]), **flags), problem
  )
  for use_jit in (True, False):
    helpers.assert_close_to_scale(
        helpers.run_optax(rmsprop(0.01, decay=schedule, **flags), problem, STEPS, use_jit=use_jit), expected
    )
  # Under inject_hyperparams, a decay listed in static_args reaches rmsprop as the schedule;
  # otherwise as one array per step, and the state keeps the product all the same.
  for static_args in (("decay",), ()):
    injected = optax.inject_hyperparams(rmsprop, static_args=static_args)(0.01, decay=schedule, **flags)
    helpers.assert_close_to_scale(
        helpers.run_optax(injected, problem, STEPS, use_jit=True), expected, what=f"static_args={static_args}"
    )


@pytest.mark.parametrize(
    "new_decay,use_jit",
    [(jnp.float32(0.999), True), (jnp.float32(0.999), False), (0, True), (0, False)],
    ids=["array-jit", "array-eager", "python-int-jit", "python-int-eager"],
)
def test_bias_correction_follows_an_injected_decay_set_anew_mid_run(new_decay, use_jit):
  # A jump after 30 steps, made by setting the injected number. inject_hyperparams passes a
  # Python int on as it is, so outside jit the update then sees a constant decay of 0: the
  # state's product of the decays so far still holds, and goes on (to 0). (Not centered
  # there: with a decay of 0 the variance estimate g**2 - g**2 is 0 and the steps blow up.)
  problem = helpers.Quadratic(shapes=((6,), (2, 3)), seed=8, steps=STEPS, zero_first_step=True)
  decays = np.where(np.arange(STEPS) < 30, 0.9, np.float32(new_decay)).astype(np.float32)
  flags = dict(centered=not isinstance(new_decay, int), momentum=0.5, bias_correction=True)
  expected = _reference_run(
      helpers.RefConfig(learning_rate=lambda t: 0.01, decay=lambda t: float(decays[t]), **flags), problem
  )
  opt = optax.inject_hyperparams(rmsprop)(0.01, decay=0.9, **flags)

  def set_state(t, state):
    return optax.tree_utils.tree_set(state, decay=new_decay) if t == 30 else state

  helpers.assert_close_to_scale(
      helpers.run_optax(opt, problem, STEPS, use_jit=use_jit, set_state=set_state), expected
  )


@pytest.mark.parametrize(
    "decay,keeps",
    [(0.9, False), (np.float32(0.9), False), (np.asarray(0.9), False), (jnp.float32(0.9), True),
     (helpers.constant_schedule(0.9), True)],
    ids=["python-float", "numpy-scalar", "numpy-0d-array", "jax-array", "schedule"],
)
def test_the_state_keeps_the_decays_product_for_a_decay_that_may_change(decay, keeps):
  # Chosen from the decay's type: a Python or NumPy number is constant, while a JAX array (as
  # inject_hyperparams passes every float) or a schedule may change between steps. Either way
  # the bias-corrected average of a constant gradient 2 is 4, and the step 2 / sqrt(4) = 1.
  opt = scale_by_rms(decay=decay, eps=0.0, bias_correction=True)
  g = jnp.full(3, 2.0, jnp.float32)
  state = opt.init(g)
  assert (state.log_decay_product is not None) == keeps
  for _ in range(5):
    updates, state = opt.update(g, state)
  np.testing.assert_allclose(np.asarray(updates), 1.0, rtol=1e-6)


# Decay schedules at the edges of [0, 1], one float32 decay per step.
EDGE_DECAYS = {
    # A decay of 1 keeps the average as it is. Divided by 1 - decay**t from the current decay,
    # it would be divided by 0 and every later step would be 0; the product of the decays so
    # far is 0.9**40 and stays there.
    "reaches_one": np.where(np.arange(STEPS) < 40, 0.9, 1.0).astype(np.float32),
    # decay = 1 - 1/(t + 1), 0 on the first step, makes v the plain mean of the squared
    # gradients so far. The product of the decays is 0 from the first step and its log -inf:
    # the state must still hold a finite number, for checks such as assert_tree_all_finite.
    "from_zero": (1.0 - 1.0 / (np.arange(STEPS) + 1.0)).astype(np.float32),
}


@pytest.mark.parametrize("name", list(EDGE_DECAYS))
def test_bias_correction_under_decay_schedules_at_the_edges_tracks_the_reference(name):
  decays = EDGE_DECAYS[name]
  problem = helpers.Quadratic(shapes=((4,),), seed=9, steps=STEPS)
  table = jnp.asarray(decays)
  ours = rmsprop(0.01, decay=lambda c: table[c], bias_correction=True)
  expected = _reference_run(
      helpers.RefConfig(learning_rate=lambda t: 0.01, decay=lambda t: float(decays[t]), bias_correction=True),
      problem,
  )
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=True), expected)
  state = ours.init(problem.params())
  for t in range(3):
    _, state = ours.update([jnp.asarray(g) for g in problem.grads(problem.params(), t)], state)
    chex.assert_tree_all_finite(state)


def test_scale_by_rms_is_rmsprop_without_learning_rate():
  for centered, bias in itertools.product([False, True], repeat=2):
    problem = helpers.Quadratic(shapes=((4,),), seed=11, steps=STEPS, zero_first_step=centered and bias)
    chained = optax.chain(scale_by_rms(0.95, 1e-7, centered=centered, bias_correction=bias), optax.scale(-0.02))
    expected = _reference_run(
        helpers.RefConfig(learning_rate=lambda t: 0.02, decay=0.95, eps=1e-7, centered=centered,
                          bias_correction=bias), problem)
    helpers.assert_close_to_scale(helpers.run_optax(chained, problem, STEPS, use_jit=True), expected)


def test_complex_parameters_track_the_reference_with_one_average_of_magnitudes():
  problem = helpers.Quadratic(shapes=((3,), (2, 2)), seed=5, steps=STEPS, complex_leaves=(0,))
  lrs = helpers.lr_table(STEPS, seed=4)
  table = jnp.asarray(lrs)
  ours = rmsprop(lambda c: table[c], decay=0.9, centered=True, momentum=0.5)
  expected = _reference_run(
      helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.9, centered=True, momentum=0.5),
      problem,
  )
  state = ours.init([jnp.asarray(p) for p in problem.params()])
  assert state.nu[0].dtype == jnp.float32 and state.trace[0].dtype == jnp.complex64
  helpers.assert_close_to_scale(helpers.run_optax(ours, problem, STEPS, use_jit=True), expected)


def test_weight_decay_mask_exempts_leaves():
  problem = helpers.Quadratic(shapes=((4,), (3,)), seed=9, steps=STEPS)
  opt = rmsprop(0.01, weight_decay=0.2, decoupled_weight_decay=True, weight_decay_mask=[True, False])
  decayed = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.01, weight_decay=0.2,
                                             decoupled_weight_decay=True), problem)
  plain = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.01), problem)
  got = helpers.run_optax(opt, problem, STEPS, use_jit=True)
  helpers.assert_close_to_scale(got[:1], decayed[:1])
  helpers.assert_close_to_scale(got[1:], plain[1:])
  # A callable mask gives the same result.
  by_fn = rmsprop(0.01, weight_decay=0.2, decoupled_weight_decay=True,
                  weight_decay_mask=lambda params: [True, False])
  helpers.assert_close_to_scale(helpers.run_optax(by_fn, problem, STEPS, use_jit=True), got, rtol=0)


def _nested(opt):
  """`opt` run on params [[a, b], c] while the caller sees the list [a, b, c]."""
  nest = lambda tree: None if tree is None else [[tree[0], tree[1]], tree[2]]  # noqa: E731

  def update(updates, state, params=None):
    updates, state = opt.update(nest(updates), state, nest(params))
    return jax.tree.leaves(updates), state

  return optax.GradientTransformation(lambda params: opt.init(nest(params)), update)


MASKS = {
    "list": [[True, True], False],
    "array_entries": [[jnp.asarray(True), jnp.asarray(True)], jnp.asarray(False)],
    "prefix": [True, False],  # one flag for the whole [a, b] subtree
    "callable": lambda params: [jax.tree.map(lambda _: True, params[0]), False],
}


@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "decoupled"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_every_kind_of_weight_decay_mask_exempts_its_leaves(mask, decoupled):
  # The quadratic's leaves are independent, so each leaf follows the reference run with or
  # without weight decay.
  problem = helpers.Quadratic(shapes=((4,), (2, 3), (3,)), seed=13, steps=STEPS)
  kwargs = dict(weight_decay=0.2, decoupled_weight_decay=decoupled, momentum=0.5)
  decayed = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.01, **kwargs), problem)
  plain = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.01, momentum=0.5), problem)
  opt = _nested(rmsprop(0.01, weight_decay_mask=MASKS[mask], **kwargs))
  got = helpers.run_optax(opt, problem, STEPS, use_jit=True)
  helpers.assert_close_to_scale(got[:2], decayed[:2], what="decayed")
  helpers.assert_close_to_scale(got[2:], plain[2:], what="exempt")


@pytest.mark.parametrize("eps", [0.3, 1e-2])
@pytest.mark.parametrize("eps_in_sqrt", [True, False], ids=["eps_in", "eps_out"])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_a_large_eps_sits_where_the_flag_puts_it(eps, eps_in_sqrt, momentum):
  # With eps comparable to the gradients' scale, inside and outside the root differ plainly.
  problem = helpers.Quadratic(shapes=((5,), (2, 2)), seed=17, steps=STEPS)
  kwargs = dict(eps=eps, eps_in_sqrt=eps_in_sqrt, momentum=momentum)
  expected = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.05, **kwargs), problem)
  got = helpers.run_optax(rmsprop(0.05, **kwargs), problem, STEPS, use_jit=True)
  helpers.assert_close_to_scale(got, expected)


def test_a_python_decay_a_hair_below_one_still_adds_its_sliver():
  # 1 - decay is taken from the Python number: in float32, 1 - float32(decay) would be 0 and
  # the average would never move.
  decay = 1 - 1e-9
  grads = np.array([1e3, -3e3, 0.0], np.float32)
  opt = scale_by_rms(decay, 0.0, initial_scale=1.0)
  _, state = jax.jit(opt.update)(jnp.asarray(grads), opt.init(jnp.zeros(3, jnp.float32)))
  expected = decay * 1.0 + (1 - decay) * np.float64(grads) ** 2
  np.testing.assert_allclose(np.asarray(state.nu, np.float64), expected, rtol=1e-7)
  assert float(state.nu[0]) > 1.0


def test_none_leaves_pass_through():
  opt = rmsprop(0.1, momentum=0.9, centered=True)
  params = {"w": jnp.ones(3, jnp.float32), "frozen": None}
  state = opt.init(params)
  updates, state = opt.update({"w": jnp.ones(3, jnp.float32), "frozen": None}, state, params)
  assert updates["frozen"] is None and state.nu["frozen"] is None
  assert updates["w"].shape == (3,)


# With jax_enable_x64 a Python float is float64 to JAX: every hyperparameter must still meet
# each leaf in its own dtype. Bias correction at decay 0.999 and a learning-rate schedule
# make a float32 shortcut anywhere in the arithmetic show at float64 precision.
X64_CASES = {
    "plain": dict(),
    "centered_nesterov_bias": dict(centered=True, momentum=0.9, nesterov=True, bias_correction=True),
    "coupled_wd_eps_out_lr_out": dict(weight_decay=0.05, eps_in_sqrt=False, momentum=0.8, lr_in_momentum=False),
    "decoupled_wd_bias_maximize": dict(weight_decay=0.05, decoupled_weight_decay=True, bias_correction=True,
                                       maximize=True),
}


@pytest.mark.parametrize("name", list(X64_CASES))
def test_under_x64_float64_leaves_track_the_reference_to_float64_precision(name):
  kwargs = dict(X64_CASES[name], eps=1e-6)
  lrs = helpers.lr_table(STEPS, base=0.01, seed=2)
  problem = helpers.Quadratic(shapes=((3, 4), (5,)), seed=21, steps=STEPS, complex_leaves=(1,),
                              negate=kwargs.get("maximize", False),
                              zero_first_step=kwargs.get("centered", False) and kwargs.get("bias_correction", False))
  ref_cfg = helpers.RefConfig(learning_rate=lambda t: float(lrs[t]), decay=0.999, **kwargs)
  expected = [p.astype(np.complex128 if np.iscomplexobj(p) else np.float64) for p in problem.params()]
  ref = helpers.ReferenceRMSProp(ref_cfg, expected)
  for t in range(STEPS):
    expected = ref.step(expected, problem.grads(expected, t, precision=64))

  with jax.enable_x64(True):
    table = jnp.asarray(lrs, jnp.float64)
    opt = rmsprop(lambda count: table[count], decay=0.999, **kwargs)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p))
    params = [jnp.asarray(p) for p in problem.params()]
    params = [p.astype(jnp.complex128 if jnp.iscomplexobj(p) else jnp.float64) for p in params]
    state = opt.init(params)
    for t in range(STEPS):
      grads = [jnp.asarray(g) for g in problem.grads([np.asarray(p) for p in params], t, precision=64)]
      updates, state = step(grads, state, params)
      params = optax.apply_updates(params, updates)
    assert [p.dtype for p in params] == [jnp.float64, jnp.complex128]
  helpers.assert_close_to_scale(params, expected, rtol=1e-12, what=name)


def test_under_x64_a_decay_schedule_is_bias_corrected_to_float64_precision():
  decays = np.where(np.arange(STEPS) < 30, 0.9, 0.999)  # float64: the log product is too
  # A zero first gradient: on a first bias-corrected step v - m**2 is 0 in exact arithmetic,
  # so its rounding noise (which XLA's fused multiply-adds may round differently from NumPy)
  # would set the first step, as in the float64 cases above.
  problem = helpers.Quadratic(shapes=((3, 4),), seed=23, steps=STEPS, zero_first_step=True)
  flags = dict(centered=True, momentum=0.5, bias_correction=True, eps=1e-6)
  ref = helpers.ReferenceRMSProp(
      helpers.RefConfig(learning_rate=lambda t: 0.01, decay=lambda t: float(decays[t]), **flags),
      [problem.init[0].astype(np.float64)],
  )
  expected = [problem.init[0].astype(np.float64)]
  for t in range(STEPS):
    expected = ref.step(expected, problem.grads(expected, t, precision=64))
  with jax.enable_x64(True):
    table = jnp.asarray(decays, jnp.float64)
    opt = rmsprop(0.01, decay=lambda c: table[c], **flags)
    params = [jnp.asarray(problem.init[0], jnp.float64)]
    state = opt.init(params)
    assert state.log_decay_product.dtype == jnp.float64
    step = jax.jit(opt.update)
    for t in range(STEPS):
      updates, state = step([jnp.asarray(problem.grads([np.asarray(params[0])], t, precision=64)[0])], state)
      params = optax.apply_updates(params, updates)
  helpers.assert_close_to_scale(params, expected, rtol=1e-12)


def test_the_decay_product_stays_float32_when_x64_is_switched_on_after_init():
  # Every leaf keeps the dtype init gave it: a float32 log product that came back float64
  # would break a lax.scan carry or a donated buffer. (The other way round JAX has no float64
  # to keep once x64 is off.)
  opt = rmsprop(0.01, decay=helpers.constant_schedule(0.9), bias_correction=True)
  params = jnp.ones(3, jnp.float32)
  state = opt.init(params)
  with jax.enable_x64(True):
    _, after = opt.update(params, state)
  assert state.log_decay_product.dtype == after.log_decay_product.dtype == jnp.float32
  # One decay of 0.9 applied: the log of the product is log(0.9).
  np.testing.assert_allclose(float(after.log_decay_product), np.log(0.9), rtol=1e-6)


@pytest.mark.parametrize("name", list(X64_CASES))
def test_under_x64_narrower_leaves_keep_their_dtypes_and_track_the_reference(name):
  kwargs = dict(X64_CASES[name], eps=1e-6)
  problem = helpers.Quadratic(shapes=((3, 4), (5,)), seed=22, steps=STEPS, complex_leaves=(1,),
                              negate=kwargs.get("maximize", False),
                              zero_first_step=kwargs.get("centered", False) and kwargs.get("bias_correction", False))
  expected = _reference_run(helpers.RefConfig(learning_rate=lambda t: 0.01, decay=0.9, **kwargs), problem)
  with jax.enable_x64(True):
    opt = rmsprop(0.01, decay=0.9, **kwargs)
    got = helpers.run_optax(opt, problem, STEPS, use_jit=True)
    assert [p.dtype for p in got] == [np.float32, np.complex64]
    # bfloat16 and float16 leaves: one step, in their own dtypes, close to the reference's.
    for dtype in (jnp.bfloat16, jnp.float16):
      params = [jnp.asarray(problem.init[0], dtype)]
      grads = [jnp.asarray(problem.grads([problem.init[0]], 0, precision=64)[0], dtype)]
      updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
      assert updates[0].dtype == dtype
      one = helpers.ReferenceRMSProp(helpers.RefConfig(learning_rate=lambda t: 0.01, decay=0.9, **kwargs),
                                     [np.asarray(params[0], np.float64)])
      want = one.step([np.asarray(params[0], np.float64)], [np.asarray(grads[0], np.float64)])[0]
      step_want = want - np.asarray(params[0], np.float64)
      np.testing.assert_allclose(np.asarray(updates[0], np.float64), step_want, rtol=2e-2, atol=1e-4)
  helpers.assert_close_to_scale(got, expected)
