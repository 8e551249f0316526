"""The pretrained models evaluation needs: where their files live, and loading them.

Each file is registered with :mod:`expotion.core.weights`, so ``expotion weights
check`` lists it. Single-file checkpoints are looked for in the weights
directory, then in ``$TORCH_HOME/hub/checkpoints`` (where their own download
code puts them); Hugging Face checkpoints in ``<weights>/<name>/``, then in the
Hugging Face cache. Nothing here downloads, and nothing falls back to random
weights: a missing file raises :class:`~expotion.core.weights.MissingWeightsError`
naming the file and where it goes.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from expotion.core.weights import (REGISTRY, MissingWeightsError, WeightSpec, hub_file, register, require,
                                   torch_hub_checkpoints)
from expotion.evaluation import clap as clap_mod
from expotion.evaluation import languagebind, passt, vggish

VGGISH_FILE = "vggish-10086976.pth"
PASST_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
CLAP_REPO = "laion/larger_clap_music"
LANGUAGEBIND_VIDEO_REPO = "LanguageBind/LanguageBind_Video_FT"
LANGUAGEBIND_AUDIO_REPO = "LanguageBind/LanguageBind_Audio_FT"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def file_locator(filename: str) -> Callable[[Path], Path | None]:
    """The weights directory first, then torch.hub's checkpoint cache."""

    def locate(wdir: Path) -> Path | None:
        for candidate in (Path(wdir) / filename, torch_hub_checkpoints() / filename):
            if candidate.is_file():
                return candidate
        return None

    return locate


def hf_locator(repo_id: str) -> Callable[[Path], Path | None]:
    """``<weights>/<repo name>/`` holding a config.json, else the snapshot in the Hugging Face cache."""

    def locate(wdir: Path) -> Path | None:
        local = Path(wdir) / repo_id.split("/")[-1]
        if (local / "config.json").is_file():
            return local
        cached = hub_file(repo_id, "config.json")
        return cached.parent if cached else None

    return locate


def hf_where(repo_id: str, contents: str) -> str:
    return (f"the weights directory as {repo_id.split('/')[-1]}/ ({contents}), or the Hugging Face cache "
            f"($HF_HUB_CACHE, by default ~/.cache/huggingface/hub) as models--{repo_id.replace('/', '--')}")


FILE_WHERE = "the weights directory ($EXPOTION_WEIGHTS or ./weights) or $TORCH_HOME/hub/checkpoints/"

VGGISH = register(WeightSpec("vggish", VGGISH_FILE, FILE_WHERE, "FAD-VGG (expotion eval)", file_locator(VGGISH_FILE)))
PASST = register(WeightSpec("passt", PASST_FILE, FILE_WHERE, "KL and IS (expotion eval)", file_locator(PASST_FILE)))
HF_MODEL = "config.json + model weights"
CLAP = register(WeightSpec("clap_music", CLAP_REPO,
                           hf_where(CLAP_REPO, f"{HF_MODEL} + preprocessor and tokenizer files"),
                           "text–audio score (expotion eval)", hf_locator(CLAP_REPO)))
LANGUAGEBIND_VIDEO = register(WeightSpec("languagebind_video", LANGUAGEBIND_VIDEO_REPO,
                                         hf_where(LANGUAGEBIND_VIDEO_REPO, HF_MODEL),
                                         "video–audio score (expotion eval)", hf_locator(LANGUAGEBIND_VIDEO_REPO)))
LANGUAGEBIND_AUDIO = register(WeightSpec("languagebind_audio", LANGUAGEBIND_AUDIO_REPO,
                                         hf_where(LANGUAGEBIND_AUDIO_REPO, HF_MODEL),
                                         "video–audio score (expotion eval)", hf_locator(LANGUAGEBIND_AUDIO_REPO)))


def resolve(key: str, wdir: Path) -> Path:
    """The located file or directory of a registered checkpoint, or MissingWeightsError saying where it goes."""
    spec = REGISTRY[key]
    return require(spec.find(wdir), what=spec.needed_by, filename=spec.filename, where=spec.where)


def resolve_hf(name_or_dir: str, wdir: Path) -> Path:
    """A Hugging Face checkpoint given as a directory, or as a hub name looked up like the registered ones."""
    if Path(name_or_dir).is_dir():
        return Path(name_or_dir)
    found = hf_locator(name_or_dir)(wdir) if "/" in name_or_dir else None
    return require(found, what="the checkpoint given on the command line", filename=name_or_dir,
                   where=hf_where(name_or_dir, HF_MODEL) if "/" in name_or_dir else "an existing directory")


def hf_weight_files(model_dir: Path) -> list[Path]:
    """The weight file(s) of a Hugging Face model directory (single file or the shards an index lists)."""
    model_dir = Path(model_dir)
    for name in HF_WEIGHT_FILES:
        if (model_dir / name).is_file():
            return [model_dir / name]
    for name in HF_INDEX_FILES:
        if (model_dir / name).is_file():
            shards = sorted(set(json.loads((model_dir / name).read_text())["weight_map"].values()))
            return [require(model_dir / s, what=f"checkpoint in {model_dir}", filename=s, where=str(model_dir))
                    for s in shards]
    raise MissingWeightsError(f"{model_dir}: no model weights ({' or '.join(HF_WEIGHT_FILES)}) in this checkpoint directory")


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_files(path: Path) -> list[Path]:
    """The files whose bytes determine a model's outputs: the file itself, or every file of a model directory.

    A directory must hold model weights; one without raises MissingWeightsError.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    hf_weight_files(path)
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def load_vggish(path: Path, device: torch.device | str = "cpu") -> vggish.VGGish:
    return vggish.VGGish.from_state_dict(read_state_file(Path(path))).to(device)


def load_passt(path: Path, device: torch.device | str = "cpu") -> passt.Tagger:
    return passt.Tagger(passt.PaSST.from_state_dict(read_state_file(Path(path)))).to(device)


def load_clap(model_dir: Path, device: torch.device | str = "cpu") -> clap_mod.Clap:
    hf_weight_files(model_dir)
    return clap_mod.load_clap(Path(model_dir), device)


def load_languagebind(model_dir: Path, modality: str, device: torch.device | str = "cpu") -> languagebind.Tower:
    """A LanguageBind tower on ``device``; ``modality`` ('video' or 'audio') must match what the checkpoint is."""
    model_dir = Path(model_dir)
    cfg = languagebind.TowerConfig.from_json(model_dir / "config.json")
    if cfg.is_audio != (modality == "audio"):
        found = "audio" if cfg.is_audio else "video"
        raise ValueError(f"{model_dir} holds a LanguageBind {found} checkpoint where the {modality} one is expected")
    state: dict[str, torch.Tensor] = {}
    for f in hf_weight_files(model_dir):
        state.update(read_state_file(f))
    return languagebind.load_tower(cfg, state, str(model_dir)).to(device)
