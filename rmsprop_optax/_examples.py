"""Code shared by the demo, the notebooks and the README figures: data, model, training, plots.

Not public API. It exists so that `rmsprop_optax.demo`, `notebooks/*.ipynb` and
`docs/make_figures.py` tell one story from one implementation. It needs the `demo` extra:
scikit-learn for the data (imported when the data is loaded) and matplotlib for the plots
(the `plot_*` functions draw on axes they are given, so no backend is chosen here).

Everything that touches JAX is written for strict dtype promotion and no rank promotion
(the test suite's settings): float32 arrays, int32 labels, explicit broadcasts.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_optax

# One colour per optimizer family, so a name keeps its colour from figure to figure.
COLORS = {
    "SGD": "tab:gray",
    "momentum": "tab:brown",
    "AdaGrad": "tab:olive",
    "RMSProp": "tab:blue",
    "RMSProp centered": "tab:cyan",
    "RMSProp momentum": "tab:purple",
    "Adam": "tab:red",
}

# Line styles cycle too, so curves that coincide (TF1 and timm's defaults do) stay visible.
_LINESTYLES = ("-", "--", ":")

# ---------------------------------------------------------------------------------------------
# Data: scikit-learn's bundled 8x8 digits (1797 images, no download).


class Digits(NamedTuple):
  """Train and test split of the digits: pixels scaled to [0, 1] (float32), int32 labels."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Digits:
  """The digits data set, split in a stratified way (the same split for a given seed)."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  data = load_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y
  )
  return Digits(x_train, y_train, x_test, y_test)


# ---------------------------------------------------------------------------------------------
# Model: a multilayer perceptron as a list of {"w", "b"} dicts.


def init_mlp(key: jax.Array, sizes: Iterable[int] = (64, 128, 10)) -> list[dict[str, jax.Array]]:
  """He-initialised float32 weights and zero biases for consecutive layer sizes."""
  sizes = list(sizes)
  params = []
  for key_layer, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    w = jax.random.normal(key_layer, (fan_in, fan_out), jnp.float32) * np.float32(np.sqrt(2.0 / fan_in))
    params.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
  return params


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  """Logits of a batch `x` of shape (batch, features): ReLU hidden layers, linear output."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
  last = params[-1]
  return x @ last["w"] + last["b"][None, :]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, x), y).mean()


