"""Build se-fairseq and its selection operator.

torch must already be installed: build with ``pip install --no-build-isolation``
so that pip does not resolve (and download) a torch of its own.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64
    editable_wheel = None

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as err:
    raise SystemExit(
        "se-fairseq builds a torch C++ extension, so torch must be installed first "
        "(pip install torch==2.13.0), then: pip install --no-build-isolation -e ."
    ) from err

HERE = os.path.dirname(os.path.abspath(__file__))
# Loaded by site.py at interpreter start: installs an import hook that registers
# the se_mlm task and token_ls criterion when (and only when) fairseq is imported.
AUTOLOAD_PTH = "se_fairseq-autoload.pth"
AUTOLOAD_LINE = (
    "import os; exec(\"if os.environ.get('SE_FAIRSEQ_NO_AUTOLOAD') != '1':\\n try:\\n"
    "  import se_fairseq._autoload\\n except Exception:\\n  pass\")\n"
)


def build_with_cuda():
    forced = os.environ.get("SE_FAIRSEQ_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/se_select_cpu.cpp"]
    cxx = ["-O3", "-std=c++17"]
    if not build_with_cuda():
        return CppExtension("se_fairseq._C", sources, extra_compile_args={"cxx": cxx})
    return CUDAExtension(
        "se_fairseq._C",
        sources + ["csrc/se_select_cuda.cpp", "csrc/se_select_cuda_kernel.cu"],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
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
    "build_ext": BuildExtension.with_options(no_python_abi_suffix=False),
    "build_py": BuildPyWithHook,
    "develop": DevelopWithHook,
}

if editable_wheel is not None:

    class EditableWheelWithHook(editable_wheel):
        """PEP 660 editable installs: add the .pth beside the editable finder."""

        def _install_namespaces(self, installation_dir, pth_prefix):
            super()._install_namespaces(installation_dir, pth_prefix)
            write_pth(installation_dir)

    cmdclass["editable_wheel"] = EditableWheelWithHook


setup(
    name="se-fairseq",
    version="0.1.0",
    description="Self-Evolution learning (SE) for masked-LM pretraining as a fairseq plugin",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["se_fairseq", "se_fairseq.*"]),
    ext_modules=[extension()],
    cmdclass=cmdclass,
    install_requires=[
        # ve-fairseq: a cp311 wheel of fairseq 0.12 that imports on Python 3.11
        # (PyPI's fairseq 0.12.2 does not); see README "Why ve-fairseq".
        "ve-fairseq==0.12.3",
        "numpy",
        "tqdm",
    ],
    extras_require={"test": ["pytest"], "hf": ["transformers>=4.40", "safetensors"]},
    entry_points={
        "console_scripts": [
            "se-bench = se_fairseq.cli.bench:cli_main",
            "se-score = se_fairseq.cli.score:cli_main",
            "se-convert = se_fairseq.cli.convert:cli_main",
        ]
    },
    zip_safe=False,
)
