"""The adaptor-only checkpoint: a few MB of weights plus what they were trained against.

It records the MusicGen it adapts (width, depth, codebooks) and the visual
features it reads (streams, shapes, rates), and holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``. Loading it
for another MusicGen or other features is refused with a message saying what differs.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .adaptor import AdaptorConfig, ConditionAdaptor
from .atomic import atomic_path
from .data import FeatureSpec
from .rates import StreamRate

FORMAT = "expotion-adaptor"
VERSION = 1
STRUCTURE = ("dim", "num_layers", "n_q", "card", "frame_rate")


class CheckpointMismatch(ValueError):
    """An adaptor checkpoint does not fit the MusicGen or the features it is used with."""


def spec_to_dict(spec: FeatureSpec) -> dict:
    return {"shapes": {k: list(v) for k, v in spec.shapes.items()},
            "rates": {k: asdict(v) for k, v in spec.rates.items()}, "text_dim": spec.text_dim}


def spec_from_dict(d: dict) -> FeatureSpec:
    return FeatureSpec({k: tuple(v) for k, v in d["shapes"].items()},
                       {k: StreamRate(**v) for k, v in d["rates"].items()}, int(d["text_dim"]))


def save_adaptor(path: str | os.PathLike, adaptor: ConditionAdaptor, musicgen: dict, spec: FeatureSpec) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": adaptor.cfg.to_dict(),
        "musicgen": dict(musicgen),
        "features": spec_to_dict(spec),
        "state_dict": {k: v.detach().cpu() for k, v in adaptor.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_adaptor(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adaptor checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointMismatch(f"{path}: not an expotion adaptor checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointMismatch(f"{path}: adaptor checkpoint version {payload.get('version')}, expected {VERSION}")
    return payload


def check_compatible(path: Path, payload: dict, musicgen: dict, spec: FeatureSpec | None) -> None:
    """Refuse a checkpoint trained for another MusicGen structure or other feature shapes/rates."""
    saved = payload["musicgen"]
    diffs = [f"{k}: checkpoint {saved.get(k)} vs model {musicgen.get(k)}" for k in STRUCTURE if saved.get(k) != musicgen.get(k)]
    if diffs:
        raise CheckpointMismatch(f"{path}: adaptor was trained for MusicGen '{saved.get('name')}', "
                                 f"not '{musicgen.get('name')}' ({'; '.join(diffs)})")
    if spec is not None:
        want = spec_from_dict(payload["features"])
        for name, shape in want.shapes.items():
            if spec.shapes.get(name) != shape or spec.rates.get(name) != want.rates[name]:
                raise CheckpointMismatch(
                    f"{path}: adaptor expects '{name}' features of shape {shape} at {want.rates[name]}, "
                    f"got {spec.shapes.get(name)} at {spec.rates.get(name)}")


def load_adaptor(path: str | os.PathLike, lm: torch.nn.Module, musicgen: dict,
                 spec: FeatureSpec | None = None) -> tuple[ConditionAdaptor, FeatureSpec]:
    """Rebuild and strictly load an adaptor for ``lm``; returns it with the feature spec it expects."""
    return build_adaptor(Path(path), read_adaptor(path), lm, musicgen, spec)


def build_adaptor(path: Path, payload: dict, lm: torch.nn.Module, musicgen: dict,
                  spec: FeatureSpec | None = None) -> tuple[ConditionAdaptor, FeatureSpec]:
    """:func:`load_adaptor` for a payload already read by :func:`read_adaptor` (``path`` names it in errors)."""
    check_compatible(path, payload, musicgen, spec)
    saved_spec = spec_from_dict(payload["features"])
    adaptor = ConditionAdaptor(lm, AdaptorConfig.from_dict(payload["config"]), saved_spec.dims, musicgen["frame_rate"])
    adaptor.load_state_dict(payload["state_dict"], strict=True)
    return adaptor, saved_spec
