#!/usr/bin/env bash
# Prepare the GPU check (run HERE, on a machine that reaches PyPI): download into wheels/
# the packages the GPU machine lacks, for its Python (3.12) and Linux x86-64. The GPU
# machine has Python 3.12, a CUDA torch (2.11+cu130) and nvcc, but no fairseq and no
# network; benchmarks/gpu_check.sh installs these wheels there with --no-index.
# wheels/ is git-ignored: carry it to the device (the run tool's `carry`), never commit it.
#
#   bash benchmarks/gpu_prep_wheels.sh            # -> wheels/a, wheels/b, ... (each < 60 MB)
#
# The list is this venv's own dependency closure of fairseq and of the transformers path
# (transformers, accelerate, datasets) at the versions installed here (so the device runs
# what the tests here run), minus torch and what comes with it, minus torchaudio (a build
# for another torch does not load; fairseq imports it only for speech).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-wheels}
PY_VERSION=${PY_VERSION:-3.12}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DEST"

# name==version of everything ve-fairseq and the test/build tools need, as installed here
mapfile -t PINS < <("$PY" - <<'PY'
import importlib.metadata as md
import re

skip = {"torch", "torchaudio", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
        "filelock", "fsspec", "typing-extensions", "setuptools"}
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
roots = ["ve-fairseq", "pytest", "ninja", "wheel", "setuptools", "scipy", "numpy",
         "transformers", "accelerate", "datasets", "safetensors", "tokenizers"]
seen, todo = {}, list(roots)
while todo:
    name = norm(todo.pop())
    if name in seen or (name in skip and name != "setuptools"):
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
for name, version in sorted(seen.items()):
    if not name.startswith("nvidia-"):
        print(f"{name}=={version}")
PY
)
echo "[gpu-prep] ${#PINS[@]} packages: ${PINS[*]}"
for pin in "${PINS[@]}"; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform any -d "$DEST" "$pin" 2>/dev/null; then
    # no binary wheel for Python $PY_VERSION (e.g. a pure-Python sdist): build one here
    echo "[gpu-prep] $pin: no wheel for cp${PY_VERSION/./}; building a pure-Python wheel"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$pin"
    case "$(ls "$DEST" | grep -i "^$(echo "${pin%%==*}" | tr '-' '_')-" | tail -1)" in
      *-none-any.whl) ;;
      *) echo "[gpu-prep] error: $pin built a platform wheel for this Python, not usable there" >&2
         exit 1 ;;
    esac
  fi
done
# The run tool carries at most 64 MiB per call: the wheels go into parts a, b, c... of
# at most 60 MB each, the largest first (first fit).
"$PY" - "$DEST" <<'PY'
import os, shutil, string, sys
dest = sys.argv[1]
wheels = sorted(
    (f for f in os.listdir(dest) if f.endswith(".whl")),
    key=lambda f: -os.path.getsize(os.path.join(dest, f)),
)
limit, parts = 60 * 1000**2, []
for name in wheels:
    size = os.path.getsize(os.path.join(dest, name))
    part = next((p for p in parts if p[1] + size <= limit), None)
    if part is None:
        part = [string.ascii_lowercase[len(parts)], 0]
        parts.append(part)
        os.makedirs(os.path.join(dest, part[0]), exist_ok=True)
    part[1] += size
    shutil.move(os.path.join(dest, name), os.path.join(dest, part[0], name))
for letter, size in parts:
    print(f"[gpu-prep] part {letter}: {size / 1e6:.0f} MB")
PY
(cd "$DEST" && ls ./*/) > "$DEST/MANIFEST.txt"
echo "[gpu-prep] ok. On the GPU machine (each call carries one part; .gpu-venv stays between"
echo "[gpu-prep] calls while the machine is warm): carry each part but the last with"
echo "[gpu-prep]   GPU_CHECK_STEPS=venv bash benchmarks/gpu_check.sh"
echo "[gpu-prep] then the last part with: bash benchmarks/gpu_check.sh"
echo "[gpu-prep] (wheels of packages the machine already has are skipped there)"
