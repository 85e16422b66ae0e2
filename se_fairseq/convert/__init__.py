"""Conversion between fairseq checkpoints and Hugging Face masked LMs, exact both ways.

Two functions do a whole conversion, from paths to checked files, with every rule
of it; the model family (RoBERTa, BERT) is chosen from the checkpoint's ``--arch``
or the HF ``config.json``:

- :func:`fairseq_to_hf` ``(checkpoint, out_dir, dict_path=None, check=False,
  overwrite=False, tokenizer_dir=None)``
- :func:`hf_to_fairseq` ``(hf_dir, out_path, check=False, overwrite=False)``

Both return a :class:`ConversionResult` and raise :class:`ConversionError` (never
``SystemExit``); the ``se-convert`` command (``se_fairseq.cli.convert``) only
parses its arguments, calls them and prints.

Layout, in the order a conversion reads:

- ``drivers.py``: the two conversions, from paths to checked files, once for
  every family;
- ``family.py``: the protocol a family implements, and finding a model's family;
- ``roberta.py``, ``bert.py``: one family each (name tables, refusals, vocabulary
  order, tokenizer files), at the level of state dicts and configs;
- ``layout.py``, ``state_dicts.py``: the state-dict layout and the refusals the
  families share;
- ``fairseq_io.py`` (fairseq configs and checkpoints), ``dictionaries.py``
  (``dict.txt``), ``atomic.py`` (writing files), ``check.py`` (the logit check),
  ``dependencies.py`` (the optional imports), ``errors.py``.

A third family is one new module with a ``FAMILY`` and its name in
``family.FAMILY_MODULES``. Importing the package is cheap (``se-convert --help``
stays instant): torch, fairseq and transformers are imported by the functions that
need them.
"""

from .check import CHECK_TOLERANCE
from .drivers import ConversionResult, fairseq_to_hf, hf_to_fairseq, logger
from .errors import CheckFailedError, ConversionError, MissingDependencyError, OutputExistsError

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
