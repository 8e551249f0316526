"""Synchformer's visual feature extractor (a MotionFormer ViT-B), for the motion stream of §3.1.2.

Each 16-frame segment at 25 fps becomes 8 vectors of 768 dims, one per 2-frame
tubelet. The network is a video ViT with divided space-time attention
(each block attends over time at a fixed patch position, then over space
within a frame; the CLS token sees every token) followed by a one-layer
transformer that pools the patches of each tubelet slot into its own CLS
token. Parameter names follow the official Synchformer checkpoint
(``ckpt['model']['vfeat_extractor.*']``) so the released weights load with
``strict=True``.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expotion.core.layers import Attention, Mlp, merge_heads
from expotion.core.rates import DEFAULT_RATES, Rates
from expotion.core.weights import WeightSpec, register, require, weights_dir

LAYER_NORM_EPS = 1e-6
CKPT_PREFIX = "vfeat_extractor."
CHECKPOINT_FILENAME = "24-01-04T16-39-21.pt"
CHECKPOINT_URL = (
    "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models/"
    f"24-01-04T16-39-21/{CHECKPOINT_FILENAME}"
)
WEIGHTS_SUBDIR = "synchformer"


@dataclass(frozen=True)
class MotionFormerConfig:
    """Sizes of the extractor; the defaults are the released ViT-B."""

    img_size: int = 224
    patch_size: int = 16
    tubelet: int = 2
    num_frames: int = DEFAULT_RATES.synchformer_segment
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet {self.tubelet}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @classmethod
    def tiny(cls) -> MotionFormerConfig:
        """Same layout at toy sizes, for tests and CPU demos."""
        return cls(img_size=32, patch_size=8, dim=32, depth=2, heads=2)

    @property
    def grid(self) -> int:
        """Patches along each image side."""
        return self.img_size // self.patch_size

    @property
    def patches_per_slot(self) -> int:
        return self.grid * self.grid

    @property
    def slots(self) -> int:
        """Output vectors per segment: one per tubelet."""
        return self.num_frames // self.tubelet



# ---- network -----------------------------------------------------------------


class _PatchEmbed(nn.Module):
    """A strided convolution turning pixels into a (t, h, w)-ordered token sequence."""

    def __init__(self, proj: nn.Conv2d | nn.Conv3d):
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _DividedAttention(Attention):
    """Attention restricted to groups of patch tokens, plus a global CLS token.

    Patch tokens are split into groups (one per frame for spatial attention,
    one per patch position for temporal attention); each group attends to
    itself and to the CLS token, while the CLS token attends to all tokens.
    """

    def forward(self, x: torch.Tensor, slots: int, over_time: bool) -> torch.Tensor:
        q, k, v = self.heads_qkv(x)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)
        gq, gk, gv = (self._group(t[:, :, 1:], slots, over_time) for t in (q, k, v))
        n_groups = gq.shape[2]
        cls_k, cls_v = (t[:, :, :1].unsqueeze(2).expand(-1, -1, n_groups, -1, -1) for t in (k, v))
        out = F.scaled_dot_product_attention(gq, torch.cat([cls_k, gk], 3), torch.cat([cls_v, gv], 3))
        return self.proj(merge_heads(torch.cat([cls_out, self._ungroup(out, over_time)], dim=2)))

    @staticmethod
    def _group(t: torch.Tensor, slots: int, over_time: bool) -> torch.Tensor:
        """(b, h, slots*patches, e) -> (b, h, groups, group_len, e)."""
        b, h, n, e = t.shape
        t = t.reshape(b, h, slots, n // slots, e)
        return t.transpose(2, 3) if over_time else t

    @staticmethod
    def _ungroup(t: torch.Tensor, over_time: bool) -> torch.Tensor:
        if over_time:
            t = t.transpose(2, 3)
        return t.flatten(2, 3)


class _DividedBlock(nn.Module):
    """Pre-norm block: temporal attention (norm3), spatial attention (norm1), MLP (norm2)."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.attn = _DividedAttention(cfg.dim, cfg.heads)
        self.timeattn = _DividedAttention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, slots: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), slots, over_time=True)
        x = x + self.attn(self.norm1(x), slots, over_time=False)
        return x + self.mlp(self.norm2(x))


