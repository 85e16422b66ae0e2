"""Conversion between fairseq checkpoints and Hugging Face masked LMs, exact both ways.

Two functions do a whole conversion, from paths to checked files, with every rule
of it; the model family (RoBERTa, BERT) is chosen from the checkpoint's ``--arch``
or the HF ``config.json``:

- :func:`fairseq_to_hf` ``(checkpoint, out_dir, dict_path=None, check=False, overwrite=False, tokenizer_dir=None)``
- :func:`hf_to_fairseq` ``(hf_dir, out_path, check=False, overwrite=False)``

Both return a :class:`ConversionResult` and raise :class:`ConversionError` (never
``SystemExit``); the ``se-convert`` command (``se_fairseq.cli.convert``) only
parses its arguments, calls them and prints.

Layout: ``core.py`` holds what every family shares (errors, results, safe
checkpoint loading, dictionaries, atomic writes, building both models, the logit
check, the two drivers); ``roberta.py`` and ``bert.py`` hold one family each (name
tables, refusals, vocabulary order) at the level of state dicts and configs. A
third family is one new module with a ``FAMILY`` and its name in
``core.FAMILY_MODULES``. Importing the package is cheap (``se-convert --help``
stays instant): torch, fairseq and transformers are imported by the functions that
need them.
"""

from .core import (
    CHECK_TOLERANCE,
    CheckFailedError,
    ConversionError,
    ConversionResult,
    MissingDependencyError,
    OutputExistsError,
    fairseq_to_hf,
    hf_to_fairseq,
    logger,
)

__all__ = [
    "CHECK_TOLERANCE",
    "CheckFailedError",
    "ConversionError",
    "ConversionResult",
    "MissingDependencyError",
    "OutputExistsError",
    "fairseq_to_hf",
    "hf_to_fairseq",
    "logger",
]
