"""The train steps under test, built for one configuration on one tree of parameters.

Every contender takes the same gradients and the same initial parameters and performs one
optimizer step per call, updating parameters and state. Steps alternate between the
gradients and their negation (see `jax_grads`):

* ``ours``: ``rmsprop_optax.rmsprop`` + ``optax.apply_updates``, jitted, params and state
  donated.
* ``optax``: ``optax.rmsprop`` with the same flags, written and jitted the same way (chained
  after ``optax.add_decayed_weights`` where the configuration has weight decay).
* ``floor``: a jitted, donated kernel that reads the params, the gradients and every state
  buffer and writes params and state, with one multiply-add per output: the bytes RMSProp
  must move, with the least arithmetic and the least dependence between outputs.
* ``torch``: ``torch.optim.RMSprop(foreach=True)`` stepping in place under ``no_grad``.

A contender is an object with ``step()`` (one update, not waited for), ``sync()`` (waits for
the work in flight) and ``state_bytes``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_optax
from rmsprop_optax import _transform

LEARNING_RATE = 1e-3
DECAY = 0.9
EPS = 1e-8
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-2


@dataclasses.dataclass(frozen=True)
class Config:
  """One RMSProp configuration, as flags for each library.

  ``torch_flags`` holds the closest ``torch.optim.RMSprop`` arguments; ``torch_note`` says
  where PyTorch cannot express the configuration (it then runs its closest one).
  """

  name: str
  ours: dict
  optax: dict
  torch: dict
  torch_note: str = ""
  optax_note: str = ""

  @property
  def state_dtypes(self) -> tuple[Any, ...]:
    """Storage dtype of each per-parameter state buffer of ``ours`` (float32 params)."""
    nu = self.ours.get("nu_dtype") or jnp.float32
    dtypes = [nu]
    if self.ours.get("centered"):
      dtypes.append(nu)
    if self.ours.get("momentum") is not None:
      dtypes.append(self.ours.get("momentum_dtype") or jnp.float32)
    return tuple(jnp.dtype(d) for d in dtypes)


def _config(name, torch_note="", optax_note="", *, ours_only=None, **flags):
  torch_flags = {}
  if flags.get("centered"):
    torch_flags["centered"] = True
  if flags.get("momentum") is not None:
    torch_flags["momentum"] = flags["momentum"]
  if flags.get("weight_decay") is not None:
    torch_flags["weight_decay"] = flags["weight_decay"]  # coupled, as ours by default
  return Config(
      name=name,
      ours={**flags, **(ours_only or {})},
      optax=flags,
      torch=torch_flags,
      torch_note=torch_note,
      optax_note=optax_note,
  )


CONFIGS = {
    c.name: c
    for c in [
        _config("plain"),
        _config("centered", centered=True),
        _config("momentum", momentum=MOMENTUM),
        _config(
            "centered_nesterov", "torch has no Nesterov RMSProp: centered + momentum",
            centered=True, momentum=MOMENTUM, nesterov=True,
        ),
        _config("bias_correction", "torch has no bias correction: plain", bias_correction=True),
        _config(
            "weight_decay", optax_note="optax.rmsprop has no weight decay: "
            "chain(add_decayed_weights, rmsprop), the same coupled decay",
            weight_decay=WEIGHT_DECAY,
        ),
        _config(
            "bf16_nu", "torch keeps state in the params' dtype: float32",
            "optax has no state dtype: float32", ours_only={"nu_dtype": jnp.bfloat16},
        ),
    ]
}


def split_sizes(total: int, leaves: int) -> list[int]:
  """`leaves` leaf sizes adding up to `total`, as equal as integers allow."""
  if leaves > total:
    raise ValueError(f"cannot split {total} parameters into {leaves} non-empty leaves.")
  base, extra = divmod(total, leaves)
  return [base + (i < extra) for i in range(leaves)]


def distinct_sizes(leaves: int, smallest: int = 100) -> list[int]:
  """`leaves` leaf sizes that all differ: smallest, smallest + 1, and so on, as a model whose
  layers all differ in shape (1000 leaves: 100 to 1099 parameters, 599,500 in all)."""
  return [smallest + i for i in range(leaves)]


@dataclasses.dataclass
class Problem:
  """Initial parameters and fixed gradients as NumPy float32 leaves, shared by all contenders."""

  params: list[np.ndarray]
  grads: list[np.ndarray]

  @classmethod
  def of_sizes(cls, sizes: list[int], seed: int = 0) -> Problem:
    """Leaves of the given sizes, params and gradients drawn from a standard normal."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    return cls(params, grads)

  @classmethod
  def make(cls, total: int, leaves: int, seed: int = 0) -> Problem:
    """`total` parameters split into `leaves` leaves as equal as integers allow."""
    return cls.of_sizes(split_sizes(total, leaves), seed)

  @classmethod
  def distinct(cls, leaves: int, seed: int = 0) -> Problem:
    """A tree whose leaves all differ in shape (`distinct_sizes`)."""
    return cls.of_sizes(distinct_sizes(leaves), seed)

  @property
  def param_bytes(self) -> int:
    return sum(p.nbytes for p in self.params)


