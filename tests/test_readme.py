"""Every Python example in the README runs as written, each in a fresh interpreter."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _title(block: str) -> str:
  heading = None
  text = README.read_text()
  for match in re.finditer(r"^## (.+)$", text[: text.index(block)], flags=re.M):
    heading = match.group(1)
  return re.sub(r"\W+", "_", heading or "top").strip("_").lower()


def test_the_readme_has_examples():
  assert len(BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}-{_title(b)}" for i, b in enumerate(BLOCKS)])
def test_readme_example_runs(block, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", KERAS_BACKEND="jax")
  result = subprocess.run(
      [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, f"README example failed:\n{block}\n--- stderr ---\n{result.stderr[-3000:]}"
