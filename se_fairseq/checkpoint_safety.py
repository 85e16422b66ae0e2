"""Load fairseq checkpoints with ``torch.load(weights_only=True)`` under torch >= 2.6.

fairseq's ``load_checkpoint_to_cpu`` calls ``torch.load`` without
``weights_only``; torch >= 2.6 then refuses every fairseq checkpoint, because
they pickle more than tensors. This module keeps the safe unpickler on and
allows exactly the globals fairseq checkpoints are made of:

- ``args`` of fairseq <= 0.9 checkpoints (the released RoBERTa models): an
  ``argparse.Namespace``;
- numpy scalars, dtypes and arrays (``best_loss``, ``val_loss``, meters);
- fairseq's meters, pickled under ``fairseq.meters`` (<= 0.8) or
  ``fairseq.logging.meters``;
- omegaconf containers and nodes of ``cfg`` (fairseq >= 0.10 when it is saved
  as a DictConfig), and the ``typing.Any`` / enums they reference.

Anything else is refused with a message that names the global and the file.
Nothing here ever passes ``weights_only=False``.
"""

import argparse
import collections
import functools
import logging
import pickle
import re
import typing

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _numpy_globals():
    found = [np.dtype, np.ndarray, np.generic]
    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar", "_reconstruct"])
        except ImportError:
            continue
        found += [module.scalar, module._reconstruct]
    # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float64DType and friends
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    # the scalar types themselves (np.float64 ...), referenced by dtype pickles
    found += sorted(
        {t for ts in np.sctypes.values() for t in ts}
        if hasattr(np, "sctypes")
        else {type(np.dtype(c).type(0)) for c in "?bhilqBHILQefdgFDG"},
        key=str,
    )
    return found


def _fairseq_globals():
    from fairseq.logging import meters

    return [
        meters.AverageMeter,
        meters.SumMeter,
        meters.TimeMeter,
        meters.StopwatchMeter,
        meters.MetersDict,
    ]


def _omegaconf_globals():
    try:
        import omegaconf
        from omegaconf import base, nodes
    except ImportError:
        return []
    found = [omegaconf.DictConfig, omegaconf.ListConfig, base.ContainerMetadata, base.Metadata]
    found += [
        getattr(nodes, n)
        for n in dir(nodes)
        if n.endswith("Node") and isinstance(getattr(nodes, n), type)
    ]
    return found


@functools.lru_cache(maxsize=1)
def allowed_globals():
    """Every global a fairseq checkpoint may reference, and nothing more."""
    found = [argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any]
    found += [dict, list, int, float, str, bool, tuple, set]
    found += _numpy_globals() + _fairseq_globals() + _omegaconf_globals()
    # fairseq <= 0.8 pickled its meters as fairseq.meters.X; fairseq >= 0.10
    # aliases that module name, but the unpickler matches by the stored name.
    aliases = []
    for cls in _fairseq_globals():
        aliases.append((cls, f"fairseq.meters.{cls.__name__}"))
    return found, aliases


class UnsafeCheckpointError(pickle.UnpicklingError):
    pass


def safe_load(path_or_file, map_location="cpu", name=None):
    """``torch.load(weights_only=True)`` with fairseq's allow-list."""
    found, aliases = allowed_globals()
    try:
        with torch.serialization.safe_globals(found + aliases):
            return torch.load(path_or_file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        where = name or getattr(path_or_file, "name", path_or_file)
        match = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = match.group(1) if match else "an object outside the allow-list"
        raise UnsafeCheckpointError(
            f"{where}: refusing to unpickle {what}: it is not among the globals fairseq "
            "checkpoints need, so the file may run code when loaded. se-fairseq loads "
            "checkpoints with torch.load(weights_only=True); if you trust this file, convert it "
            "to plain tensors and containers first."
        ) from err


def install():
    """Route fairseq's checkpoint loading through ``safe_load``."""
    from fairseq import checkpoint_utils

    if getattr(checkpoint_utils, "_se_fairseq_safe", False):
        return
    original = checkpoint_utils.torch

    class _TorchWithSafeLoad:
        """fairseq's ``torch`` in checkpoint_utils, with ``load`` made safe."""

        def __getattr__(self, name):
            return getattr(original, name)

        @staticmethod
        def load(f, map_location=None, **kwargs):
            if kwargs.get("weights_only") is False:
                raise UnsafeCheckpointError("se-fairseq never loads with weights_only=False")
            return safe_load(f, map_location=map_location)

    checkpoint_utils.torch = _TorchWithSafeLoad()
    checkpoint_utils._se_fairseq_safe = True
