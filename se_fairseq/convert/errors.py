"""The errors of a conversion, and the one way a family words a refusal."""


class ConversionError(Exception):
    """The input cannot be converted faithfully; the message says why."""


class MissingDependencyError(ConversionError):
    """transformers or safetensors is not installed (``pip install 'se-fairseq[hf]'``)."""


class OutputExistsError(ConversionError):
    """An output is there already; ``what`` names it. The library's message names its
    keyword (``overwrite=True``); the CLI says ``--force``."""

    def __init__(self, what):
        super().__init__(f"{what} (overwrite=True replaces it)")
        self.what = what


class CheckFailedError(ConversionError):
    """``check=True`` found different logits. The files were written (and are wrong):
    ``result`` is the :class:`ConversionResult` of what was written."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def refuse(what, problems):
    if isinstance(problems, str):
        problems = [problems]
    raise ConversionError(f"cannot convert {what}:\n  - " + "\n  - ".join(problems))


def listed(names, limit=8):
    names = list(names)
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"
