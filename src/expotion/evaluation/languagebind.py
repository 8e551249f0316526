"""LanguageBind video and audio encoders for the video–audio score, at inference.

Both released checkpoints (``LanguageBind_Video_FT``, ``LanguageBind_Audio_FT``)
are CLIP-style ViT-L/14 towers bound to one shared language space, stored in
the Hugging Face layout (``config.json`` + ``pytorch_model.bin``). Only the
vision tower (``vision_model.*``) and ``visual_projection`` are used: the
video–audio score is the cosine between the video embedding and the audio
embedding. Module names follow those checkpoints, including the video
tower's per-layer temporal attention (``temporal_embedding``,
``temporal_attn``, ``temporal_layer_norm1``) ahead of the spatial block.

Preprocessing follows the released processors, made deterministic for
evaluation: video frames are taken uniformly, scaled so the short side is
224, centre-cropped, without the random flip; audio longer than the model's
window uses the first start of each third instead of random starts.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from expotion.core.layers import Mlp, SplitAttention, activation
from expotion.evaluation.video import VideoClip, uniform_frames

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIXES = ("vision_model.", "visual_projection.")
IGNORED_KEYS = ("vision_model.embeddings.position_ids",)


@dataclass(frozen=True)
class TowerConfig:
    """The fields of a LanguageBind ``config.json`` the vision tower and its preprocessing need."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    projection_dim: int = 768
    add_time_attn: bool = False
    num_frames: int = 1
    num_mel_bins: int = 0
    target_length: int = 0
    audio_sample_rate: int = 16000
    audio_mean: float = -4.2677393
    audio_std: float = 4.5689974

    @property
    def is_audio(self) -> bool:
        return self.num_mel_bins > 0 and self.target_length > 0

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.num_mel_bins, self.target_length) if self.is_audio else (self.image_size, self.image_size)

    @property
    def num_positions(self) -> int:
        h, w = self.input_hw
        return (h // self.patch_size) * (w // self.patch_size) + 1

    @classmethod
    def from_json(cls, path: Path) -> TowerConfig:
        doc = json.loads(Path(path).read_text())
        vision = doc.get("vision_config")
        if not isinstance(vision, dict):
            raise ValueError(f"{path}: not a LanguageBind config (no 'vision_config')")
        known = {f for f in cls.__dataclass_fields__ if f != "projection_dim"}
        fields = {k: v for k, v in vision.items() if k in known}
        return cls(projection_dim=int(doc.get("projection_dim", vision.get("projection_dim", 768))), **fields)

    def to_json(self) -> dict:
        """A config.json document in the released layout (vision settings under ``vision_config``)."""
        vision = asdict(self)
        return {"model_type": "LanguageBindAudio" if self.is_audio else "LanguageBindVideo",
                "projection_dim": self.projection_dim, "vision_config": vision,
                "text_config": {"hidden_size": self.hidden_size, "projection_dim": self.projection_dim}}


class EncoderLayer(nn.Module):
    """Optional attention across frames (per patch position), then the usual pre-norm CLIP block."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.self_attn = SplitAttention(d, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, cfg.intermediate_size, activation(cfg.hidden_act))
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.frames = cfg.num_frames if cfg.add_time_attn else 0
        if self.frames:
            self.temporal_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, d))
            self.temporal_attn = SplitAttention(d, cfg.num_attention_heads)
            self.temporal_layer_norm1 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames:
            bt, n, d = x.shape
            t = self.frames
            xt = x.view(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)  # (b n) t d
            if t > 1:
                xt = xt + self.temporal_embedding[:, :t]
            xt = xt + self.temporal_attn(self.temporal_layer_norm1(xt))
            x = xt.view(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class Encoder(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Tower(nn.Module):
    """Vision tower + projection into the shared language space."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_model = VisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, projection_dim): class token per frame, averaged over frames, projected."""
        b, t = pixels.shape[:2]
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels.flatten(0, 1)))
        for layer in vm.encoder.layers:
            x = layer(x)
        pooled = vm.post_layernorm(x[:, 0]).view(b, t, -1).mean(dim=1)
        return self.visual_projection(pooled)


