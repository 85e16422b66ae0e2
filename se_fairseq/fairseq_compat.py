"""Fixes for fairseq 0.12 running on numpy 2.

fairseq's TokenBlockDataset (``--sample-break-mode eos``) and
LanguagePairDataset call ``np.compat.long``, which numpy 2 removed; the same
modes crash under plain ``--task masked_lm``. Restore just that name (an alias
of int64, what it was on 64-bit Linux) when it is missing.
"""

import types

import numpy as np


def install():
    try:
        np.compat.long  # noqa: B018
    except AttributeError:
        np.compat = types.SimpleNamespace(long=np.int64)
