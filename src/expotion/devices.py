"""The default device of every command, and the precision a conditioning model runs at."""
from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def module_precision(module):
    """Autocast to ``module``'s parameter dtype when it is reduced (e.g. bfloat16), so it can read float32 inputs and
    MusicGen's float32 layers; a float32 module runs as it is."""
    import torch

    param = next(module.parameters())
    return torch.autocast(param.device.type, dtype=param.dtype, enabled=param.dtype != torch.float32)
