"""Turns the measurements of `run.py` into a summary, a markdown report and a plot."""

from __future__ import annotations

import numpy as np

LARGE = 10_000_000  # "at 1e7 parameters and above"
# Its targets compare it with our own float32 state, not with Optax (which has no state dtype).
NARROW_STATE = "bf16_nu"
BUSY = 0.1  # other processes' share of the CPUs above which a cell is reported as run beside other work


def _over(reduce, values) -> float:
  """`reduce` (np.median, np.max, np.min) of the measured values; NaN when none was."""
  values = [v for v in values if v is not None]
  return float(reduce(values)) if values else float("nan")


def min_bytes(row: dict) -> int:
  """The bytes a step must move at least: read p, g and state once; write p and state once."""
  return 3 * row["param_bytes"] + 2 * row["state_bytes"]["ours"]


def xla_bytes_per_param(row: dict, names=("ours", "optax", "floor")) -> list[float]:
  """Bytes XLA's loops move per parameter and step, for each contender in `names`."""
  params = row["param_bytes"] / 4
  return [row.get("xla", {}).get(n, {}).get("xla_bytes_accessed", float("nan")) / params for n in names]


def per_byte_vs_floor(row: dict) -> float | None:
  """ours/floor per byte XLA moves: 1.0 when our loops run at the floor kernel's bandwidth.

  ours/floor is this times the ratio of the bytes the two compiled steps move, which is the
  part set by the step's structure (which outputs' loops read which buffers), not by speed.
  """
  ratio = row["ratios"].get("ours/floor")
  if ratio is None:
    return None
  ours_bytes, floor_bytes = xla_bytes_per_param(row, ("ours", "floor"))
  return ratio * floor_bytes / ours_bytes


def _state_ratio(row: dict, other: str) -> float:
  """Our state's bytes over `other`'s in a step cell; NaN without one."""
  return row["state_bytes"]["ours"] / row["state_bytes"][other] if row else float("nan")


def summary(results: dict) -> dict:
  """One line of headline numbers per configuration."""
  lines = {}
  configs = list(dict.fromkeys(row["config"] for row in results["steps"] + results["compile"]))
  for config in configs:
    rows = [r for r in results["steps"] if r["config"] == config]
    first, largest = (rows[0], max(rows, key=lambda r: r["size"])) if rows else ({}, {})
    large = [r for r in rows if r["size"] >= LARGE]
    ratio = lambda rs, key: [r["ratios"].get(key) for r in rs]  # noqa: E731
    line = {
        "ours/optax median": _over(np.median, ratio(rows, "ours/optax")),
        "ours/optax max": _over(np.max, ratio(rows, "ours/optax")),
        "ours/floor large median": _over(np.median, ratio(large, "ours/floor")),
        "ours/floor large max": _over(np.max, ratio(large, "ours/floor")),
        "ours/floor per byte large median": _over(np.median, [per_byte_vs_floor(r) for r in large]),
        "torch/ours large min": _over(np.min, ratio(large, "torch/ours")),
        "torch/ours large median": _over(np.median, ratio(large, "torch/ours")),
        "state ours/optax": _state_ratio(first, "optax"),
        "XLA bytes ours/optax/floor": xla_bytes_per_param(largest) if rows else [float("nan")] * 3,
    }
    if any("ours/ours_f32_state" in r["ratios"] for r in rows):
      line["ours/ours_f32_state large median"] = _over(np.median, ratio(large, "ours/ours_f32_state"))
      line["ours/ours_f32_state large max"] = _over(np.max, ratio(large, "ours/ours_f32_state"))
      line["state ours/ours_f32_state"] = _state_ratio(first, "ours_f32_state")
    for shapes, suffix in (("equal", ""), ("distinct", " distinct")):
      compiled = [c for c in results["compile"] if c["config"] == config and c.get("shapes", "equal") == shapes]
      if compiled:
        most = max(c["leaves"] for c in compiled)
        line["compile leaves" + suffix] = most
        line["compile ours/optax" + suffix] = _over(np.max, [c["ratio"] for c in compiled if c["leaves"] == most])
        line["compile ours/optax cpu" + suffix] = _over(
            np.max, [c["ratio_cpu"] for c in compiled if c["leaves"] == most]
        )
    lines[config] = line
  return lines


