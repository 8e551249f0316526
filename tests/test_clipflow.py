"""The CLIP + flow method: its extractors, one module per paper subsection, and the memory path into MusicGen."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from expotion.core.rates import Rates
from expotion.core.weights import MissingWeightsError
from expotion.extractors.clip import load_clip, save_tiny
from expotion.extractors.farneback import FarnebackConfig, farneback_magnitudes, flow_magnitude
from expotion.methods.clipflow.conditioner import (ClipFlowConditioner, ClipFlowConfig, CrossAttentionFusion,
                                                   MemoryProjection, MotionEmbedding, VisualEmbedding, motion_visible)
from expotion.methods.clipflow.memory import condition_dropout, memory_attached, memory_condition, trained_decoder
from expotion.musicgen.loading import load_musicgen

RATES = {"clip": Rates().clip, "farneback": Rates().farneback}
SHAPES = {"clip": (17, 32), "farneback": (32, 48)}  # tiny CLIP tokens x width; small magnitude maps


def small_cfg(**overrides) -> ClipFlowConfig:
    return ClipFlowConfig(**{"visual_layers": 1, "motion_layers": 1, "heads": 2, "patch": 8, "tokens_per_frame": 3,
                             **overrides})


def video_features(batch: int = 2, seconds: float = 10.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random CLIP tokens at 2 fps and magnitude maps at 4 fps for ``seconds`` of video."""
    g = torch.Generator().manual_seed(seed)
    frames, flows = int(seconds * 2), int(seconds * 4) - 1
    return {"clip": torch.randn(batch, frames, *SHAPES["clip"], generator=g),
            "farneback": 3 * torch.rand(batch, flows, *SHAPES["farneback"], generator=g)}


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


# ---- extractors ----------------------------------------------------------------------------------


