"""Shared test helpers: NumPy float64 references of every RMSProp, problems, tolerances.

The references are written from the equations (README and SEMANTICS), independently of the
package: they share no code with it, so a bug there cannot hide in both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import numpy as np


@contextlib.contextmanager
def standard_promotion():
  """JAX's default promotion rules, for framework code (Keras) that relies on them."""
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    yield


def constant_schedule(value: float) -> Callable:
  """A schedule that is `value` at every step, as float32 (strict promotion accepts it).

  Any schedule makes the state keep a step count: tests that check the count use this one.
  """
  return lambda count: np.float32(value)


def lr_table(steps: int, base: float = 0.01, seed: int = 0) -> np.ndarray:
  """A learning rate that changes at every step (float32 values, so all frameworks agree)."""
  rng = np.random.default_rng(seed)
  return (base * rng.uniform(0.3, 1.7, size=steps)).astype(np.float32)


@dataclasses.dataclass
class Quadratic:
  """A random least-squares problem: grad(p) = A^T (A p - b) / n + noise_t, per leaf.

  The noise makes every step's gradient different even near the optimum; gradients depend on
  each optimizer's own parameters, so trajectories, not just single steps, are compared.
  """

  shapes: tuple
  seed: int = 0
  steps: int = 100
  complex_leaves: tuple = ()
  # For maximize=True: the gradient of -f, so that ascent converges instead of diverging.
  negate: bool = False
  # A zero first gradient, from zero params (so that coupled weight decay adds nothing). A
  # centered, bias-corrected first step divides g by the root of v - m^2 = 0 (plus eps):
  # every implementation returns its own rounding noise times 1/sqrt(eps) there, so
  # trajectories through it cannot be compared at 1e-5. From the second step on, v - m^2 is
  # a proper variance.
  zero_first_step: bool = False

  def __post_init__(self):
    rng = np.random.default_rng(self.seed)
    self.a, self.b, self.noise, self.init = [], [], [], []
    for i, shape in enumerate(self.shapes):
      n = int(np.prod(shape))
      cplx = i in self.complex_leaves

      def draw(*size):
        x = rng.normal(size=size)
        return x + 1j * rng.normal(size=size) if cplx else x

      self.a.append(draw(n, n) / np.sqrt(n))
      self.b.append(draw(n))
      self.noise.append(0.3 * draw(self.steps, n))
      self.init.append(draw(n).reshape(shape) * (0.0 if self.zero_first_step else 1.0))

  def params(self) -> list:
    """The starting point, float32 (complex64 for complex leaves)."""
    return [p.astype(np.complex64 if np.iscomplexobj(p) else np.float32) for p in self.init]

  def grads(self, params: list, t: int, precision: int = 32) -> list:
    """Gradients at `params` for step `t`, computed in float64 and given as float32 (or
    complex64), or with ``precision=64`` as float64 (or complex128)."""
    out = []
    for p, a, b, noise in zip(params, self.a, self.b, self.noise):
      flat = np.asarray(p, dtype=np.complex128 if np.iscomplexobj(p) else np.float64).ravel()
      g = a.conj().T @ (a @ flat - b) + noise[t]
      g = -g if self.negate else g
      g = 0 * g if (self.zero_first_step and t == 0) else g
      real, cplx = (np.float64, np.complex128) if precision == 64 else (np.float32, np.complex64)
      out.append(g.reshape(np.shape(p)).astype(cplx if np.iscomplexobj(g) else real))
    return out


# ---------------------------------------------------------------------------------------------
# The general equations (the package's own flags), in float64.


@dataclasses.dataclass
class RefConfig:
  learning_rate: Callable[[int], float]
  decay: Callable[[int], float] | float = 0.9
  eps: float = 1e-8
  eps_in_sqrt: bool = True
  initial_scale: float = 0.0
  centered: bool = False
  momentum: float | None = None
  nesterov: bool = False
  lr_in_momentum: bool = True
  caution: bool = False
  bias_correction: bool = False
  weight_decay: float = 0.0
  decoupled_weight_decay: bool = False
  maximize: bool = False


def cautious(step, g, caution: bool = True):
  """Caution (Liang et al., 2024) from its definition: the step's coordinates that point
  against the gradient zeroed, the rest divided by the fraction kept (at least 1e-3)."""
  if not caution:
    return step
  kept = (np.real(step * np.conj(g)) > 0).astype(np.float64)
  return step * kept / max(kept.mean(), 1e-3)


