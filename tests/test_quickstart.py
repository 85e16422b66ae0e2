"""The main job, reduced: examples/quickstart.sh end to end at CI scale."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_pipeline_end_to_end(tmp_path):
    work = tmp_path / "run"
    env = dict(os.environ, QUICKSTART_SCALE="ci", WORK=str(work))
    result = subprocess.run(["bash", os.path.join(ROOT, "examples", "quickstart.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    for step in ("1. real text", "3. vanilla model", "4. self-questioning", "5b. continued",
                 "5c. continued", "6. evaluation", "7. report"):
        assert step in result.stdout
    results = json.load(open(work / "results.json"))
    assert set(results) == {"vanilla", "random", "se", "online"}
    for r in results.values():
        for suite in ("random", "hard"):
            assert 0 < r[suite]["loss"] < 20 and r[suite]["tokens"] > 0
    report = (work / "report.md").read_text()
    assert "| (b) SE: top-k + TLS |" in report and "se-score" in report
    assert (work / "report.png").stat().st_size > 10_000
    assert os.path.exists(work / "data-bin" / "train.se_scores.npy")