def test_clip_tower_loads_from_a_hugging_face_directory_and_refuses_a_missing_one(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    path = save_tiny(tmp_path / "clip")
    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    tower = load_clip(path)
    tokens = tower(frames, batch=2)
    assert tokens.shape == (5, tower.tokens, tower.dim) == (5, 17, 32)
    reference = CLIPVisionModel.from_pretrained(path)  # transformers' own model and preprocessing, one batch
    pixels = CLIPImageProcessor.from_pretrained(path)(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(tokens, reference(pixel_values=pixels).last_hidden_state, rtol=0, atol=1e-5)

    (path / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        load_clip(path)
    (path / "preprocessor_config.json").unlink()
    with pytest.raises(MissingWeightsError, match="preprocessor_config.json"):
        load_clip(path)
    with pytest.raises(MissingWeightsError, match="not found"):
        load_clip(tmp_path / "absent")


def textured(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth random texture, uint8 grayscale: trackable everywhere."""
    noise = np.random.default_rng(seed).uniform(0, 255, size).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_farneback_magnitude_equals_a_known_shift(k):
    base = textured((300, 360))
    before, after = base[40:264, 60:284], base[40:264, 60 - k : 284 - k]  # the texture moves k px right
    interior = flow_magnitude(before, after, FarnebackConfig())[32:-32, 32:-32]
    assert abs(float(np.median(interior)) - k) < 0.05 * k
    assert abs(float(interior.mean()) - k) < 0.05 * k

    # the stored maps are in pixels at the 224 px short side: the same source at twice the size (a 2k px shift) gives k
    rgb = np.stack([np.repeat(cv2.resize(f, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)[..., None], 3, -1)
                    for f in (before, after, before)])
    maps = farneback_magnitudes(rgb, FarnebackConfig())
    assert maps.shape == (2, 112, 112) and maps.dtype == np.float32
    assert abs(float(np.median(maps[:, 16:-16, 16:-16])) - k) < 0.05 * k


def test_farneback_refuses_a_single_frame():
    with pytest.raises(ValueError, match="at least 2 frames"):
        farneback_magnitudes(np.zeros((1, 32, 32, 3), np.uint8), FarnebackConfig())


# ---- the conditioner, one module per paper subsection ---------------------------------------------


def test_visual_embedding_pools_each_frame_on_its_cls_token():
    """§3.1: (B, N_v, tokens, D) -> (B, N_v, D); frame i's output depends on frame i's tokens only."""
    module = VisualEmbedding(17, 32, small_cfg()).eval()
    clip = video_features()["clip"]
    v = module(clip)
    assert v.shape == (2, 20, 32)
    changed = clip.clone()
    changed[:, 7] += torch.randn(17, 32)
    diff = (module(changed) - v).abs().amax(dim=(0, 2))
    assert diff[7] > 1e-3 and torch.all(diff[torch.arange(20) != 7] < 1e-6)


def test_motion_embedding_patches_each_map():
    """§3.2: (B, N_m, H, W) -> (B, N_m, D) through non-overlapping patches; maps must split into whole patches."""
    module = MotionEmbedding(SHAPES["farneback"], 32, small_cfg()).eval()
    assert module.patches.kernel_size == module.patches.stride == (8, 8)
    assert module.positions.shape == (4 * 6, 32)
    assert module(video_features()["farneback"]).shape == (2, 39, 32)
    with pytest.raises(ValueError, match="patches"):
        MotionEmbedding((30, 48), 32, small_cfg())


def test_fusion_shape_and_its_use_of_motion():
    """§3.3: o (B, N_v, D) from visual queries over motion keys/values.

    Attention alone is blind to order (the motion's time comes from the conditioner's time embeddings).
    """
    fusion = CrossAttentionFusion(32, small_cfg()).eval()
    v, f = torch.randn(2, 20, 32), torch.randn(2, 39, 32)
    o = fusion(v, f)
    assert o.shape == v.shape
    torch.testing.assert_close(fusion(v, f.flip(1)), o)
    assert not torch.allclose(o, fusion(v, torch.randn_like(f)), atol=1e-3)
    with pytest.raises(ValueError, match="heads"):
        CrossAttentionFusion(30, small_cfg(heads=4))


def test_memory_projection_gives_p_tokens_per_frame_in_frame_order():
    """§3.4: (B, N_v, D) -> Z (B, N_v * P, M); frame i owns tokens i*P .. i*P + P - 1."""
    proj = MemoryProjection(32, 64, 3).eval()
    o = torch.randn(2, 20, 32)
    z = proj(o)
    assert z.shape == (2, 60, 64)
    changed = o.clone()
    changed[:, 5] += torch.randn(32)
    diff = (proj(changed) - z).abs().amax(dim=(0, 2))
    assert torch.all(diff[15:18] > 1e-3) and torch.all(torch.cat([diff[:15], diff[18:]]) == 0)


def test_standardization_by_training_statistics_is_saved_with_the_weights():
    """Each element minus its training mean over its training std; a constant element is not blown up."""
    from expotion.methods.clipflow.conditioner import Standardization

    samples = 5 + 2 * torch.randn(400, 3, 4)
    samples[:, 0, 0] = 7.0  # a static background pixel
    norm = Standardization((3, 4))
    norm.fit(samples)
    out = norm(samples)
    torch.testing.assert_close(out.mean(0), torch.zeros(3, 4), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std(0)[1:], torch.ones(2, 4), rtol=0, atol=1e-5)
    assert float(out[:, 0, 0].abs().max()) == 0.0
    conditioner = ClipFlowConditioner(small_cfg(), SHAPES, 64, 50.0)
    assert {"standardize.clip.mean", "standardize.farneback.std"} <= set(conditioner.state_dict())


def test_statistics_read_every_clip_of_a_small_split_and_spread_over_a_large_one():
    """The statistics see all clips when there are fewer than asked, and evenly spread ones when there are more."""
    from expotion.methods.clipflow.statistics import statistics_picks

    assert statistics_picks(12, 256) == list(range(12))
    assert statistics_picks(1000, 5) == [0, 250, 500, 749, 999]
    assert statistics_picks(1, 256) == [0]


def test_running_moments_merge_to_the_moments_of_the_whole():
    """Batches of any sizes, folded in any grouping, give the whole array's mean, std and overall std."""
    from expotion.methods.clipflow.statistics import RunningMoments, moments_of

    samples = 3 + 2 * torch.randn(101, 4, 5, dtype=torch.float64)
    whole = moments_of(samples)
    left, right = RunningMoments((4, 5)), RunningMoments((4, 5))
    for part in samples[:37].split(5):
        left.add(part)
    right.add(samples[37:])
    left.merge(right)
    left.merge(RunningMoments((4, 5)))  # an empty set changes nothing
    assert left.count == whole.count == 101
    torch.testing.assert_close(left.mean, samples.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(left.std(), samples.std(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.std(), samples.std(0), rtol=1e-12, atol=1e-12)
    assert left.overall_std() == pytest.approx(float(samples.std()), rel=1e-12)


def test_streaming_statistics_equal_the_whole_array_ones(clip_flow_cache, monkeypatch):
    """Read 3 steps at a time from the shards, the statistics equal those of every time step of every clip held
    at once (in float64, then rounded to the float32 buffers), and the model standardises with them."""
    from expotion.data.clips import ClipDataset
    from expotion.methods.clipflow import statistics

    monkeypatch.setattr(statistics, "STEPS_PER_READ", 3)  # several reads per clip: 4 CLIP frames, 7 flows
    dataset = ClipDataset(clip_flow_cache / "train", ("clip", "farneback"), 2.0, True)
    streamed = statistics.stream_statistics(dataset, ("clip", "farneback"))
    items = [dataset[i] for i in range(len(dataset))]
    for name, moments in streamed.items():
        whole = torch.cat([item[name] for item in items]).double()
        assert moments.count == len(whole) and len(items) == 4
        for ours, reference in ((moments.mean, whole.mean(0)), (moments.std(), whole.std(0))):
            scale = float(reference.abs().max())
            torch.testing.assert_close(ours.float(), reference.float(), rtol=2 ** -23, atol=2 ** -23 * scale)
        norm = ClipFlowConditioner(small_cfg(), {**SHAPES, **dataset.spec.shapes}, 64, 50.0).standardize[name]
        norm.fit_moments(moments)
        expected = whole.std(0).clamp(min=1e-3 * float(whole.std()) + 1e-8).float()
        torch.testing.assert_close(norm.std, expected, rtol=2 ** -23, atol=0)


@pytest.mark.parametrize("motion", [True, False])
def test_conditioner_gives_the_memory_of_a_window(motion):
    """Z of the window at 5 s equals Z of the same frames given as a stream that starts there."""
    cfg = small_cfg(motion=motion)
    conditioner = ClipFlowConditioner(cfg, SHAPES, model_dim=64, frame_rate=50.0).eval()
    feats = video_features(seconds=20.0)
    z = conditioner(feats, RATES, torch.full((2,), 5.0), 10.0)
    assert z.shape == (2, 20 * 3, 64)
    later = {"clip": feats["clip"][:, 10:30], "farneback": feats["farneback"][:, 20:59]}
    torch.testing.assert_close(z, conditioner(later, RATES, torch.zeros(2), 10.0), rtol=0, atol=1e-5)
    if motion:
        with pytest.raises(ValueError, match="lack"):
            ClipFlowConditioner(cfg, {"clip": SHAPES["clip"]}, 64, 50.0)


def test_causal_fusion_is_not_influenced_by_future_motion():
    """With ``causal``, frame i's memory tokens are bit-identical whatever the flows ending after its time hold."""
    for causal in (True, False):
        conditioner = ClipFlowConditioner(small_cfg(causal=causal), SHAPES, 64, 50.0).eval()
        feats = video_features(seconds=5.0)
        z = conditioner(feats, RATES, torch.zeros(2), 5.0)
        frame_times, centres = torch.arange(10) / 2.0, 0.125 + torch.arange(19) / 4.0
        visible = motion_visible(frame_times[None], centres[None], RATES["farneback"])[0]
        assert visible[0].sum() == 0 and visible[4].tolist() == [True] * 8 + [False] * 11  # flows 0-7 end by 2.0 s
        for i in range(10):
            future = feats | {"farneback": feats["farneback"].clone()}
            future["farneback"][:, ~visible[i]] = torch.rand_like(future["farneback"][:, ~visible[i]]) * 9
            rows = slice(3 * i, 3 * i + 3)
            same = torch.equal(conditioner(future, RATES, torch.zeros(2), 5.0)[:, rows], z[:, rows])
            assert same == causal or i == 9 and visible[i].all(), (causal, i)


# ---- the memory of MusicGen's own cross-attention -------------------------------------------------


def text_memory(lm, captions):
    """MusicGen's own text condition for ``captions`` (the tiny model's lookup table: one token each)."""
    cond = lm.condition_provider.conditioners["description"]
    return cond(cond.tokenize(captions))


def cross_attention_inputs(lm):
    """Record the memory (key input) every decoder cross-attention receives."""
    seen = []
    hooks = [layer.cross_attention.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
             for layer in lm.transformer.layers]
    return seen, hooks


def test_memory_condition_is_what_musicgens_text_path_gives_its_cross_attention(musicgen):
    """Z under the text key reaches every cross-attention: logits equal MusicGen's when Z is its own text memory."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = musicgen.lm
    captions = ["slow piano", "fast drums"]
    codes = torch.randint(0, lm.card, (2, lm.n_q, 30), generator=torch.Generator().manual_seed(1))
    embeds, _ = text_memory(lm, captions)
    reference = lm.compute_predictions(codes, [ConditioningAttributes(text={"description": c}) for c in captions])
    ours = lm.compute_predictions(codes, [], condition_tensors=memory_condition(embeds, torch.ones(2, dtype=torch.bool)))
    valid = ~torch.isnan(reference.logits)
    assert torch.equal(ours.logits[valid], reference.logits[valid])

    z = torch.randn(2, 6, lm.dim)
    seen, hooks = cross_attention_inputs(lm)
    try:
        dropped = lm.compute_predictions(codes, [], condition_tensors=memory_condition(
            z, torch.tensor([True, False]), (embeds, torch.ones(2, 1, dtype=torch.long))))
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(lm.transformer.layers)
    assert torch.equal(seen[0][0], torch.cat([embeds[0], z[0]])) and torch.all(seen[0][1] == 0)
    assert not torch.allclose(dropped.logits[0], ours.logits[0], equal_nan=True)


def test_condition_dropout_is_musicgens_own(musicgen):
    """Whole-memory drops follow MusicGen's cfg_dropout (same stream, whole batch at once) in train mode, none in eval."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = musicgen.lm
    lm.train()
    drops = 0
    try:
        for _ in range(40):
            state = lm.cfg_dropout.rng.get_state()
            keep, keep_text = condition_dropout(lm, ["a", "b", "c"])
            lm.cfg_dropout.rng.set_state(state)
            reference = lm.cfg_dropout([ConditioningAttributes(text={"description": c}) for c in "abc"])
            assert keep.tolist() == keep_text.tolist() == [a.text["description"] is not None for a in reference]
            drops += int(not keep.any())
    finally:
        lm.eval()
    assert 0 < drops < 20  # p = 0.2
    assert condition_dropout(lm, ["a"] * 50)[0].all()


def test_generation_hook_feeds_lm_generate_the_training_memory(musicgen):
    """Generating with Z = the prompt's own text memory is token for token plain MusicGen; the null branch gets zeros."""
    lm = musicgen.lm
    musicgen.set_generation_params(duration=0.5, top_k=20, cfg_coef=3.0)
    torch.manual_seed(3)
    plain = musicgen.generate(["warm synth chords"], return_tokens=True)[1]
    embeds, _ = text_memory(lm, ["warm synth chords"])
    seen, hooks = cross_attention_inputs(lm)
    torch.manual_seed(3)
    try:
        with memory_attached(lm, embeds, with_text=False):
            ours = musicgen.generate(["ignored: text none"], return_tokens=True)[1]
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(ours, plain)
    assert torch.equal(seen[0][0], embeds[0]) and torch.all(seen[0][1] == 0)
    assert not lm.condition_provider._forward_hooks  # removed on exit


def test_trained_decoder_choices(musicgen):
    lm = musicgen.lm
    assert trained_decoder(lm, "none", "none") == {}
    cross = trained_decoder(lm, "cross_attention", "none")
    layers = len(lm.transformer.layers)
    assert {n.split(".")[2] for n in cross} == {str(i) for i in range(layers)}
    assert all(".cross_attention." in n or ".norm_cross." in n for n in cross)
    assert trained_decoder(lm, "cross_attention", "concat") == cross
    decoder = {n for n, _ in lm.named_parameters() if not n.startswith("condition_provider.")}
    projection = {n for n, _ in lm.named_parameters()
                  if n.startswith("condition_provider.conditioners.description.output_proj.")}
    assert projection and trained_decoder(lm, "all", "concat").keys() == decoder | projection
    assert trained_decoder(lm, "all", "none").keys() == decoder
    with pytest.raises(ValueError, match="decoder"):
        trained_decoder(lm, "half", "none")


# ---- learning ------------------------------------------------------------------------------------


def shown_codes(batch: int, codebooks: int, seconds: float, segment_s: float, looks: torch.Tensor,
                g: torch.Generator) -> tuple[dict, dict[str, torch.Tensor]]:
    """Clips whose codes hold a random value per segment, the same in every codebook, that only the CLIP frames
    show (CLIP frame i at 2 fps falls in segment i; the motion maps are noise). ``looks``: one CLIP look per value."""
    frame_rate, segments, values = 50, int(seconds / segment_s), len(looks)
    drawn = torch.randint(0, values, (batch, segments), generator=g)
    step_segment = torch.arange(int(seconds * frame_rate)) // int(segment_s * frame_rate)
    frame_segment = (torch.arange(int(seconds * 2)) / 2.0 // segment_s).long()
    codes = drawn[:, step_segment][:, None, :].expand(-1, codebooks, -1).contiguous()
    clip = looks[drawn[:, frame_segment]] + 0.3 * torch.randn(batch, len(frame_segment), *SHAPES["clip"], generator=g)
    flows = torch.rand(batch, int(seconds * 4) - 1, *SHAPES["farneback"], generator=g)
    return {"codes": codes, "caption": [""] * batch}, {"clip": clip, "farneback": flows}


def test_the_method_learns_a_code_only_the_video_shows(tiny_profile_cfg):
    """Trained end to end, the first codebook's loss falls far below what any model without the video can reach.

    Each 0.5 s segment's code is uniform over 16 values and independent of the past, so without the video every
    segment's first step costs ln 16 whatever the model: ``segments * ln 16 / steps`` per step on average.
    """
    from expotion.methods.clipflow.module import clip_flow_predictions
    from expotion.musicgen.objective import codebook_cross_entropy

    torch.manual_seed(0)
    lm = load_musicgen(tiny_profile_cfg.musicgen).lm  # a copy of its own: this test trains it
    lm.eval()  # no dropout: the test is about the memory path, not regularisation
    decoder = trained_decoder(lm, "all", "none")
    for param in decoder.values():
        param.requires_grad_(True)
    conditioner = ClipFlowConditioner(small_cfg(tokens_per_frame=2), SHAPES, lm.dim, 50.0)
    optimizer = torch.optim.AdamW([*conditioner.parameters(), *decoder.values()], lr=3e-3, weight_decay=0.01)
    seconds, segment_s, values = 2.0, 0.5, 16
    looks = torch.randn(values, *SHAPES["clip"], generator=torch.Generator().manual_seed(1))
    train_g = torch.Generator().manual_seed(2)

    def losses(batch, feats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = clip_flow_predictions(lm, conditioner, feats, RATES, batch)
        return codebook_cross_entropy(out.logits, batch["codes"], out.mask)

    for _ in range(300):
        loss = losses(*shown_codes(4, lm.n_q, seconds, segment_s, looks, train_g))[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ce = losses(*shown_codes(16, lm.n_q, seconds, segment_s, looks, torch.Generator().manual_seed(99)))[1]
    floor = (seconds / segment_s) * np.log(values) / (seconds * 50)
    assert ce[0] < 0.4 * floor, f"first codebook {ce[0]:.4f} nats, no-video floor {floor:.4f}"


def test_clip_flow_is_not_causal_even_with_causal_fusion(musicgen):
    """MusicGen's cross-attention reads all of Z at every step, so the last frame of a window reaches the first
    step's logits whatever ``causal`` does inside the fusion: the method states no lookahead (None)."""
    from expotion.methods.clipflow.module import ClipFlowModule

    lm = musicgen.lm
    conditioner = ClipFlowConditioner(small_cfg(causal=True), SHAPES, lm.dim, 50.0).eval()
    assert conditioner.lookahead_s is None and ClipFlowModule.lookahead_s is None
    feats = video_features(batch=1, seconds=2.0)
    later = feats | {"clip": feats["clip"].clone()}
    later["clip"][:, -1] = 3 * torch.randn(later["clip"][:, -1].shape, generator=torch.Generator().manual_seed(3))
    codes = torch.randint(0, lm.card, (1, lm.n_q, 100), generator=torch.Generator().manual_seed(2))
    logits = []
    with torch.no_grad():
        for f in (feats, later):
            z = conditioner(f, RATES, torch.zeros(1), 2.0)
            memory = memory_condition(z, torch.ones(1, dtype=torch.bool))
            logits.append(lm.compute_predictions(codes, [], condition_tensors=memory).logits)
    assert (logits[0][:, 0, 0] - logits[1][:, 0, 0]).abs().max() > 1e-4  # frame 0 hears the frame at 1.5 s
