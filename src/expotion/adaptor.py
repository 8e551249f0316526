"""The condition adaptor of §3.2, attached to a frozen audiocraft MusicGen at run time.

The condition prefix starts as a learnable H_0 at layer N-L+1 and runs through
the frozen self-attention and feed-forward blocks of the last L layers. It
skips cross-attention and uses no causal mask (Eq. 8-9, :meth:`ConditionAdaptor.prefix`).
In each adapted layer, a forward hook on audiocraft's own self-attention module
adds ``g_l * Attn(Q + Q_p, K_p, V_p)``, projected by the layer's frozen output
projection, to the standard self-attention output (Eq. 10-12, :func:`gated_prefix_attention`).
The gates start at zero, so a fresh adaptor leaves MusicGen's output unchanged.

No audiocraft file is copied or modified: the adaptor only reads the frozen
weights of ``lm.transformer.layers`` and registers hooks, removed on exit of
:meth:`ConditionAdaptor.attached`.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embedding import JointVisualEmbedding, VisualConfig
from .layers import merge_heads, split_heads
from .rates import StreamRate

PrefixState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # Q_p, K_p, V_p as (B, heads, S, head_dim)


@dataclass(frozen=True)
class AdaptorConfig:
    """Size and inputs of the adaptor.

    ``per_layer_we`` (default True) gives each adapted layer its own W_e, as the
    official implementation does; False shares one W_e, as the paper's equation reads.
    """

    n_adapted: int = 12
    visual: VisualConfig = field(default_factory=VisualConfig)
    per_layer_we: bool = True
    max_seconds: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AdaptorConfig:
        return cls(**{**d, "visual": VisualConfig(**d["visual"])})


def attention_weights(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(W_in, b_in, W_out, b_out) of an audiocraft StreamingMultiheadAttention, either implementation."""
    if getattr(attn, "kv_repeat", 1) != 1:
        raise ValueError("the adaptor needs kv_repeat == 1 (as in every released MusicGen)")
    if attn.custom:
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias
    return attn.mha.in_proj_weight, attn.mha.in_proj_bias, attn.mha.out_proj.weight, attn.mha.out_proj.bias


