"""How setup.py decides whether, and how, to build the CUDA operator.

Pure functions of the environment, a few facts about torch and the file
system, so that tests/test_cuda_build.py can try them on fake toolkits.
Imports nothing outside the standard library: setup.py imports it before
torch.utils.cpp_extension, which reads CUDA_HOME when it is imported. Build-time
only: it sits beside setup.py and is not part of the installed package.

The decision (plan_cuda_build):

- ``SE_FAIRSEQ_CUDA=0``: CPU operator only. ``SE_FAIRSEQ_CUDA=1``: CUDA or a
  loud failure (setup.py raises with the reason). Unset: CUDA when possible,
  otherwise the CPU operator with one warning.
- torch must be a CUDA build (``torch.version.cuda``).
- A real toolkit: the first candidate with ``include/cuda_runtime_api.h`` and
  an executable ``bin/nvcc`` whose CUDA major version matches torch's, taken
  from CUDA_HOME, CUDA_PATH, the nvcc on PATH (symlinks and wrapper scripts
  resolved: torch's own guess is the wrapper's parent folder), the nvcc
  shipped in the ``nvidia`` wheels, /usr/local/cuda, /usr/local/cuda-*,
  /opt/cuda. A candidate that is not a toolkit is rejected with a reason.
- Architectures: ``TORCH_CUDA_ARCH_LIST`` when set; with a visible GPU,
  torch's default (the visible GPUs); without one, the archs torch itself was
  built for (``torch.cuda.get_arch_list()``) that this nvcc can compile
  (``nvcc --list-gpu-arch``), the newest also as PTX.
- Headers: torch's CUDA headers include cuSPARSE/cuBLAS/cuSOLVER headers that
  a bare toolkit may lack; the ``nvidia`` wheels installed with CUDA torch
  carry them. Their include folders are searched after the toolkit's
  (``-idirafter``), so they never shadow the toolkit's own headers.
"""

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import NamedTuple, Optional

RUNTIME_HEADER = os.path.join("include", "cuda_runtime_api.h")
# Included by torch's ATen/cuda headers (our own glue needs none of them).
LIBRARY_HEADERS = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")
STANDARD_ROOTS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda")

HOW_TO_GET_CUDA = (
    "To build the CUDA operator: install a CUDA build of torch and a CUDA toolkit of the same "
    "major version (nvcc and include/cuda_runtime_api.h), point CUDA_HOME at the toolkit if it "
    "is not in a standard place, and reinstall with SE_FAIRSEQ_CUDA=1 pip install "
    "--no-build-isolation -e . (SE_FAIRSEQ_CUDA=1 turns any obstacle into an error; "
    "TORCH_CUDA_ARCH_LIST picks the GPU architectures)."
)


class CudaPlan(NamedTuple):
    build: bool  # build the CUDA operator
    reason: str = ""  # why not (build False)
    toolkit: Optional[str] = None  # becomes CUDA_HOME
    arch_list: Optional[str] = None  # becomes TORCH_CUDA_ARCH_LIST (None: leave it alone)
    include_after: tuple[str, ...] = ()  # extra header folders, searched last
    notes: tuple[str, ...] = ()  # what was decided and why, for the build log


def is_toolkit(path) -> tuple[bool, str]:
    """(True, "") when ``path`` holds a CUDA toolkit, else (False, why not)."""
    if not path:
        return False, "empty path"
    if not os.path.isdir(path):
        return False, "no such folder"
    if not os.path.isfile(os.path.join(path, RUNTIME_HEADER)):
        return False, f"no {RUNTIME_HEADER}"
    nvcc = os.path.join(path, "bin", "nvcc")
    if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
        return False, "no executable bin/nvcc"
    return True, ""


