"""RMSProp on handwritten digits, beside every framework preset, Adam and SGD.

Run it with ``make demo`` or ``python -m rmsprop_optax.demo`` (``--help`` for options). It
trains a small MLP on scikit-learn's bundled 8x8 digits with each optimizer, from the same
initial weights and on the same minibatches, prints a table (final training loss, test
accuracy, milliseconds per step, compile time) and writes the loss curves to
``demo_output/loss_curves.png``. It needs the ``demo`` extra (matplotlib, tqdm,
scikit-learn) and runs on a CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import NamedTuple, Sequence

import jax
import optax

from rmsprop_optax import _examples, presets, rmsprop


class Row(NamedTuple):
  """One line of the results table."""

  name: str
  peak_lr: float
  final_loss: float
  test_accuracy: float
  ms_per_step: float
  compile_s: float


def build_optimizers(steps: int, lr: float = 3e-3, sgd_lr: float = 0.1) -> dict[str, tuple[float, optax.GradientTransformation]]:
  """Every optimizer of the comparison, each with a warmup-cosine schedule of its peak rate.

  The adaptive ones share one peak learning rate, so their differences come from their
  equations alone; SGD, which has no per-coordinate scaling, needs a larger one.
  """
  warmup = max(steps // 20, 1)
  schedule = _examples.cosine_schedule(lr, steps, warmup=warmup)
  sgd_schedule = _examples.cosine_schedule(sgd_lr, steps, warmup=warmup)
  return {
      # The headline: rmsprop as one link of an optax chain, after gradient clipping.
      "rmsprop (chain)": (lr, optax.chain(optax.clip_by_global_norm(1.0), rmsprop(schedule, decay=0.9))),
      "presets.pytorch": (lr, presets.pytorch(lr=schedule)),
      "presets.keras": (lr, presets.keras(learning_rate=schedule)),
      "presets.tf1": (lr, presets.tf1(schedule)),
      "presets.optax": (lr, presets.optax(schedule)),
      "presets.timm_tf": (lr, presets.timm_tf(lr=schedule)),
      "optax.adam": (lr, optax.adam(schedule)),
      "optax.sgd (momentum 0.9)": (sgd_lr, optax.sgd(sgd_schedule, momentum=0.9)),
  }


def format_table(rows: Sequence[Row]) -> str:
  """The rows as a fixed-width text table."""
  header = f"{'optimizer':<26}{'peak lr':>9}{'final loss':>12}{'test acc':>10}{'ms/step':>9}{'compile s':>11}"
  lines = [header, "-" * len(header)]
  for row in rows:
    lines.append(
        f"{row.name:<26}{row.peak_lr:>9.3g}{row.final_loss:>12.4f}{row.test_accuracy:>10.2%}"
        f"{row.ms_per_step:>9.3f}{row.compile_s:>11.2f}"
    )
  return "\n".join(lines)


def save_figure(histories: dict[str, _examples.History], path: pathlib.Path) -> None:
  """Loss and accuracy curves side by side, written as a PNG without any GUI backend."""
  # A bare Figure draws with the Agg canvas: no display and no pyplot state needed.
  from matplotlib.figure import Figure

  figure = Figure(figsize=(11, 4.2), layout="constrained")
  loss_ax, acc_ax = figure.subplots(1, 2)
  _examples.plot_loss_curves(loss_ax, histories, title="Digits MLP: training loss")
  _examples.plot_accuracy_curves(acc_ax, histories, title="Digits MLP: test accuracy")
  acc_ax.set_ylim(0.8, 1.0)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=110)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m rmsprop_optax.demo", description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=1000, help="training steps per optimizer (default 1000)")
  parser.add_argument("--quick", action="store_true", help="a smoke run of 200 steps")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the adaptive optimizers")
  parser.add_argument("--seed", type=int, default=0, help="initial weights, batch order and data split")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_output"), help="folder of the PNG")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps = 200
  return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
  """Runs the comparison, prints the table, writes the figure; returns the table's rows."""
  from tqdm.auto import tqdm

  args = parse_args(argv)
  start = time.perf_counter()
  eval_every = 50 if args.steps % 50 == 0 else args.steps
  data = _examples.load_digits_split(seed=args.seed)
  params = _examples.init_mlp(jax.random.key(args.seed))
  optimizers = build_optimizers(args.steps, args.lr)
  print(
      f"Digits: {len(data.x_train)} training and {len(data.x_test)} test images; MLP 64-128-10; "
      f"{args.steps} steps of batch {args.batch_size}; {jax.devices()[0].platform.upper()}"
  )

  histories: dict[str, _examples.History] = {}
  rows: list[Row] = []
  with tqdm(total=args.steps * len(optimizers), unit="step", disable=args.no_progress) as bar:
    for name, (peak_lr, optimizer) in optimizers.items():
      bar.set_description(name)

      def advance(n, loss):
        bar.update(n)
        bar.set_postfix(loss=f"{loss:.3f}")

      history = _examples.train(
          optimizer, data, steps=args.steps, batch_size=args.batch_size, eval_every=eval_every,
          seed=args.seed, params=params, callback=advance,
      )
      histories[name] = history
      rows.append(Row(name, peak_lr, history.train_loss, float(history.test_accuracy[-1]),
                      history.ms_per_step, history.compile_s))

  print()
  print(format_table(rows))
  path = args.out / "loss_curves.png"
  save_figure(histories, path)
  print(f"\nLoss curves written to {path} ({time.perf_counter() - start:.1f} s in all).")
  return rows


if __name__ == "__main__":
  main()
