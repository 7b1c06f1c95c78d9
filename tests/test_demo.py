"""The demo, end to end at a reduced size, and the shared training code under strict promotion."""

import re

import helpers
import jax
import numpy as np

from rmsprop_optax import _examples, demo, rmsprop


def test_demo_quick_run_prints_a_row_per_optimizer_and_writes_the_figure(tmp_path, capsys):
  # optax.adam and optax's schedules mix Python floats with int32 counts, which strict
  # promotion rejects: run the whole demo under JAX's standard rules (our own training code
  # is checked under strict promotion by the test below).
  with helpers.standard_promotion():
    rows = demo.main(["--quick", "--out", str(tmp_path), "--no-progress"])
  printed = capsys.readouterr().out

  names = list(demo.build_optimizers(steps=200))
  assert [row.name for row in rows] == names
  for name in names:
    assert re.search(rf"^{re.escape(name)}\s+\d", printed, re.MULTILINE), f"no table row for {name}:\n{printed}"
  for row in rows:
    assert np.isfinite(row.final_loss) and row.ms_per_step > 0, row
  by_name = {row.name: row for row in rows}
  # Ten classes: chance is 10%. Two hundred steps take RMSProp far past it.
  assert by_name["rmsprop (chain)"].test_accuracy > 0.8, by_name["rmsprop (chain)"]

  figure = tmp_path / "loss_curves.png"
  assert figure.is_file()
  assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_helpers_are_strict_promotion_clean():
  # Runs under the suite's strict dtype promotion and rank-promotion errors (conftest).
  data = _examples.load_digits_split()
  steps = 100
  optimizer = rmsprop(_examples.cosine_schedule(3e-3, steps, warmup=10), decay=0.9, momentum=0.9)
  history = _examples.train(
      optimizer, data, steps=steps, eval_every=50, record=lambda updates, params: params[0]["w"][0, :4]
  )
  assert history.loss.shape == (steps,)
  assert history.trace.shape == (steps, 4)
  assert history.loss.dtype == np.float32
  assert list(history.eval_steps) == [0, 50, 100]
  assert history.test_accuracy[-1] > 0.5
  assert history.loss[-10:].mean() < history.loss[:10].mean()
  for leaf in jax.tree.leaves(history.params):
    assert leaf.dtype == np.float32


def test_training_leaves_the_given_params_usable():
  # train() donates its buffers; the caller's initial params must survive for the next run.
  data = _examples.load_digits_split()
  params = _examples.init_mlp(jax.random.key(0))
  before = jax.tree.map(np.asarray, params)
  _examples.train(rmsprop(1e-3), data, steps=50, eval_every=50, params=params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
