"""Python entry point of the selection operator.

``select`` runs ``torch.ops.se_fairseq.select`` (C++ on CPU, CUDA on GPU) when
the extension is built, else the numpy reference with a one-time warning.
"""
import warnings

import torch

from . import reference

SELECT_MODES = {"topk": reference.TOPK, "threshold": reference.THRESHOLD, "sample": reference.SAMPLE}

_loaded = None


def extension_available():
    global _loaded
    if _loaded is None:
        try:
            from se_fairseq import _C  # noqa: F401  (registers the operator)

            _loaded = True
        except ImportError as err:
            warnings.warn(
                f"se_fairseq: the C++ extension is not built ({err}); masking falls back to "
                "the slower numpy reference. Build it with: pip install --no-build-isolation -e .",
                RuntimeWarning,
                stacklevel=3,
            )
            _loaded = False
    return _loaded


def select(scores, eligible, seeds, *, ratio=0.15, mode="topk", num_select=None,
           threshold=0.0, temperature=1.0, use_extension=True):
    """Choose the positions to mask in every row of a padded batch.

    Args:
        scores: (rows, positions) float tensor; higher = more worth masking.
        eligible: (rows, positions) bool tensor; False for padding and special tokens.
        seeds: (rows,) int64 tensor; the row's random stream (rounding, sampling).
        ratio: fraction of eligible positions to select (probabilistic rounding).
        mode: "topk", "threshold" or "sample" (Gumbel top-k at ``temperature``).
        num_select: optional (rows,) counts that replace ``ratio``.
        threshold: with mode "threshold", select every eligible score above it.

    Returns a bool tensor shaped like ``scores``, on its device.
    """
    mode_id = SELECT_MODES[mode] if isinstance(mode, str) else int(mode)
    if use_extension and extension_available():
        return torch.ops.se_fairseq.select(
            scores.float(), eligible.bool(), seeds.long(), num_select,
            float(ratio), mode_id, float(threshold), float(temperature),
        )
    out = reference.select_reference(
        scores.detach().float().cpu().numpy(), eligible.cpu().numpy(), seeds.cpu().numpy(),
        None if num_select is None else num_select.cpu().numpy(),
        ratio=ratio, mode=mode_id, threshold=threshold, temperature=temperature,
    )
    return torch.from_numpy(out).to(scores.device)
