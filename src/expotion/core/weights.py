"""Where every pretrained weight file lives, and the early, explicit failure when one is absent.

Each model module registers a :class:`WeightSpec` describing the file it needs.
``expotion weights check`` lists them all; loaders call :func:`require` before
doing any work so a long run never starts with a model it cannot load, and
never falls back to random weights.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not where the loader looks for it."""


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The user's weights directory: explicit argument, ``$EXPOTION_WEIGHTS``, else ``./weights``."""
    return Path(explicit or os.environ.get("EXPOTION_WEIGHTS", "weights")).expanduser()


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision looks for downloaded weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory (``$HF_HUB_CACHE`` / ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_file(repo: str, filename: str) -> Path | None:
    """Path of ``filename`` of hub repo ``repo`` in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained file: what it is, its name, where it goes and who needs it."""

    key: str
    filename: str
    where: str
    needed_by: str
    locate: Callable[[Path], Path | None]

    def find(self, wdir: Path) -> Path | None:
        return self.locate(wdir)


REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    REGISTRY[spec.key] = spec
    return spec


def require(path: Path | None, *, what: str, filename: str, where: str) -> Path:
    """Return ``path`` if it exists, else raise a message naming the file and where it goes."""
    if path is not None and Path(path).exists():
        return Path(path)
    looked = f" (looked at {path})" if path is not None else ""
    raise MissingWeightsError(f"{what}: weight file '{filename}' not found{looked}. Put it in {where}.")


def in_weights_dir(filename: str) -> Callable[[Path], Path | None]:
    """A locator for a file directly inside the weights directory."""

    def locate(wdir: Path) -> Path | None:
        p = wdir / filename
        return p if p.exists() else None

    return locate