def targets(results: dict) -> list[tuple[str, bool | None, str]]:
  """The issue's targets: (target, met? (None: not measured), evidence)."""
  lines = summary(results)
  out = []

  def check(name, values, ok):
    values = {k: v for k, v in values.items() if not np.isnan(v)}
    if not values:
      out.append((name, None, "not measured in this run"))
      return
    worst = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
    out.append((name, all(ok(v) for v in values.values()), worst))

  check(
      "step time <= optax's: median ratio <= 1.0",
      {c: l["ours/optax median"] for c, l in lines.items() if c != NARROW_STATE},
      lambda v: v <= 1.0,
  )
  check(
      "step time <= optax's: no cell above 1.1",
      {c: l["ours/optax max"] for c, l in lines.items() if c != NARROW_STATE},
      lambda v: v <= 1.1,
  )
  check("within 1.15x of the floor at >= 1e7 (worst cell)", {c: l["ours/floor large max"] for c, l in lines.items()}, lambda v: v <= 1.15)
  check("3x faster than torch at >= 1e7 (slowest cell)", {c: l["torch/ours large min"] for c, l in lines.items()}, lambda v: v >= 3.0)
  bf16 = {c: l for c, l in lines.items() if "state ours/ours_f32_state" in l}
  check("bf16 nu: half the state bytes", {c: l["state ours/ours_f32_state"] for c, l in bf16.items()}, lambda v: v <= 0.5)
  check(
      "bf16 nu: step <= 0.85x float32 state's at >= 1e7 (worst cell)",
      {c: l["ours/ours_f32_state large max"] for c, l in bf16.items()},
      lambda v: v <= 0.85,
  )
  check(
      "compile time at the most leaves <= optax's (CPU seconds)",
      {c: l["compile ours/optax cpu"] for c, l in lines.items() if "compile ours/optax cpu" in l},
      lambda v: v <= 1.0,
  )
  check(
      "compile time at the most leaves <= optax's (wall seconds)",
      {c: l["compile ours/optax"] for c, l in lines.items() if "compile ours/optax" in l},
      lambda v: v <= 1.0,
  )
  distinct = {c: l["compile ours/optax distinct"] for c, l in lines.items() if "compile ours/optax distinct" in l}
  if distinct:
    check("compile time at the most leaves, every leaf a different shape, <= optax's (wall seconds)", distinct,
          lambda v: v <= 1.0)
  return out


def cells_above(results: dict, limit: float = 1.1) -> tuple[list[str], list[str]]:
  """Cells whose ours/optax is above `limit` (bfloat16 state aside, as in the targets), and
  those of them whose whole 95% bootstrap interval is above it too."""
  above, surely = [], []
  for row in results["steps"]:
    ratio = row["ratios"].get("ours/optax")
    if row["config"] == NARROW_STATE or ratio is None or ratio <= limit:
      continue
    cell = f"{row['config']} {_fmt_size(row['size'])} in {row['leaves']} ({ratio:.2f})"
    above.append(cell)
    if row.get("intervals", {}).get("ours/optax", [0.0])[0] > limit:
      surely.append(cell)
  return above, surely


def disagreement_limit(config_name: str) -> float:
  """How far ours and optax's first steps may differ, over the largest move: rounding only."""
  from contenders import CONFIGS  # noqa: PLC0415  (kept local, as in markdown)

  return 5e-2 if "nu_dtype" in CONFIGS[config_name].ours else 1e-4


def _fmt_size(n: int) -> str:
  exponent = int(np.floor(np.log10(n)))
  mantissa = n / 10**exponent
  return f"{mantissa:g}e{exponent}"


def _fmt_interval(interval) -> str:
  return "-" if not interval else f"{interval[0]:.2f} to {interval[1]:.2f}"


def _fmt_share(share) -> str:
  return "-" if not share else f"{share['others']:.0%}"


def _fmt(value, digits=2):
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


