"""The default device of every command, and the precision a conditioning model runs at."""
from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_device(text: str):
    """``text`` as a torch device this machine has, or a ValueError saying why not (``--device cuda`` on a machine
    without CUDA fails here, in one line, instead of in every worker that tries to use it)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"--device {text}: not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def module_precision(module):
    """Autocast to ``module``'s parameter dtype when it is reduced (e.g. bfloat16), so it can read float32 inputs and
    MusicGen's float32 layers; a float32 module runs as it is."""
    import torch

    param = next(module.parameters())
    return torch.autocast(param.device.type, dtype=param.dtype, enabled=param.dtype != torch.float32)
