"""Run Python source in a fresh interpreter whose import system refuses some packages and
modules (and everything under them), as if they were not installed: an import made at run
time, through any chain of modules, fails there."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

BLOCKER = """
import importlib.abc, json, sys
BLOCKED = tuple(json.loads({blocked!r}))

def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class ImportBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            message = f"No module named {{name!r}} (blocked by the test)"
            raise ModuleNotFoundError(message, name=name)
        return None

sys.meta_path.insert(0, ImportBlocker())
sys.path.insert(0, {tests!r})
"""

REPORT = """
loaded = sorted(n for n in sys.modules if _blocked(n))
assert not loaded, f"imported anyway: {loaded}"
print("FLOW OK")
"""


def run_blocked(flow, blocked, cwd, timeout=600):
    """Run ``flow`` (Python source) in a fresh interpreter that cannot import ``blocked``;
    the flow passes when it ends without an error and imported none of them. Returns the
    completed process."""
    code = BLOCKER.format(blocked=json.dumps(list(blocked)), tests=str(TESTS))
    code += textwrap.dedent(flow) + REPORT
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_flow_ran(result):
    assert result.returncode == 0 and "FLOW OK" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-5000:]
    )