class ReferenceRMSProp:
  """RMSProp from the equations, one float64 NumPy step at a time (real or complex leaves)."""

  def __init__(self, cfg: RefConfig, params: list):
    self.cfg = cfg
    self.t = 0
    self.v = [np.full(np.shape(p), cfg.initial_scale, np.float64) for p in params]
    self.m = [np.zeros(np.shape(p), np.complex128 if np.iscomplexobj(p) else np.float64) for p in params]
    self.b = [np.zeros_like(m) for m in self.m]
    self.decay_product = 1.0  # of the decays applied so far: an average started at 0 falls short by it

  def step(self, params: list, grads: list) -> list:
    cfg, t = self.cfg, self.t
    lr = cfg.learning_rate(t)
    rho = cfg.decay(t) if callable(cfg.decay) else cfg.decay
    self.decay_product *= rho
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
      p = np.asarray(p, np.complex128 if np.iscomplexobj(p) else np.float64)
      g = np.asarray(g, p.dtype)
      if cfg.maximize:
        g = -g
      if cfg.weight_decay and not cfg.decoupled_weight_decay:
        g = g + cfg.weight_decay * p
      self.v[i] = rho * self.v[i] + (1 - rho) * np.abs(g) ** 2
      v_hat, m_hat = self.v[i], None
      if cfg.centered:
        self.m[i] = rho * self.m[i] + (1 - rho) * g
        m_hat = self.m[i]
      if cfg.bias_correction:
        v_hat = v_hat / (1 - self.decay_product)
        m_hat = None if m_hat is None else m_hat / (1 - self.decay_product)
      var = v_hat - (np.abs(m_hat) ** 2 if cfg.centered else 0.0)
      if cfg.eps_in_sqrt:  # the root of var + eps where positive, else of eps (var taken as 0)
        radicand = var + cfg.eps
        u = g / np.sqrt(np.where(radicand > 0, radicand, cfg.eps))
      else:
        u = g / (np.sqrt(np.maximum(var, 0.0)) + cfg.eps)
      caution = cfg.caution and cfg.momentum is not None and cfg.momentum > 0  # as timm's
      if cfg.momentum is None:
        s = lr * u
      elif cfg.lr_in_momentum:
        self.b[i] = cfg.momentum * self.b[i] + lr * u
        s = cautious(lr * u + cfg.momentum * self.b[i] if cfg.nesterov else self.b[i], g, caution)
      else:
        self.b[i] = cfg.momentum * self.b[i] + u
        s = lr * cautious(u + cfg.momentum * self.b[i] if cfg.nesterov else self.b[i], g, caution)
      if cfg.weight_decay and cfg.decoupled_weight_decay:
        s = s + lr * cfg.weight_decay * p
      out.append(p - s)
    self.t += 1
    return out


# ---------------------------------------------------------------------------------------------
# Transcriptions of frameworks that are not installed in the test environment.


