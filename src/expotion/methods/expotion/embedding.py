"""The joint visual embedding of §3.1 (Fig. 2): smoothing, low-rank projection, fusion.

Each equation of the paper lives in one function or module here:

- Eq. 1 and Eq. 3, temporal smoothing: :func:`temporal_smoothing`;
- Eq. 2 and Eq. 4, low-rank projections W_f and W_m: :class:`JointVisualEmbedding` (``w_f``, ``w_m``);
- Eq. 5, the flow-embedding CNN: :class:`FlowEmbedding`;
- Eq. 6/7, concatenation, ``z_pos`` and ``W_e``: :meth:`JointVisualEmbedding.forward`;
  the temporal layout of segmented streams (Synchformer): :func:`merge_coincident`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from expotion.core.rates import StreamRate

MOTIONS = ("synchformer", "raft")


@dataclass(frozen=True)
class VisualConfig:
    """Which modalities feed the adaptor, and the low-rank sizes d1 and d2 (§4.2: 12 and 12)."""

    face: bool = True
    motion: str | None = "synchformer"  # "synchformer", "raft" or None
    d1: int = 12
    d2: int = 12
    flow_channels: int = 32
    flow_dim: int = 256  # output size of the flow CNN (Eq. 5)

    def __post_init__(self) -> None:
        if self.motion is not None and self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS} or None, got {self.motion!r}")
        if not self.face and self.motion is None:
            raise ValueError("the visual embedding needs at least one of face or motion")

    @property
    def streams(self) -> tuple[str, ...]:
        return (("marlin",) if self.face else ()) + ((self.motion,) if self.motion else ())

    @property
    def width(self) -> int:
        return (self.d1 if self.face else 0) + (self.d2 if self.motion else 0)


def temporal_smoothing(z: torch.Tensor, rate: StreamRate, times: torch.Tensor, name: str = "feature",
                       ready: torch.Tensor | None = None, lookahead_s: float = 0.0) -> torch.Tensor:
    """Eq. 1/3: linear interpolation of a feature stream at (possibly non-integer) frame indices.

    ``z`` is (B, T, ...) timed by ``rate``; ``times`` are seconds, (S,) or (B, S).
    With ``t`` the fractional index of a time in the stream (:func:`stream_position`),
    ``i = floor(t)`` and ``alpha = t - i``, the output is ``(1 - alpha) z_i + alpha z_{i+1}``;
    times outside the stream hold its end values. A segmented stream is first reduced
    to one vector per instant (:func:`merge_coincident`). ``name`` names the stream in errors.

    Causal (``ready`` given, (T,) seconds at which each vector is ready, see
    :func:`~expotion.extractors.streams.feature_ready_times`): the value at time ``t`` reads only
    vectors ready by ``t + lookahead_s``. Past the last instant available then, it holds that
    instant's value; an instant of a segmented stream is the mean of its vectors available then;
    before any vector is available the value is zero.
    """
    if z.shape[1] == 0 and ready is not None:  # live, before the stream's first vector: nothing is heard yet
        return z.new_zeros(z.shape[0], times.shape[-1], *z.shape[2:])
    if z.shape[1] == 0:
        raise ValueError(f"temporal smoothing: the '{name}' stream is empty (its clip is shorter than "
                         "one window of the feature extractor)")
    times = times.expand(z.shape[0], -1)
    if rate.segment_len:
        instants, owner = rate.instants(z.shape[1])
        t = stream_position(times, torch.as_tensor(instants, device=times.device))
    else:
        instants, owner = rate.times(z.shape[1]), np.arange(z.shape[1])
        t = ((times - rate.t0) * rate.fps).clamp(0, z.shape[1] - 1)
    if ready is None:
        merged = merge_coincident(z, rate)[0] if rate.segment_len else z
        last, value = len(instants) - 1, lambda index: gather_time(merged, index)
    else:
        ready = ready.to(z.device)
        members, horizon, available = ready_instants(torch.as_tensor(owner, device=z.device), len(instants), ready,
                                                     times, lookahead_s)
        last = (available - 1).clamp(min=0)
        t = torch.minimum(t, last.to(t.dtype))
        value = lambda index: instant_value(z, members, ready, horizon, index)  # noqa: E731
    i = t.floor().long()
    j = (i + 1).clamp(max=last) if ready is None else torch.minimum(i + 1, last)
    alpha = (t - i).to(z.dtype).view(*t.shape, *([1] * (z.ndim - 2)))
    out = (1 - alpha) * value(i) + alpha * value(j)
    return out if ready is None else out * (available > 0).to(z.dtype).view(*alpha.shape)


READY_TOLERANCE_S = 1e-6  # a vector ready at exactly t + lookahead is available (float rounding of step times)


def ready_instants(owner: torch.Tensor, count: int, ready: torch.Tensor, times: torch.Tensor,
                   lookahead_s: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For causal smoothing: the vectors of each of ``count`` instants ((count, M), -1 pads), each time's horizon
    ``times + lookahead_s`` (B, S) and how many instants (a prefix, as instants complete in order) have a vector
    ready by it (B, S)."""
    members = instant_members(owner, count)
    first_ready = torch.full((count,), float("inf"), dtype=ready.dtype, device=ready.device)
    first_ready = first_ready.scatter_reduce(0, owner, ready, "amin").cummax(0).values
    horizon = times.double() + lookahead_s + READY_TOLERANCE_S
    return members, horizon, torch.searchsorted(first_ready, horizon.contiguous(), right=True)