class _ClsPooling(nn.Module):
    """One pre-norm transformer encoder layer over [CLS, tokens]; returns the CLS output.

    Attribute names mirror ``nn.TransformerEncoderLayer`` because the checkpoint
    stores this layer under those names.
    """

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.self_attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.linear1 = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.linear2 = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class MotionFormer(nn.Module):
    """(B, S, 3, T, H, W) normalised segments -> (B, S, T // tubelet, dim) features."""

    def __init__(self, cfg: MotionFormerConfig = MotionFormerConfig()):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_slot + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.slots, d))
        # The checkpoint also stores MotionFormer's per-frame 2D patch embedding;
        # with tubelets > 1 it is never used, but strict loading needs it.
        self.patch_embed = _PatchEmbed(nn.Conv2d(cfg.in_chans, d, p, stride=p)).requires_grad_(False)
        kernel = (cfg.tubelet, p, p)
        self.patch_embed_3d = _PatchEmbed(nn.Conv3d(cfg.in_chans, d, kernel, stride=kernel))
        self.blocks = nn.ModuleList(_DividedBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.spatial_attn_agg = _ClsPooling(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT-style init so an untrained model gives well-scaled, input-dependent outputs."""
        for param in (self.cls_token, self.pos_embed, self.temp_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, s = x.shape[:2]
        tokens = self._embed(x.flatten(0, 1))
        for block in self.blocks:
            tokens = block(tokens, self.cfg.slots)
        patches = self.norm(tokens[:, 1:])  # the ViT's CLS token is not part of the output
        per_slot = patches.reshape(b * s * self.cfg.slots, self.cfg.patches_per_slot, self.cfg.dim)
        return self.spatial_attn_agg(per_slot).view(b, s, self.cfg.slots, self.cfg.dim)

    def _embed(self, clips: torch.Tensor) -> torch.Tensor:
        """Tubelet tokens with spatial + temporal position embeddings, CLS first."""
        tokens = self.patch_embed_3d(clips)
        pos = self.pos_embed[:, 1:].unsqueeze(1) + self.temp_embed.unsqueeze(2)
        tokens = tokens + pos.flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.cfg
        want = f"(B, S, {c.in_chans}, {c.num_frames}, {c.img_size}, {c.img_size})"
        if x.ndim != 6:
            raise ValueError(f"MotionFormer expects a 6-D input {want}, got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != (c.in_chans, c.num_frames, c.img_size, c.img_size):
            raise ValueError(f"MotionFormer expects input {want} (channels before frames), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"MotionFormer expects normalised float input, got dtype {x.dtype}")


# ---- preprocessing -------------------------------------------------------------


def preprocess_segments(
    frames: torch.Tensor | np.ndarray,
    cfg: MotionFormerConfig = MotionFormerConfig(),
    stride: int = DEFAULT_RATES.synchformer_stride,
) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) at 25 fps -> normalised segments (S, 3, num_frames, img, img).

    Short side resized to ``img_size`` (antialiased bilinear), centre crop,
    ``(x / 255 - 0.5) / 0.5``, then windows of ``num_frames`` every ``stride``
    frames; a trailing partial window is dropped.
    """
    video = _as_uint8_video(frames)
    n_frames = video.shape[0]
    n_segments = Rates.windows(n_frames, cfg.num_frames, stride)
    if n_segments == 0:
        raise ValueError(f"need at least {cfg.num_frames} frames for one segment, got {n_frames}")
    clip = normalise_frames(video, cfg)
    return torch.stack([clip[i * stride : i * stride + cfg.num_frames].transpose(0, 1) for i in range(n_segments)])


def normalise_frames(frames: torch.Tensor | np.ndarray, cfg: MotionFormerConfig = MotionFormerConfig()) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> (T, 3, img, img) as segments hold them; each frame on its own, so frames
    arriving one at a time give the same values."""
    clip = _resize_and_crop(_as_uint8_video(frames).permute(0, 3, 1, 2).float(), cfg.img_size)
    return ((clip / 255.0).clamp(0.0, 1.0) - 0.5) / 0.5


def _as_uint8_video(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(video.shape)}")
    if video.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {video.dtype}")
    return video


def _resize_and_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 3, H, W) -> (T, 3, size, size): short side to ``size``, then the centre square."""
    h, w = video.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return video[..., top : top + size, left : left + size]


# ---- checkpoints ---------------------------------------------------------------


def _default_location(wdir: Path) -> Path:
    return wdir / WEIGHTS_SUBDIR / CHECKPOINT_FILENAME


def _locate(wdir: Path) -> Path | None:
    path = _default_location(wdir)
    return path if path.exists() else None


WEIGHT_SPEC = register(
    WeightSpec(
        key="synchformer",
        filename=CHECKPOINT_FILENAME,
        where=(
            f"$EXPOTION_WEIGHTS/{WEIGHTS_SUBDIR}/ (default ./weights/{WEIGHTS_SUBDIR}/); "
            f"the official Synchformer AudioSet model, {CHECKPOINT_URL}"
        ),
        needed_by="Synchformer motion features (§3.1.2)",
        locate=_locate,
    )
)


def load_synchformer_visual(
    path: str | os.PathLike | None = None,
    cfg: MotionFormerConfig = MotionFormerConfig(),
    *,
    allow_pickle: bool = True,
    device: str | torch.device = "cpu",
) -> MotionFormer:
    """The frozen visual extractor from a Synchformer checkpoint (default: the registered location), on ``device``.

    The file is first read with ``weights_only=True``. The official release
    cannot be read that way: besides tensors it pickles its OmegaConf training
    config under ``'args'``. Only then, and only with ``allow_pickle``, is it
    fully unpickled, which runs code from the file (keep it for files from the
    official source) and needs ``omegaconf`` installed.
    """
    if path is None:
        path = _default_location(weights_dir())
    path = require(
        Path(path), what="Synchformer visual extractor", filename=CHECKPOINT_FILENAME, where=WEIGHT_SPEC.where
    )
    state = _visual_state_dict(_read_checkpoint(path, allow_pickle), path)
    model = MotionFormer(cfg)
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


def _read_checkpoint(path: Path, allow_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            raise ValueError(
                f"{path} holds Python objects that weights_only loading refuses ({', '.join(unsafe[:5])}); "
                "pass allow_pickle=True only if the file comes from a trusted source"
            ) from err
    return torch.load(path, map_location="cpu", weights_only=False)


def _visual_state_dict(ckpt: object, path: Path) -> dict[str, torch.Tensor]:
    """The ``vfeat_extractor.*`` entries of ``ckpt['model']``, prefix removed."""
    model_sd = ckpt.get("model") if isinstance(ckpt, Mapping) else None
    if not isinstance(model_sd, Mapping):
        raise ValueError(f"{path} is not a Synchformer checkpoint: no 'model' state dict at the top level")
    state = {k[len(CKPT_PREFIX) :]: v for k, v in model_sd.items() if k.startswith(CKPT_PREFIX)}
    if not state:
        raise ValueError(f"{path} has no '{CKPT_PREFIX}*' entries under 'model'; first keys: {list(model_sd)[:5]}")
    return state


def _check_state_dict(model: MotionFormer, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Fail with the offending key names before ``load_state_dict`` does less readably."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = [
        f"{label} ({len(keys)}): {keys[:5]}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{path}: '{CKPT_PREFIX}*' weights do not match MotionFormer({model.cfg}); " + "; ".join(problems)
        )


def save_synchformer_format(model: MotionFormer, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model`` laid out like an official Synchformer checkpoint.

    The state dict goes under ``'model'`` with the ``vfeat_extractor.`` prefix,
    next to an audio-branch placeholder so readers must filter by prefix;
    ``extra`` entries are added at the top level (as the release's
    ``'epoch'``/``'args'``).
    """
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("extra must not contain 'model': it would replace the weights")
    weights = {CKPT_PREFIX + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    weights["afeat_extractor.placeholder"] = torch.zeros(1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**extra, "model": weights, "model_type": "Synchformer"}, path)
    return path


def save_tiny(path: str | os.PathLike, seed: int = 0, cfg: MotionFormerConfig = MotionFormerConfig.tiny()) -> Path:
    """A random MotionFormer at ``cfg``'s sizes, laid out like the official Synchformer checkpoint."""
    torch.manual_seed(seed)
    return save_synchformer_format(MotionFormer(cfg), path)
