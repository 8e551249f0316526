"""Our re-implementations against the originals, on shared random weights.

PaSST runs against ``hear21passt`` and the LanguageBind spatial tower against
transformers' CLIP, both installed. torchvggish and Synchformer are not on
PyPI: their outputs are golden fixtures written by ``tests/golden.py`` (see
``tests/data/README.md``). Tolerance: max |ours - original| <= 1e-5 * max |original|.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from golden import MOTIONFORMER_FIXTURE, MOTIONFORMER_SIZES, VGGISH_FIXTURE, motionformer_input, seeded_state, shapes_of

RTOL = 1e-5


def assert_relative(actual, expected, rtol: float = RTOL) -> None:
    actual, expected = (t.detach().double() if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t)).double()
                        for t in (actual, expected))
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"max |Δ| {err:.3g} exceeds {rtol:g} × max |expected| {scale:.3g}"


# ---- PaSST against hear21passt ----------------------------------------------------------------
@pytest.fixture(scope="module")
def hear21passt_models():
    from hear21passt.models import passt as original
    from hear21passt.models import preprocess

    original.first_RUN = False  # its debug prints
    torch.manual_seed(0)
    # the released model's layout at a small width: two heads of 64, as every released PaSST
    net = original.PaSST(img_size=(128, 998), patch_size=16, stride=10, embed_dim=128, depth=2, num_heads=2,
                         mlp_ratio=2.0, distilled=True).eval()
    mel = preprocess.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48,
                                    timem=192, htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10,
                                    fmax_aug_range=2000).eval()  # hear21passt's get_basic_model settings
    return mel, net


def test_passt_mel_front_end_matches_hear21passt(hear21passt_models):
    from expotion.evaluation.passt import MelFrontEnd

    mel, _ = hear21passt_models
    wav = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 32000)).astype(np.float32))
    with torch.no_grad():
        assert_relative(MelFrontEnd()(wav)[:, 0], mel(wav))


def test_passt_logits_match_hear21passt(hear21passt_models):
    from expotion.evaluation.passt import PaSST, Tagger

    mel, net = hear21passt_models
    ours = Tagger(PaSST.from_state_dict(net.state_dict()))
    wav = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 48000)).astype(np.float32))
    with torch.no_grad():
        expected, _ = net(mel(wav)[:, None])
        assert_relative(ours(wav), expected)


# ---- VGGish against torchvggish (golden fixture) ------------------------------------------------
def test_vggish_log_mel_matches_torchvggish():
    from expotion.evaluation.vggish import log_mel_examples

    golden = np.load(VGGISH_FIXTURE)
    assert_relative(log_mel_examples(golden["waveform"]), golden["log_mel"])


def test_vggish_embeddings_match_torchvggish():
    from expotion.evaluation.vggish import VGGish

    golden = np.load(VGGISH_FIXTURE)
    net = VGGish().eval()
    net.load_state_dict(seeded_state(shapes_of(net), int(golden["seed"])), strict=True)
    with torch.no_grad():
        assert_relative(net(torch.from_numpy(golden["log_mel"])[:, None]), golden["embeddings"])


# ---- MotionFormer against Synchformer (golden fixture) ------------------------------------------
def test_motionformer_matches_synchformer():
    from expotion.extractors.motionformer import MotionFormer, MotionFormerConfig

    golden = np.load(MOTIONFORMER_FIXTURE)
    net = MotionFormer(MotionFormerConfig(**MOTIONFORMER_SIZES)).eval()
    assert sorted(net.state_dict()) == list(golden["keys"])  # the original's keys, so its checkpoints load strictly
    net.load_state_dict(seeded_state(shapes_of(net), int(golden["seed"])), strict=True)
    with torch.no_grad():
        assert_relative(net(motionformer_input(int(golden["input_seed"]))), golden["features"])


# ---- LanguageBind's spatial tower against transformers' CLIP ------------------------------------
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_languagebind_spatial_tower_matches_clip(act):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from expotion.evaluation.languagebind import TowerConfig, load_tower

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                 patch_size=14, projection_dim=32, hidden_act=act)
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes, attn_implementation="eager")).eval()
    tower = load_tower(TowerConfig(**sizes), clip.state_dict(), "CLIP")
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_relative(tower(pixels[:, None]), clip(pixel_values=pixels).image_embeds)


# ---- the paper's Eq. 10-12 ----------------------------------------------------------------------
def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v, written out with einsum; (B, H, T, d) in and out."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True], ids=["paper", "causal-option"])
def test_gated_prefix_attention_is_eq_10_to_12(tmp_path, causal):
    """Each adapted layer's self-attention result is W_o (S_l + g_l S'_l) + b_o with S'_l = Attn(Q_l + Q^p_l, K^p_l, V^p_l).

    Checked on what the layer hands to its cross-attention (H_l plus the attention result), at non-zero
    gates, against a naive einsum of the equations on the frozen weights. With the causal option, step t's
    query reads the prefix at positions <= t only.
    """
    from expotion.core.rates import DEFAULT_RATES
    from expotion.methods.expotion.adaptor import AdaptorConfig, CausalConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.musicgen.loading import TinyMusicGenConfig, load_musicgen, save_tiny

    lm = load_musicgen(str(save_tiny(tmp_path / "mg", seed=2, cfg=TinyMusicGenConfig(num_layers=3)))).lm
    adaptor = ConditionAdaptor(lm, AdaptorConfig(n_adapted=2, visual=VisualConfig(face=False, motion="synchformer"),
                                                 max_seconds=1.0, causal=CausalConfig(0.1) if causal else None),
                               {"synchformer": 20}, 50.0)
    with torch.no_grad():
        adaptor.gates.copy_(torch.tensor([0.7, -1.3]))
    g = torch.Generator().manual_seed(3)
    feats = {"synchformer": torch.randn(2, DEFAULT_RATES.synchformer_tokens(1.0), 20, generator=g)}
    codes = torch.randint(0, lm.card, (2, lm.n_q, 50), generator=g)
    steps = lm.pattern_provider.get_pattern(50).num_sequence_steps
    layer_in, before_cross = {}, {}
    hooks = []
    for i, layer in enumerate(adaptor.adapted_layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: layer_in.__setitem__(i, a[0])))
        hooks.append(layer.norm_cross.register_forward_pre_hook(lambda m, a, i=i: before_cross.__setitem__(i, a[0])))
    from audiocraft.modules.conditioners import ConditioningAttributes

    attrs = [ConditioningAttributes(text={"description": c}) for c in ("calm", "loud")]
    cond = lm.condition_provider(lm.condition_provider.tokenize(attrs))
    with torch.no_grad():
        prefix = adaptor.prefix(feats, {"synchformer": DEFAULT_RATES.synchformer}, steps)
        with adaptor.attached(prefix):
            lm.compute_predictions(codes, [], condition_tensors=cond)
    for h in hooks:
        h.remove()
    for i, layer in enumerate(adaptor.adapted_layers):
        sa = layer.self_attn
        w_in, b_in, out = (sa.in_proj_weight, sa.in_proj_bias, sa.out_proj) if sa.custom else \
            (sa.mha.in_proj_weight, sa.mha.in_proj_bias, sa.mha.out_proj)
        heads = sa.num_heads
        x = layer_in[i].double()
        q, k, v = torch.nn.functional.linear(layer.norm1(layer_in[i]).double(), w_in.double(),
                                             None if b_in is None else b_in.double()).chunk(3, dim=-1)
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        qp, kp, vp = (t.double() for t in prefix[i])
        s = naive_attention(split(q), split(k), split(v), causal=True)                     # Eq. 10
        t = q.shape[1]  # the prefix holds every step of the pattern; step t's query meets the prefix's step t
        s_prime = naive_attention(split(q) + qp[:, :, :t], kp, vp, causal=causal)           # Eq. 11
        fused = (s + adaptor.gates[i].double() * s_prime).transpose(1, 2).flatten(2)        # Eq. 12
        b_out = None if out.bias is None else out.bias.double()
        expected = x + torch.nn.functional.linear(fused, out.weight.double(), b_out)
        assert_relative(before_cross[i], expected)


# ---- the training loss --------------------------------------------------------------------------
def test_codebook_cross_entropy_equals_musicgen_solver():
    from audiocraft.solvers.musicgen import MusicGenSolver

    from expotion.musicgen.objective import codebook_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 20, 32, generator=g)
    codes = torch.randint(0, 32, (3, 4, 20), generator=g)
    mask = torch.rand(3, 4, 20, generator=g) > 0.3
    ours, per_codebook, _ = codebook_cross_entropy(logits, codes, mask)
    theirs, theirs_per_codebook = MusicGenSolver._compute_cross_entropy(None, logits, codes, mask)
    assert torch.equal(ours, theirs)
    assert torch.equal(per_codebook, torch.stack(theirs_per_codebook))