def tree_bytes(tree: Any) -> int:
  """Bytes of the per-parameter leaves of `tree` (scalars such as the step count left out)."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if x.ndim > 0)


def train_step(opt: optax.GradientTransformation) -> Callable:
  """The train step every JAX contender runs: update, then apply, returning params and state."""

  def step(params, opt_state, grads):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def floor_step(params, state, grads):
  """Moves RMSProp's bytes with one multiply-add per output.

  `state` is a tuple of trees, one per state buffer. Each output depends only on its own old
  value and the gradient, the least coupling possible, so XLA's loops read each input at
  most once per output they feed.
  """

  def advance(s, g):
    return (jnp.asarray(0.5, jnp.float32) * s.astype(jnp.float32) + g).astype(s.dtype)

  new_state = tuple(jax.tree.map(advance, buffer, grads) for buffer in state)
  new_params = jax.tree.map(lambda p, g: p - jnp.asarray(LEARNING_RATE, p.dtype) * g, params, grads)
  return new_params, new_state


class JaxContender:
  """A jitted train step with its params and state, stepped in place through donation."""

  def __init__(self, step: Callable, params: Any, state: Any, grads: tuple[Any, Any], *, donate: bool = True):
    self.jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    self.donates = donate
    self.params, self.state = params, state
    self.grads, self.turn = grads, 0  # the pair from jax_grads, taken in turn
    self.state_bytes = tree_bytes(state)
    self.compiled = None

  def compile(self) -> dict:
    """Compiles the step ahead of time (steps then call the executable).

    Returns and keeps in ``compile_times`` the seconds spent tracing and lowering to HLO and
    then in XLA, wall and process CPU time (which a loaded machine inflates less).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    lowered = self.jitted.lower(self.params, self.state, self.grads[0])
    wall_lowered, cpu_lowered = time.perf_counter(), time.process_time()
    self.compiled = lowered.compile()
    wall_done, cpu_done = time.perf_counter(), time.process_time()
    self.compile_times = {
        "trace_lower_s": wall_lowered - wall,
        "compile_s": wall_done - wall_lowered,
        "total_s": wall_done - wall,
        "total_cpu_s": cpu_done - cpu,
    }
    return self.compile_times

  def next_grads(self) -> Any:
    self.turn ^= 1
    return self.grads[self.turn]

  def step(self) -> None:
    self.params, self.state = self.compiled(self.params, self.state, self.next_grads())

  def sync(self) -> None:
    jax.block_until_ready((self.params, self.state))

  def buffer_bytes(self) -> dict:
    """XLA's buffer assignment for one step: peak = arguments + outputs - aliased + temporaries."""
    stats = self.compiled.memory_analysis()
    args, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "xla_peak_bytes": args + out - alias + temp,
        "xla_temp_bytes": temp,
        "xla_alias_bytes": alias,
        # What XLA's loops read and write per step, summed over its fused kernels: above the
        # least possible when a buffer is read by several kernels, or a copy is inserted.
        "xla_bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
    }


class SplitContender(JaxContender):
  """Our update and ``optax.apply_updates`` jitted apart, each donating what it replaces.

  The train step written in two calls: the updates are then a whole array written by the
  first call and read back by the second, instead of a value inside one fused loop.
  """

  def __init__(self, opt: optax.GradientTransformation, params: Any, grads: tuple[Any, Any]):
    super().__init__(train_step(opt), params, opt.init(params), grads)
    self.update = jax.jit(opt.update, donate_argnums=(1,))
    self.apply = jax.jit(optax.apply_updates, donate_argnums=(0,))

  def compile(self) -> dict:
    start = time.perf_counter()
    self.update_compiled = self.update.lower(self.grads[0], self.state, self.params).compile()
    updates = jax.eval_shape(self.update, self.grads[0], self.state, self.params)[0]
    self.apply_compiled = self.apply.lower(self.params, updates).compile()
    self.compile_times = {"total_s": time.perf_counter() - start}
    return self.compile_times

  def step(self) -> None:
    updates, self.state = self.update_compiled(self.next_grads(), self.state, self.params)
    self.params = self.apply_compiled(self.params, updates)

  def buffer_bytes(self) -> dict:
    return {}


def jax_tree(leaves: list[np.ndarray]) -> dict:
  """A dict tree of fresh device arrays (copies: each contender owns and donates its own)."""
  return {f"w{i:04d}": jnp.array(x) for i, x in enumerate(leaves)}