def qkv_projection(x: torch.Tensor, attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen QKV-projector of a layer, split into heads."""
    w_in, b_in, _, _ = attention_weights(attn)
    q, k, v = F.linear(x, w_in, b_in).chunk(3, dim=-1)
    return tuple(split_heads(t, attn.num_heads) for t in (q, k, v))


def prefix_queries(qp: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Q_p at positions ``start .. start+length-1``; positions past the prefix reuse its last entry."""
    if start + length <= qp.shape[2]:
        return qp[:, :, start : start + length]
    index = torch.arange(start, start + length, device=qp.device).clamp(max=qp.shape[2] - 1)
    return qp[:, :, index]


@dataclass(frozen=True)
class GatedProjections:
    """One adapted layer's frozen query projection and its gate folded into the output projection.

    Built when the prefix is attached, so each decoding step pays for two
    matrix products and one attention, and nothing else.
    """

    w_q: torch.Tensor
    b_q: torch.Tensor | None
    w_o: torch.Tensor  # g_l * W_o
    heads: int

    @classmethod
    def of(cls, attn: nn.Module, gate: torch.Tensor) -> GatedProjections:
        w_in, b_in, w_out, _ = attention_weights(attn)
        dim = w_in.shape[1]
        return cls(w_in[:dim], None if b_in is None else b_in[:dim], gate * w_out, attn.num_heads)


def gated_prefix_attention(query: torch.Tensor, proj: GatedProjections, prefix: PrefixState, start: int) -> torch.Tensor:
    """Eq. 11-12 (the gated term): ``g_l * W_o Attn(Q_l + Q^p_l, K^p_l, V^p_l)``.

    ``query`` is the normalised hidden state the layer's self-attention received,
    at positions ``start ...``; ``prefix`` matches its batch (see :meth:`ConditionAdaptor.prefix_for`).
    """
    qp, kp, vp = prefix
    q = split_heads(F.linear(query, proj.w_q, proj.b_q), proj.heads)
    out = F.scaled_dot_product_attention(q + prefix_queries(qp, start, q.shape[2]), kp, vp)
    return F.linear(merge_heads(out), proj.w_o)


class ConditionAdaptor(nn.Module):
    """H_0, the joint visual embedding and the zero-initialised gates; MusicGen stays outside its state."""

    def __init__(self, lm: nn.Module, cfg: AdaptorConfig, feature_dims: dict[str, int], codes_fps: float):
        super().__init__()
        layers = lm.transformer.layers
        if not 1 <= cfg.n_adapted <= len(layers):
            raise ValueError(f"n_adapted must be in 1..{len(layers)}, got {cfg.n_adapted}")
        if not layers[0].norm_first:
            raise ValueError("the adaptor follows MusicGen's pre-norm layers (norm_first=True)")
        self.cfg = cfg
        self.codes_fps = codes_fps
        self.frozen = [lm]  # a list keeps MusicGen out of this module's parameters and state dict
        self.start = len(layers) - cfg.n_adapted
        self.max_steps = lm.pattern_provider.get_pattern(int(round(cfg.max_seconds * codes_fps))).num_sequence_steps
        self.h0 = nn.Parameter(torch.randn(self.max_steps, lm.dim) * 0.02)
        self.gates = nn.Parameter(torch.zeros(cfg.n_adapted))
        self.embed = JointVisualEmbedding(cfg.visual, feature_dims, lm.dim, cfg.n_adapted, self.max_steps,
                                          per_layer_we=cfg.per_layer_we)
        self._prefix: list[PrefixState] | None = None
        self._repeated: dict[tuple[int, int], PrefixState] = {}
        self._offset = 0

    @property
    def lm(self) -> nn.Module:
        return self.frozen[0]

    @property
    def adapted_layers(self) -> list[nn.Module]:
        return list(self.lm.transformer.layers[self.start :])

    def step_times(self, steps: int, start_s: torch.Tensor) -> torch.Tensor:
        """Seconds of each LM step for clips starting at ``start_s`` (B,): step s is EnCodec frame s."""
        return start_s.float()[:, None] + torch.arange(steps, device=start_s.device, dtype=torch.float32) / self.codes_fps

    def prefix(self, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate], steps: int,
               start_s: torch.Tensor | None = None) -> list[PrefixState]:
        """Eq. 8-9: the condition prefix through the frozen self-attention and FF of the last L layers.

        ``start_s`` (B,) places step 0 inside the feature streams (a crop's start).
        """
        batch = next(iter(feats.values())).shape[0]
        start_s = torch.zeros(batch, device=self.h0.device) if start_s is None else start_s
        z = self.embed(feats, rates, self.step_times(steps, start_s))
        h = self.h0[:steps].unsqueeze(0).expand(batch, -1, -1)
        states = []
        for i, layer in enumerate(self.adapted_layers):
            q, k, v = qkv_projection(layer.norm1(h) + z[i], layer.self_attn)
            states.append((q, k, v))
            if i + 1 == len(z):
                break
            _, _, w_out, b_out = attention_weights(layer.self_attn)
            h = h + layer.layer_scale_1(F.linear(merge_heads(F.scaled_dot_product_attention(q, k, v)), w_out, b_out))
            h = h + layer.layer_scale_2(layer._ff_block(layer.norm2(h)))
        return states

    @contextlib.contextmanager
    def attached(self, prefix: list[PrefixState]) -> Iterator[None]:
        """Run MusicGen with the prefix joined to its last L self-attentions (hooks removed on exit)."""
        if len(prefix) != self.cfg.n_adapted:
            raise ValueError(f"prefix has {len(prefix)} layers, the adaptor adapts {self.cfg.n_adapted}")
        handles = [self.lm.transformer.register_forward_pre_hook(self._record_offset)]
        for i, layer in enumerate(self.adapted_layers):
            proj = GatedProjections.of(layer.self_attn, self.gates[i])
            handles.append(layer.self_attn.register_forward_hook(self._attention_hook(i, proj), with_kwargs=True))
        self._prefix, self._repeated = prefix, {}
        try:
            yield
        finally:
            self._prefix, self._repeated = None, {}
            for handle in handles:
                handle.remove()

    def _record_offset(self, transformer: nn.Module, args: tuple) -> None:
        """Position of the first query in this forward pass (non-zero while streaming generation)."""
        offsets = transformer._streaming_state.get("offsets")
        self._offset = int(offsets[0]) if offsets is not None else 0

    def prefix_for(self, index: int, batch: int) -> PrefixState:
        """Layer ``index``'s prefix for a batch of ``batch``: classifier-free guidance stacks the
        conditional and unconditional batches, and both branches see the same prefix (repeated once per window)."""
        prefix = self._prefix[index]
        reps = batch // prefix[0].shape[0]
        if reps == 1:
            return prefix
        if (index, reps) not in self._repeated:
            self._repeated[(index, reps)] = tuple(t.repeat(reps, 1, 1, 1) for t in prefix)
        return self._repeated[(index, reps)]

    def _attention_hook(self, index: int, proj: GatedProjections):
        def hook(attn: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
            query = args[0] if args else kwargs["query"]
            prefix = self.prefix_for(index, query.shape[0])
            x = output[0] + gated_prefix_attention(query, proj, prefix, self._offset)
            return (x, *output[1:])

        return hook
