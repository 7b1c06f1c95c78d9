"""Benchmarks rmsprop-optax's train step against Optax, PyTorch and a memory-traffic floor.

RMSProp's update is elementwise: its speed limit is the memory traffic of reading params,
gradients and state and writing params and state. For each configuration, total size and
number of leaves, one process measures, interleaved and repeated, the seconds per step of

* ``ours``  rmsprop_optax.rmsprop + optax.apply_updates, jitted, params and state donated;
* ``optax`` optax.rmsprop with the same flags (after add_decayed_weights for weight decay);
* ``floor`` a donated kernel moving the same bytes with one multiply-add per output;
* ``torch`` torch.optim.RMSprop(foreach=True), in place, threads matched to JAX's usage;

then compile times against Optax's, state bytes and peak memory. Ratios are medians over
rounds of ratios taken within a round. Usage::

    python benchmarks/run.py                      # the full suite (about 26 minutes on 2 cores)
    python benchmarks/run.py --configs plain --sizes 1e6 1e7 --leaves 1
    python benchmarks/run.py --quick --out /tmp/b  # seconds: what the smoke test runs
    python benchmarks/run.py --sizes 1e5 --leaves 1000 --compile-leaves 1000 --compile-distinct 1000

Every cell also records a 95% bootstrap interval for each ratio and the share of the CPUs
other processes used while it ran (a shared machine's load skews timings; the report lists
the cells that ran beside other work).

Results go to ``--out`` (default ``benchmarks/out``): results.json, results.md, results.png.
"""

from __future__ import annotations

import argparse
import datetime
from importlib import metadata
import gc
import hashlib
import os
import json
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
  sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import contenders  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import rmsprop_optax  # noqa: E402

DEFAULTS = dict(
    sizes=[1e4, 1e5, 1e6, 1e7, 4e7],
    leaves=[1, 100, 1000],
    configs=list(contenders.CONFIGS),
    repeats=7,
    sample_seconds=0.04,
    min_cell_seconds=3.0,
    compile_leaves=[10, 100, 1000],
    compile_distinct=[],
    compile_repeats=3,
    compile_size=100_000,
    min_leaf_size=100,
)
QUICK = dict(
    sizes=[1_000],
    leaves=[2],
    configs=["plain", "bf16_nu"],
    repeats=2,
    sample_seconds=0.0,
    min_cell_seconds=0.0,
    compile_leaves=[2],
    compile_distinct=[3],
    compile_repeats=1,
    compile_size=1_000,
    min_leaf_size=1,
)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=float, nargs="*", help="total parameter counts (default 1e4 .. 4e7; none: compile times only)")
  parser.add_argument("--leaves", type=int, nargs="+", help="leaf counts of the tree (default 1 100 1000)")
  parser.add_argument("--configs", nargs="+", choices=list(contenders.CONFIGS), help="configurations (default all)")
  parser.add_argument("--repeats", type=int, help="interleaved rounds per cell (default 7)")
  parser.add_argument("--sample-seconds", type=float, help="length of one timing sample (default 0.04)")
  parser.add_argument("--min-cell-seconds", type=float, help="add rounds (up to 4x) while a cell's timing is shorter (default 3)")
  parser.add_argument("--compile-leaves", type=int, nargs="*", help="leaf counts for compile times (default 10 100 1000; none to skip)")
  parser.add_argument("--compile-repeats", type=int, help="interleaved compilations per library (default 3)")
  parser.add_argument(
      "--compile-distinct", type=int, nargs="*",
      help="leaf counts for compile times on trees whose leaves all differ in shape (default none)",
  )
  parser.add_argument("--compile-size", type=int, help="total parameters of the compile-time trees (default 1e5)")
  parser.add_argument("--min-leaf-size", type=int, help="skip cells with fewer parameters per leaf (default 100)")
  parser.add_argument("--torch-threads", type=int, help="PyTorch's intra-op threads (default: the cores JAX keeps busy)")
  parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
  parser.add_argument("--quick", action="store_true", help="a tiny run that only checks that everything works")
  parser.add_argument("--merge", type=pathlib.Path, nargs="+", help="only merge these results.json files into one report")
  parser.add_argument("--out", type=pathlib.Path, default=HERE / "out", help="output folder (default benchmarks/out)")
  args = parser.parse_args(argv)
  defaults = {**DEFAULTS, **(QUICK if args.quick else {})}
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.sizes = [int(s) for s in args.sizes]
  return args