def nvcc_wrapper_target(path) -> Optional[str]:
    """The nvcc that a wrapper script at ``path`` runs, when the script names it
    by absolute path (e.g. ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if not head.startswith(b"#!") or b"\0" in head:
        return None  # a binary, not a script
    me = os.path.realpath(path)
    for match in re.finditer(
        r"(/[^\s'\"`;|&<>()$]*/bin/nvcc)(?![\w.-])", head.decode("utf-8", "replace")
    ):
        target = match.group(1)
        if os.path.realpath(target) != me and os.path.isfile(target):
            return target
    return None


def toolkit_of_nvcc(nvcc) -> Optional[str]:
    """The folder above bin/ of an nvcc, through symlinks and wrapper scripts."""
    if not nvcc:
        return None
    real = os.path.realpath(nvcc)
    target = nvcc_wrapper_target(real)
    if target is not None:
        real = os.path.realpath(target)
    return os.path.dirname(os.path.dirname(real))


def nvidia_wheel_dirs(site_dirs: Sequence[str]):
    """Folders of the ``nvidia`` wheels (site-packages/nvidia/*) in ``site_dirs``."""
    found = []
    for site in site_dirs:
        for d in sorted(glob.glob(os.path.join(site, "nvidia", "*"))):
            if os.path.isdir(d) and d not in found:
                found.append(d)
    return found


def toolkit_candidates(environ, nvcc_on_path=None, site_dirs=(), roots=STANDARD_ROOTS):
    """Ordered, de-duplicated [(path, origin)] of places a toolkit may be."""
    out = []

    def add(path, origin):
        if path and path not in [p for p, _ in out]:
            out.append((path, origin))

    for var in ("CUDA_HOME", "CUDA_PATH"):
        add(environ.get(var), var)
    if nvcc_on_path:
        add(toolkit_of_nvcc(nvcc_on_path), f"nvcc on PATH ({nvcc_on_path})")
    for d in nvidia_wheel_dirs(site_dirs):  # pip's nvidia-cuda-nvcc wheels
        if os.path.isfile(os.path.join(d, "bin", "nvcc")):
            add(d, "nvidia wheel")
    for root in roots:
        if "*" in root:
            versioned = sorted(glob.glob(root), key=_version_key, reverse=True)
            for path in versioned:
                add(path, "standard location")
        else:
            add(root, "standard location")
    return out


def _version_key(path):
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(path)))


def run_nvcc(toolkit, *args, timeout=60) -> Optional[str]:
    """stdout of ``toolkit/bin/nvcc args`` or None when it fails."""
    try:
        result = subprocess.run(
            [os.path.join(toolkit, "bin", "nvcc"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def nvcc_version(toolkit) -> Optional[tuple[int, int]]:
    """(major, minor) from ``nvcc --version`` ("release 13.0"), None if unknown."""
    out = run_nvcc(toolkit, "--version")
    match = re.search(r"release (\d+)\.(\d+)", out or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_toolkit(candidates, torch_cuda=None):
    """(toolkit or None, [(path, origin, why rejected)]): the first candidate
    that is a toolkit whose CUDA major version matches ``torch_cuda``."""
    rejected = []
    want_major = int(str(torch_cuda).split(".")[0]) if torch_cuda else None
    for path, origin in candidates:
        ok, why = is_toolkit(path)
        if ok and want_major is not None:
            version = nvcc_version(path)
            if version is not None and version[0] != want_major:
                ok, why = (
                    False,
                    f"CUDA {version[0]}.{version[1]}, torch is built with CUDA {torch_cuda}",
                )
        if ok:
            return path, rejected
        rejected.append((path, origin, why))
    return None, rejected


def parse_nvcc_arches(output) -> Optional[set]:
    """``nvcc --list-gpu-arch`` output (compute_75 compute_80 ...) -> {"7.5", "8.0", ...}."""
    if not output:
        return None
    arches = set()
    for num in re.findall(r"compute_(\d+)", output):
        arches.add(f"{int(num) // 10}.{int(num) % 10}")
    return arches or None


def arch_list_from_torch(torch_arches, nvcc_arches=None) -> str:
    """TORCH_CUDA_ARCH_LIST for the archs torch was built for ("sm_90", "sm_90a",
    "compute_90"), kept when nvcc can build them (``nvcc_arches`` None: all);
    the newest plain arch also as PTX. "" when none is left."""
    kept = {}
    for arch in torch_arches:
        match = re.fullmatch(r"(?:sm|compute)_(\d+)([a-z]?)", arch)
        if not match:
            continue
        num, suffix = int(match.group(1)), match.group(2)
        base = f"{num // 10}.{num % 10}"
        if nvcc_arches is not None and base not in nvcc_arches:
            continue
        kept[(num // 10, num % 10, suffix)] = base + suffix
    if not kept:
        return ""
    order = sorted(kept)
    names = [kept[key] for key in order]
    plain = [i for i, key in enumerate(order) if not key[2]]
    if plain:
        names[plain[-1]] += "+PTX"
    return ";".join(names)


def missing_library_headers(toolkit):
    return [h for h in LIBRARY_HEADERS if not os.path.isfile(os.path.join(toolkit, "include", h))]


def wheel_include_dirs(site_dirs):
    """Include folders of the nvidia wheels: nvidia/<lib>/include (and one level deeper)."""
    found = []
    for d in nvidia_wheel_dirs(site_dirs):
        for inc in [os.path.join(d, "include")] + sorted(
            glob.glob(os.path.join(d, "*", "include"))
        ):
            if os.path.isdir(inc) and inc not in found:
                found.append(inc)
    return found


def plan_cuda_build(
    environ,
    torch_cuda,
    torch_arches=(),
    gpu_count=0,
    nvcc_on_path=None,
    site_dirs=(),
    roots=STANDARD_ROOTS,
) -> CudaPlan:
    """Whether and how to build the CUDA operator; see the module docstring.

    Args:
        environ: the environment (os.environ).
        torch_cuda: torch.version.cuda (None for a CPU build of torch).
        torch_arches: torch.cuda.get_arch_list().
        gpu_count: torch.cuda.device_count().
        nvcc_on_path: shutil.which("nvcc").
        site_dirs: site-packages folders that may hold the nvidia wheels.
    Raises ValueError for an SE_FAIRSEQ_CUDA other than 0/1.
    """
    forced = environ.get("SE_FAIRSEQ_CUDA", "")
    if forced not in ("", "0", "1"):
        raise ValueError(f"SE_FAIRSEQ_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return CudaPlan(False, "SE_FAIRSEQ_CUDA=0")
    if not torch_cuda:
        return CudaPlan(False, "this torch is a CPU-only build (torch.version.cuda is None)")

    toolkit, rejected = find_toolkit(
        toolkit_candidates(environ, nvcc_on_path, site_dirs, roots), torch_cuda
    )
    notes = [f"skipped {path} ({origin}): {why}" for path, origin, why in rejected]
    if toolkit is None:
        tried = "; ".join(f"{path} ({origin}): {why}" for path, origin, why in rejected) or "none"
        return CudaPlan(
            False, f"no CUDA {torch_cuda} toolkit found (tried: {tried})", notes=tuple(notes)
        )
    notes.append(f"CUDA toolkit: {toolkit}")

    arch_list = None
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        notes.append(f"architectures: TORCH_CUDA_ARCH_LIST={environ['TORCH_CUDA_ARCH_LIST']}")
    elif gpu_count:
        notes.append("architectures: those of the visible GPUs (torch's default)")
    else:
        nvcc_arches = parse_nvcc_arches(run_nvcc(toolkit, "--list-gpu-arch"))
        arch_list = arch_list_from_torch(torch_arches, nvcc_arches)
        if not arch_list:
            return CudaPlan(
                False,
                f"no GPU is visible and none of the architectures torch was built for "
                f"({', '.join(torch_arches) or 'none'}) can be compiled by {toolkit}/bin/nvcc "
                f"({', '.join(sorted(nvcc_arches or ())) or 'unknown'}); set TORCH_CUDA_ARCH_LIST",
                toolkit=toolkit,
                notes=tuple(notes),
            )
        notes.append(f"architectures: no GPU visible, torch's own that nvcc builds: {arch_list}")

    include_after = ()
    missing = missing_library_headers(toolkit)
    if missing:
        include_after = tuple(
            d
            for d in wheel_include_dirs(site_dirs)
            if any(os.path.isfile(os.path.join(d, h)) for h in missing)
        )
        if include_after:
            notes.append(
                f"headers the toolkit lacks ({', '.join(missing)}) from the nvidia "
                f"wheels: {', '.join(include_after)}"
            )
    return CudaPlan(
        True, toolkit=toolkit, arch_list=arch_list, include_after=include_after, notes=tuple(notes)
    )


def which_nvcc(environ):
    return shutil.which("nvcc", path=environ.get("PATH"))
