"""The condition adaptor of §3.2, attached to a frozen audiocraft MusicGen at run time.

The condition prefix starts as a learnable H_0 at layer N-L+1 and runs through
the frozen self-attention and feed-forward blocks of the last L layers. It
skips cross-attention and, as the paper writes, uses no causal mask (Eq. 8-9,
:meth:`ConditionAdaptor.prefix`; ``prefix_causal`` gives the official code's mask).
The ``causal`` option (:class:`CausalConfig`) makes step t depend only on video up to
t + lookahead: see :meth:`ConditionAdaptor.prefix` for the rule.
In each adapted layer, a forward pre-hook on the self-attention's frozen output
projection adds ``g_l * Attn(Q + Q_p, K_p, V_p)`` to the standard attention
output before that projection, so ``W_o`` maps both at once (Eq. 10-12,
:func:`gated_prefix_attention`). The gates start at zero, so a fresh adaptor
leaves MusicGen's output unchanged: it adds exact zeros before a linear layer.

No audiocraft file is copied or modified: the adaptor only reads the frozen
weights of ``lm.transformer.layers`` and registers hooks, removed on exit of
:meth:`ConditionAdaptor.attached`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from expotion.core.devices import module_precision
from expotion.core.layers import merge_heads, split_heads
from expotion.core.rates import StreamRate
from expotion.extractors.streams import feature_ready_times
from expotion.methods.expotion.embedding import JointVisualEmbedding, VisualConfig

PrefixState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # Q_p, K_p, V_p as (B, heads, S, head_dim)


@dataclass(frozen=True)
class CausalConfig:
    """Condition each step only on video up to its own time plus ``lookahead_s`` seconds, so it can run live."""

    lookahead_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.lookahead_s >= 0:
            raise ValueError(f"causal lookahead_s must be >= 0 seconds, got {self.lookahead_s}")


@dataclass(frozen=True)
class AdaptorConfig:
    """Size and inputs of the adaptor, and where the paper and the official code differ.

    - ``per_layer_we`` (default True) gives each adapted layer its own W_e, as the
      official implementation does; False shares one W_e, as the paper's equation reads.
    - ``prefix_causal`` (default False, the paper's "no causal mask") applies a causal
      mask in the prefix self-attention, as the official code does.
    - ``pos_embedding``: ``"paper"`` (default) is z_pos in the d1 + d2 space before W_e and
      H_0 initialised with std 0.02; ``"official"`` is one model-width table per adapted
      layer after W_e and H_0 initialised with std 1, like the official (L + 1, steps, d) table.
    - ``causal`` (default None: every step sees the whole window) conditions step t only on
      video frames up to t + ``lookahead_s``, for a model that can follow a live camera.
    """

    n_adapted: int = 12
    visual: VisualConfig = field(default_factory=VisualConfig)
    per_layer_we: bool = True
    max_seconds: float = 10.0
    prefix_causal: bool = False
    pos_embedding: str = "paper"
    causal: CausalConfig | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AdaptorConfig:
        causal = d.get("causal")  # absent from exports written before the option existed
        causal = CausalConfig(**causal) if isinstance(causal, dict) else causal
        return cls(**{**d, "visual": VisualConfig(**d["visual"]), "causal": causal})


def attention_weights(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(W_in, b_in, W_out, b_out) of an audiocraft StreamingMultiheadAttention."""
    return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias


def check_attention(attn: nn.Module) -> None:
    """The adaptor hooks audiocraft's own attention implementation, as every released MusicGen uses it."""
    if not attn.custom:
        raise ValueError("the adaptor needs audiocraft's own attention (custom or memory_efficient = True, "
                         "as in every released MusicGen)")
    if getattr(attn, "kv_repeat", 1) != 1:
        raise ValueError("the adaptor needs kv_repeat == 1 (as in every released MusicGen)")


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
class GatedPrefix:
    """One adapted layer's prefix, its gate folded into the values, and the frozen query projection.

    Built when the prefix is attached: ``g_l Attn(Q, K_p, V_p) = Attn(Q, K_p, g_l V_p)``,
    so each decoding step pays for one query projection and one attention, and nothing else.
    """

    w_q: torch.Tensor
    b_q: torch.Tensor | None
    heads: int
    qp: torch.Tensor
    kp: torch.Tensor
    gated_vp: torch.Tensor
    causal: bool = False  # the query at position p reads prefix positions <= p only

    @classmethod
    def of(cls, attn: nn.Module, prefix: PrefixState, gate: torch.Tensor, causal: bool = False) -> GatedPrefix:
        w_in, b_in, _, _ = attention_weights(attn)
        dim = w_in.shape[1]
        qp, kp, vp = prefix
        return cls(w_in[:dim], None if b_in is None else b_in[:dim], attn.num_heads, qp, kp, gate * vp, causal)

    def repeat(self, reps: int) -> GatedPrefix:
        """The same prefix for a batch stacked ``reps`` times (classifier-free guidance)."""
        return replace(self, qp=self.qp.repeat(reps, 1, 1, 1), kp=self.kp.repeat(reps, 1, 1, 1),
                       gated_vp=self.gated_vp.repeat(reps, 1, 1, 1))


def gated_prefix_attention(query: torch.Tensor, prefix: GatedPrefix, start: int) -> torch.Tensor:
    """Eq. 11-12 (the gated term) before the output projection: ``g_l * Attn(Q_l + Q^p_l, K^p_l, V^p_l)``.

    ``query`` is the normalised hidden state the layer's self-attention received,
    at positions ``start ...``; ``prefix`` matches its batch (see :meth:`ConditionAdaptor.prefix_for`).
    The result, heads merged, is added to the layer's attention output S_l before its
    frozen W_o, which is linear: ``W_o (S_l + g_l S'_l) = W_o S_l + g_l W_o S'_l``.
    """
    q = split_heads(F.linear(query, prefix.w_q, prefix.b_q), prefix.heads)
    mask = prefix_visibility(start, q.shape[2], prefix.kp.shape[2], q.device) if prefix.causal else None
    out = F.scaled_dot_product_attention(q + prefix_queries(prefix.qp, start, q.shape[2]), prefix.kp, prefix.gated_vp,
                                         attn_mask=mask)
    return merge_heads(out)


def prefix_visibility(start: int, length: int, prefix_len: int, device: torch.device) -> torch.Tensor:
    """(length, prefix_len): True where the query at position ``start + i`` may read prefix position ``j``.

    Position j of a causal prefix carries the video known by step j's time plus the lookahead, so step
    t reads positions j <= t: nothing past t + lookahead.
    """
    queries = torch.arange(start, start + length, device=device)
    return torch.arange(prefix_len, device=device)[None, :] <= queries[:, None]


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
        for layer in self.adapted_layers:
            check_attention(layer.self_attn)
        self.max_steps = lm.pattern_provider.get_pattern(int(round(cfg.max_seconds * codes_fps))).num_sequence_steps
        h0_std = 0.02 if cfg.pos_embedding == "paper" else 1.0
        self.h0 = nn.Parameter(torch.randn(self.max_steps, lm.dim) * h0_std)
        self.gates = nn.Parameter(torch.zeros(cfg.n_adapted))
        self.embed = JointVisualEmbedding(cfg.visual, feature_dims, lm.dim, cfg.n_adapted, self.max_steps,
                                          per_layer_we=cfg.per_layer_we, pos_embedding=cfg.pos_embedding)
        self._prefix: list[GatedPrefix] | None = None
        self._repeated: dict[tuple[int, int], GatedPrefix] = {}
        self._queries: dict[int, torch.Tensor] = {}
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

    @property
    def lookahead_s(self) -> float | None:
        """Seconds of video after step t's time that may condition step t; None: the whole window (not causal)."""
        return None if self.cfg.causal is None else self.cfg.causal.lookahead_s

    def prefix(self, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate], steps: int,
               start_s: torch.Tensor | None = None) -> list[PrefixState]:
        """Eq. 8-9: the condition prefix through the frozen self-attention and FF of the last L layers.

        ``start_s`` (B,) places step 0 inside the feature streams (a crop's start).

        Causal (``cfg.causal``): MusicGen's delay pattern has sequence step s predict codebook k of
        EnCodec frame s - k, so step s is timed by frame s (its first codebook; the others are of
        earlier frames). Prefix position s smooths only features ready by that time plus the
        lookahead (each timed by the last frame it reads), the prefix self-attention is causal, and
        the main sequence's step t reads prefix positions <= t (:func:`prefix_visibility`).
        """
        batch = next(iter(feats.values())).shape[0]
        start_s = torch.zeros(batch, device=self.h0.device) if start_s is None else start_s
        times = self.step_times(steps, start_s)
        if self.cfg.causal is None:
            z = self.embed(feats, rates, times)
        else:
            ready = {name: feature_ready_times(name, feats[name].shape[1], stored=rates[name])
                     for name in self.cfg.visual.streams}
            z = self.embed(feats, rates, times, ready, self.cfg.causal.lookahead_s)
        h = self.h0[:steps].unsqueeze(0).expand(batch, -1, -1)
        states = []
        for i, layer in enumerate(self.adapted_layers):
            q, k, v = qkv_projection(layer.norm1(h) + z[i], layer.self_attn)
            states.append((q, k, v))
            if i + 1 == len(z):
                break
            _, _, w_out, b_out = attention_weights(layer.self_attn)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal_prefix)
            h = h + layer.layer_scale_1(F.linear(merge_heads(attended), w_out, b_out))
            h = h + layer.layer_scale_2(layer._ff_block(layer.norm2(h)))
        return states

    @property
    def causal_prefix(self) -> bool:
        """A causal mask in the prefix self-attention: the official code's, or the causal option's."""
        return self.cfg.prefix_causal or self.cfg.causal is not None

    reads_text = True  # the prompt always conditions the music, through MusicGen's own cross-attention

    @property
    def window_s(self) -> float:
        return self.cfg.max_seconds

    def generation_context(self, musicgen, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate],
                           start_s: float, max_gen_len: int, compute_dtype: torch.dtype):
        """The prefix for one ``lm.generate`` call of ``max_gen_len`` frames from ``start_s``, attached for its length."""
        steps = self.lm.pattern_provider.get_pattern(max_gen_len).num_sequence_steps
        return self.attached(visual_prefix(self, feats, rates, steps, start_s, compute_dtype))

    @contextlib.contextmanager
    def attached(self, prefix: list[PrefixState]) -> Iterator[None]:
        """Run MusicGen with the prefix joined to its last L self-attentions (hooks removed on exit).

        Per adapted layer, a pre-hook on the self-attention keeps its (normalised) input
        and a pre-hook on its output projection adds the gated prefix attention to what
        that projection receives.
        """
        if len(prefix) != self.cfg.n_adapted:
            raise ValueError(f"prefix has {len(prefix)} layers, the adaptor adapts {self.cfg.n_adapted}")
        handles = [self.lm.transformer.register_forward_pre_hook(self._record_offset)]
        for i, layer in enumerate(self.adapted_layers):
            handles.append(layer.self_attn.register_forward_pre_hook(self._query_hook(i), with_kwargs=True))
            handles.append(layer.self_attn.out_proj.register_forward_pre_hook(self._projection_hook(i)))
        self._prefix = [GatedPrefix.of(layer.self_attn, state, self.gates[i], self.cfg.causal is not None)
                        for i, (layer, state) in enumerate(zip(self.adapted_layers, prefix, strict=True))]
        self._repeated, self._queries = {}, {}
        try:
            yield
        finally:
            self._prefix, self._repeated, self._queries = None, {}, {}
            for handle in handles:
                handle.remove()

    def _record_offset(self, transformer: nn.Module, args: tuple) -> None:
        """Position of the first query in this forward pass (non-zero while streaming generation)."""
        offsets = transformer._streaming_state.get("offsets")
        self._offset = int(offsets[0]) if offsets is not None else 0

    def prefix_for(self, index: int, batch: int) -> GatedPrefix:
        """Layer ``index``'s prefix for a batch of ``batch``: classifier-free guidance stacks the
        conditional and unconditional batches, and both branches see the same prefix (repeated once per window)."""
        prefix = self._prefix[index]
        reps = batch // prefix.qp.shape[0]
        if reps == 1:
            return prefix
        if (index, reps) not in self._repeated:
            self._repeated[(index, reps)] = prefix.repeat(reps)
        return self._repeated[(index, reps)]

    def _query_hook(self, index: int):
        def hook(attn: nn.Module, args: tuple, kwargs: dict) -> None:
            self._queries[index] = args[0] if args else kwargs["query"]

        return hook

    def _projection_hook(self, index: int):
        def hook(out_proj: nn.Module, args: tuple) -> tuple:
            query = self._queries.pop(index)
            prefix = self.prefix_for(index, query.shape[0])
            return (args[0] + gated_prefix_attention(query, prefix, self._offset),)

        return hook


def visual_prefix(adaptor: ConditionAdaptor, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate],
                  steps: int, start_s: float, compute_dtype: torch.dtype) -> list[PrefixState]:
    """The adaptor's prefix for a window starting at ``start_s``, computed at the adaptor's precision.

    A reduced-precision adaptor (e.g. bfloat16) runs under autocast, so it can
    read MusicGen's float32 layers; the prefix is then cast to MusicGen's dtype.
    """
    batch = next(iter(feats.values())).shape[0]
    with module_precision(adaptor):
        prefix = adaptor.prefix(feats, rates, steps, torch.full((batch,), start_s, device=adaptor.h0.device))
    return [tuple(t.to(compute_dtype) for t in layer) for layer in prefix]