def source_fingerprint() -> str:
  """The git commit, and a hash of the package's sources (they may differ from the commit)."""
  package = pathlib.Path(rmsprop_optax.__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(package.glob("*.py")):
    digest.update(path.name.encode() + path.read_bytes())
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  return f"commit {commit}, package sources sha256 {digest.hexdigest()[:12]}"


def environment(torch_threads: int | None, jax_busy: float) -> dict:
  info = {
      "source": source_fingerprint(),
      "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
      "date": datetime.date.today().isoformat(),
      "machine": f"{measure.cpu_name()}, {measure.cores()} cores, "
      f"{measure.memory_total_gib() or float('nan'):.0f} GiB",
      "cpu_features": measure.cpu_features(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": metadata.version("jaxlib"),
      "optax": optax.__version__,
      "numpy": np.__version__,
      "rmsprop_optax": rmsprop_optax.__version__,
      "jax_backend": jax.default_backend(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_threads_busy": jax_busy,
      "torch_threads": torch_threads,
  }
  if torch_threads is not None:
    import torch

    info["torch"] = torch.__version__
  return info


def contender_names(config_name: str, leaves: int, use_torch: bool) -> list[str]:
  names = ["ours", "optax", "floor"] + (["torch"] if use_torch else [])
  if config_name == "plain" and leaves <= 100:
    # What forgetting donation, or jitting the update apart from apply_updates, costs
    # (not at a thousand leaves, where every compilation takes seconds).
    names += ["ours_undonated", "ours_split"]
  if config_name == "bf16_nu":
    names.append("ours_f32_state")  # what the narrower state saves
  return names


def step_cell(config, total: int, leaves: int, args, *, optax_first: bool = False, seed: int = 0) -> dict:
  """Times every contender on one (configuration, size, leaves) cell.

  `optax_first` compiles Optax's step before ours (cells alternate, so that neither
  library's compile time always pays for what the other's leaves warm). `seed` draws the
  rounds' orders: one per cell, so that no position in the order lines up across cells.
  """
  load = measure.CpuShare()
  problem = contenders.Problem.make(total, leaves)
  grads = contenders.jax_grads(problem)
  names = contender_names(config.name, leaves, not args.no_torch)
  built = {name: contenders.build(name, config, problem, grads) for name in names}
  row = {"config": config.name, "size": total, "leaves": leaves, "param_bytes": problem.param_bytes}
  order = sorted(built, key=lambda n: (n != "optax", n != "ours") if optax_first else (n != "ours", n != "optax"))
  row["donated"] = {name: measure.warm_up(built[name])["donated"] for name in order}
  for contender in built.values():  # a third step: see step_disagreement
    contender.step()
  # Same steps from the same start: the contenders time the same work.
  row["ours_vs_optax_disagreement"] = measure.step_disagreement(built["ours"], built["optax"], problem.params)
  row["compile"] = {name: built[name].compile_times for name in ("ours", "optax")}
  samples = measure.interleaved(built, args.repeats, args.sample_seconds, seed=seed, min_seconds=args.min_cell_seconds)
  row["rounds"] = len(samples["ours"])
  row["seconds"] = {name: float(np.median(s)) for name, s in samples.items()}
  row["samples"] = samples
  row["cpu_share"] = load.since()
  pairs = {"ours/optax": ("ours", "optax"), "ours/floor": ("ours", "floor"), "torch/ours": ("torch", "ours"),
           "undonated/ours": ("ours_undonated", "ours"), "split/ours": ("ours_split", "ours"),
           "ours/ours_f32_state": ("ours", "ours_f32_state")}
  pairs = {key: pair for key, pair in pairs.items() if set(pair) <= set(built)}
  row["ratios"] = {key: measure.median_ratio(samples[a], samples[b]) for key, (a, b) in pairs.items()}
  row["intervals"] = {key: measure.ratio_interval(samples[a], samples[b], seed) for key, (a, b) in pairs.items()}
  row["state_bytes"] = {name: c.state_bytes for name, c in built.items()}
  row["finite"] = {name: measure.all_finite(c) for name, c in built.items()}
  row["faults_per_step"] = {name: measure.faults_per_step(c) for name, c in built.items()}
  gc.collect()  # not inside the peak measurements: a collection takes long once torch is loaded
  row["step_peak_growth_bytes"] = {name: measure.step_peak_growth(c) for name, c in built.items()}
  row["xla"] = {name: c.buffer_bytes() for name, c in built.items() if name not in ("torch", "ours_split")}
  del built, grads, problem
  gc.collect()
  return row


def compile_cell(config, leaves: int, args, count: int, *, distinct: bool = False) -> list[dict]:
  """Compile times of our train step and Optax's on a small tree, `count` pairs.

  Each pair compiles freshly built steps (new Python functions: no cache can answer), in
  alternating order. With `distinct`, every leaf has a shape of its own
  (`contenders.Problem.distinct`), so that no two leaves' arithmetic can be traced once.
  """
  if distinct:
    problem = contenders.Problem.distinct(leaves)
  else:
    problem = contenders.Problem.make(max(args.compile_size, leaves), leaves)
  grads = contenders.jax_grads(problem)
  pairs = []
  for r in range(count):
    times = {}
    for name in ("ours", "optax") if r % 2 == 0 else ("optax", "ours"):
      times[name] = contenders.build(name, config, problem, grads).compile()
    pairs.append(times)
  return pairs


def compile_row(config_name: str, leaves: int, pairs: list[dict], sizes: list[int], shapes: str = "equal") -> dict:
  """Medians over pairs; ratios are medians of the within-pair ratios. `shapes`: "equal"
  where the tree splits its parameters into leaves of one or two shapes, "distinct" where
  every leaf's shape differs."""
  row = {"config": config_name, "leaves": leaves, "shapes": shapes, "sizes": sizes, "pairs": len(pairs)}
  for name in ("ours", "optax"):
    row[name] = {key: float(np.median([p[name][key] for p in pairs])) for key in pairs[0][name]}
  for key in ("total_s", "total_cpu_s"):
    row["ratio" if key == "total_s" else "ratio_cpu"] = float(
        np.median([p["ours"][key] / p["optax"][key] for p in pairs])
    )
  return row


def write(results: dict, out: pathlib.Path, *, final: bool) -> None:
  """Saves the raw results; with `final`, the markdown report and the plot too."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
  if final:
    (out / "results.md").write_text(report.markdown(results))
    report.plot(results, out / "results.png")


def merge(paths: list[pathlib.Path]) -> dict:
  """One result from several runs' results.json (say one run per configuration)."""
  runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  merged = {
      "environment": dict(runs[0]["environment"]),
      "arguments": runs[0].get("arguments", {}),
      "steps": [row for run in runs for row in run["steps"]],
      "compile": [row for run in runs for row in run["compile"]],
      "wall_seconds": sum(run.get("wall_seconds", 0.0) for run in runs),
  }
  merged["environment"]["load_average_at_end"] = runs[-1]["environment"].get("load_average_at_end")
  shares = [run["environment"].get("cpu_share") for run in runs]
  if all(shares):  # the runs' shares, weighted by their lengths
    seconds = sum(share["seconds"] for share in shares)
    merged["environment"]["cpu_share"] = {
        key: round(sum(share[key] * share["seconds"] for share in shares) / seconds, 3)
        for key in ("others", "stolen")
    } | {"seconds": round(seconds, 3)}
  merged["merged_from"] = [
      {"file": str(p), "date": run["environment"]["date"], "source": run["environment"]["source"],
       "wall_seconds": run.get("wall_seconds")}
      for p, run in zip(paths, runs)
  ]
  return merged


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.merge:
    results = merge(args.merge)
    write(results, args.out, final=True)
    print(f"merged {len(args.merge)} runs into {args.out / 'results.md'}", file=sys.stderr)
    return results
  start = time.perf_counter()
  whole_run = measure.CpuShare()

  def log(message: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

  jax_busy = measure.jax_threads(4_000 if args.quick else 4_000_000)
  torch_threads = None
  if not args.no_torch:
    import torch

    torch_threads = args.torch_threads or jax_busy
    torch.set_num_threads(torch_threads)
  results = {"environment": environment(torch_threads, jax_busy), "steps": [], "compile": []}
  before = measure.CpuShare()
  time.sleep(0 if args.quick else 2.0)  # what else runs here, before we load the machine
  results["environment"]["cpu_share_before_start"] = before.since()
  busy = (results["environment"]["cpu_share_before_start"] or {}).get("others", 0.0)
  if busy > report.BUSY:
    log(f"other processes keep {busy:.0%} of the CPUs busy: timings will be noisier, and the report says so")
  results["arguments"] = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
  log(f"XLA runs an elementwise kernel on {jax_busy} thread(s); torch threads = {torch_threads}")

  for name in args.configs:
    config = contenders.CONFIGS[name]
    for leaves in args.leaves:
      for total in args.sizes:
        if total < leaves * args.min_leaf_size:
          continue  # a thousand leaves of ten parameters each is no model anyone trains
        cell = len(results["steps"])
        row = step_cell(config, total, leaves, args, optax_first=cell % 2 == 1, seed=cell)
        results["steps"].append(row)
        write(results, args.out, final=False)  # an interrupted run keeps what it measured
        log(
            f"{name:17s} n={total:<9.0e} leaves={leaves:<5d} ours {row['seconds']['ours'] * 1e3:8.3f} ms  "
            + "  ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items())
        )
  def log_compile(row: dict) -> None:
    results["compile"].append(row)
    log(
        f"compile {row['config']:17s} leaves={row['leaves']:<5d} ({row['shapes']} shapes) "
        f"ours {row['ours']['total_s']:.3f} s  optax {row['optax']['total_s']:.3f} s  "
        f"ratio {row['ratio']:.2f} (cpu {row['ratio_cpu']:.2f})"
    )

  # Compile times: every step cell above compiled our step and Optax's, one after the other,
  # on freshly built functions; leaf counts the grid lacks get dedicated pairs.
  for name in args.configs:
    config = contenders.CONFIGS[name]
    for leaves in args.compile_leaves:
      cells = [r for r in results["steps"] if r["config"] == name and r["leaves"] == leaves]
      pairs = [r["compile"] for r in cells]
      sizes = [r["size"] for r in cells]
      if len(pairs) < args.compile_repeats:
        count = args.compile_repeats - len(pairs)
        pairs += compile_cell(config, leaves, args, count)
        sizes += [max(args.compile_size, leaves)] * count
      log_compile(compile_row(name, leaves, pairs, sizes))
    for leaves in args.compile_distinct:
      pairs = compile_cell(config, leaves, args, args.compile_repeats, distinct=True)
      log_compile(compile_row(name, leaves, pairs, [sum(contenders.distinct_sizes(leaves))] * len(pairs), "distinct"))
  results["wall_seconds"] = time.perf_counter() - start
  results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
  results["environment"]["cpu_share"] = whole_run.since()
  write(results, args.out, final=True)
  log(f"wrote {args.out / 'results.md'} and results.png")
  return results


if __name__ == "__main__":
  main()