def accuracy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Fraction of `x` classified as `y`, a float32 scalar."""
  return jnp.mean((jnp.argmax(mlp_apply(params, x), axis=-1) == y).astype(jnp.float32))


# ---------------------------------------------------------------------------------------------
# Training: chunks of steps under one jit call (lax.scan), params and state donated.


class History(NamedTuple):
  """What `train` records.

  Attributes:
    loss: minibatch training loss at every step, shape (steps,).
    eval_steps: steps at which the test set was evaluated (0 included).
    test_loss, test_accuracy: test-set loss and accuracy at `eval_steps`.
    train_loss: full training-set loss at the end.
    params: final parameters.
    compile_s: seconds spent compiling the training chunk.
    ms_per_step: run time per step, compilation, one untimed warm-up run and evaluation excluded.
    trace: what `record` returned at every step, stacked along a leading axis (or None).
  """

  loss: np.ndarray
  eval_steps: np.ndarray
  test_loss: np.ndarray
  test_accuracy: np.ndarray
  train_loss: float
  params: Any
  compile_s: float
  ms_per_step: float
  trace: Any = None


def batch_indices(n: int, steps: int, batch_size: int, seed: int = 0) -> np.ndarray:
  """Minibatch indices, shape (steps, batch_size): shuffled epochs, the same for every optimizer."""
  rng = np.random.default_rng(seed)
  epochs = -(-steps * batch_size // n)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
  return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def make_train_chunk(optimizer: optax.GradientTransformation, record: Callable[[Any, Any], Any] | None = None) -> Callable:
  """A jitted function running one minibatch step per row of `idx`, donating params and state.

  Returns `(params, opt_state, (losses, records))`, where `records` stacks
  `record(updates, new_params)` over the steps (None without `record`). Donation lets XLA
  update params and optimizer state in place instead of holding two copies of each.
  """

  def chunk(params, opt_state, x, y, idx):
    def one_step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[batch], y[batch])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (loss, None if record is None else record(updates, params))

    (params, opt_state), outputs = jax.lax.scan(one_step, (params, opt_state), idx)
    return params, opt_state, outputs

  return jax.jit(chunk, donate_argnums=(0, 1))


@jax.jit
def _evaluate(params, x, y):
  return loss_fn(params, x, y), accuracy(params, x, y)


def train(
    optimizer: optax.GradientTransformation,
    data: Digits,
    *,
    steps: int = 1000,
    batch_size: int = 64,
    eval_every: int = 50,
    seed: int = 0,
    params: Any = None,
    callback: Callable[[int, float], None] | None = None,
    record: Callable[[Any, Any], Any] | None = None,
) -> History:
  """Trains the MLP on `data` with `optimizer` and records losses, accuracy and timings.

  The minibatch order and the initial weights depend on `seed` only, so optimizers compared
  with the same seed see the same batches from the same start. `callback(n, loss)` is
  called after each chunk of `n` steps (a progress bar, for instance). `record(updates,
  params)`, traced inside the training step, is kept at every step (`History.trace`).
  """
  if steps % eval_every:
    raise ValueError(f"train: steps={steps} must be a multiple of eval_every={eval_every}.")
  if params is None:
    params = init_mlp(jax.random.key(seed))
  # Donation consumes the buffers it is given: train on a copy, so `params` stays usable.
  params = jax.tree.map(jnp.copy, params)
  opt_state = optimizer.init(params)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  idx = jnp.asarray(batch_indices(len(data.x_train), steps, batch_size, seed))
  idx = idx.reshape(steps // eval_every, eval_every, batch_size)

  start = time.perf_counter()
  chunk = make_train_chunk(optimizer, record).lower(params, opt_state, x, y, idx[0]).compile()
  compile_s = time.perf_counter() - start
  # One untimed run, on copies (the chunk donates its inputs): a process's first run pays
  # once for what every later one reuses (XLA's threads, say), which would otherwise be
  # charged to whichever optimizer is trained first.
  warm = chunk(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state), x, y, idx[0])
  jax.block_until_ready(warm)
  del warm

  losses, records, eval_steps, test_loss, test_acc = [], [], [0], [], []
  first = _evaluate(params, x_test, y_test)
  test_loss.append(float(first[0]))
  test_acc.append(float(first[1]))
  run_s = 0.0
  for i in range(steps // eval_every):
    start = time.perf_counter()
    params, opt_state, (chunk_losses, chunk_records) = chunk(params, opt_state, x, y, idx[i])
    chunk_losses = np.asarray(chunk_losses)  # waits for the chunk to finish
    run_s += time.perf_counter() - start
    losses.append(chunk_losses)
    records.append(chunk_records)
    ev_loss, ev_acc = _evaluate(params, x_test, y_test)
    eval_steps.append((i + 1) * eval_every)
    test_loss.append(float(ev_loss))
    test_acc.append(float(ev_acc))
    if callback is not None:
      callback(eval_every, float(chunk_losses.mean()))
  train_loss = float(_evaluate(params, x, y)[0])
  return History(
      loss=np.concatenate(losses),
      eval_steps=np.asarray(eval_steps),
      test_loss=np.asarray(test_loss),
      test_accuracy=np.asarray(test_acc),
      train_loss=train_loss,
      params=params,
      compile_s=compile_s,
      ms_per_step=1000.0 * run_s / steps,
      trace=None if record is None else jax.tree.map(lambda *parts: np.concatenate(parts), *records),
  )


def cosine_schedule(peak: float, steps: int, *, warmup: int = 0, end_fraction: float = 0.01) -> Callable[[jax.Array], jax.Array]:
  """Optax's warmup-cosine learning-rate schedule, fed the step count as float32.

  Optax's schedules mix Python floats with the int32 count, which strict dtype promotion
  (the test suite's setting) rejects; casting the count first keeps them usable there.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=steps, end_value=peak * end_fraction
  )
  return lambda count: schedule(jnp.asarray(count, jnp.float32))


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
  """Bias-corrected exponential moving average, for readable minibatch loss curves."""
  out = np.empty(len(values), np.float64)
  average = 0.0
  for t, value in enumerate(values):
    average = weight * average + (1.0 - weight) * float(value)
    out[t] = average / (1.0 - weight ** (t + 1))
  return out


def plot_loss_curves(ax, histories: Mapping[str, History], *, smoothing: float = 0.95, title: str | None = None):
  """Smoothed minibatch training loss of each history on a log scale."""
  for i, (name, history) in enumerate(histories.items()):
    ax.plot(smooth(history.loss, smoothing), label=name, color=COLORS.get(name), ls=_LINESTYLES[i % 3], lw=1.4)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (smoothed)")
  ax.grid(True, which="both", alpha=0.3)
  ax.set_title(title or "Training loss")
  ax.legend(fontsize=8)


