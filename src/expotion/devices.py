"""The default device of every command: the GPU when there is one."""
from __future__ import annotations


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
