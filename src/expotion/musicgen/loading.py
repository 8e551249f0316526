"""Loading audiocraft's MusicGen, and the tiny stand-in saved in the same on-disk format.

Real models come from a local directory holding ``state_dict.bin`` and
``compression_state_dict.bin`` or from the Hugging Face cache, always through
``MusicGen.get_pretrained``. The ``tiny`` profile writes a small random model
in exactly that exported layout, so demos and tests exercise the real loader.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from expotion.core.weights import MissingWeightsError, WeightSpec, hf_hub_cache, hub_file, register

HUB_SIZES = ("facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large")
HUB_COMPANIONS = {"facebook/encodec_32khz": "config.json", "t5-base": "config.json"}
MIN_T5_VOCAB = 32000

for _name in HUB_SIZES:
    register(
        WeightSpec(
            key=_name,
            filename="state_dict.bin + compression_state_dict.bin",
            where=f"the Hugging Face cache (hub repo {_name}) or a local directory passed as --musicgen",
            needed_by="training, generation and the precompute stage (EnCodec tokens, T5 text embeddings)",
            locate=lambda _w, n=_name: hub_file(n, "state_dict.bin"),
        )
    )
for _name, _file in HUB_COMPANIONS.items():
    register(
        WeightSpec(
            key=_name,
            filename=_file + " (+ weights)",
            where=f"the Hugging Face cache (hub repo {_name})",
            needed_by="hub MusicGen models (EnCodec 32 kHz tokenizer, T5 text encoder)",
            locate=lambda _w, n=_name, f=_file: hub_file(n, f),
        )
    )


@dataclass(frozen=True)
class TinyMusicGenConfig:
    """A MusicGen small enough to train on a CPU, with the real model's structure.

    Text goes through a lookup-table conditioner with the ``noop`` tokenizer
    (one hashed token per caption) because the ``whitespace`` tokenizer and T5
    both need downloads.
    """

    dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    n_q: int = 4
    card: int = 256
    text_bins: int = 512
    text_dim: int = 32
    encodec_filters: int = 4
    encodec_dim: int = 32
    sample_rate: int = 32000
    segment_duration: float = 30.0  # must exceed MusicGen's default extend_stride (18 s)


def tiny_lm_cfg(cfg: TinyMusicGenConfig) -> dict:
    """The ``xp.cfg`` of the tiny LM, with the fields audiocraft's builders read."""
    return {
        "device": "cpu",
        "dtype": "float32",
        "lm_model": "transformer_lm",
        "dataset": {"segment_duration": cfg.segment_duration},
        "transformer_lm": {
            "dim": cfg.dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "hidden_scale": 4,
            "n_q": cfg.n_q, "card": cfg.card, "dropout": 0.0, "emb_lr": None, "activation": "gelu",
            "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False,
            "past_context": None, "causal": True, "custom": False, "memory_efficient": True,
            "attention_as_float32": False, "layer_scale": None, "positional_embedding": "sin",
            "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
            "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
            "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
        },
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(range(cfg.n_q)), "flatten_first": 0, "empty_initial": 0}},
        "attribute_dropout": {"args": {"active_on_eval": False}, "text": {}, "wav": {}},
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {
            "description": {"model": "lut", "lut": {"n_bins": cfg.text_bins, "dim": cfg.text_dim, "tokenizer": "noop"}},
        },
        "tiny": asdict(cfg),
    }


def tiny_compression_cfg(cfg: TinyMusicGenConfig) -> dict:
    """An EnCodec with hop 640 at 32 kHz (50 Hz frames) and ``n_q`` codebooks of ``card`` entries."""
    return {
        "device": "cpu",
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": cfg.sample_rate,
                    "channels": 1, "causal": False, "renormalize": False},
        "seanet": {"dimension": cfg.encodec_dim, "channels": 1, "causal": False, "n_filters": cfg.encodec_filters,
                   "n_residual_layers": 1, "ratios": [8, 5, 4, 4], "activation": "ELU",
                   "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {},
                   "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2,
                   "pad_mode": "constant", "true_skip": True, "compress": 2, "lstm": 0,
                   "disable_norm_outer_blocks": 0, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": cfg.n_q, "bins": cfg.card, "decay": 0.99, "kmeans_init": False, "kmeans_iters": 0,
                "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False, "orthogonal_reg_max_codes": None, "q_dropout": False},
    }


def exported(state: dict, cfg: dict) -> dict:
    """audiocraft's release-checkpoint layout (what ``audiocraft.utils.export`` writes)."""
    import audiocraft

    return {"best_state": state, "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
            "version": audiocraft.__version__, "exported": True}