class TF1Reference:
  """`tf.compat.v1.train.RMSPropOptimizer`, transcribed from its kernels (float64).

  ms starts at ones, mom and mg at zeros; the momentum path always runs. The optimizer turns
  its hyperparameters into float32 tensors before casting them to the variables' dtype, so
  they are rounded to float32 here too.
  """

  def __init__(self, params, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
    as_tf = lambda x: float(np.float32(x))  # noqa: E731
    self.lr = lambda t: as_tf(learning_rate(t))
    self.rho, self.mu, self.eps, self.centered = as_tf(decay), as_tf(momentum), as_tf(epsilon), centered
    self.ms = [np.ones(np.shape(p)) for p in params]
    self.mg = [np.zeros(np.shape(p)) for p in params]
    self.mom = [np.zeros(np.shape(p)) for p in params]
    self.t = 0

  def step(self, params, grads):
    lr = self.lr(self.t)
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
      p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
      self.ms[i] = self.ms[i] + (g * g - self.ms[i]) * (1 - self.rho)
      if self.centered:
        self.mg[i] = self.mg[i] + (g - self.mg[i]) * (1 - self.rho)
        denom = self.ms[i] - self.mg[i] ** 2 + self.eps
      else:
        denom = self.ms[i] + self.eps
      self.mom[i] = self.mu * self.mom[i] + lr * g / np.sqrt(denom)
      out.append(p - self.mom[i])
    self.t += 1
    return out


class TimmRMSpropTFReference:
  """timm's `RMSpropTF` step, transcribed (float64): TF1's equations plus weight decay,
  timm's corrected decoupled decay (lr**2 / max_lr) and caution."""

  def __init__(self, params, lr, alpha=0.9, eps=1e-10, weight_decay=0.0, momentum=0.0,
               centered=False, decoupled_decay=False, corrected_weight_decay=False,
               lr_in_momentum=True, caution=False, max_lr=None):
    self.lr, self.alpha, self.eps, self.wd, self.mu = lr, alpha, eps, weight_decay, momentum
    self.centered, self.decoupled, self.lr_in_momentum = centered, decoupled_decay, lr_in_momentum
    self.corrected, self.caution, self.max_lr = corrected_weight_decay, caution, max_lr
    self.square_avg = [np.ones(np.shape(p)) for p in params]
    self.grad_avg = [np.zeros(np.shape(p)) for p in params]
    self.buf = [np.zeros(np.shape(p)) for p in params]
    self.t = 0

  def step(self, params, grads):
    lr = self.lr(self.t)
    one_minus_alpha = 1.0 - self.alpha
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
      p, g = np.array(p, np.float64), np.asarray(g, np.float64)
      if self.wd != 0:
        if self.decoupled:
          p = p * (1.0 - (lr**2 / self.max_lr if self.corrected else lr) * self.wd)
        else:
          g = g + self.wd * p
      self.square_avg[i] += one_minus_alpha * (g**2 - self.square_avg[i])
      if self.centered:
        self.grad_avg[i] += one_minus_alpha * (g - self.grad_avg[i])
        avg = np.sqrt(self.square_avg[i] - self.grad_avg[i] ** 2 + self.eps)
      else:
        avg = np.sqrt(self.square_avg[i] + self.eps)
      if self.mu > 0:
        if self.lr_in_momentum:
          self.buf[i] = self.mu * self.buf[i] + lr * g / avg
          p = p - cautious(self.buf[i], g, self.caution)
        else:
          self.buf[i] = self.mu * self.buf[i] + g / avg
          p = p - lr * cautious(self.buf[i], g, self.caution)
      else:
        p = p - lr * g / avg
      out.append(p)
    self.t += 1
    return out


def timm_rmsprop_tf():
  """The `RMSpropTF` class of the installed timm, loaded without running timm's package
  `__init__`: that imports torchvision, which has no build for the CPU torch the tests pin,
  while the optimizer's module needs torch alone. The Makefile installs timm without its
  dependencies for that reason. The module is loaded as it ships, under a private package
  name, so `import timm` elsewhere is unaffected."""
  import importlib
  import importlib.util
  import pathlib
  import sys
  import types

  spec = importlib.util.find_spec("timm")
  assert spec is not None and spec.submodule_search_locations, "timm is not installed: run make test"
  package = types.ModuleType("_timm_optim")
  package.__path__ = [str(pathlib.Path(spec.submodule_search_locations[0]) / "optim")]
  sys.modules.setdefault("_timm_optim", package)
  return importlib.import_module("_timm_optim.rmsprop_tf").RMSpropTF


def run_optax(opt, problem: Quadratic, steps: int, use_jit: bool = True, set_state=None) -> list:
  """Runs an Optax transformation on `problem` for `steps` steps; returns NumPy params.

  Gradients come from NumPy at the optimizer's own current params, so whole trajectories are
  compared. With `use_jit` the train step is jitted with params and state donated.
  `set_state(t, state)`, if given, returns the state step t starts from (to change an
  injected hyperparameter mid-run, say).
  """
  import jax.numpy as jnp
  import optax

  def train_step(grads, state, params):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if use_jit:
    train_step = jax.jit(train_step, donate_argnums=(1, 2))
  params = [jnp.asarray(p) for p in problem.params()]
  state = opt.init(params)
  for t in range(steps):
    if set_state is not None:
      state = set_state(t, state)
    grads = [jnp.asarray(g) for g in problem.grads([np.asarray(p) for p in params], t)]
    params, state = train_step(grads, state, params)
  return [np.asarray(p) for p in params]


def assert_close_to_scale(actual: list, expected: list, rtol: float = 1e-5, what: str = ""):
  """Every leaf within `rtol` of the expected parameters' scale (max |expected|, at least 1)."""
  assert len(actual) == len(expected), f"{what}: {len(actual)} leaves, expected {len(expected)}"
  for i, (a, e) in enumerate(zip(actual, expected)):
    a, e = np.asarray(a), np.asarray(e)
    scale = max(1.0, float(np.max(np.abs(e))))
    err = float(np.max(np.abs(a - e)))
    assert err <= rtol * scale, f"{what} leaf {i}: max error {err:.3g} exceeds {rtol:g} x scale {scale:.3g}"