def markdown(results: dict) -> str:
  env = results["environment"]
  lines = ["# rmsprop-optax benchmark", ""]
  features = ", ".join(env.get("cpu_features") or [])
  lines.append(
      f"Machine: {env['machine']}{' (' + features + ')' if features else ''} ({env['platform']}). Date: {env['date']}. Python {env['python']}, "
      f"jax {env['jax']}, jaxlib {env['jaxlib']}, optax {env['optax']}, torch {env.get('torch', '-')}, "
      f"numpy {env['numpy']}, rmsprop-optax {env['rmsprop_optax']}. JAX backend: {env['jax_backend']}"
      f"{', XLA_FLAGS ' + repr(env['xla_flags']) if env.get('xla_flags') else ''}, "
      f"running an elementwise kernel on {env['jax_threads_busy']} thread(s) (XLA's loop partitions); torch threads: "
      f"{env['torch_threads']}. Wall time of the run: {results.get('wall_seconds', 0):.0f} s. "
      f"Package: {env['source']}. Load average (1, 5, 15 min) at start {env['load_average_at_start']}, "
      f"at end {env.get('load_average_at_end')}."
  )
  if results.get("merged_from"):
    lines.append(
        f"Merged from {len(results['merged_from'])} runs (the machine line is the first's): "
        + "; ".join(f"{run['date']}, {run['source']}, {run['wall_seconds'] or 0:.0f} s" for run in results["merged_from"])
        + "."
    )
  args = results.get("arguments", {})
  rounds = [r.get("rounds", args.get("repeats")) for r in results["steps"]]
  lines.append(
      f"Each cell: {min(rounds, default=0)} to {max(rounds, default=0)} rounds, each timing every "
      f"contender once in a random order, samples of about {args.get('sample_seconds')} s; "
      "ratios are medians over rounds of within-round ratios."
  )
  lines += ["", "## Targets", "", "| target | met | per configuration |", "| --- | --- | --- |"]
  for name, met, evidence in targets(results):
    lines.append(f"| {name} | {'-' if met is None else ('yes' if met else 'no')} | {evidence} |")
  above, surely = cells_above(results)
  if above:
    counted = sum(1 for row in results["steps"] if row["config"] != NARROW_STATE)
    lines += ["", f"Cells above 1.1 against optax: {len(above)} of {counted} with float32 state, "
              f"{len(surely)} of them with their whole 95% interval above 1.1"
              + (f" ({'; '.join(surely)})" if surely else "") + f". All: {'; '.join(above)}."]

  lines += ["", "## Summary", ""]
  lines.append(
      "| config | ours/optax median | ours/optax max | ours/floor >=1e7 (median, max) | "
      "XLA B/param ours / optax / floor | ours/floor per byte >=1e7 (median) | "
      "torch/ours >=1e7 (min, median) | state ours/optax | compile ours/optax, most leaves (wall, CPU) |"
  )
  lines.append("| --- " * 9 + "|")
  for config, l in summary(results).items():
    lines.append(
        f"| {config} | {_fmt(l['ours/optax median'])} | {_fmt(l['ours/optax max'])} | "
        f"{_fmt(l['ours/floor large median'])}, {_fmt(l['ours/floor large max'])} | "
        + " / ".join(_fmt(b, 0) for b in l["XLA bytes ours/optax/floor"]) + " | "
        f"{_fmt(l['ours/floor per byte large median'])} | "
        f"{_fmt(l['torch/ours large min'])}, {_fmt(l['torch/ours large median'])} | {_fmt(l['state ours/optax'])} | "
        f"{_fmt(l.get('compile ours/optax'))}, {_fmt(l.get('compile ours/optax cpu'))} |"
    )
  lines += [
      "",
      "ours/floor per byte: ours/floor divided by the ratio of the bytes XLA's loops move (ours "
      "over the floor's). Near 1, our loops run at the floor kernel's bandwidth and the rest of "
      "ours/floor is the step's structure: bytes a loop must read again because XLA on CPU "
      "computes each output in its own loop.",
  ]

  lines += ["", "## Step time", ""]
  lines.append(
      "Seconds per step of our train step; ratios of seconds (below 1: ours faster; torch/ours "
      "above 1: ours faster). GB/s: the least bytes a step must move (read params, gradients "
      "and state, write params and state) over our step time."
  )
  lines.append(
      "XLA B/param: bytes per parameter that XLA's compiled loops read and write "
      "(`cost_analysis`), for ours / optax / floor: the traffic each step really causes."
  )
  extra_keys = sorted({k for r in results["steps"] for k in r["ratios"]} - {"ours/optax", "ours/floor", "torch/ours"})
  lines.append(
      "Faults/step: minor page faults per step of ours / optax / torch, each the first write to "
      "a 4 KiB page just mapped: fresh memory a step touches (a temporary above glibc's 32 MiB "
      "mapping threshold is mapped anew at every step)."
  )
  lines.append(
      "95%: a bootstrap interval of ours/optax (rounds resampled). Others' CPU: the share of the "
      "machine's CPUs that other processes kept busy while the cell ran."
  )
  lines += ["", "| config | size | leaves | ours ms | GB/s | XLA B/param | ours/optax | 95% | ours/floor | torch/ours | "
            + " | ".join(extra_keys) + (" | " if extra_keys else " ") + "faults/step | others' CPU |"]
  lines.append("| --- " * (12 + len(extra_keys)) + "|")
  for row in results["steps"]:
    seconds = row["seconds"]["ours"]
    r = row["ratios"]
    cells = [
        row["config"], _fmt_size(row["size"]), str(row["leaves"]), _fmt(seconds * 1e3, 3),
        _fmt(min_bytes(row) / seconds / 1e9, 1), " / ".join(_fmt(b, 0) for b in xla_bytes_per_param(row)),
        _fmt(r.get("ours/optax")), _fmt_interval(row.get("intervals", {}).get("ours/optax")),
        _fmt(r.get("ours/floor")), _fmt(r.get("torch/ours")),
    ] + [_fmt(r.get(k)) for k in extra_keys]
    faults = row.get("faults_per_step", {})
    cells.append(" / ".join(_fmt(faults.get(name), 0) for name in ("ours", "optax", "torch")))
    cells.append(_fmt_share(row.get("cpu_share")))
    lines.append("| " + " | ".join(cells) + " |")

  if results["compile"]:
    lines += ["", "## Compile time", ""]
    lines.append(
        "Seconds from a fresh `jax.jit` of the train step to an executable: tracing and "
        "lowering to HLO, then XLA. Pairs (ours, optax) compiled one after the other; medians "
        "over pairs, ratios are medians of within-pair ratios, of wall seconds and of process CPU "
        "seconds (which the load of a shared machine inflates less)."
    )
    lines.append(
        "Leaf shapes: equal, the total split into leaves of one or two shapes, so that a "
        "signature traced once serves every leaf; distinct, every leaf a shape of its own "
        "(100, 101, ... parameters), so that none is shared."
    )
    lines += ["", "| config | leaves | leaf shapes | pairs | ours trace+lower s | ours XLA s | optax trace+lower s | "
              "optax XLA s | ours/optax wall | ours/optax CPU |", "| --- " * 10 + "|"]
    for row in results["compile"]:
      lines.append(
          f"| {row['config']} | {row['leaves']} | {row.get('shapes', 'equal')} | {row['pairs']} | {_fmt(row['ours']['trace_lower_s'], 3)} | "
          f"{_fmt(row['ours']['compile_s'], 3)} | {_fmt(row['optax']['trace_lower_s'], 3)} | "
          f"{_fmt(row['optax']['compile_s'], 3)} | {_fmt(row['ratio'])} | {_fmt(row['ratio_cpu'])} |"
      )

  big = [r for r in results["steps"] if r["leaves"] == 1]
  if big:
    size = max(r["size"] for r in big)
    lines += ["", f"## Memory ({_fmt_size(size)} parameters, one leaf)", ""]
    lines.append(
        "State: bytes of per-parameter state. XLA peak: arguments + outputs - aliased + "
        "temporaries, from XLA's buffer assignment. Step growth: how far the process's resident "
        "high-water mark rises during one step (fresh allocations: temporaries, undonated outputs)."
    )
    lines += ["", "| config | contender | state MB | XLA peak MB | step growth MB | donated |", "| --- " * 6 + "|"]
    for row in [r for r in big if r["size"] == size]:
      for name in row["state_bytes"]:
        xla = row.get("xla", {}).get(name, {})
        growth = row["step_peak_growth_bytes"].get(name)
        lines.append(
            f"| {row['config']} | {name} | {_fmt(row['state_bytes'][name] / 1e6, 1)} | "
            f"{_fmt(xla.get('xla_peak_bytes', float('nan')) / 1e6, 1)} | "
            f"{_fmt(None if growth is None else growth / 1e6, 1)} | {row['donated'].get(name)} |"
        )

  notes = []
  from contenders import CONFIGS  # noqa: PLC0415  (kept local: report works on saved JSON too)

  for name in dict.fromkeys(r["config"] for r in results["steps"]):
    config = CONFIGS.get(name)
    if config is not None and (config.torch_note or config.optax_note):
      notes.append(f"- {name}: " + "; ".join(n for n in (config.optax_note, config.torch_note) if n) + ".")
  if any("torch" in r["seconds"] for r in results["steps"]):
    notes.append(
        "- every configuration: torch adds eps outside the root (its only placement), ours and "
        "optax inside: the same operations in another order."
    )
  if notes:
    lines += ["", "## Where a peer cannot express a configuration", ""] + notes
  checks = []
  for row in results["steps"]:
    cell = f"{row['config']} {_fmt_size(row['size'])} in {row['leaves']}"
    broken = [name for name, ok in row.get("finite", {}).items() if not ok]
    if broken:
      checks.append(f"- {cell}: not finite after the cell's steps: {', '.join(broken)}.")
    disagreement = row.get("ours_vs_optax_disagreement")
    if disagreement is not None and disagreement > disagreement_limit(row["config"]):
      checks.append(f"- {cell}: ours and optax's first three steps differ by {disagreement:.1e} of the largest move.")
  lines += _load_section(results)
  if any("finite" in r for r in results["steps"]):
    lines += ["", "## Checks", ""]
    lines.append(
        "Every contender's params and state are checked to be finite after its cell's steps, and "
        "ours and optax's first three steps (from the same start) to agree, beyond two float32 "
        "spacings of the params, to 1e-4 of the largest move (5e-2 with a bfloat16 state, whose "
        "average keeps 8 bits; the steps, on alternating gradients, partly cancel)."
    )
    lines += [""] + (checks or ["All cells pass."])
  return "\n".join(lines) + "\n"


