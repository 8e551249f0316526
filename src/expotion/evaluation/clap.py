"""LAION-CLAP for the text–audio score, through transformers' ``ClapModel`` (no ``laion_clap`` import).

The checkpoint is a Hugging Face model directory (``config.json``, weights,
the processor's feature-extractor settings and the RoBERTa tokenizer files),
by default LAION's music CLAP ``laion/larger_clap_music``. Offline, a
tokenizer whose files are absent can load with a near-empty vocabulary and
would then score every caption as the same few tokens, so loading checks the
vocabulary against the text encoder's embedding table and refuses a mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from expotion.core.weights import MissingWeightsError
from expotion.evaluation.audio import split_chunks
from expotion.evaluation.batching import device_of, run_windows

VOCAB_MIN_FRACTION = 0.99  # the tokenizer must cover this share of the text encoder's vocabulary
MIN_TRAILING_SECONDS = 1.0  # a trailing chunk shorter than this is dropped (unless it is the only one)
PROBE_TEXT = "a calm piano melody with soft drums"


class TokenizerError(MissingWeightsError):
    """The tokenizer that loaded cannot be the one the text encoder was trained with."""


def check_tokenizer(tokenizer, vocab_size: int, source: str) -> None:
    """Refuse a tokenizer that is too small for the text encoder, or that loses plain words (drops them or maps them to <unk>)."""
    size = len(tokenizer)
    if size < VOCAB_MIN_FRACTION * vocab_size or size > vocab_size:
        raise TokenizerError(
            f"CLAP text tokenizer in {source} has {size} tokens but the text encoder's vocabulary has {vocab_size}: "
            "the tokenizer files (vocab.json + merges.txt or tokenizer.json) are missing or wrong. "
            "Put the checkpoint's own tokenizer files in that directory."
        )
    ids = tokenizer(PROBE_TEXT)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if tokenizer.unk_token_id in ids or decoded != PROBE_TEXT:
        raise TokenizerError(f"CLAP text tokenizer in {source} does not reproduce {PROBE_TEXT!r} (got {decoded!r}): "
                             "its vocabulary is incomplete; refusing it")


@dataclass
class Clap:
    """A loaded CLAP model with its processor; embeddings come back L2-normalised."""

    model: torch.nn.Module
    processor: object

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int:
        return int(self.processor.feature_extractor.nb_max_samples)

    @property
    def device(self) -> torch.device:
        return device_of(self.model)

    def audio_windows(self, samples: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A clip's model inputs: ``(features, is_longer)`` for each of its consecutive windows.

        Each window goes through the processor alone, so the processor's
        padding of short audio (repeat-pad) applies and no random crop or random
        fusion flag is drawn, however many windows later share a forward pass.
        """
        min_trailing = int(MIN_TRAILING_SECONDS * self.sample_rate)
        chunks = split_chunks(samples, self.window_samples, min_trailing) or [samples]
        windows = []
        for chunk in chunks:
            inputs = self.processor.feature_extractor(chunk, sampling_rate=self.sample_rate, return_tensors="pt")
            windows.append((inputs["input_features"][0], inputs["is_longer"][0]))
        return windows

    @torch.no_grad()
    def audio_forward(self, features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        return self.model.get_audio_features(input_features=features, is_longer=is_longer).pooler_output

    @staticmethod
    def pool(window_embeddings: torch.Tensor) -> np.ndarray:
        """A clip's embedding: the mean of its windows' unit embeddings, renormalised."""
        mean = window_embeddings.mean(dim=0)
        return (mean / mean.norm()).numpy().astype(np.float32)

    def audio_embedding(self, samples: np.ndarray) -> np.ndarray:
        return self.pool(run_windows(self.audio_forward, [self.audio_windows(samples)], 1, self.device)[0])

    def text_windows(self, text: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A caption's model input: its tokens and attention mask, unpadded."""
        tokens = self.processor.tokenizer([text], return_tensors="pt", truncation=True)
        return [(tokens["input_ids"][0], tokens["attention_mask"][0])]

    @torch.no_grad()
    def text_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def text_embedding(self, text: str) -> np.ndarray:
        return run_windows(self.text_forward, [self.text_windows(text)], 1, self.device)[0][0].numpy()


def load_clap(model_dir: Path, device: torch.device | str = "cpu") -> Clap:
    """ClapModel + ClapProcessor from a local directory, offline, with the tokenizer checked; the model on ``device``."""
    from transformers import ClapModel, ClapProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        processor = ClapProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise MissingWeightsError(f"CLAP processor/tokenizer files in {model_dir} cannot be loaded offline: {err}") from err
    model = ClapModel.from_pretrained(str(model_dir), local_files_only=True).eval().requires_grad_(False)
    check_tokenizer(processor.tokenizer, int(model.config.text_config.vocab_size), str(model_dir))
    return Clap(model.to(device), processor)


def byte_level_vocab() -> dict[str, int]:
    """RoBERTa's special tokens plus the 256 byte-level symbols: the smallest complete byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    vocab = {tok: i for i, tok in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    for code in codes:
        vocab[chr(code)] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return vocab


def save_tiny(out_dir: Path, seed: int = 0, vocab_size: int | None = None) -> Path:
    """A small random ClapModel with its processor, saved the way transformers saves the released one.

    The tokenizer is a complete byte-level vocabulary without merges, so the
    text path is real; ``vocab_size`` larger than that vocabulary makes a
    checkpoint whose tokenizer must be refused.
    """
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer
    from transformers.models.clap.configuration_clap import ClapAudioConfig, ClapTextConfig

    tokenizer = RobertaTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=128)
    text = ClapTextConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=130, projection_dim=16)
    audio = ClapAudioConfig(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                            hidden_size=64, projection_dim=16)
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16))
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tokenizer)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