def load_tower(cfg: TowerConfig, state: dict[str, torch.Tensor], source: str) -> Tower:
    """The tower with the checkpoint's ``vision_model.*`` and ``visual_projection.*`` weights, loaded strictly."""
    weights = {k: v for k, v in state.items() if k.startswith(PREFIXES) and k not in IGNORED_KEYS}
    if not weights:
        raise ValueError(f"{source}: no 'vision_model.*' weights; not a LanguageBind checkpoint")
    if weights["vision_model.embeddings.patch_embedding.weight"].ndim != 4:
        raise ValueError(f"{source}: 3-D (tubelet) patch embeddings are not supported")
    tower = Tower(cfg)
    tower.load_state_dict(weights, strict=True)
    return tower.eval().requires_grad_(False)


def audio_input(samples_16k: np.ndarray, cfg: TowerConfig) -> torch.Tensor:
    """(1, 1, 3, mel_bins, target_length): Kaldi fbank, fitted to the model's window, normalised.

    Shorter audio is tiled to the window and the three channels are equal;
    longer audio fills the channels with three windows starting at the first
    frame of each third of the possible starts.
    """
    x = torch.from_numpy(np.asarray(samples_16k, np.float32))[None]
    x = x - x.mean()
    mel = kaldi.fbank(x, htk_compat=True, sample_frequency=cfg.audio_sample_rate, use_energy=False,
                      window_type="hanning", num_mel_bins=cfg.num_mel_bins, dither=0.0, frame_length=25,
                      frame_shift=10)
    n, length = mel.shape[0], cfg.target_length
    if n == 0:
        raise ValueError(f"audio of {len(samples_16k)} samples is too short for a 25 ms frame")
    if n > length:
        thirds = np.array_split(np.arange(n - length + 1), 3)
        starts = [int(part[0]) if len(part) else 0 for part in thirds]
        stack = torch.stack([mel[s : s + length] for s in starts])
    else:
        tiled = mel.repeat(length // n + 1, 1)[:length]
        stack = torch.stack([tiled] * 3)
    stack = (stack.transpose(1, 2) - cfg.audio_mean) / (cfg.audio_std * 2)
    return stack[None, None]


def video_input(clip: VideoClip | Path, cfg: TowerConfig) -> torch.Tensor:
    """(1, num_frames, 3, S, S) from a clip's frames: scaled to [0, 1], CLIP-normalised, short side to S, centre crop."""
    clip = clip if isinstance(clip, VideoClip) else VideoClip(Path(clip))
    size = cfg.image_size
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    out = []
    for frame in uniform_frames(clip, cfg.num_frames):
        x = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0 - mean) / std
        h, w = x.shape[1:]
        new_h, new_w = (int(h * size / w), size) if w < h else (size, int(w * size / h))
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
        top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
        out.append(x[:, top : top + size, left : left + size])
    return torch.stack(out)[None]


TINY_VIDEO = TowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         projection_dim=16, add_time_attn=True, num_frames=8)
TINY_AUDIO = TowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         projection_dim=16, num_mel_bins=112, target_length=1036)


def save_tiny(out_dir: Path, seed: int = 0, modality: str = "video", cfg: TowerConfig | None = None) -> Path:
    """A random checkpoint directory in the released layout: config.json + pytorch_model.bin.

    The state dict also carries text-tower entries and ``logit_scale`` as the
    released files do, so the loader's key filtering is exercised.
    """
    cfg = cfg or {"video": TINY_VIDEO, "audio": TINY_AUDIO}[modality]
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(Tower(cfg).state_dict())
    state["vision_model.embeddings.position_ids"] = torch.arange(cfg.num_positions)[None]
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(16, cfg.hidden_size)
    state["text_projection.weight"] = torch.randn(cfg.projection_dim, cfg.hidden_size)
    state["logit_scale"] = torch.tensor(4.6052)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=1))
    torch.save(state, out / "pytorch_model.bin")
    return out
