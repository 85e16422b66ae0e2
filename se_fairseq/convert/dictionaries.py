"""fairseq dictionaries (``dict.txt``) on both sides of a conversion.

fairseq fixes ``<s> <pad> </s> <unk>`` to ids 0-3, the words of ``dict.txt``
follow, and the masked_lm tasks append ``<mask>`` as the last id, so a model has
``len(dict.txt) + 5`` embedding rows. A family whose HF vocabulary is in another
order (BERT) gives the HF row of every fairseq id (``token_ids``); the embedding
rows are permuted with it on the way in and back on the way out, and the logit
check feeds each side its own ids.
"""

import logging
import os

from .errors import ConversionError

logger = logging.getLogger("se_fairseq.convert")


BOS, PAD, EOS, UNK = 0, 1, 2, 3


SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


MASK = "<mask>"


def load_dictionary(path):
    """A fairseq ``Dictionary`` from ``dict.txt``, or :class:`ConversionError`."""
    from fairseq.data import Dictionary

    try:
        return Dictionary.load(path)
    except Exception as err:
        raise ConversionError(f"{path}: not a fairseq dict.txt ({err})") from None


def checkpoint_dictionary(checkpoint, dict_path=None):
    """``(Dictionary or None, its path)`` for a fairseq checkpoint: ``dict_path`` if given
    (it must exist), else ``dict.txt`` beside the checkpoint if there is one, else None
    (the weights convert without a vocabulary; a warning says what that costs)."""
    if dict_path is not None:
        dict_path = os.fspath(dict_path)
        if not os.path.isfile(dict_path):
            raise ConversionError(f"{dict_path}: no such dictionary")
        return load_dictionary(dict_path), dict_path
    dict_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "dict.txt")
    if os.path.isfile(dict_path):
        return load_dictionary(dict_path), dict_path
    logger.warning(
        f"no dict.txt beside {checkpoint} (and no --dict): converting the weights "
        "only; OUT_DIR gets no fairseq_dict.txt, so a later from-hf cannot restore the "
        "vocabulary exactly"
    )
    return None, None


def dictionary_size_problems(dictionary, vocab):
    """A fairseq Dictionary (with or without the task's <mask>) against ``vocab`` rows."""
    if dictionary is None:
        return []
    problems = []
    if dictionary.pad() != PAD:
        problems.append(f"pad index {dictionary.pad()}: fairseq's <pad> must be id {PAD}")
    size = len(dictionary) + (0 if MASK in dictionary.indices else 1)
    if size != vocab:
        problems.append(
            f"the dictionary gives {size} ids (incl. {MASK}) but the embedding has {vocab} "
            "rows; pass the checkpoint's own dict.txt with --dict"
        )
    return problems


def valid_word(word, seen):
    """Can ``word`` be a line of dict.txt (one whitespace-free token, not yet used)?"""
    return bool(word) and not any(ch.isspace() for ch in word) and word not in seen


def placeholder(seen, taken=()):
    """The next ``madeupwordNNNN`` not in ``seen`` or ``taken`` (fairseq's own filler name)."""
    i = 0
    while f"madeupword{i:04d}" in seen or f"madeupword{i:04d}" in taken:
        i += 1
    return f"madeupword{i:04d}"


def placeholder_dictionary(vocab_size):
    """A fairseq Dictionary with ``vocab_size`` ids, ``<mask>`` last."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab_size - len(d) - 1):
        d.add_symbol(f"madeupword{i:04d}")
    d.add_symbol(MASK)
    return d


def dict_text(words):
    """dict.txt contents for ``words`` (fairseq ids 4 .. in order; counts are not used)."""
    return "".join(f"{w} 1\n" for w in words)
