"""The devices a test runs on."""


def device_params():
    """pytest parameters for the devices a test runs on: the CPU, and CUDA marked
    ``cuda`` and skipped (saying why) where torch sees no GPU."""
    import pytest
    import torch

    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not torch.cuda.is_available(), reason="needs a CUDA device (torch sees no GPU)"
                ),
            ],
        ),
    ]