def _load_section(results: dict) -> list[str]:
  """What else ran on the machine: for the whole run, before it, and the busiest cells."""
  env = results["environment"]
  run, before = env.get("cpu_share"), env.get("cpu_share_before_start")
  if not run:
    return []
  text = (
      f"Other processes kept {run['others']:.0%} of the CPUs busy during the run"
      + (f" ({before['others']:.0%} in the {before['seconds']:.0f} s before it)" if before else "")
      + f", and the hypervisor took {run['stolen']:.0%} of them. "
  )
  busy = [r for r in results["steps"] if (r.get("cpu_share") or {}).get("others", 0.0) > BUSY]
  if busy:
    text += f"Cells that ran while others used more than {BUSY:.0%}: " + "; ".join(
        f"{r['config']} {_fmt_size(r['size'])} in {r['leaves']} ({r['cpu_share']['others']:.0%})" for r in busy
    ) + ". Their ratios are noisier than the rest's."
  else:
    text += f"No cell ran while others used more than {BUSY:.0%}."
  return ["", "## Machine load", "", text]


def plot(results: dict, path) -> None:
  """Four panels: ratios against Optax, the floor and PyTorch by size; compile time by leaves."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = results["steps"]
  configs = list(dict.fromkeys(r["config"] for r in steps))
  leaf_counts = sorted({r["leaves"] for r in steps})
  styles = {leaves: style for leaves, style in zip(leaf_counts, ["-", "--", ":"])}
  colors = dict(zip(configs, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  panels = [
      (axes[0, 0], "ours/optax", "step time, ours / optax (lower is better)", 1.0),
      (axes[0, 1], "ours/floor", "step time, ours / floor kernel (lower is better)", 1.15),
      (axes[1, 0], "torch/ours", "step time, torch foreach / ours (higher is better)", 3.0),
  ]
  for ax, key, title, target in panels:
    for config in configs:
      for leaves in leaf_counts:
        rows = sorted((r for r in steps if r["config"] == config and r["leaves"] == leaves), key=lambda r: r["size"])
        points = [(r["size"], r["ratios"][key]) for r in rows if key in r["ratios"]]
        if points:
          x, y = zip(*points)
          ax.plot(x, y, styles[leaves], marker="o", ms=3, color=colors[config],
                  label=f"{config}" if leaves == leaf_counts[0] else None)
    ax.axhline(target, color="k", lw=0.8, ls="-.")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  if axes[0, 0].get_legend_handles_labels()[0]:  # a run of compile times only has no step lines
    axes[0, 0].legend(fontsize=7, title="config; leaves: " + ", ".join(f"{l} {s}" for l, s in styles.items()),
                      title_fontsize=7)
  ax = axes[1, 1]
  for config in configs:
    rows = sorted((c for c in results["compile"] if c["config"] == config), key=lambda c: c["leaves"])
    if rows:
      ax.plot([c["leaves"] for c in rows], [c["ours"]["total_s"] for c in rows], "-", marker="o", ms=3,
              color=colors[config], label=f"{config} ours")
      ax.plot([c["leaves"] for c in rows], [c["optax"]["total_s"] for c in rows], "--", marker="x", ms=3,
              color=colors[config])
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("leaves")
  ax.set_ylabel("seconds")
  ax.set_title("compile time (trace + lower + XLA): ours solid, optax dashed", fontsize=10)
  ax.grid(alpha=0.3)
  env = results["environment"]
  fig.suptitle(f"rmsprop-optax train step, {env['machine']}, {env['date']}, jax {env['jax']}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