def calibration_audio(sample_rate: int, generator: torch.Generator, count: int = 16, seconds: float = 2.0) -> torch.Tensor:
    """Varied audio (count, 1, samples): gated tones over six octaves plus noise, at many levels."""
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    freqs = 55.0 * 2 ** (6 * torch.rand(count, 1, generator=generator))
    levels = 0.05 + 0.8 * torch.rand(count, 1, generator=generator)
    rates = 1.0 + 7.0 * torch.rand(count, 1, generator=generator)  # on/off gates from 1 to 8 per second
    gates = (torch.sin(2 * math.pi * rates * t) > 0).float()
    noise = torch.rand(count, 1, generator=generator) * torch.randn(count, t.numel(), generator=generator)
    return (levels * gates * torch.sin(2 * math.pi * freqs * t) + 0.3 * noise).clamp(-1, 1).unsqueeze(1)


@torch.no_grad()
def seed_codebooks(compression, seed: int = 0) -> None:
    """Draw every RVQ codebook from the encoder's residuals on varied audio, as k-means initialisation starts.

    Random codebook vectors lie far from a random encoder's outputs, so every frame would take the
    same nearest code and the tokens would say nothing about the audio: a model trained on them
    could not show that the video helps.
    """
    generator = torch.Generator().manual_seed(seed)
    card, seconds = compression.cardinality, 2.0
    clips = max(16, math.ceil(card / (seconds * compression.frame_rate)))  # at least one frame per code
    residual = compression.encoder(calibration_audio(compression.sample_rate, generator, clips, seconds))  # (B, D, T)
    for layer in compression.quantizer.vq.layers:
        codebook = layer._codebook
        frames = residual.transpose(1, 2).reshape(-1, residual.shape[1])
        chosen = frames[torch.randperm(len(frames), generator=generator)[: codebook.embed.shape[0]]]
        codebook.embed.copy_(chosen)
        codebook.embed_avg.copy_(chosen)
        codebook.cluster_size.fill_(1.0)
        codebook.inited.fill_(True)
        residual = residual - layer.decode(layer.encode(residual))


def save_tiny(out_dir: str | os.PathLike, seed: int = 0, cfg: TinyMusicGenConfig = TinyMusicGenConfig()) -> Path:
    """Write a random tiny MusicGen as ``state_dict.bin`` + ``compression_state_dict.bin``."""
    from audiocraft.models import builders

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    lm_cfg, comp_cfg = tiny_lm_cfg(cfg), tiny_compression_cfg(cfg)
    lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
    compression = builders.get_compression_model(OmegaConf.create(comp_cfg))
    seed_codebooks(compression, seed)
    torch.save(exported(lm.state_dict(), lm_cfg), out / "state_dict.bin")
    torch.save(exported(compression.state_dict(), comp_cfg), out / "compression_state_dict.bin")
    return out


