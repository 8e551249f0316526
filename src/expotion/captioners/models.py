"""The captioning models' folders, the early failure when one is missing, and loading through ``transformers``.

Each model is a Hugging Face folder read with ``local_files_only=True``:
``<weights dir>/<folder>`` if it holds a ``config.json``, else the HF cache's
snapshot of the hub repo. Nothing is downloaded and nothing falls back to
random weights. Offline, transformers can build a tokenizer with an almost
empty vocabulary when the tokenizer files are absent; such a tokenizer would
turn every prompt into a few tokens and every caption into noise, so loading
compares it with the language model's vocabulary and refuses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from expotion.core.weights import MissingWeightsError, WeightSpec, hub_file, register, weights_dir

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either one
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # any one
VOCAB_MIN_FRACTION = 0.9  # the released tokenizers cover 97–99.8 % of their models' (padded) embedding tables
PROBE_TEXT = "Please describe the music."


class TokenizerError(MissingWeightsError):
    """The tokenizer that loaded cannot be the one the language model was trained with."""


@dataclass(frozen=True)
class CaptionModel:
    """One captioning model: its hub repo, its folder under the weights directory, its transformers classes."""

    key: str
    hub_name: str
    folder: str
    model_class: str
    processor_class: str
    needed_by: str

    @property
    def where(self) -> str:
        return f"<weights dir>/{self.folder}/ or the Hugging Face cache (hub repo {self.hub_name})"

    def find(self, wdir: Path) -> Path | None:
        """The model's folder: ``<wdir>/<folder>`` if it has a config, else the HF cache snapshot, else None."""
        local = Path(wdir) / self.folder
        if (local / CONFIG_FILE).exists():
            return local
        cached = hub_file(self.hub_name, CONFIG_FILE)
        return cached.parent if cached is not None else None


MODELS: dict[str, CaptionModel] = {m.key: m for m in (
    CaptionModel("qwen2_audio", "Qwen/Qwen2-Audio-7B-Instruct", "Qwen2-Audio-7B-Instruct",
                 "Qwen2AudioForConditionalGeneration", "Qwen2AudioProcessor",
                 "the music and scene captioners (expotion caption)"),
    CaptionModel("qwen2_5_omni", "Qwen/Qwen2.5-Omni-7B", "Qwen2.5-Omni-7B",
                 "Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniProcessor",
                 "the fused video + audio captioner (expotion caption)"),
    CaptionModel("audioflamingo3", "nvidia/audio-flamingo-3-hf", "audio-flamingo-3-hf",
                 "AudioFlamingo3ForConditionalGeneration", "AudioFlamingo3Processor",
                 "the second music captioner, Audio Flamingo 3 (expotion caption --captioner flamingo)"),
)}

for _model in MODELS.values():
    register(WeightSpec(key=f"captioner_{_model.key}",
                        filename=f"{CONFIG_FILE} + tokenizer + processor files + {WEIGHT_FILES[0]} (or its shards)",
                        where=_model.where, needed_by=_model.needed_by, locate=_model.find))


def model_dir(model: CaptionModel, explicit: str | Path | None = None, wdir: str | Path | None = None) -> Path:
    """The folder to load: ``explicit`` if given, else where :meth:`CaptionModel.find` looks; checked complete."""
    path = Path(explicit) if explicit is not None else model.find(weights_dir(wdir))
    if path is None:
        raise MissingWeightsError(f"{model.hub_name}: no folder at {weights_dir(wdir) / model.folder} and none in the "
                                  f"Hugging Face cache. Put the model in {model.where}.")
    return check_model_dir(model, path)


def check_model_dir(model: CaptionModel, path: Path) -> Path:
    """Refuse a folder that lacks a file the loader reads, in one line naming the folder and the file."""
    path = Path(path)
    put = f"Put a copy of the hub repo {model.hub_name} there"
    if not path.is_dir():
        raise MissingWeightsError(f"{model.hub_name}: folder {path} not found. {put}.")
    if not (path / CONFIG_FILE).exists():
        raise MissingWeightsError(f"{model.hub_name}: '{CONFIG_FILE}' not found in {path}. {put}.")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise MissingWeightsError(f"{model.hub_name}: tokenizer file '{TOKENIZER_FILES[0]}' (or "
                                  f"'{TOKENIZER_FILES[1]}' + merges.txt) not found in {path}. {put}.")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise MissingWeightsError(f"{model.hub_name}: weight file '{WEIGHT_FILES[0]}' (or its shards' index) "
                                  f"not found in {path}. {put}.")
    return path


def check_tokenizer(tokenizer, vocab_size: int, source: Path) -> None:
    """Refuse a tokenizer far smaller than the model's vocabulary, or one that loses plain words."""
    size = len(tokenizer)
    if size < VOCAB_MIN_FRACTION * vocab_size or size > vocab_size:
        raise TokenizerError(f"tokenizer in {source} has {size} tokens but the language model's vocabulary has "
                             f"{vocab_size}: the tokenizer files are missing or wrong; put the model's own "
                             "tokenizer files (tokenizer.json, or vocab.json + merges.txt) in that folder")
    ids = tokenizer(PROBE_TEXT)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if decoded != PROBE_TEXT or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
                                 and tokenizer.unk_token_id != tokenizer.eos_token_id):
        raise TokenizerError(f"tokenizer in {source} does not reproduce {PROBE_TEXT!r} (got {decoded!r}); refusing it")


def load(model: CaptionModel, path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The model (eval, frozen, on ``device``) and its processor from a checked folder, offline."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = check_model_dir(model, path)
    try:
        processor = getattr(transformers, model.processor_class).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise MissingWeightsError(f"{model.hub_name}: processor or tokenizer files in {path} cannot be loaded "
                                  f"offline: {err}") from err
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    network = getattr(transformers, model.model_class).from_pretrained(str(path), local_files_only=True, dtype=dtype)
    check_tokenizer(processor.tokenizer, int(network.config.text_config.vocab_size), path)
    processor.tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    return network.eval().requires_grad_(False).to(device), processor
