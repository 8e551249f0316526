"""The exported checkpoint of the CLIP + flow method: the conditioner, the MusicGen parameters it trained, and
what they expect (the MusicGen structure, the features' shapes and rates).

It shares the envelope of :mod:`expotion.solvers.export` (format, version, ``method``), loads with
``weights_only=True``, and is refused, with a message saying what differs, for another MusicGen or other features.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from expotion.data.clips import FeatureSpec
from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import CONDITIONERS, check_cross_attention, trained_decoder
from expotion.musicgen.loading import model_signature
from expotion.solvers.export import CheckpointMismatch, check_compatible, check_method, spec_from_dict, write_checkpoint

METHOD = "clip_flow"


def save_clip_flow(path: str | os.PathLike, conditioner: ClipFlowConditioner, decoder: dict[str, torch.Tensor],
                   musicgen: dict, spec: FeatureSpec) -> Path:
    """``decoder`` holds the MusicGen LM parameters that trained, by their names in ``lm``."""
    return write_checkpoint(path, METHOD, conditioner.cfg.to_dict(), musicgen, spec, conditioner.state_dict(),
                            decoder={k: v.detach().cpu() for k, v in decoder.items()})


def build_clip_flow(path: Path, payload: dict, musicgen) -> tuple[ClipFlowConditioner, FeatureSpec]:
    """The conditioner of a checkpoint read by :func:`expotion.solvers.export.read_adaptor`, with its trained
    MusicGen parameters copied into ``musicgen.lm`` (which it is checked to fit)."""
    check_method(path, payload, METHOD, f"of '{METHOD}'")
    lm, signature = musicgen.lm, model_signature(musicgen)
    check_compatible(path, payload, signature, None)
    check_cross_attention(lm)
    cfg = ClipFlowConfig.from_dict(payload["config"])
    spec = spec_from_dict(payload["features"])
    conditioner = ClipFlowConditioner(cfg, spec.shapes, signature["dim"], signature["frame_rate"])
    conditioner.load_state_dict(payload["state_dict"], strict=True)
    load_decoder(path, lm, cfg, payload["decoder"])
    return conditioner, spec


@torch.no_grad()
def load_decoder(path: Path, lm: torch.nn.Module, cfg: ClipFlowConfig, saved: dict[str, torch.Tensor]) -> None:
    """Copy the trained MusicGen parameters into ``lm``; refuse a set of names or shapes that does not fit.

    Exports made before ``decoder: all`` left out the condition encoders the cached text never meets still carry
    them, untouched by training (they never had a gradient) and never read: those are not loaded."""
    which = cfg.decoder
    params = trained_decoder(lm, which, cfg.text)
    saved = {k: v for k, v in saved.items() if k in params or not k.startswith(CONDITIONERS)}
    if params.keys() != saved.keys():
        extra, missing = sorted(saved.keys() - params.keys()), sorted(params.keys() - saved.keys())
        raise CheckpointMismatch(f"{path}: its MusicGen weights ({which}) do not fit this MusicGen: "
                                 f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
    for name, param in params.items():
        if param.shape != saved[name].shape:
            raise CheckpointMismatch(f"{path}: '{name}' has shape {tuple(saved[name].shape)}, "
                                     f"this MusicGen's {tuple(param.shape)}")
        param.copy_(saved[name])
