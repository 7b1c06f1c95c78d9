"""Timing and memory measurements: warm-up, interleaved repeats, compile time, peak memory."""

from __future__ import annotations

import math
import os
import re
import resource
import time
import warnings
from typing import Any, Callable

import jax
import numpy as np


def warm_up(contender) -> dict:
  """Compiles, runs the first steps and checks that donation took effect.

  Returns ``{"donated": ...}``: True when every donated input buffer was reused (XLA raised
  no "donated buffers were not usable" warning and the inputs were consumed), False for a
  jitted step that donates nothing or whose donation failed, None for PyTorch.
  """
  contender.compile()
  donates = getattr(contender, "donates", None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old = jax.tree.leaves((getattr(contender, "params", None), getattr(contender, "state", None)))
    contender.step()
    contender.sync()
    unusable = any("donated buffers were not usable" in str(w.message) for w in caught)
    donated = None if donates is None else donates and not unusable and all(x.is_deleted() for x in old)
    contender.step()
    contender.sync()
  return {"donated": donated}


def seconds_per_step(contender, steps: int) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    contender.step()
  contender.sync()
  return (time.perf_counter() - start) / steps


def interleaved(
    contenders: dict[str, Any],
    repeats: int,
    sample_seconds: float,
    seed: int = 0,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
  """Seconds per step of each contender, one sample per contender per round.

  Each sample averages enough back-to-back steps to last about `sample_seconds` (at least
  one). Every round visits the contenders in a fresh random order (seeded): slow drifts of a
  shared, noisy machine then hit every contender alike, ratios taken within a round cancel
  them, and no contender always runs right after the same neighbour (one that leaves
  allocations or dirty caches behind, say). At least `repeats` rounds, more (up to four
  times as many) while the rounds are quick and the total stays under `min_seconds`: small
  problems are the noisiest and the cheapest to repeat.
  """
  names = list(contenders)
  steps, round_seconds = {}, 0.0
  for name in names:
    once = seconds_per_step(contenders[name], 1)
    steps[name] = max(1, int(round(sample_seconds / max(once, 1e-9))))
    round_seconds += steps[name] * once
  rounds = max(repeats, min(4 * repeats, int(min_seconds / max(round_seconds, 1e-9))))
  samples: dict[str, list[float]] = {name: [] for name in names}
  rng = np.random.default_rng(seed)
  for _ in range(rounds):
    for index in rng.permutation(len(names)):
      samples[names[index]].append(seconds_per_step(contenders[names[index]], steps[names[index]]))
  return samples


def median_ratio(a: list[float], b: list[float]) -> float:
  """Median over rounds of a[r] / b[r]."""
  return float(np.median(np.asarray(a) / np.asarray(b)))


def ratio_interval(a: list[float], b: list[float], seed: int = 0, resamples: int = 2000) -> list[float]:
  """A 95% bootstrap interval for `median_ratio(a, b)`: rounds resampled with replacement.

  A round's two samples stay together, as the ratio is taken within a round. With the 7 to
  28 rounds of a cell the interval is coarse (its ends are sample ratios), but it tells a
  ratio of 1.12 that every round agrees on from one that two slow rounds made.
  """
  ratios = np.asarray(a) / np.asarray(b)
  picks = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
  medians = np.median(ratios[picks], axis=1)
  return [float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))]


def machine_ticks(proc_stat: str) -> tuple[int, int, int]:
  """(busy, stolen, CPUs) from the text of /proc/stat: clock ticks since boot of the whole
  (virtual) machine. Busy counts user, nice, system, irq and softirq time (guest time is in
  user); stolen is time the hypervisor ran something else on this machine's CPUs."""
  lines = proc_stat.splitlines()
  fields = [int(x) for x in lines[0].split()[1:]]
  fields += [0] * (8 - len(fields))
  user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
  cpus = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
  return user + nice + system + irq + softirq, steal, cpus


def process_ticks(proc_pid_stat: str) -> int:
  """Clock ticks a process (every thread) has run in user and system mode, from the text of
  /proc/<pid>/stat: its 14th and 15th fields, counted after the command name, which is in
  parentheses and may itself hold spaces."""
  fields = proc_pid_stat.rsplit(")", 1)[1].split()
  return int(fields[11]) + int(fields[12])