def instant_members(owner: torch.Tensor, count: int) -> torch.Tensor:
    """(count, M): the indices of the vectors of each instant, padded with -1."""
    order = torch.argsort(owner, stable=True)
    sizes = torch.bincount(owner, minlength=count)
    slot = torch.arange(len(owner), device=owner.device) - (torch.cumsum(sizes, 0) - sizes)[owner[order]]
    members = torch.full((count, int(sizes.max())), -1, dtype=torch.long, device=owner.device)
    members[owner[order], slot] = order
    return members


def instant_value(z: torch.Tensor, members: torch.Tensor, ready: torch.Tensor, horizon: torch.Tensor,
                  instant: torch.Tensor) -> torch.Tensor:
    """The mean of instant ``instant[b, s]``'s vectors that are ready by ``horizon[b, s]`` (zero when none is)."""
    index = members[instant]  # (B, S, M)
    use = (index >= 0) & (ready[index.clamp(min=0)] <= horizon[..., None])
    b, s, m = index.shape
    vectors = gather_time(z, index.clamp(min=0).flatten(1)).unflatten(1, (s, m))  # (B, S, M, ...)
    weight = use.to(z.dtype).view(b, s, m, *([1] * (z.ndim - 2)))
    count = use.sum(-1).clamp(min=1).to(z.dtype).view(b, s, *([1] * (z.ndim - 2)))
    return (vectors * weight).sum(2) / count


def merge_coincident(z: torch.Tensor, rate: StreamRate) -> tuple[torch.Tensor, np.ndarray]:
    """One vector per instant of a segmented stream: the mean of the vectors overlapping segments give it.

    The mean rather than the newer segment's vector: a token near the end of a
    segment summarises mostly earlier frames, and the same instant near the start
    of the next segment mostly later ones. At Synchformer's stride of 8 their mean
    keeps each feature's context centred within 3 frames of its own time, where
    the newer segment alone would centre it up to 7 frames (0.28 s) later.
    Returns (B, U, ...) and the U instants in seconds.
    """
    instants, owner = rate.instants(z.shape[1])
    index = torch.as_tensor(owner, device=z.device)
    counts = torch.bincount(index, minlength=len(instants)).to(z.dtype)
    summed = z.new_zeros(z.shape[0], len(instants), *z.shape[2:]).index_add(1, index, z)
    return summed / counts.view(1, -1, *([1] * (z.ndim - 2))), instants


def stream_position(times: torch.Tensor, instants: torch.Tensor) -> torch.Tensor:
    """Fractional index of each time among ascending ``instants``: linear between neighbours, clamped at the ends."""
    if len(instants) == 1:
        return torch.zeros_like(times, dtype=torch.float64)
    t = times.double()
    i = (torch.searchsorted(instants, t, right=True) - 1).clamp(0, len(instants) - 2)
    left, right = instants[i], instants[i + 1]
    return i + ((t - left) / (right - left)).clamp(0, 1)


