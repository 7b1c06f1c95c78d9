"""Timing and memory measurements: warm-up, interleaved repeats, compile time, peak memory."""

from __future__ import annotations

import os
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


def _status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


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


def jax_threads(size: int = 4_000_000, calls: int = 5) -> int:
  """How many threads XLA's CPU backend runs one large elementwise kernel on at once.

  Read from a profile (the most kernel events that overlap in time, over all threads), not
  from CPU time over wall time, which a loaded machine drives below one. This is the thread
  count to give PyTorch for a like-for-like comparison; 1 if the profile cannot be read.
  """
  import glob
  import tempfile

  x = jax.numpy.ones(size, jax.numpy.float32)
  f = jax.jit(lambda x: jax.numpy.sqrt(x * x + 1.0))
  f(x).block_until_ready()
  try:
    from jax._src.lib import _profile_data  # noqa: PLC0415  (private, hence the fallback)

    with tempfile.TemporaryDirectory() as folder:
      jax.profiler.start_trace(folder)
      try:
        for _ in range(calls):
          f(x).block_until_ready()
      finally:
        jax.profiler.stop_trace()
      (path,) = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
      profile = _profile_data.ProfileData.from_file(path)
    edges = []
    for plane in profile.planes:
      for line in plane.lines:
        for event in line.events:
          if "fusion" in event.name and not event.name.startswith("end:"):
            edges += [(event.start_ns, 1), (event.start_ns + event.duration_ns, -1)]
  except Exception:  # noqa: BLE001  (any failure to profile: assume the common case)
    return 1
  running = most = 0
  for _, change in sorted(edges, key=lambda e: (e[0], e[1])):
    running += change
    most = max(most, running)
  return max(1, most)


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as info:
      for line in info:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
  kib = None
  try:
    with open("/proc/meminfo") as info:
      for line in info:
        if line.startswith("MemTotal:"):
          kib = int(line.split()[1])
  except OSError:
    return None
  return None if kib is None else kib / 2**20


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