def jax_grads(problem: Problem) -> tuple[dict, dict]:
  """The problem's gradients and their negation, device trees every JAX contender shares.

  Contenders step on the two in turn. On one fixed gradient a centered step's variance
  `v - m**2` falls to 0 within a few hundred steps, and Optax's and PyTorch's steps then take
  roots of rounding errors below 0: NaN, on which PyTorch's centered step ran 4.8 times
  slower (1e6 parameters, 15 rounds; ours takes the variance as 0 there). Alternating signs
  keeps the variance near `g**2`, and every state and parameter bounded, as in training.
  The negation is NumPy's: on the device, each new leaf shape would compile a kernel of its
  own (35 ms each here: 35 s for a thousand leaves of different shapes).
  """
  return jax_tree(problem.grads), jax_tree([-g for g in problem.grads])


def ours_optimizer(config: Config) -> optax.GradientTransformation:
  """`rmsprop` with the configuration's flags, built cold: the staged per-leaf functions that
  earlier builds of the same flags left for the process are dropped first, so that every
  compile time measured includes tracing them, as a training run's first compile does."""
  _transform._STAGED.clear()
  return rmsprop_optax.rmsprop(LEARNING_RATE, DECAY, EPS, **config.ours)


def optax_optimizer(config: Config) -> optax.GradientTransformation:
  """`optax.rmsprop` with the configuration's flags; coupled weight decay chained before it."""
  flags = dict(config.optax)
  weight_decay = flags.pop("weight_decay", None)
  opt = optax.rmsprop(LEARNING_RATE, DECAY, EPS, **flags)
  if weight_decay is None:
    return opt
  return optax.chain(optax.add_decayed_weights(weight_decay), opt)


def make_jax(opt: optax.GradientTransformation, problem: Problem, grads: tuple[Any, Any], *, donate: bool = True) -> JaxContender:
  """`opt`'s train step on a fresh copy of the problem's params."""
  params = jax_tree(problem.params)
  return JaxContender(train_step(opt), params, opt.init(params), grads, donate=donate)


def make_floor(config: Config, problem: Problem, grads: tuple[Any, Any]) -> JaxContender:
  params = jax_tree(problem.params)
  state = tuple(
      {k: jnp.zeros(v.shape, dtype) for k, v in params.items()} for dtype in config.state_dtypes
  )
  return JaxContender(floor_step, params, state, grads)


class TorchContender:
  """``torch.optim.RMSprop(foreach=True)`` on its own copy of the params, gradients attached."""

  def __init__(self, config: Config, problem: Problem):
    import torch

    self.torch = torch
    self.params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in problem.params]
    # The gradients and their negation, attached in turn as the JAX contenders take them
    # (see jax_grads). Re-pointing each `.grad` costs about 0.2 µs per leaf, inside the
    # step's time: 0.2 ms of a 1000-leaf step that takes 10 ms and more.
    forward = [torch.from_numpy(g) for g in problem.grads]  # shares the NumPy buffers
    self.grads, self.turn = (forward, [-g for g in forward]), 0
    for p, g in zip(self.params, forward):
      p.grad = g
    self.opt = torch.optim.RMSprop(
        self.params, lr=LEARNING_RATE, alpha=DECAY, eps=EPS, foreach=True, **config.torch
    )
    self.step()  # torch allocates its state lazily, on the first step
    self.state_bytes = sum(
        t.numel() * t.element_size()
        for s in self.opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )

  def compile(self) -> dict:
    return {}

  def step(self) -> None:
    self.turn ^= 1
    for p, g in zip(self.params, self.grads[self.turn]):
      p.grad = g
    with self.torch.no_grad():
      self.opt.step()

  def sync(self) -> None:
    pass  # PyTorch's CPU operations have finished when they return.

  def buffer_bytes(self) -> dict:
    return {}


def float32_state(config: Config) -> Config:
  """`config` with its state kept in float32 (the params' dtype)."""
  flags = {k: v for k, v in config.ours.items() if k not in ("nu_dtype", "momentum_dtype")}
  return dataclasses.replace(config, ours=flags)


CONTENDERS = ("ours", "optax", "floor", "torch", "ours_undonated", "ours_split", "ours_f32_state")


def build(name: str, config: Config, problem: Problem, grads: tuple[Any, Any]):
  """The contender called `name`, one of `CONTENDERS`.

  ``ours_undonated`` is our step jitted without donation; ``ours_split`` is our update and
  ``optax.apply_updates`` jitted as two calls; ``ours_f32_state`` is ours with the state in
  float32 (what a narrower ``nu_dtype`` is measured against).
  """
  if name == "ours":
    return make_jax(ours_optimizer(config), problem, grads)
  if name == "ours_undonated":
    return make_jax(ours_optimizer(config), problem, grads, donate=False)
  if name == "ours_split":
    return SplitContender(ours_optimizer(config), jax_tree(problem.params), grads)
  if name == "ours_f32_state":
    return make_jax(ours_optimizer(float32_state(config)), problem, grads)
  if name == "optax":
    return make_jax(optax_optimizer(config), problem, grads)
  if name == "floor":
    return make_floor(config, problem, grads)
  if name == "torch":
    return TorchContender(config, problem)
  raise ValueError(f"unknown contender {name!r}")