def _read(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


def _field(path: str, *names: str) -> str | None:
  """What follows the colon on the first line of a /proc file that starts with one of
  `names` ("MemTotal", "model name", ...); None without such a line or file."""
  for line in (_read(path) or "").splitlines():
    if line.startswith(names) and ":" in line:
      return line.split(":", 1)[1].strip()
  return None


class CpuShare:
  """What else the machine ran while a measurement did (Linux only).

  ``CpuShare()`` reads the counters; ``.since()`` returns, over the ``seconds`` since then,
  the share of the machine's CPUs that other processes kept busy (``others``: 0 on a quiet
  machine, 1 with every core taken) and the share the hypervisor took from them
  (``stolen``), or None where /proc cannot be read. Our own threads are left out, so a
  benchmark that keeps every core busy reads 0 on its own.
  """

  def __init__(self):
    self.machine, self.own, self.wall = self._counters()

  @staticmethod
  def _counters():
    machine, own = _read("/proc/stat"), _read("/proc/self/stat")
    if machine is None or own is None:
      return None, None, time.perf_counter()
    return machine_ticks(machine), process_ticks(own), time.perf_counter()

  def since(self) -> dict[str, float] | None:
    now, own, wall = self._counters()
    if self.machine is None or now is None:
      return None
    seconds = wall - self.wall
    ticks = seconds * os.sysconf("SC_CLK_TCK") * max(now[2], 1)
    if ticks <= 0:
      return None
    others = (now[0] - self.machine[0]) - (own - self.own)
    return {
        "others": round(min(max(others / ticks, 0.0), 1.0), 3),
        "stolen": round(min(max((now[1] - self.machine[1]) / ticks, 0.0), 1.0), 3),
        "seconds": round(seconds, 3),
    }


def cpu_features() -> list[str]:
  """The vector instruction sets the CPU reports that bear on these kernels (x86 and Arm)."""
  wanted = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16",
            "asimd": "NEON", "sve": "SVE", "bf16": "BF16"}
  present = set((_field("/proc/cpuinfo", "flags", "Features") or "").split())
  return [name for flag, name in wanted.items() if flag in present]


def _kib(path: str, name: str) -> int | None:
  """A "<name>: <n> kB" line of a /proc file, in KiB; None without it."""
  value = _field(path, name + ":")
  return None if value is None else int(value.split()[0])


def _status_kib(field: str) -> int | None:
  return _kib("/proc/self/status", field)


def faults_per_step(contender, steps: int = 3) -> float:
  """Minor page faults per step: the first write to each 4 KiB page the allocator has just
  mapped faults once, so this counts the fresh memory a step touches. glibc maps every
  allocation above 32 MiB anew and unmaps it when freed, so a temporary that large costs
  its size over 4 KiB in faults at every step, on top of its bytes."""
  contender.sync()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    contender.step()
  contender.sync()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def all_finite(contender) -> bool:
  """Whether every parameter and state value of `contender` is finite (its last step's)."""
  contender.sync()
  torch = getattr(contender, "torch", None)
  if torch is not None:
    tensors = list(contender.params) + [
        t for s in contender.opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)
    ]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
  leaves = jax.tree.leaves((contender.params, contender.state))
  return all(bool(jax.numpy.isfinite(x).all()) for x in leaves if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact))


def step_disagreement(a, b, start: list[np.ndarray]) -> float:
  """How far two contenders' params differ, beyond two float32 spacings of the params (the
  rounding of adding a step to them), over the largest move from `start`: 0 where they
  computed the same steps, in any order. Compare after an odd number of steps: on the
  alternating gradients two steps of a bias-corrected average cancel exactly."""
  largest = excess = 0.0
  for x, y, p in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), start):
    x, y = np.asarray(x), np.asarray(y)
    slack = 2 * np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float32)).astype(np.float64)
    gap = np.abs(x.astype(np.float64) - y.astype(np.float64)) - slack
    excess = max(excess, float(np.max(gap, initial=0.0)))
    largest = max(largest, float(np.max(np.abs(x.astype(np.float64) - p), initial=0.0)))
  return excess / largest if largest > 0 else excess


def step_peak_growth(contender) -> int | None:
  """Bytes by which the resident set's high-water mark rises during one step (Linux only).

  The kernel's high-water mark is reset through ``/proc/self/clear_refs`` first, so this is
  the memory a step allocates and touches on top of what is already resident: temporaries,
  and fresh output buffers when inputs are not donated.
  """
  try:
    with open("/proc/self/clear_refs", "w") as refs:
      refs.write("5")
  except OSError:
    return None
  before = _status_kib("VmRSS")
  contender.step()
  contender.sync()
  peak = _status_kib("VmHWM")
  if before is None or peak is None:
    return None
  return max(0, peak - before) * 1024


def jax_threads(size: int = 4_000_000) -> int:
  """How many threads XLA's CPU backend splits one large elementwise kernel across.

  Read from the compiled HLO: XLA:CPU records the partitions of a parallel loop in the
  fusion's ``outer_dimension_partitions``. This is the thread count to give PyTorch for a
  like-for-like comparison; 1 where the kernel is not partitioned (or on another backend).
  """
  x = jax.numpy.ones(size, jax.numpy.float32)
  text = jax.jit(lambda x: jax.numpy.sqrt(x * x + 1.0)).lower(x).compile().as_text() or ""
  most = 1
  for match in re.finditer(r'"outer_dimension_partitions":\[([^\]]*)\]', text):
    parts = [int(p) for p in re.findall(r"\d+", match.group(1))]
    most = max(most, math.prod(parts) if parts else 1)
  return most


def cpu_name() -> str:
  name = _field("/proc/cpuinfo", "model name")
  if name:
    return name
  import platform

  return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
  kib = _kib("/proc/meminfo", "MemTotal")
  return None if kib is None else kib / 2**20


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
