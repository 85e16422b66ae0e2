"""The CUDA kernel compiles with the installed toolkit (compile only: no GPU here)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles(tmp_path):
    source = os.path.join(ROOT, "csrc", "se_select_cuda_kernel.cu")
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-O3", "-c", source, "-o", str(tmp_path / "kernel.o")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kernel.o").stat().st_size > 0
