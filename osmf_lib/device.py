"""The torch device a job or a model runs on (`gpu.device`).

Model packages import it, and they travel inside logged pyfuncs with no Spark: it stays apart
from the night's Spark helpers (osmf_lib.inputs).
"""

from __future__ import annotations

import torch

from osmf_lib.job import StageError


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError("gpu.device is 'cuda' but no CUDA device is available")
    return device