def check_musicgen_available(name_or_dir: str) -> str:
    """Fail before any work if the model's files are not on disk; return what to pass to audiocraft."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        missing = [f for f in ("state_dict.bin", "compression_state_dict.bin") if not (path / f).exists()]
        if missing:
            raise MissingWeightsError(
                f"MusicGen directory {path} lacks {', '.join(missing)}; a model directory holds "
                "state_dict.bin and compression_state_dict.bin as exported by audiocraft."
            )
        return str(path)
    if path.suffix or os.sep in name_or_dir and not name_or_dir.startswith("facebook/"):
        raise MissingWeightsError(f"MusicGen model directory not found: {path}")
    needed = {name_or_dir: "state_dict.bin", **HUB_COMPANIONS}
    for repo, filename in needed.items():
        if hub_file(repo, filename) is None:
            raise MissingWeightsError(
                f"MusicGen '{name_or_dir}' needs hub repo '{repo}' ({filename}) in the Hugging Face cache "
                f"{hf_hub_cache()}; download it there (hf download {repo}) on a machine with "
                "network, or pass a local model directory."
            )
    return name_or_dir


def exported_window_s(name_or_dir: str) -> float | None:
    """The longest piece a MusicGen generates in one window (s), read from its export's config without loading its
    weights (memory-mapped); None when its files are not found or do not record it (the loaded model tells then)."""
    path = Path(name_or_dir).expanduser()
    found = path / "state_dict.bin" if path.is_dir() else hub_file(name_or_dir, "state_dict.bin")
    if found is None or not Path(found).is_file():
        return None
    try:
        export = torch.load(found, map_location="cpu", mmap=True, weights_only=True)
        return float(OmegaConf.create(export["xp.cfg"]).dataset.segment_duration)
    except Exception:  # noqa: BLE001 - any other layout: the check after loading applies
        return None


def load_musicgen(name_or_dir: str, device: str | torch.device = "cpu"):
    """Load a frozen MusicGen on ``device`` through ``MusicGen.get_pretrained`` after checking its files exist."""
    from audiocraft.models import MusicGen

    model = MusicGen.get_pretrained(check_musicgen_available(name_or_dir), device=str(torch.device(device)))
    check_text_tokenizer(model, name_or_dir)
    model.lm.eval().requires_grad_(False)
    model.compression_model.eval().requires_grad_(False)
    return model


def place_musicgen(model, device: str | torch.device) -> None:
    """Move every part of a MusicGen to ``device``, not just what ``.to()`` on the LM reaches.

    That misses the compression model, a text encoder that audiocraft keeps
    outside the module tree (T5), the conditioners' ``device`` attributes and the
    model's own ``device`` and autocast. The autocast follows audiocraft's rule
    for a model loaded on ``device`` (float16 on an accelerator); the text encoder keeps
    the precision it was loaded with.
    """
    from audiocraft.utils.autocast import TorchAutocast

    device = torch.device(device)
    model.lm.to(device)
    model.compression_model.to(device)
    for conditioner in model.lm.condition_provider.conditioners.values():
        for value in vars(conditioner).values():
            if isinstance(value, torch.nn.Module):  # registered submodules live in _modules, not here
                value.to(device)
        if hasattr(conditioner, "device"):
            conditioner.device = device
    model.device = device
    on_accelerator = device.type not in ("cpu", "meta")  # meta: shape and placement checks, nothing to autocast
    model.autocast = TorchAutocast(enabled=on_accelerator, device_type=device.type, dtype=torch.float16)


class MusicGenModule(torch.nn.Module):
    """A loaded MusicGen as one module: ``.to(device)`` moves all of it (see :func:`place_musicgen`)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.lm, self.compression_model = model.lm, model.compression_model
        self.__dict__["musicgen"] = model  # the audiocraft wrapper itself is not a module

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        place_musicgen(self.musicgen, next(self.lm.parameters()).device)
        return self


def check_text_tokenizer(model, name: str) -> None:
    """Refuse a T5 tokenizer that loaded offline with a truncated vocabulary."""
    conds = model.lm.condition_provider.conditioners
    cond = conds["description"] if "description" in conds else None
    tokenizer = getattr(cond, "t5_tokenizer", None)
    if tokenizer is not None and len(tokenizer) < MIN_T5_VOCAB:
        raise MissingWeightsError(
            f"MusicGen '{name}': the T5 tokenizer loaded with only {len(tokenizer)} tokens "
            f"(expected >= {MIN_T5_VOCAB}); the t5-base tokenizer files (spiece.model) are missing from the HF cache."
        )


def model_signature(model) -> dict:
    """What identifies a MusicGen for the cache and adaptor checkpoints."""
    lm = model.lm
    return {
        "name": str(model.name),
        "dim": int(lm.dim),
        "num_layers": len(lm.transformer.layers),
        "n_q": int(lm.n_q),
        "card": int(lm.card),
        "sample_rate": int(model.sample_rate),
        "frame_rate": float(model.frame_rate),
    }


@torch.no_grad()
def encode_audio(model, wav: np.ndarray) -> np.ndarray:
    """EnCodec tokens (K, T) of mono audio already at the model's sample rate."""
    x = torch.as_tensor(wav, dtype=torch.float32, device=model.device).reshape(1, 1, -1)
    codes, scale = model.compression_model.encode(x)
    if scale is not None or codes.shape[:2] != (1, model.lm.n_q):
        raise ValueError(f"MusicGen '{model.name}': its compression model must give {model.lm.n_q} codebooks "
                         f"without renormalising, got {codes.shape[1]} codebooks (renormalised: {scale is not None})")
    return codes[0].cpu().numpy().astype(np.int16)


@torch.no_grad()
def text_hidden(model, captions: list[str]) -> list[np.ndarray]:
    """The text encoder's hidden states (tokens, dim) per caption, before MusicGen's ``output_proj``.

    These are what the frozen text conditioner computes before its last
    projection; training applies that projection itself, so the cache does not
    depend on which MusicGen size reads it.
    """
    cond = model.lm.condition_provider.conditioners["description"]
    captured: list[torch.Tensor] = []
    handle = cond.output_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float()))
    try:
        _, mask = cond(cond.tokenize(list(captions)))
    finally:
        handle.remove()
    hidden = captured[0]
    return [hidden[i][mask[i].bool()].cpu().numpy() for i in range(len(captions))]
