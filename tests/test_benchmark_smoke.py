"""The benchmark suite runs end to end at a tiny size, so it cannot rot (timings are not checked)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def run_module():
  sys.path.insert(0, str(BENCHMARKS))
  try:
    import run

    yield run
  finally:
    sys.path.remove(str(BENCHMARKS))


def test_quick_benchmark_writes_its_report(run_module, tmp_path):
  results = run_module.main(["--quick", "--out", str(tmp_path)])

  assert {"results.json", "results.md", "results.png"} <= {p.name for p in tmp_path.iterdir()}
  saved = json.loads((tmp_path / "results.json").read_text())
  assert {row["config"] for row in saved["steps"]} == {"plain", "bf16_nu"}
  for row in results["steps"]:
    # Every contender ran and every ratio is a positive number; their values are not checked.
    assert all(seconds > 0 for seconds in row["seconds"].values())
    assert all(ratio > 0 for ratio in row["ratios"].values())
    # The jitted steps really updated in place: a benchmark without donation would be unfair.
    assert all(row["donated"][name] is True for name in ("ours", "optax", "floor"))
    # Every contender ends finite (a centered peer gone NaN on a degenerate gradient would
    # time other work); that ours takes optax's steps is checked below.
    assert all(row["finite"].values()), row["finite"]
  plain = next(row for row in results["steps"] if row["config"] == "plain")
  assert plain["donated"]["ours_undonated"] is False
  bf16 = next(row for row in results["steps"] if row["config"] == "bf16_nu")
  assert bf16["state_bytes"]["ours"] * 2 == bf16["state_bytes"]["ours_f32_state"]
  assert results["compile"] and all(row["ours"]["total_s"] > 0 for row in results["compile"])
  # --quick also compiles on a tree whose leaves all differ in shape.
  distinct = [row for row in results["compile"] if row["shapes"] == "distinct"]
  assert distinct and all(len(set(row["sizes"])) == 1 and row["sizes"][0] == 100 + 101 + 102 for row in distinct)
  for row in results["steps"]:
    # A bootstrap interval per ratio, around it; what else the machine ran, as shares of it.
    assert row["intervals"].keys() == row["ratios"].keys()
    assert all(lo <= row["ratios"][key] <= hi for key, (lo, hi) in row["intervals"].items())
    assert 0.0 <= row["cpu_share"]["others"] <= 1.0 and 0.0 <= row["cpu_share"]["stolen"] <= 1.0
  text = (tmp_path / "results.md").read_text()
  assert "## Targets" in text and "## Compile time" in text and "## Machine load" in text

  import report

  # The bytes XLA's loops move were read for every step, so the per-byte ratio is defined.
  assert all(report.per_byte_vs_floor(row) > 0 for row in results["steps"])
  for row in results["steps"]:
    assert row["ours_vs_optax_disagreement"] <= report.disagreement_limit(row["config"]), row
  assert "All cells pass." in text

  # Two runs merge into one report; what else ran is weighted by each run's length.
  for name, others, seconds in (("a", 0.2, 1.0), ("b", 0.5, 3.0)):
    saved["environment"]["cpu_share"] = {"others": others, "stolen": 0.0, "seconds": seconds}
    (tmp_path / f"{name}.json").write_text(json.dumps(saved))
  merged = run_module.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m")])
  assert len(merged["steps"]) == 2 * len(saved["steps"])
  assert merged["environment"]["cpu_share"] == {"others": (0.2 * 1 + 0.5 * 3) / 4, "stolen": 0.0, "seconds": 4.0}
  assert "## Machine load" in (tmp_path / "m" / "results.md").read_text()
  assert "Merged from 2 runs" in (tmp_path / "m" / "results.md").read_text()


def test_blocking_experiment_runs_and_computes_the_plain_step(run_module):
  import blocking

  # main() checks that both chunked steps give the plain step's parameters and average.
  medians = blocking.main(["--size", "8192", "--chunk", "1024", "--rounds", "1"])
  assert set(medians) == {"plain", "scan", "fori_loop"} and all(s > 0 for s in medians.values())


def test_rounding_experiment_times_every_state_in_place(run_module):
  import rounding

  # main() raises unless each step updated its buffers in place (donation took effect).
  results = rounding.main(["--size", "4096", "--rounds", "1", "--sample-seconds", "0.001"])
  assert set(results) == {"float32", "bfloat16, nearest", "bfloat16, stochastic"}
  assert all(r["seconds"] > 0 and r["vs_float32"] > 0 for r in results.values())


def test_ratio_interval_resamples_whole_rounds(run_module):
  import measure

  # Each round's two samples drift together (a shared machine's speed changes between
  # rounds): resampled as pairs, every ratio is 1.25 and so is the interval; resampled
  # apart, the drift would widen it.
  drift = [1.0, 10.0, 0.1, 5.0, 2.0, 7.0, 3.0]
  assert measure.ratio_interval([1.25 * x for x in drift], drift) == [1.25, 1.25]
  lo, hi = measure.ratio_interval([1, 2, 3, 4, 5, 6, 7], [1] * 7, seed=3)
  assert 1 <= lo < 4 < hi <= 7  # about the median, within the sample's ratios


def test_cpu_counters_are_parsed_from_proc_text(run_module):
  import measure

  stat = "cpu  100 5 20 1000 7 3 2 9 0 0\ncpu0 50 5 10 500 3 1 1 4 0 0\ncpu1 50 0 10 500 4 2 1 5 0 0\nintr 1 0\n"
  # busy = user + nice + system + irq + softirq; steal apart; idle and iowait left out.
  assert measure.machine_ticks(stat) == (100 + 5 + 20 + 3 + 2, 9, 2)
  # The command name may hold spaces and parentheses; utime and stime are the 14th and
  # 15th fields.
  own = "4242 (a (b) c) S 1 1 1 0 -1 4194304 10 0 0 0 321 45 0 0 20 0 1 0 100 0 0"
  assert measure.process_ticks(own) == 321 + 45


def test_process_ticks_agree_with_the_kernels_times(run_module):
  import os

  import measure

  with open("/proc/self/stat") as stat:
    ticks = measure.process_ticks(stat.read())
  times = os.times()  # the same counters, through times(2), in seconds
  assert abs(ticks - (times.user + times.system) * os.sysconf("SC_CLK_TCK")) <= 2


def test_a_run_of_compile_times_only_reports_them(run_module, tmp_path):
  results = run_module.main(["--quick", "--sizes", "--compile-leaves", "--out", str(tmp_path)])

  assert results["steps"] == [] and {row["shapes"] for row in results["compile"]} == {"distinct"}
  text = (tmp_path / "results.md").read_text()
  assert "every leaf a different shape, <= optax's (wall seconds) | " in text
  assert "step time <= optax's: median ratio <= 1.0 | - | not measured in this run" in text