def plot_accuracy_curves(ax, histories: Mapping[str, History], *, title: str | None = None):
  """Test accuracy of each history at its evaluation steps."""
  for i, (name, history) in enumerate(histories.items()):
    ax.plot(history.eval_steps, history.test_accuracy, marker=".", label=name, color=COLORS.get(name),
            ls=_LINESTYLES[i % 3], lw=1.4)
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0.0, 1.0)
  ax.grid(True, alpha=0.3)
  ax.set_title(title or "Test accuracy")
  ax.legend(fontsize=8, loc="lower right")


# ---------------------------------------------------------------------------------------------
# Two-dimensional problems: optimisation paths over contour plots.


def quadratic(p: jax.Array, curvature: tuple[float, float] = (1.0, 50.0)) -> jax.Array:
  """An axis-aligned ill-conditioned bowl 0.5 * (a x^2 + b y^2), minimum at the origin."""
  a, b = curvature
  return 0.5 * (a * p[0] ** 2 + b * p[1] ** 2)


def rosenbrock(p: jax.Array) -> jax.Array:
  """Rosenbrock's banana valley (1 - x)^2 + 100 (y - x^2)^2, minimum at (1, 1)."""
  return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def optimize_2d(
    optimizer: optax.GradientTransformation,
    fun: Callable[[jax.Array], jax.Array],
    start: Iterable[float],
    steps: int,
) -> np.ndarray:
  """The path of `optimizer` minimising `fun` from `start`: an array of shape (steps + 1, 2)."""

  @jax.jit
  def run(p0):
    def step(carry, _):
      p, state = carry
      updates, state = optimizer.update(jax.grad(fun)(p), state, p)
      p = optax.apply_updates(p, updates)
      return (p, state), p

    _, path = jax.lax.scan(step, (p0, optimizer.init(p0)), length=steps)
    return jnp.concatenate([p0[None, :], path], axis=0)

  return np.asarray(run(jnp.asarray(np.asarray(start, np.float32))))


def trajectory_optimizers(lr: float, *, sgd_lr: float, decay: float = 0.9, momentum: float = 0.9) -> dict[str, optax.GradientTransformation]:
  """The optimizers of the trajectory plots: RMSProp's three variants beside its relatives.

  AdaGrad and Adam get RMSProp's learning rate, SGD its own (it has no per-coordinate
  scaling). A momentum buffer adds up about 1 / (1 - momentum) steps, so the momentum
  variants get their learning rate times (1 - momentum): the same step size once the
  buffer is full, which keeps the comparison about direction rather than step length.
  """
  damp = 1.0 - momentum
  return {
      "SGD": optax.sgd(sgd_lr),
      "momentum": optax.sgd(sgd_lr * damp, momentum=momentum),
      "AdaGrad": optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-8),
      "RMSProp": rmsprop_optax.rmsprop(lr, decay=decay),
      "RMSProp centered": rmsprop_optax.rmsprop(lr, decay=decay, centered=True),
      "RMSProp momentum": rmsprop_optax.rmsprop(lr * damp, decay=decay, momentum=momentum),
      "Adam": optax.adam(lr),
  }


def path_values(fun: Callable[[jax.Array], jax.Array], path: np.ndarray) -> np.ndarray:
  """`fun` at every point of a path (float32)."""
  return np.asarray(jax.vmap(fun)(jnp.asarray(path, jnp.float32)))


def plot_contours(ax, fun: Callable, xlim: tuple[float, float], ylim: tuple[float, float], *, levels: int = 25):
  """Log-spaced contour lines of `fun` over a rectangle, the minimum's level included."""
  xs = np.linspace(*xlim, 300, dtype=np.float32)
  ys = np.linspace(*ylim, 300, dtype=np.float32)
  grid_x, grid_y = np.meshgrid(xs, ys)
  values = np.asarray(jax.vmap(fun)(jnp.stack([jnp.asarray(grid_x.ravel()), jnp.asarray(grid_y.ravel())], axis=1)))
  values = values.reshape(grid_x.shape)
  low = max(float(values.min()), 1e-3)
  ax.contour(grid_x, grid_y, values, levels=np.geomspace(low, float(values.max()), levels), colors="0.75", linewidths=0.7)
  ax.set_xlim(*xlim)
  ax.set_ylim(*ylim)


