"""Expotion's exported adaptor (``adaptor.pt``): the adaptor's config and weights in the shared checkpoint envelope
(:mod:`expotion.solvers.export`), refused in one line when it does not fit the MusicGen or the features."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from expotion.data.clips import FeatureSpec
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.solvers.export import (check_compatible, check_method, check_state_dict, read_adaptor, spec_from_dict,
                                     write_checkpoint)

METHOD = "expotion"


def save_adaptor(path: str | os.PathLike, adaptor: ConditionAdaptor, musicgen: dict, spec: FeatureSpec) -> Path:
    return write_checkpoint(path, METHOD, adaptor.cfg.to_dict(), musicgen, spec, adaptor.state_dict())


def load_adaptor(path: str | os.PathLike, lm: torch.nn.Module, musicgen: dict,
                 spec: FeatureSpec | None = None) -> tuple[ConditionAdaptor, FeatureSpec]:
    """Rebuild and strictly load an adaptor for ``lm``; returns it with the feature spec it expects."""
    return build_adaptor(Path(path), read_adaptor(path), lm, musicgen, spec)


def build_adaptor(path: Path, payload: dict, lm: torch.nn.Module, musicgen: dict,
                  spec: FeatureSpec | None = None) -> tuple[ConditionAdaptor, FeatureSpec]:
    """:func:`load_adaptor` for a payload already read by :func:`read_adaptor` (``path`` names it in errors)."""
    check_method(path, payload, METHOD, "an Expotion adaptor")
    check_compatible(path, payload, musicgen, spec)
    saved_spec = spec_from_dict(payload["features"])
    adaptor = ConditionAdaptor(lm, AdaptorConfig.from_dict(payload["config"]), saved_spec.dims, musicgen["frame_rate"])
    check_state_dict(path, payload["state_dict"], adaptor.state_dict())
    adaptor.load_state_dict(payload["state_dict"], strict=True)
    return adaptor, saved_spec
