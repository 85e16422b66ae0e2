"""The optional parts of the install (pip extras), and the one-line refusal of a command
that needs one that is missing.

``pip install se-fairseq`` gives the core and the operator (torch, numpy, tqdm). The
extras: ``[fairseq]`` (the fairseq plugin: se_mlm, token_ls, se-score on fairseq
checkpoints, se-convert, se-bench, se-finetune on fairseq checkpoints), ``[hf]`` (the
transformers path), ``[finetune]`` (se-finetune's metrics), ``[all]``.
"""

import importlib.util

# ve-fairseq 0.12.3 publishes wheels for these CPython versions only
FAIRSEQ_PYTHONS = ("3.11", "3.12")


class MissingExtraError(ImportError):
    """A command or function needs an extra that is not installed (the message says
    which, and how to install it)."""


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook that refuses it: as if it were not installed
        return False


def fairseq_available() -> bool:
    return installed("fairseq")


def require_fairseq(what: str) -> None:
    """Raise ``MissingExtraError`` unless fairseq imports; ``what`` names the need."""
    if fairseq_available():
        return
    raise MissingExtraError(
        f"{what} needs fairseq, which is not installed: pip install 'se-fairseq[fairseq]' "
        f"(ve-fairseq 0.12.3, wheels for CPython {' and '.join(FAIRSEQ_PYTHONS)} only)"
    )


def require_transformers(what: str) -> None:
    """Raise ``MissingExtraError`` unless transformers, safetensors, accelerate and datasets
    are installed."""
    missing = [
        name
        for name in ("transformers", "safetensors", "accelerate", "datasets")
        if not installed(name)
    ]
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            "not installed: pip install 'se-fairseq[hf]'"
        )