def plot_paths(ax, paths: Mapping[str, np.ndarray], *, minimum: tuple[float, float] | None = None, markevery: int = 0):
  """Each path as a line from its start (a circle) to its end; `minimum` as a star."""
  for name, path in paths.items():
    color = COLORS.get(name)
    ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.3, label=name, alpha=0.9)
    if markevery:
      ax.plot(path[::markevery, 0], path[::markevery, 1], ".", color=color, ms=3)
    ax.plot(path[-1, 0], path[-1, 1], "o", color=color, ms=4)
  first = next(iter(paths.values()))
  ax.plot(first[0, 0], first[0, 1], "ko", ms=5, mfc="white")
  if minimum is not None:
    ax.plot(*minimum, "k*", ms=10)


def plot_path_values(ax, fun: Callable, paths: Mapping[str, np.ndarray], *, floor: float = 1e-30):
  """`fun` along each path, on a log scale (values below `floor` are drawn at it)."""
  for name, path in paths.items():
    ax.semilogy(np.maximum(path_values(fun, path), floor), label=name, color=COLORS.get(name), lw=1.3)
  ax.set_xlabel("step")
  ax.set_ylabel("f")
  ax.set_title("Objective along the path")
  ax.grid(True, which="major", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# A transformation fed a fixed sequence of gradients: what it does with them, step by step.


def run_on_gradients(
    tx: optax.GradientTransformation,
    grads: Any,
    *,
    record: Callable[[Any, Any], Any] | None = None,
) -> Any:
  """Feeds `grads[t]` (a leading time axis) to `tx` for each t; returns `record(updates, state)`.

  The default record keeps updates and state at every step, stacked along a leading axis.
  The params passed to `update` are zeros (the transformations used here ignore them).
  """
  record = record or (lambda updates, state: (updates, state))
  params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), grads)

  @jax.jit
  def run(grads):
    def step(state, g):
      updates, state = tx.update(g, state, params)
      return state, record(updates, state)

    return jax.lax.scan(step, tx.init(params), grads)[1]

  return jax.tree.map(np.asarray, run(grads))


def average_of_squares(
    decay: float,
    grad_values: np.ndarray,
    *,
    nu_dtype: Any = None,
    stochastic_rounding: bool = False,
    size: int = 1024,
    seed: int = 0,
) -> np.ndarray:
  """RMSProp's average of squares, every coordinate fed the gradient `grad_values[t]` at step t.

  Returns v at every step, shape (steps, size). Every coordinate sees the same gradient, so
  in float32 they all agree; stored in a narrow dtype with stochastic rounding they spread
  around the exact value.
  """
  tx = rmsprop_optax.scale_by_rms(
      decay=decay, nu_dtype=nu_dtype, stochastic_rounding=stochastic_rounding, seed=seed
  )
  grads = jnp.asarray(np.asarray(grad_values, np.float32)[:, None] * np.ones((1, size), np.float32))
  return run_on_gradients(tx, grads, record=lambda _, state: state.nu.astype(jnp.float32))


def constant_gradient_average(decay: float, steps: int, **kwargs: Any) -> np.ndarray:
  """Mean over coordinates of the average of squares under a gradient of ones, at every step.

  In exact arithmetic it is 1 - decay**t; stored in a narrow dtype it may stop short.
  """
  return average_of_squares(decay, np.ones(steps, np.float32), **kwargs).mean(axis=1)


def scale_change_gradients(
    steps: int, change_at: int, scales: tuple[float, float] = (1.0, 10.0), *, size: int = 256, seed: int = 0
) -> np.ndarray:
  """Gaussian gradients, shape (steps, size), whose scale jumps from scales[0] to scales[1] at `change_at`."""
  rng = np.random.default_rng(seed)
  scale = np.where(np.arange(steps) < change_at, scales[0], scales[1])[:, None]
  return (scale * rng.normal(size=(steps, size))).astype(np.float32)


