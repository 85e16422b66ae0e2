"""Build se-fairseq's selection operator (the package metadata is in pyproject.toml).

torch must already be installed: build with ``pip install --no-build-isolation``
so that pip does not resolve (and download) a torch of its own.
"""

import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64
    editable_wheel = None

try:
    import torch
except ImportError as err:
    raise SystemExit(
        "se-fairseq builds a torch C++ extension, so torch must be installed first "
        "(pip install torch==2.13.0), then: pip install --no-build-isolation -e ."
    ) from err

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the build plan beside this file (PEP 517 builds exec setup.py)
import cuda_build_plan  # noqa: E402  (stdlib only: decided before cpp_extension is imported)

# Loaded by site.py at interpreter start: installs an import hook that registers
# the se_mlm task and token_ls criterion when (and only when) fairseq is imported.
AUTOLOAD_PTH = "se_fairseq-autoload.pth"
# A failure (e.g. the package removed but this file left behind) warns once per
# interpreter instead of stopping it.
AUTOLOAD_LINE = (
    "import os; exec(\"if os.environ.get('SE_FAIRSEQ_NO_AUTOLOAD') != '1':\\n try:\\n"
    "  import se_fairseq._autoload\\n except Exception as err:\\n  import warnings\\n"
    "  warnings.warn('se_fairseq: the autoload hook failed (%r): se_mlm and token_ls are not "
    "registered; reinstall se-fairseq or set SE_FAIRSEQ_NO_AUTOLOAD=1' % (err,), "
    'RuntimeWarning)")\n'
)


def say(*lines):
    for line in lines:
        print(f"se-fairseq: {line}", file=sys.stderr)


def plan_cuda():
    """Decide the CUDA build (pure logic in cuda_build_plan.py), then apply it to the
    environment torch.utils.cpp_extension reads: CUDA_HOME, TORCH_CUDA_ARCH_LIST."""
    config = cuda_build_plan
    cuda = torch.version.cuda
    arches = torch.cuda.get_arch_list() if cuda else []
    gpus = torch.cuda.device_count() if cuda else 0
    site_dirs = []
    for key in ("purelib", "platlib"):
        site = sysconfig.get_paths()[key]
        if site not in site_dirs:
            site_dirs.append(site)
    # the nvidia wheels sit beside torch (also when torch comes from another prefix)
    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    if torch_site not in site_dirs:
        site_dirs.insert(0, torch_site)
    try:
        plan = config.plan_cuda_build(
            os.environ, cuda, arches, gpus, config.which_nvcc(os.environ), site_dirs
        )
    except ValueError as err:
        raise SystemExit(f"se-fairseq: {err}") from err
    forced = os.environ.get("SE_FAIRSEQ_CUDA") == "1"
    if not plan.build:
        if forced:
            raise SystemExit(
                f"se-fairseq: SE_FAIRSEQ_CUDA=1 but the CUDA operator cannot be built: "
                f"{plan.reason}.\n{config.HOW_TO_GET_CUDA}"
            )
        if plan.reason != "SE_FAIRSEQ_CUDA=0":
            fallback = (
                " CUDA tensors then run on the CPU kernel (se_fairseq.ops.select warns once)."
                if cuda
                else ""
            )
            say(
                f"WARNING: building the CPU operator only: {plan.reason}.{fallback} "
                f"{config.HOW_TO_GET_CUDA}"
            )
        return plan
    say(*plan.notes)
    os.environ["CUDA_HOME"] = plan.toolkit
    if plan.arch_list:
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
    return plan


PLAN = plan_cuda()
# Imported after plan_cuda(): it reads CUDA_HOME when it is imported.
from torch.utils import cpp_extension  # noqa: E402

if PLAN.build:
    cpp_extension.CUDA_HOME = PLAN.toolkit  # in case it was imported earlier


def extension():
    sources = ["csrc/se_select_cpu.cpp"]
    # No -std: torch adds the standard its headers need (C++20 for torch 2.13).
    # -ffp-contract=off: no FMA contraction, the selection keys must be
    # bit-identical to the CUDA kernel's and the numpy reference's (se_select.h).
    cxx = ["-O3"] + (["-ffp-contract=off"] if sys.platform != "win32" else [])
    if not PLAN.build:
        return cpp_extension.CppExtension("se_fairseq._C", sources, extra_compile_args={"cxx": cxx})
    for folder in PLAN.include_after:
        cxx += ["-idirafter", folder]
    return cpp_extension.CUDAExtension(
        "se_fairseq._C",
        sources + ["csrc/se_select_cuda.cpp", "csrc/se_select_cuda_kernel.cu"],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
    )


def write_pth(directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, AUTOLOAD_PTH), "w") as f:
        f.write(AUTOLOAD_LINE)


class BuildPyWithHook(build_py):
    """Regular installs: ship the .pth at the root of the wheel (site-packages)."""

    def run(self):
        super().run()
        write_pth(self.build_lib)

    def get_outputs(self, *args, **kwargs):
        return super().get_outputs(*args, **kwargs) + [os.path.join(self.build_lib, AUTOLOAD_PTH)]


class DevelopWithHook(develop):
    """Legacy editable installs (setup.py develop)."""

    def run(self):
        super().run()
        if not self.uninstall:
            write_pth(self.install_dir)


cmdclass = {
    "build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False),
    "build_py": BuildPyWithHook,
    "develop": DevelopWithHook,
}

if editable_wheel is not None:

    class EditableWheelWithHook(editable_wheel):
        """PEP 660 editable installs: add the .pth beside the editable finder.

        setuptools offers no public way to put a file at the root of an editable
        wheel: its strategies write only their own path/finder files, and build_py's
        outputs (where the .pth goes for regular wheels) are not copied in. So this
        extends the private hook that every strategy calls with the wheel's folder
        (other projects extend the private _create_wheel_file instead); the plugin
        tests check that an editable install registers the task.
        """

        def _install_namespaces(self, installation_dir, pth_prefix):
            super()._install_namespaces(installation_dir, pth_prefix)
            write_pth(installation_dir)

    cmdclass["editable_wheel"] = EditableWheelWithHook


setup(ext_modules=[extension()], cmdclass=cmdclass)
