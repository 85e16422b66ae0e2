"""How setup.py decides to build the CUDA operator (cuda_build_plan.py),
tried on fake toolkits, plus a compile of the CUDA kernel when nvcc is installed.

The end-to-end check (compile everything against a CUDA torch and see both
kernels register) is ../shared/tools/cuda-build-check.sh: too heavy for the
test suite."""

import importlib.util
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.subprocess  # every test runs a (fake) nvcc or a fresh interpreter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(ROOT, "cuda_build_plan.py")


def load_config():
    spec = importlib.util.spec_from_file_location("se_build_config_under_test", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bc = load_config()
ALL_ARCHES = (
    "compute_75 compute_80 compute_86 compute_87 compute_89 compute_90 compute_100 compute_120"
)


def write_script(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def make_toolkit(root, version="13.0", arches=ALL_ARCHES, headers=("cuda_runtime_api.h",)):
    """A fake toolkit: include/ with `headers`, a bin/nvcc answering --version and
    --list-gpu-arch."""
    os.makedirs(os.path.join(root, "include"), exist_ok=True)
    for h in headers:
        open(os.path.join(root, "include", h), "w").close()
    write_script(
        os.path.join(root, "bin", "nvcc"),
        f"""
case "$1" in
  --version) echo "Cuda compilation tools, release {version}, V{version}.88" ;;
  --list-gpu-arch) for a in {arches}; do echo $a; done ;;
  *) exit 1 ;;
esac
""",
    )
    return str(root)


TORCH_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def plan(
    environ=None,
    torch_cuda="13.0",
    torch_arches=TORCH_ARCHES,
    gpu_count=0,
    nvcc_on_path=None,
    site_dirs=(),
    roots=(),
):
    return bc.plan_cuda_build(
        environ or {}, torch_cuda, torch_arches, gpu_count, nvcc_on_path, site_dirs, roots
    )


# ------------------------------------------------------------ toolkits


def test_is_toolkit(tmp_path):
    assert bc.is_toolkit(make_toolkit(tmp_path / "cuda")) == (True, "")
    assert bc.is_toolkit(str(tmp_path / "nowhere"))[0] is False
    os.makedirs(tmp_path / "usr-local" / "bin")
    ok, why = bc.is_toolkit(str(tmp_path / "usr-local"))
    assert not ok and "cuda_runtime_api.h" in why
    headers_only = tmp_path / "headers-only"
    os.makedirs(headers_only / "include")
    open(headers_only / "include" / "cuda_runtime_api.h", "w").close()
    ok, why = bc.is_toolkit(str(headers_only))
    assert not ok and "nvcc" in why


def test_nvcc_wrapper_script_is_resolved(tmp_path):
    """The failure of the issue: nvcc on PATH is a wrapper script, torch guesses
    its parent folder (not a toolkit); we follow the script to the toolkit."""
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    wrapper = write_script(
        tmp_path / "usr-local" / "bin" / "nvcc", f'exec {toolkit}/bin/nvcc "$@"\n'
    )
    assert bc.nvcc_wrapper_target(wrapper) == f"{toolkit}/bin/nvcc"
    assert bc.toolkit_of_nvcc(wrapper) == toolkit
    p = plan(nvcc_on_path=wrapper)
    assert p.build and p.toolkit == toolkit


def test_symlinked_nvcc_is_resolved(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    os.makedirs(tmp_path / "bin")
    os.symlink(os.path.join(toolkit, "bin", "nvcc"), tmp_path / "bin" / "nvcc")
    assert bc.toolkit_of_nvcc(str(tmp_path / "bin" / "nvcc")) == toolkit
    assert bc.nvcc_wrapper_target(os.path.join(toolkit, "bin", "nvcc")) is None  # not a wrapper


def test_binary_nvcc_is_not_a_wrapper(tmp_path):
    path = tmp_path / "nvcc"
    path.write_bytes(b"\x7fELF\0\0 /usr/local/cuda/bin/nvcc")
    assert bc.nvcc_wrapper_target(str(path)) is None


def test_cuda_home_that_is_not_a_toolkit_is_rejected(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda")
    os.makedirs(tmp_path / "usr-local" / "include")
    p = plan({"CUDA_HOME": str(tmp_path / "usr-local")}, roots=(toolkit,))
    assert p.build and p.toolkit == toolkit
    assert any(
        "usr-local" in note and "CUDA_HOME" in note and "cuda_runtime_api.h" in note
        for note in p.notes
    )


def test_cuda_home_and_cuda_path_come_first(tmp_path):
    a, b = make_toolkit(tmp_path / "a"), make_toolkit(tmp_path / "b")
    assert plan({"CUDA_HOME": a, "CUDA_PATH": b}, roots=(b,)).toolkit == a
    assert plan({"CUDA_PATH": b}, roots=(a,)).toolkit == b


def test_toolkit_of_another_major_version_is_skipped(tmp_path):
    old = make_toolkit(tmp_path / "cuda-12.4", version="12.4")
    new = make_toolkit(tmp_path / "cuda-13.0", version="13.0")
    p = plan({"CUDA_HOME": old}, roots=(str(tmp_path / "cuda-*"),))
    assert p.toolkit == new
    assert any("CUDA 12.4" in note for note in p.notes)
    p = plan({"CUDA_HOME": old}, roots=())
    assert not p.build and "CUDA 12.4, torch is built with CUDA 13.0" in p.reason


def test_versioned_roots_newest_first(tmp_path):
    make_toolkit(tmp_path / "cuda-13.0", version="13.0")
    newest = make_toolkit(tmp_path / "cuda-13.10", version="13.10")
    assert plan(roots=(str(tmp_path / "cuda-*"),)).toolkit == newest


def test_nvcc_from_the_nvidia_wheels(tmp_path):
    site = tmp_path / "site-packages"
    wheel_toolkit = make_toolkit(site / "nvidia" / "cu13")
    p = plan(site_dirs=[str(site)])
    assert p.build and p.toolkit == wheel_toolkit


def test_no_toolkit_anywhere(tmp_path):
    os.makedirs(tmp_path / "usr-local" / "bin")
    p = plan({"CUDA_HOME": str(tmp_path / "usr-local")}, roots=(str(tmp_path / "missing"),))
    assert not p.build
    assert "no CUDA 13.0 toolkit found" in p.reason and "usr-local" in p.reason


# ------------------------------------------------------ architectures


def test_arch_list_without_gpu_comes_from_torch_filtered_by_nvcc(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda", arches="compute_75 compute_80 compute_90 compute_100")
    p = plan(
        {"CUDA_HOME": toolkit},
        torch_arches=["sm_50", "sm_75", "sm_80", "sm_90", "sm_90a", "sm_100", "sm_120"],
    )
    assert p.build and p.arch_list == "7.5;8.0;9.0;9.0a;10.0+PTX"


def test_arch_list_left_to_torch_with_a_gpu_or_when_set(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda")
    assert plan({"CUDA_HOME": toolkit}, gpu_count=1).arch_list is None
    p = plan({"CUDA_HOME": toolkit, "TORCH_CUDA_ARCH_LIST": "9.0"})
    assert p.build and p.arch_list is None


def test_no_buildable_arch_is_a_reason(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda", arches="compute_100 compute_120")
    p = plan({"CUDA_HOME": toolkit}, torch_arches=["sm_50", "sm_60"])
    assert not p.build and "TORCH_CUDA_ARCH_LIST" in p.reason and "sm_50" in p.reason


def test_arch_list_helpers():
    assert bc.parse_nvcc_arches("compute_75\ncompute_90\ncompute_100\n") == {"7.5", "9.0", "10.0"}
    assert bc.parse_nvcc_arches("") is None
    assert bc.arch_list_from_torch(["sm_90", "sm_80"]) == "8.0;9.0+PTX"
    assert bc.arch_list_from_torch(["sm_90a"], {"9.0"}) == "9.0a"
    assert (
        bc.arch_list_from_torch(["sm_120", "compute_120", "sm_86"], {"8.6", "12.0"})
        == "8.6;12.0+PTX"
    )
    assert bc.arch_list_from_torch([], {"9.0"}) == ""


def test_torch_accepts_the_arch_list():
    """Every name we produce is one torch's own _get_cuda_arch_flags accepts."""
    from torch.utils import cpp_extension

    arch_list = bc.arch_list_from_torch(
        ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_120"]
    )
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    try:
        flags = cpp_extension._get_cuda_arch_flags()
    finally:
        if old is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old
    assert "-gencode=arch=compute_120,code=compute_120" in flags
    assert "-gencode=arch=compute_90a,code=sm_90a" in flags


# ------------------------------------------------------------- headers


def test_missing_library_headers_come_from_the_nvidia_wheels(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda")
    site = tmp_path / "site-packages"
    os.makedirs(site / "nvidia" / "cu13" / "include")
    os.makedirs(site / "nvidia" / "nccl" / "include")
    for h in ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h", "cuda_runtime_api.h"):
        open(site / "nvidia" / "cu13" / "include" / h, "w").close()
    p = plan({"CUDA_HOME": toolkit}, site_dirs=[str(site)])
    assert p.build and p.include_after == (str(site / "nvidia" / "cu13" / "include"),)


def test_complete_toolkit_needs_no_wheel_headers(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda", headers=("cuda_runtime_api.h",) + bc.LIBRARY_HEADERS)
    site = tmp_path / "site-packages"
    os.makedirs(site / "nvidia" / "cu13" / "include")
    open(site / "nvidia" / "cu13" / "include" / "cusparse.h", "w").close()
    assert plan({"CUDA_HOME": toolkit}, site_dirs=[str(site)]).include_after == ()


# ------------------------------------------------------------- switches


def test_switches(tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda")
    assert not plan({"CUDA_HOME": toolkit, "SE_FAIRSEQ_CUDA": "0"}).build
    assert plan({"CUDA_HOME": toolkit, "SE_FAIRSEQ_CUDA": "1"}).build
    p = plan({"CUDA_HOME": toolkit}, torch_cuda=None)
    assert not p.build and "CPU-only build" in p.reason
    with pytest.raises(ValueError, match="SE_FAIRSEQ_CUDA"):
        plan({"SE_FAIRSEQ_CUDA": "yes"})


def test_build_config_imports_without_torch():
    code = (
        "import sys, importlib.util; sys.modules['torch'] = None; "
        f"spec = importlib.util.spec_from_file_location('c', {CONFIG_PATH!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print(m.plan_cuda_build({}, None).reason)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "CPU-only" in out.stdout


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks a CPU-only torch")
def test_setup_py_on_cpu_torch(tmp_path):
    """setup.py's wiring: one warning by default, a loud failure under SE_FAIRSEQ_CUDA=1."""
    env = dict(os.environ, SE_FAIRSEQ_NO_AUTOLOAD="1")
    env.pop("SE_FAIRSEQ_CUDA", None)
    run = [sys.executable, "setup.py", "--name"]
    result = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "CPU operator only" in warnings[0] and "CUDA_HOME" in warnings[0]
    result = subprocess.run(
        run, cwd=ROOT, capture_output=True, text=True, env=dict(env, SE_FAIRSEQ_CUDA="1")
    )
    assert result.returncode != 0 and "SE_FAIRSEQ_CUDA=1 but" in result.stderr
    result = subprocess.run(
        run, cwd=ROOT, capture_output=True, text=True, env=dict(env, SE_FAIRSEQ_CUDA="0")
    )
    assert result.returncode == 0 and "WARNING" not in result.stderr


# ------------------------------------------------------------- compile


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles(tmp_path):
    """The kernel file needs only the CUDA runtime; compile it for one arch."""
    source = os.path.join(ROOT, "csrc", "se_select_cuda_kernel.cu")
    result = subprocess.run(
        [
            "nvcc",
            "-std=c++17",
            "-O3",
            "-arch=sm_80",
            "-c",
            source,
            "-o",
            str(tmp_path / "kernel.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kernel.o").stat().st_size > 0
