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
  text = (tmp_path / "results.md").read_text()
  assert "## Targets" in text and "## Compile time" in text

  import report

  # The bytes XLA's loops move were read for every step, so the per-byte ratio is defined.
  assert all(report.per_byte_vs_floor(row) > 0 for row in results["steps"])
  for row in results["steps"]:
    assert row["ours_vs_optax_disagreement"] <= report.disagreement_limit(row["config"]), row
  assert "All cells pass." in text


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
