"""Python entry point of the selection operator.

``select`` runs ``torch.ops.se_fairseq.select`` (C++ on CPU, CUDA on GPU) when
the extension is built, else the numpy reference with a one-time warning.
When the extension has no kernel for the tensors' device (e.g. a CUDA torch
with an extension built without a CUDA toolkit), the CPU kernel runs on
copies and the mask goes back to the device, with a one-time warning.

Importing the extension also registers the operator's fake (meta) kernel, so
that ``torch.compile``, ``torch.library.opcheck`` and meta tensors can trace it.
"""

import functools
import warnings

import torch

from . import reference

SELECT_MODES = {
    "topk": reference.TOPK,
    "threshold": reference.THRESHOLD,
    "sample": reference.SAMPLE,
}
OP_NAME = "se_fairseq::select"

_loaded = None
_warned_devices: set[str] = set()


def extension_available():
    global _loaded
    if _loaded is None:
        try:
            from se_fairseq import _C  # noqa: F401  (registers the operator)
        except ImportError as err:
            warnings.warn(
                f"se_fairseq: the C++ extension is not built ({err}); masking falls back to "
                "the slower numpy reference. Build it with: pip install --no-build-isolation -e .",
                RuntimeWarning,
                stacklevel=3,
            )
            _loaded = False
        else:
            _loaded = True
            _register_fake()
    return _loaded


def _register_fake():
    """Shape-only kernel of the operator (one bool per score), as pytorch/extension-cpp does."""
    register = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract  # < 2.4
    try:
        register(OP_NAME)(_fake_select)
    except RuntimeError as err:  # registered already (this module was reloaded)
        if "already" not in str(err):
            raise


def _fake_select(scores, eligible, seeds, num_select, ratio, mode, threshold, temperature):
    """The fake (meta) kernel: the C++ argument checks that need no data, then the shape."""
    check_same_device(scores, eligible, seeds, num_select)
    torch._check(scores.dim() == 2, lambda: "se_fairseq::select: scores must be 2-D")
    torch._check(
        scores.dtype == torch.float32, lambda: "se_fairseq::select: scores must be float32"
    )
    torch._check(
        eligible.dtype == torch.bool and eligible.shape == scores.shape,
        lambda: "se_fairseq::select: eligible must be a bool tensor shaped like scores",
    )
    torch._check(
        seeds.dtype == torch.int64 and seeds.dim() == 1 and seeds.shape[0] == scores.shape[0],
        lambda: "se_fairseq::select: seeds must be int64 with one per row",
    )
    return torch.empty_like(scores, dtype=torch.bool)


def has_kernel_for(device):
    """Whether the built extension has a kernel for tensors on ``device``."""
    return _has_kernel_for_type(device.type)


@functools.cache  # asked once per batch; the kernels are fixed once loaded
def _has_kernel_for_type(device_type):
    if device_type in ("cpu", "meta"):
        return True
    key = {"cuda": "CUDA", "xpu": "XPU", "mps": "MPS", "hip": "HIP"}.get(
        device_type, device_type.upper()
    )
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)
    except RuntimeError:  # a dispatch key this torch does not know
        return False


def check_same_device(scores, *tensors):
    """All tensor arguments on one device, else the same error as the C++ op."""
    names = ("eligible", "seeds", "num_select")
    for name, t in zip(names, tensors):
        if t is not None and t.device != scores.device:
            raise RuntimeError(
                f"se_fairseq::select: all tensor arguments must be on one device, but scores is "
                f"on {scores.device} and {name} on {t.device}"
            )


def _warn_cpu_fallback(device):
    if device.type in _warned_devices:
        return
    _warned_devices.add(device.type)
    warnings.warn(
        f"se_fairseq: the C++ extension has no {device.type.upper()} kernel (it was built "
        f"without one, see the install log or README 'Installing'); selecting on the CPU kernel "
        f"and copying the mask back to {device.type}: correct and identical, but a host "
        f"round trip per call. Rebuild with SE_FAIRSEQ_CUDA=1 pip install --no-build-isolation "
        f"-e . -v to get the CUDA kernel or see why not.",
        RuntimeWarning,
        stacklevel=3,
    )


def select(
    scores,
    eligible,
    seeds,
    *,
    ratio=0.15,
    mode="topk",
    num_select=None,
    threshold=0.0,
    temperature=1.0,
    use_extension=True,
):
    """Choose the positions to mask in every row of a padded batch.

    Args:
        scores: (rows, positions) float tensor; higher = more worth masking.
        eligible: (rows, positions) bool tensor; False for padding and special tokens.
        seeds: (rows,) int64 tensor; the row's random stream (rounding, sampling).
        ratio: fraction of eligible positions to select (probabilistic rounding).
        mode: "topk", "threshold" or "sample" (Gumbel top-k at ``temperature``).
        num_select: optional (rows,) counts that replace ``ratio``.
        threshold: with mode "threshold", select every eligible score above it.

    All tensors must be on one device. Returns a bool tensor shaped like
    ``scores``, on its device. A NaN score at an eligible position is an error:
    a RuntimeError/ValueError on CPU, a device-side assert on CUDA (raised at
    the next synchronizing call, see README "The selection operator").
    """
    mode_id = SELECT_MODES[mode] if isinstance(mode, str) else int(mode)
    check_same_device(scores, eligible, seeds, num_select)
    if use_extension and extension_available():
        args = (
            scores.detach().float(),
            eligible.bool(),
            seeds.long(),
            num_select,
            float(ratio),
            mode_id,
            float(threshold),
            float(temperature),
        )
        if has_kernel_for(scores.device):
            return torch.ops.se_fairseq.select(*args)
        _warn_cpu_fallback(scores.device)
        cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        return torch.ops.se_fairseq.select(*cpu).to(scores.device)
    out = reference.select_reference(
        scores.detach().float().cpu().numpy(),
        eligible.cpu().numpy(),
        seeds.cpu().numpy(),
        None if num_select is None else num_select.cpu().numpy(),
        ratio=ratio,
        mode=mode_id,
        threshold=threshold,
        temperature=temperature,
    )
    return torch.from_numpy(out).to(scores.device)
