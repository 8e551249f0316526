"""The video conditioner of the CLIP + flow method, one module per paper subsection.

- §3.1 :class:`VisualEmbedding`: learnable spatial positions, a transformer over
  each frame's CLIP tokens, CLS pooling -> ``v_i`` (2 fps);
- §3.2 :class:`MotionEmbedding`: a non-overlapping convolutional patch
  embedding of each Farneback magnitude map, a transformer over the patches,
  mean pooling -> ``f_j`` (4 fps);
- §3.3 :class:`CrossAttentionFusion`: the ``v`` as queries, the ``f`` as keys
  and values -> ``o_i``; with ``causal`` each ``o_i`` only sees motion that
  ended by its own frame's time;
- §3.4 :class:`MemoryProjection`: each ``o_i`` -> ``P`` tokens at MusicGen's
  width ``M``, giving ``Z`` of shape (N_v * P, M).

Each stream is first standardised by training-set statistics (:class:`Standardization`).
The paper gives the cross-attention no notion of time, and MusicGen's
cross-attention has none either, so ``v``, ``f`` and ``Z`` also get sinusoidal
embeddings of their time in the window (:func:`time_embedding`). The one for
``Z`` is MusicGen's own positional code at the decoder step of that time, so the
decoder can align memory tokens with the music it is writing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from expotion.core.rates import StreamRate
from expotion.extractors.bank import STREAMS  # the registry, with the built-in streams registered
from expotion.methods.clipflow.memory import window_memory
from expotion.methods.clipflow.statistics import RunningMoments, moments_of

TEXT_MODES = ("none", "concat")
DECODER_CHOICES = ("none", "cross_attention", "all")


@dataclass(frozen=True)
class ClipFlowConfig:
    """The conditioner's sizes and the method's options.

    The paper (§3) fixes the modalities, rates and pooling but not the depths,
    heads or ``P``; the defaults here are ours (see the README for why).

    - ``motion``: False is the paper's "w/o motion" ablation (CLIP alone through its transformer);
    - ``causal``: each ``o_i`` attends only to motion up to its own time;
    - ``text``: ``none`` (the paper) or ``concat`` (MusicGen's T5 text tokens stay in the memory before ``Z``);
    - ``decoder``: which MusicGen parameters train: ``none``, ``cross_attention`` or ``all``;
    - ``max_seconds``: the window of one training crop and one generation window.
    """

    visual_layers: int = 4
    motion_layers: int = 4
    heads: int = 12
    ff_mult: int = 4
    patch: int = 16
    tokens_per_frame: int = 8
    dropout: float = 0.0
    motion: bool = True
    causal: bool = False
    time_embedding: bool = True
    text: str = "none"
    decoder: str = "all"
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, got {self.text!r}")
        if self.decoder not in DECODER_CHOICES:
            raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {self.decoder!r}")
        if min(self.visual_layers, self.motion_layers, self.heads, self.patch, self.tokens_per_frame) < 1:
            raise ValueError("layers, heads, patch and tokens_per_frame must be positive")

    @property
    def streams(self) -> tuple[str, ...]:
        return ("clip", "farneback") if self.motion else ("clip",)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClipFlowConfig:
        return cls(**d)


def time_embedding(seconds: torch.Tensor, dim: int, frame_rate: float) -> torch.Tensor:
    """MusicGen's sinusoidal positional code at the decoder step of each time: (B, T) seconds -> (B, T, dim)."""
    from audiocraft.modules.transformer import create_sin_embedding

    return create_sin_embedding((seconds * frame_rate)[..., None], dim)


def encoder(dim: int, layers: int, heads: int, ff_mult: int, dropout: float) -> nn.TransformerEncoder:
    """A pre-norm transformer encoder with a final LayerNorm."""
    layer = nn.TransformerEncoderLayer(dim, heads, ff_mult * dim, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class Standardization(nn.Module):
    """Each element of a cached feature stream minus its training-set mean, over its training-set std.

    Pre-extracted features share a large constant part from frame to frame (the
    CLIP tokens of a fixed camera, the empty background of a flow map); what
    tells clips and moments apart is the variation around it. The statistics
    are buffers, so they travel with the conditioner's weights.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, samples: torch.Tensor) -> None:
        """Statistics over ``samples`` (N, *shape) held in memory (see :meth:`fit_moments`)."""
        self.fit_moments(moments_of(samples))

    @torch.no_grad()
    def fit_moments(self, moments: RunningMoments) -> None:
        """Statistics from running moments; a std below 1e-3 of the overall std is raised to it."""
        self.mean.copy_(moments.mean)
        self.std.copy_(moments.std().clamp(min=1e-3 * moments.overall_std() + 1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VisualEmbedding(nn.Module):
    """§3.1: spatial positions + a transformer over each frame's CLIP tokens + CLS pooling -> ``v_i``."""

    def __init__(self, tokens: int, dim: int, cfg: ClipFlowConfig):
        super().__init__()
        self.positions = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.encoder = encoder(dim, cfg.visual_layers, cfg.heads, cfg.ff_mult, cfg.dropout)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """CLIP tokens (B, N_v, tokens, D), CLS first -> (B, N_v, D)."""
        b, n = clip.shape[:2]
        x = self.encoder(clip.flatten(0, 1) + self.positions)
        return x[:, 0].unflatten(0, (b, n))


class MotionEmbedding(nn.Module):
    """§3.2: non-overlapping conv patches of a magnitude map + a transformer + mean pooling -> ``f_j``.

    Like the CLIP tokens, the patches get learnable spatial positions.
    """

    def __init__(self, map_shape: tuple[int, int], dim: int, cfg: ClipFlowConfig):
        super().__init__()
        h, w = map_shape
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"the {h}x{w} magnitude maps do not split into {cfg.patch}x{cfg.patch} patches")
        self.patches = nn.Conv2d(1, dim, cfg.patch, stride=cfg.patch)
        self.positions = nn.Parameter(torch.randn((h // cfg.patch) * (w // cfg.patch), dim) * 0.02)
        self.encoder = encoder(dim, cfg.motion_layers, cfg.heads, cfg.ff_mult, cfg.dropout)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Magnitude maps (B, N_m, H, W) -> (B, N_m, D)."""
        b, n = maps.shape[:2]
        x = self.patches(maps.flatten(0, 1)[:, None]).flatten(2).transpose(1, 2)
        return self.encoder(x + self.positions).mean(dim=1).unflatten(0, (b, n))


class CrossAttentionFusion(nn.Module):
    """§3.3: ``o_i = v_i + Attn(v_i, f, f)``, the visual embeddings querying the motion sequence.

    With ``causal``, a learnable "no motion yet" key/value is always visible, so
    a frame before the first complete flow still has something to attend to.
    """

    def __init__(self, dim: int, cfg: ClipFlowConfig):
        super().__init__()
        if dim % cfg.heads:
            raise ValueError(f"width {dim} is not divisible by {cfg.heads} heads")
        self.heads = cfg.heads
        self.norm_v, self.norm_f = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.dropout = cfg.dropout
        self.null = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.causal else None

    def forward(self, v: torch.Tensor, f: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """``v`` (B, N_v, D), ``f`` (B, N_m, D); ``visible`` (B, N_v, N_m) says which motion each ``v_i`` may see."""
        keys = self.norm_f(f)
        if self.null is not None:
            keys = torch.cat([self.null.expand(len(f), -1, -1).to(keys.dtype), keys], dim=1)
            if visible is not None:
                visible = F.pad(visible, (1, 0), value=True)
        k, val = self.kv(keys).chunk(2, dim=-1)
        q = self.q(self.norm_v(v))
        mask = None if visible is None else visible[:, None]
        out = F.scaled_dot_product_attention(*(split_heads(t, self.heads) for t in (q, k, val)), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return v + self.out(out.transpose(1, 2).flatten(2))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def motion_visible(frame_times: torch.Tensor, flow_centres: torch.Tensor, flow_rate: StreamRate) -> torch.Tensor:
    """(B, N_v, N_m): True where flow j ended by frame i's time (a flow spans one frame period around its centre)."""
    ends = flow_centres + 0.5 / flow_rate.fps
    return ends[:, None, :] <= frame_times[:, :, None] + 1e-6


class MemoryProjection(nn.Module):
    """§3.4: each fused ``o_i`` -> ``P`` tokens at MusicGen's width ``M``: ``Z`` (B, N_v * P, M)."""

    def __init__(self, dim: int, model_dim: int, tokens_per_frame: int):
        super().__init__()
        self.tokens_per_frame, self.model_dim = tokens_per_frame, model_dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, tokens_per_frame * model_dim)

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        """(B, N_v, D) -> (B, N_v * P, M), frame i's tokens at ``i * P ... i * P + P - 1``."""
        return self.proj(self.norm(o)).unflatten(-1, (self.tokens_per_frame, self.model_dim)).flatten(1, 2)


def window(x: torch.Tensor, rate: StreamRate, start_s: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` vectors of ``x`` (B, T, ...) whose centres start at ``start_s`` (B,), and their times (B, count).

    A window reaching past the stream's end repeats its last vector (times keep counting).
    """
    first = torch.ceil((start_s.double() - rate.t0) * rate.fps - 1e-6).clamp(min=0).long()
    index = first[:, None] + torch.arange(count, device=x.device)
    times = (rate.t0 + index.double() / rate.fps).to(torch.float32)
    rows = torch.arange(len(x), device=x.device)[:, None]
    return x[rows, index.clamp(max=x.shape[1] - 1)], times


class ClipFlowConditioner(nn.Module):
    """CLIP tokens and Farneback maps of a window -> ``Z``, the memory of MusicGen's cross-attention."""

    def __init__(self, cfg: ClipFlowConfig, shapes: dict[str, tuple[int, ...]], model_dim: int, frame_rate: float):
        super().__init__()
        missing = [name for name in cfg.streams if name not in shapes]
        if missing:
            raise ValueError(f"the conditioner needs the streams {cfg.streams}; the features lack {missing}")
        tokens, dim = shapes["clip"]
        self.cfg, self.frame_rate, self.dim, self.model_dim = cfg, frame_rate, dim, model_dim
        self.standardize = nn.ModuleDict({name: Standardization(shapes[name]) for name in cfg.streams})
        self.visual = VisualEmbedding(tokens, dim, cfg)
        self.motion = MotionEmbedding(shapes["farneback"], dim, cfg) if cfg.motion else None
        self.fusion = CrossAttentionFusion(dim, cfg) if cfg.motion else None
        self.projection = MemoryProjection(dim, model_dim, cfg.tokens_per_frame)

    def timed(self, x: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        return x + time_embedding(seconds, x.shape[-1], self.frame_rate).to(x.dtype) if self.cfg.time_embedding else x

    @property
    def reads_text(self) -> bool:
        """Trained without text (``text: none``, as in the paper), the prompt is ignored."""
        return self.cfg.text != "none"

    @property
    def window_s(self) -> float:
        return self.cfg.max_seconds

    @property
    def lookahead_s(self) -> float | None:
        """None: MusicGen's cross-attention reads all of ``Z`` at every step, so each step hears the whole window
        (``causal`` only orders the fusion within ``Z``); live generation waits for the window."""
        return None

    def generation_context(self, musicgen, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate],
                           start_s: float, max_gen_len: int, compute_dtype: torch.dtype):
        """``Z`` of the window that one ``lm.generate`` call of ``max_gen_len`` frames covers, as its memory."""
        return window_memory(self, musicgen.lm, feats, rates, start_s, max_gen_len / musicgen.frame_rate,
                             compute_dtype)

    def forward(self, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate], start_s: torch.Tensor,
                seconds: float) -> torch.Tensor:
        """``Z`` (B, N_v * P, M) for the window ``[start_s, start_s + seconds)`` of each clip (``start_s`` (B,))."""
        feats = {name: self.standardize[name](feats[name]) for name in self.cfg.streams}
        clip, frame_times = window(feats["clip"], rates["clip"], start_s, STREAMS["clip"].length(rates["clip"], seconds))
        if clip.shape[1] == 0:
            raise ValueError(f"a {seconds:g} s window holds no CLIP frame at {rates['clip'].fps:g} fps")
        relative = frame_times - start_s[:, None].float()
        o = self.timed(self.visual(clip), relative)
        if self.motion is not None:
            rate = rates["farneback"]
            maps, centres = window(feats["farneback"], rate, start_s, STREAMS["farneback"].length(rate, seconds))
            if maps.shape[1] == 0 and not self.cfg.causal:
                raise ValueError(f"a {seconds:g} s window holds no Farneback flow at {rate.fps:g} fps")
            f = self.timed(self.motion(maps), centres - start_s[:, None].float())
            visible = motion_visible(frame_times, centres, rate) if self.cfg.causal else None
            o = self.fusion(o, f, visible)
        z = self.projection(o)
        return self.timed(z, relative.repeat_interleave(self.cfg.tokens_per_frame, dim=1))
