"""Draws the README's figures into docs/images/ from the notebooks' shared code.

Run from the repository root with the `demo` extra installed:

    python docs/make_figures.py

Each figure is the one its notebook draws (same helpers from `rmsprop_optax._examples`),
at a size meant for a README. It takes about fifteen seconds on a CPU.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
from matplotlib.figure import Figure

from rmsprop_optax import _examples as ex

IMAGES = pathlib.Path(__file__).resolve().parent / "images"


def trajectories(path: pathlib.Path) -> None:
  """Notebook 02: paths on an ill-conditioned quadratic, over its contour lines."""
  fun = ex.quadratic
  paths = {
      name: ex.optimize_2d(tx, fun, (-4.0, 1.5), 60)
      for name, tx in ex.trajectory_optimizers(0.1, sgd_lr=0.035).items()
  }
  figure = Figure(figsize=(10.0, 3.6), layout="constrained")
  ax, ax_loss = figure.subplots(1, 2, width_ratios=(1.6, 1.0))
  ex.plot_contours(ax, fun, (-4.5, 1.0), (-1.8, 1.8))
  ex.plot_paths(ax, paths, minimum=(0.0, 0.0))
  ax.set_title("60 steps on 0.5 (x² + 50 y²) from (-4, 1.5)")
  ax.set_xlabel("x")
  ax.set_ylabel("y")
  ex.plot_path_values(ax_loss, fun, paths)
  ax_loss.legend(fontsize=7, loc="lower left", ncols=2)
  figure.savefig(path, dpi=100)


def bf16_stall(path: pathlib.Path) -> None:
  """Notebook 05: a bfloat16 average of squares stalls under round-to-nearest."""
  decay, steps = 0.999, 5000
  curves = {
      "float32": ex.constant_gradient_average(decay, steps),
      "bfloat16, round to nearest": ex.constant_gradient_average(decay, steps, nu_dtype=jnp.bfloat16),
      "bfloat16, stochastic rounding": ex.constant_gradient_average(
          decay, steps, nu_dtype=jnp.bfloat16, stochastic_rounding=True
      ),
  }
  figure = Figure(figsize=(6.0, 3.4), layout="constrained")
  ax = figure.subplots()
  ex.plot_average_curves(ax, curves, decay)
  ax.annotate("round to nearest stalls at 0.25", (2500, 0.25), xytext=(2600, 0.1), fontsize=8,
              arrowprops={"arrowstyle": "->", "lw": 0.8})
  figure.savefig(path, dpi=100)


def window(path: pathlib.Path) -> None:
  """Notebook 03: the average adapts to a new gradient scale in about 1 / (1 - decay) steps."""
  figure = Figure(figsize=(9.0, 3.4), layout="constrained")
  ax_trace, ax_window = figure.subplots(1, 2)
  ex.plot_window(ax_trace, ax_window, (0.9, 0.95, 0.99, 0.995, 0.999))
  figure.savefig(path, dpi=100)


def main() -> None:
  IMAGES.mkdir(parents=True, exist_ok=True)
  for draw, name in ((trajectories, "trajectories.png"), (bf16_stall, "bf16_stall.png"), (window, "window.png")):
    draw(IMAGES / name)
    print(f"wrote {IMAGES / name} ({(IMAGES / name).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
  main()
