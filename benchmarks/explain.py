"""Where a train step's time goes: each XLA kernel's bytes, measured time and bandwidth.

For one configuration and size, compiles our step, Optax's and the floor kernel, reads every
kernel (fusion or copy) of the entry computation from the compiled HLO with the bytes it reads
and writes, runs a few steps under `jax.profiler`, and prints per kernel: bytes per
parameter, milliseconds per step, and GB/s. A kernel well below the floor's bandwidth is
bound by arithmetic; a step with more bytes than the floor is bound by its structure (XLA
on CPU computes each output array in its own loop, so a buffer read by two outputs' loops
is read twice). Usage::

    python benchmarks/explain.py --config centered_nesterov --size 1e7
"""

from __future__ import annotations

import argparse
import collections
import glob
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
  sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import contenders  # noqa: E402

_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "pred": 1, "u16": 2, "u8": 1}
# A shape is an array's, f32[10]{0}, or a tuple's, as a multi-output fusion returns:
# (f32[10]{0}, f32[10]{0}).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+?)(?:\{[^}]*\})? (\w[\w-]*)\((.*?)\)")


def _shape_bytes(shape: str) -> int:
  """Bytes of an array shape, or of all the arrays in a tuple shape."""
  total = 0
  for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
    sizes = [int(d) for d in dims.split(",") if d]
    total += _BYTES.get(dtype, 0) * int(np.prod(sizes, dtype=np.int64))
  return total


def kernels(hlo: str) -> list[dict]:
  """The entry computation's kernels (fusions and copies) and the bytes each reads and writes."""
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[: entry.find("\n}") + 1]
  sizes, found = {}, []
  for line in entry.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, operands = match.groups()
    sizes[name] = _shape_bytes(shape)
    if opcode in ("fusion", "copy"):
      reads = sum(sizes.get(op.strip().lstrip("%"), 0) for op in operands.split(",") if op.strip())
      found.append({"name": name, "opcode": opcode, "read": reads, "written": sizes[name]})
  return found


def kernel_times(contender, steps: int) -> dict[str, float]:
  """Mean seconds per step spent in each named kernel, from a profile of `steps` steps."""
  from jax._src.lib import _profile_data  # noqa: PLC0415  (private; only this script needs it)

  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    try:
      for _ in range(steps):
        contender.step()
        contender.sync()
    finally:
      jax.profiler.stop_trace()
    (path,) = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    profile = _profile_data.ProfileData.from_file(path)
  total = collections.defaultdict(float)
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        total[event.name] += event.duration_ns * 1e-9
  return {name: seconds / steps for name, seconds in total.items()}


def explain(config_name: str, size: int, leaves: int, steps: int) -> str:
  config = contenders.CONFIGS[config_name]
  problem = contenders.Problem.make(size, leaves)
  grads = contenders.jax_grads(problem)
  lines = [f"{config_name}, {size:.0e} parameters in {leaves} leaves, {steps} profiled steps", ""]
  lines += ["| contender | kernel | B/param read | B/param written | ms/step | GB/s |", "| --- " * 6 + "|"]
  for name in ("ours", "optax", "floor"):
    contender = contenders.build(name, config, problem, grads)
    contender.compile()
    for _ in range(3):
      contender.step()
    contender.sync()
    times = kernel_times(contender, steps)
    total_bytes = total_seconds = 0.0
    for kernel in kernels(contender.compiled.as_text()):
      seconds = times.get(kernel["name"], float("nan"))
      moved = kernel["read"] + kernel["written"]
      if moved < 64:  # the step counter and other scalars
        continue
      total_bytes += moved
      total_seconds += seconds
      lines.append(
          f"| {name} | {kernel['name']} | {kernel['read'] / size:.1f} | {kernel['written'] / size:.1f} | "
          f"{seconds * 1e3:.2f} | {moved / seconds / 1e9:.1f} |"
      )
    lines.append(
        f"| {name} | all | {total_bytes / size:.1f} (read + written) | | {total_seconds * 1e3:.2f} | "
        f"{total_bytes / total_seconds / 1e9:.1f} |"
    )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="plain", choices=list(contenders.CONFIGS))
  parser.add_argument("--size", type=float, default=1e7)
  parser.add_argument("--leaves", type=int, default=1)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args(argv)
  print(explain(args.config, int(args.size), args.leaves, args.steps))


if __name__ == "__main__":
  main()