def rms_trace(grads: np.ndarray, *, decay: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
  """`scale_by_rms(decay, **kwargs)` fed `grads` (time first): its steps g / sqrt(v) and the
  averages v they divide by: the state's `nu`, divided where `bias_correction` is on by 1 minus
  the product of the decays so far (decay**t for a constant decay)."""
  tx = rmsprop_optax.scale_by_rms(decay, **kwargs)
  if not kwargs.get("bias_correction"):
    return run_on_gradients(tx, jnp.asarray(grads), record=lambda u, state: (u, state.nu))
  # The product of the decays: where the state keeps its log (a decay schedule, or one given
  # as an array), from that; else decay**t.
  record = lambda u, state: (u, state.nu, state.count, state.log_decay_product)  # noqa: E731
  steps, nu, count, log_product = run_on_gradients(tx, jnp.asarray(grads), record=record)
  if log_product is not None:
    correction = -np.expm1(np.asarray(log_product, np.float64))
  else:
    correction = 1.0 - np.float64(decay) ** np.asarray(count, np.float64)
  return steps, nu / correction.reshape((-1,) + (1,) * (nu.ndim - 1))


def adaptation_steps(trace: np.ndarray, change_at: int, before: float, after: float) -> int:
  """Steps after `change_at` until `trace` has covered 1 - 1/e of the way from `before` to `after`.

  For a leaky average with decay rho this is -1 / log(rho), close to its window 1 / (1 - rho).
  """
  level = before + (1.0 - np.exp(-1.0)) * (after - before)
  beyond = (trace[change_at:] - level) * np.sign(after - before) >= 0
  return int(np.argmax(beyond)) + 1 if beyond.any() else len(trace) - change_at


def plot_window(ax_trace, ax_window, decays: Iterable[float], *, traced: Iterable[float] = (0.9, 0.99, 0.999),
                steps: int = 6000, change_at: int = 3000, scales: tuple[float, float] = (1.0, 3.0),
                seed: int = 0) -> dict[float, int]:
  """How fast the average of squares follows a jump in gradient scale, for several decays.

  Left: sqrt(v) of one coordinate around the jump, for the `traced` decays (noisy for a short
  window, slow for a long one). Right: the measured adaptation time of every decay in `decays`
  (mean over coordinates) against 1 / (1 - decay). Returns the measured adaptation times.
  """
  grads = scale_change_gradients(steps, change_at, scales, seed=seed)
  decays, measured = tuple(decays), {}
  shown = np.arange(change_at - 500, min(steps, change_at + 2500))
  traced = tuple(traced)
  for decay in sorted(set(decays) | set(traced)):
    _, nu = rms_trace(grads, decay=decay, bias_correction=True)
    if decay in decays:
      measured[decay] = adaptation_steps(nu.mean(axis=1), change_at, scales[0] ** 2, scales[1] ** 2)
    if decay not in traced:
      continue
    ax_trace.plot(shown - change_at, np.sqrt(nu[shown, 0]), lw=1.0, label=f"decay {decay:g} (window {1 / (1 - decay):.0f})")
  ax_trace.step([shown[0] - change_at, 0, shown[-1] - change_at], [scales[0], scales[1], scales[1]], "k--", lw=1, where="post", label="true scale")
  ax_trace.set_xlabel("steps since the gradient scale jumped")
  ax_trace.set_ylabel("sqrt(v), one coordinate")
  ax_trace.set_title("The average follows the new scale")
  ax_trace.legend(fontsize=7)
  ax_trace.grid(True, alpha=0.3)

  windows = np.array([1.0 / (1.0 - d) for d in measured])
  line = np.geomspace(windows.min() / 2, windows.max() * 2, 50)
  ax_window.loglog(line, line, "k-", lw=1, alpha=0.6, label="1 / (1 - decay)")
  ax_window.loglog(windows, list(measured.values()), "o", color="tab:blue", label="measured")
  for d, w, m in zip(measured, windows, measured.values()):
    ax_window.annotate(f"{d:g}", (w, m), textcoords="offset points", xytext=(6, -10), fontsize=7)
  ax_window.set_xlabel("window 1 / (1 - decay)")
  ax_window.set_ylabel("steps to cover 63% of the jump")
  ax_window.set_title("Adaptation time = observation window")
  ax_window.legend(fontsize=7)
  ax_window.grid(True, which="both", alpha=0.3)
  return measured


def plot_average_curves(ax, curves: Mapping[str, np.ndarray], decay: float):
  """Mean of the average of squares under a constant unit gradient, against 1 - decay**t."""
  steps = len(next(iter(curves.values())))
  t = np.arange(1, steps + 1)
  ax.plot(t, 1.0 - decay**t, "k:", lw=2, label="exact: 1 - decay^t")
  for name, curve in curves.items():
    ax.plot(t, curve, lw=1.5, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("mean of v (target 1)")
  ax.set_title(f"Average of squares, decay {decay:g}, gradient 1")
  ax.set_ylim(0, 1.05)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.0, 0.62))