def gather_time(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``z[b, index[b, s]]`` for (B, T, ...) ``z`` and (B, S) ``index``."""
    return z[torch.arange(z.shape[0], device=z.device)[:, None], index]


class FlowEmbedding(nn.Module):
    """Eq. 5: a CNN (3x3 convolutions with ReLU, then adaptive average pooling) per flow field -> 256-d."""

    def __init__(self, channels: int = 32, out_dim: int = 256):
        super().__init__()
        if out_dim % 16:
            raise ValueError(f"flow_dim must be a multiple of 16 (channels pooled to 4x4), got {out_dim}")
        self.net = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, out_dim // 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, T, 2, h, w) -> (B, T, out_dim)."""
        b, t = flow.shape[:2]
        return self.net(flow.flatten(0, 1)).reshape(b, t, -1)


POS_EMBEDDINGS = ("paper", "official")


class JointVisualEmbedding(nn.Module):
    """Face and motion features -> one sequence per adapted layer at the model width.

    ``w_e`` is one matrix shared by all adapted layers (the paper's equation) or
    one per layer (the official code). The learnable positional embedding is
    ``z_pos`` in the (d1 + d2) space before ``W_e`` (``pos_embedding="paper"``),
    or one (steps, model_dim) table per layer added after ``W_e`` with standard
    normal initialisation (``"official"``).
    """

    def __init__(self, cfg: VisualConfig, feature_dims: dict[str, int], model_dim: int, n_layers: int,
                 max_steps: int, per_layer_we: bool = True, pos_embedding: str = "paper"):
        super().__init__()
        if pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"pos_embedding must be one of {POS_EMBEDDINGS}, got {pos_embedding!r}")
        self.cfg = cfg
        self.n_layers = n_layers
        self.max_steps = max_steps
        self.pos_embedding = pos_embedding
        self.w_f = nn.Linear(feature_dims["marlin"], cfg.d1, bias=False) if cfg.face else None
        self.face_missing = nn.Parameter(torch.zeros(cfg.d1)) if cfg.face else None
        self.flow_cnn = FlowEmbedding(cfg.flow_channels, cfg.flow_dim) if cfg.motion == "raft" else None
        motion_in = cfg.flow_dim if cfg.motion == "raft" else feature_dims.get(cfg.motion or "", 0)
        self.w_m = nn.Linear(motion_in, cfg.d2, bias=False) if cfg.motion else None
        if pos_embedding == "paper":
            self.z_pos = nn.Parameter(torch.randn(max_steps, cfg.width) * 0.02)
        else:
            self.layer_pos = nn.Parameter(torch.randn(n_layers, max_steps, model_dim))
        self.w_e = nn.ModuleList(nn.Linear(cfg.width, model_dim, bias=False) for _ in range(n_layers if per_layer_we else 1))

    def forward(self, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate], times: torch.Tensor,
                ready: dict[str, torch.Tensor] | None = None, lookahead_s: float = 0.0) -> list[torch.Tensor]:
        """Features (B, T_x, ...) per stream -> ``n_layers`` tensors (B, S, model_dim) at ``times`` (B, S) seconds.

        With ``ready`` (each stream's vector ready times), each time reads only what is ready by it plus
        ``lookahead_s`` (causal :func:`temporal_smoothing`); a face stream with nothing ready yet counts as missing.
        """
        def smooth(x: torch.Tensor, name: str, label: str) -> torch.Tensor:
            return temporal_smoothing(x, rates[name], times, label, None if ready is None else ready[name], lookahead_s)

        steps = times.shape[-1]
        if steps > self.max_steps:
            raise ValueError(f"{steps} steps exceed the embedding's max_steps {self.max_steps}")
        parts = []
        if self.w_f is not None:
            face = self.w_f(smooth(feats["marlin"], "marlin", "marlin"))
            mask = feats.get("marlin_mask")
            mask = torch.ones(feats["marlin"].shape[:2], device=face.device) if mask is None else mask.float()
            present = smooth(mask, "marlin", "marlin_mask") >= 0.5
            face = torch.where(present[..., None], face, self.face_missing.to(face.dtype))
            parts.append(face)
        if self.w_m is not None:
            name = self.cfg.motion
            motion = feats[name]
            if self.flow_cnn is not None:
                motion = self.flow_cnn(motion)
            parts.append(self.w_m(smooth(motion, name, name)))
        joint = torch.cat(parts, dim=-1)
        if self.pos_embedding == "paper":
            joint = joint + self.z_pos[:steps]
        z = [w_e(joint) for w_e in self.w_e] if len(self.w_e) > 1 else [self.w_e[0](joint)] * self.n_layers
        if self.pos_embedding == "official":
            z = [z_l + pos[:steps] for z_l, pos in zip(z, self.layer_pos, strict=True)]
        return z
