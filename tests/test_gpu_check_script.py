"""The prepared GPU check (benchmarks/gpu_check.sh) parses and lists its steps here; its
driver's CPU path is run by hand (README "Tests and benchmarks": about 45 s)."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.subprocess
def test_scripts_parse_and_the_dry_run_lists_every_step(tmp_path):
    for script in ("gpu_check.sh", "gpu_prep_wheels.sh", "mutation.sh"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", script)], check=True)
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")],
        env=dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [
        line.split()[3].rstrip(":") for line in result.stdout.splitlines() if "would run" in line
    ]
    assert steps == ["env", "venv", "build", "cuda", "select", "driver", "floor", "recipe"]
    assert (tmp_path / "summary.txt").exists()
