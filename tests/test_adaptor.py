"""The condition adaptor against plain audiocraft MusicGen: identity at zero gates, training, streaming."""
from pathlib import Path

import pytest
import torch
import yaml

from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate
from expotion.methods.expotion.adaptor import AdaptorConfig, CausalConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import JointVisualEmbedding, VisualConfig, temporal_smoothing
from expotion.musicgen.loading import TinyMusicGenConfig, load_musicgen, save_tiny

OFFICIAL_YAML = Path(__file__).resolve().parents[1] / "lightning_configs" / "official.yaml"

DIMS = {"marlin": 24, "synchformer": 20, "raft": 2}


@pytest.fixture(scope="module", params=[(4, 1), (6, 3)], ids=["N4-L1", "N6-L3"])
def model_and_l(request, tmp_path_factory):
    n_layers, n_adapted = request.param
    path = save_tiny(tmp_path_factory.mktemp(f"mg{n_layers}"), seed=1, cfg=TinyMusicGenConfig(num_layers=n_layers))
    return load_musicgen(str(path)), n_adapted


def features(batch: int, seconds: float, motion: str = "synchformer", seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    r = DEFAULT_RATES
    feats = {"marlin": torch.randn(batch, r.marlin_windows(seconds), DIMS["marlin"], generator=g),
             "marlin_mask": torch.arange(r.marlin_windows(seconds)).expand(batch, -1) >= 2}  # no face at first
    if motion == "raft":
        feats["raft"] = torch.randn(batch, r.raft_flows(seconds), 2, 16, 16, generator=g)
    else:
        feats["synchformer"] = torch.randn(batch, r.synchformer_tokens(seconds), DIMS["synchformer"], generator=g)
    return feats, {"marlin": r.marlin, "synchformer": r.synchformer, "raft": r.raft}


def text_tensors(lm, captions):
    from audiocraft.modules.conditioners import ConditioningAttributes

    attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
    return lm.condition_provider(lm.condition_provider.tokenize(attrs))


def make_adaptor(lm, n_adapted, motion="synchformer", seconds=2.0, per_layer=True, **options):
    cfg = AdaptorConfig(n_adapted=n_adapted, visual=VisualConfig(face=True, motion=motion), per_layer_we=per_layer,
                        max_seconds=seconds, **options)
    return ConditionAdaptor(lm, cfg, DIMS, 50.0)


def official_adaptor_options() -> dict:
    """The adaptor keys ``lightning_configs/official.yaml`` sets."""
    return yaml.safe_load(OFFICIAL_YAML.read_text())["model"]["adaptor"]


@pytest.mark.parametrize("motion", ["synchformer", "raft"])
def test_zero_gates_reproduce_musicgen_logits_bit_for_bit(model_and_l, motion):
    mg, n_adapted = model_and_l
    lm = mg.lm
    codes = torch.randint(0, lm.card, (2, 4, 100), generator=torch.Generator().manual_seed(0))
    cond = text_tensors(lm, ["calm piano", "fast drums"])
    ref = lm.compute_predictions(codes, [], condition_tensors=cond).logits
    adaptor = make_adaptor(lm, n_adapted, motion)
    feats, rates = features(2, 2.0, motion)
    prefix = adaptor.prefix(feats, rates, lm.pattern_provider.get_pattern(100).num_sequence_steps)
    with adaptor.attached(prefix):
        out = lm.compute_predictions(codes, [], condition_tensors=cond).logits
    valid = ~torch.isnan(ref)
    assert torch.equal(out[valid], ref[valid])
    with torch.no_grad():
        adaptor.gates.fill_(0.3)
    with adaptor.attached(prefix):
        moved = lm.compute_predictions(codes, [], condition_tensors=cond).logits
    assert (moved[valid] - ref[valid]).abs().max() > 1e-3
    # hooks are gone after the context: MusicGen is plain again
    assert torch.equal(lm.compute_predictions(codes, [], condition_tensors=cond).logits[valid], ref[valid])


@pytest.mark.parametrize("options", [{"prefix_causal": True}, {"pos_embedding": "official"}, "official.yaml",
                                     {"causal": CausalConfig(0.2)}, {"causal": CausalConfig(0.0)}],
                         ids=["causal-prefix", "official-pos", "official.yaml", "causal-0.2s", "causal-0s"])
def test_zero_gates_reproduce_musicgen_with_the_official_options(model_and_l, options):
    mg, n_adapted = model_and_l
    lm = mg.lm
    options = official_adaptor_options() if options == "official.yaml" else options
    codes = torch.randint(0, lm.card, (2, 4, 100), generator=torch.Generator().manual_seed(0))
    cond = text_tensors(lm, ["calm piano", "fast drums"])
    ref = lm.compute_predictions(codes, [], condition_tensors=cond).logits
    adaptor = make_adaptor(lm, n_adapted, **options)
    feats, rates = features(2, 2.0)
    prefix = adaptor.prefix(feats, rates, lm.pattern_provider.get_pattern(100).num_sequence_steps)
    with adaptor.attached(prefix):
        out = lm.compute_predictions(codes, [], condition_tensors=cond).logits
    valid = ~torch.isnan(ref)
    assert torch.equal(out[valid], ref[valid])


def test_causal_prefix_keeps_each_position_independent_of_later_ones(model_and_l):
    """The prefix of layer l + 1 is layer l's self-attention over the prefix, so the mask only acts from two adapted
    layers on (a one-layer case is tested with two)."""
    mg, n_adapted = model_and_l
    n_adapted = max(n_adapted, 2)
    feats, rates = features(1, 1.0)
    t = 20
    for causal in (True, False):
        adaptor = make_adaptor(mg.lm, n_adapted, prefix_causal=causal)
        before = adaptor.prefix(feats, rates, 50)
        with torch.no_grad():
            adaptor.h0[t + 1 :] += torch.randn_like(adaptor.h0[t + 1 :])  # change every prefix position after t
        after = adaptor.prefix(feats, rates, 50)
        # each layer's prefix Q, K, V at positions <= t
        unchanged = [torch.equal(a[..., : t + 1, :], b[..., : t + 1, :]) for sa, sb in zip(before, after) for a, b in zip(sa, sb)]
        assert all(unchanged) == causal  # without the mask, later positions reach earlier ones


def test_official_positional_embedding_has_a_model_width_table_per_layer(model_and_l):
    mg, n_adapted = model_and_l
    width, steps = mg.lm.dim, mg.lm.pattern_provider.get_pattern(100).num_sequence_steps
    official = make_adaptor(mg.lm, n_adapted, pos_embedding="official")
    paper = make_adaptor(mg.lm, n_adapted)
    # official: (L + 1) tables of (steps, d), H_0 being the first, all with std-1 initialisation
    assert official.h0.numel() + official.embed.layer_pos.numel() == (n_adapted + 1) * steps * width
    assert not hasattr(official.embed, "z_pos")
    assert 0.9 < official.embed.layer_pos.std() < 1.1 and 0.9 < official.h0.std() < 1.1
    # paper: z_pos in the d1 + d2 space before W_e, and H_0
    assert paper.embed.z_pos.shape == (steps, 24) and paper.h0.shape == (steps, width)
    assert not hasattr(paper.embed, "layer_pos")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(official) - count(paper) == n_adapted * steps * width - steps * 24
    shared = make_adaptor(mg.lm, n_adapted, per_layer=False, pos_embedding="official")
    z = shared.embed(*features(1, 1.0), shared.step_times(10, torch.zeros(1)))
    assert all(not torch.equal(z[0], zi) for zi in z[1:])  # one W_e, but each layer its own positions


def test_official_low_rank_setting_projects_one_256d_stream_to_48():
    embed = JointVisualEmbedding(VisualConfig(face=False, motion="raft", d2=48), DIMS, 64, 2, 100)
    assert embed.w_f is None and embed.w_m.weight.shape == (48, 256)
    feats, rates = features(1, 1.0, "raft")
    z = embed(feats, rates, torch.arange(50)[None] / 50)
    assert len(z) == 2 and z[0].shape == (1, 50, 64)


def test_only_the_adaptor_learns(model_and_l):
    mg, n_adapted = model_and_l
    lm = mg.lm
    adaptor = make_adaptor(lm, n_adapted, "raft")
    with torch.no_grad():
        adaptor.gates.fill_(0.1)  # a trained state: with zero gates only the gates receive gradient
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    optimizer = torch.optim.AdamW(adaptor.parameters(), lr=1e-2)
    codes = torch.randint(0, lm.card, (2, 4, 100), generator=torch.Generator().manual_seed(1))
    feats, rates = features(2, 2.0, "raft")
    prefix = adaptor.prefix(feats, rates, lm.pattern_provider.get_pattern(100).num_sequence_steps)
    lower_outputs = []
    handle = lm.transformer.layers[adaptor.start - 1].register_forward_hook(lambda m, a, o: lower_outputs.append(o)) \
        if adaptor.start > 0 else None
    with adaptor.attached(prefix):
        out = lm.compute_predictions(codes, [], condition_tensors=text_tensors(lm, ["a", "b"]))
    if handle:
        handle.remove()
        assert not lower_outputs[0].requires_grad  # layers below N-L build no autograd graph
    from expotion.musicgen.objective import codebook_cross_entropy

    loss, _, _ = codebook_cross_entropy(out.logits, codes, out.mask)
    loss.backward()
    for name, p in adaptor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer.step()
    assert all(not p.requires_grad for p in lm.parameters())
    after = lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_zero_gates_with_fresh_adaptor_give_gradient_to_gates_only(model_and_l):
    mg, n_adapted = model_and_l
    adaptor = make_adaptor(mg.lm, n_adapted)
    codes = torch.randint(0, mg.lm.card, (1, 4, 50))
    feats, rates = features(1, 1.0)
    prefix = adaptor.prefix(feats, rates, mg.lm.pattern_provider.get_pattern(50).num_sequence_steps)
    with adaptor.attached(prefix):
        out = mg.lm.compute_predictions(codes, [], condition_tensors=text_tensors(mg.lm, ["x"]))
    out.logits[out.mask].logsumexp(-1).mean().backward()
    assert adaptor.gates.grad.abs().sum() > 0
    assert adaptor.h0.grad.abs().sum() == 0  # the prefix acts only through the (zero) gates


@pytest.mark.parametrize("causal", [None, CausalConfig(0.1)], ids=["offline", "causal"])
def test_streaming_generation_sees_the_prefix_at_the_right_positions(model_and_l, causal):
    """Tokens sampled step by step (streaming) have the logits a full teacher-forced pass gives (with the causal
    option, each step's mask on the prefix follows its position in the stream)."""
    mg, n_adapted = model_and_l
    lm = mg.lm
    adaptor = make_adaptor(lm, n_adapted, causal=causal)
    with torch.no_grad():
        adaptor.gates.fill_(0.5)
    feats, rates = features(1, 1.0)
    frames = 30
    steps = lm.pattern_provider.get_pattern(frames).num_sequence_steps
    prefix = adaptor.prefix(feats, rates, steps)
    cond = text_tensors(lm, ["drums"])
    from audiocraft.modules.conditioners import ConditioningAttributes

    attrs = [ConditioningAttributes(text={"description": "drums"})]
    with adaptor.attached(prefix), torch.no_grad():
        greedy = lm.generate(conditions=attrs, max_gen_len=frames, use_sampling=False, cfg_coef=1.0)
        full = lm.compute_predictions(greedy, [], condition_tensors=cond)
    predicted = full.logits.argmax(-1)
    assert torch.equal(predicted[full.mask], greedy[full.mask])


def test_per_layer_or_shared_w_e(model_and_l):
    mg, n_adapted = model_and_l
    shared = make_adaptor(mg.lm, n_adapted, per_layer=False)
    per_layer = make_adaptor(mg.lm, n_adapted, per_layer=True)
    assert len(shared.embed.w_e) == 1 and len(per_layer.embed.w_e) == n_adapted
    feats, rates = features(1, 1.0)
    z = shared.embed(feats, rates, shared.step_times(10, torch.zeros(1)))
    assert len(z) == n_adapted and all(torch.equal(z[0], zi) for zi in z)


def test_temporal_smoothing_is_linear_interpolation():
    z = torch.tensor([[[0.0], [10.0], [20.0]]])  # 3 frames at 5 fps, first centred at 0.1 s
    rate = StreamRate(5.0, 0.1)
    out = temporal_smoothing(z, rate, torch.tensor([0.0, 0.1, 0.2, 0.25, 0.5, 1.0]))
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 0.0, 5.0, 7.5, 20.0, 20.0])
    batched = temporal_smoothing(torch.cat([z, 2 * z]), rate, torch.tensor([[0.2], [0.3]]))
    assert batched[:, 0, 0].tolist() == pytest.approx([5.0, 20.0])


def synchformer_stream_of_own_times(stride: int, duration: float) -> torch.Tensor:
    """Synchformer tokens (1, tokens, 1) whose value is their true time: token j of segment k
    covers frames stride*k + 2j and stride*k + 2j + 1 at 25 fps."""
    segments = (int(round(duration * 25)) - 16) // stride + 1
    times = [(stride * k + 2 * j + 1) / 25 for k in range(segments) for j in range(8)]
    return torch.tensor(times, dtype=torch.float32)[None, :, None]


@pytest.mark.parametrize("stride", [8, 5], ids=["synchformer-stride-8", "paper-stride-5"])
def test_smoothed_synchformer_stream_gives_each_encodec_frame_its_time(stride):
    rates = Rates(synchformer_stride=stride)
    half_token = 0.5 * rates.synchformer_tubelet / rates.synchformer_video_fps
    covered = {8: 9.92, 5: 9.84}[stride]  # the segments end exactly at the clip end
    for duration in (covered, 10.0):
        z = synchformer_stream_of_own_times(stride, duration)
        assert z.shape[1] == rates.synchformer_tokens(duration)
        frames = torch.arange(rates.codes_frames(duration)) / rates.codes_fps
        smoothed = temporal_smoothing(z, rates.synchformer, frames, "synchformer")[0, :, 0]
        inside = frames < covered
        assert (smoothed[inside] - frames[inside]).abs().max() <= half_token + 1e-6
        assert torch.equal(smoothed[~inside], z[0, -1, 0].expand(int((~inside).sum())))  # past the last segment: held
    crop = 3.3 + torch.arange(100) / rates.codes_fps  # a training crop starting 3.3 s into the clip
    smoothed = temporal_smoothing(synchformer_stream_of_own_times(stride, 10.0), rates.synchformer, crop)[0, :, 0]
    assert (smoothed - crop).abs().max() <= 1e-5


def test_overlapping_synchformer_tokens_are_averaged():
    rate = DEFAULT_RATES.synchformer
    z = torch.zeros(1, 16, 1)
    z[0, 4:8, 0] = 1.0  # tokens 4-7 of segment 0 ...
    z[0, 8:12, 0] = 3.0  # ... describe the instants of tokens 0-3 of segment 1
    shared_instants = torch.tensor([9, 11, 13, 15]) / 25
    assert temporal_smoothing(z, rate, shared_instants)[0, :, 0].tolist() == pytest.approx([2.0] * 4, abs=1e-5)


def test_empty_stream_is_refused_by_name():
    with pytest.raises(ValueError, match="'synchformer' stream is empty"):
        temporal_smoothing(torch.zeros(1, 0, 4), DEFAULT_RATES.synchformer, torch.arange(5) / 50, "synchformer")
    embed = JointVisualEmbedding(VisualConfig(), DIMS, 64, 1, 100)
    feats, rates = features(1, 1.0)
    feats["synchformer"] = feats["synchformer"][:, :0]
    with pytest.raises(ValueError, match="'synchformer' stream is empty"):
        embed(feats, rates, torch.arange(50)[None] / 50)


def test_adaptor_rejects_bad_configuration(model_and_l):
    mg, _ = model_and_l
    with pytest.raises(ValueError, match="n_adapted must be in 1.."):
        make_adaptor(mg.lm, 99)
    with pytest.raises(ValueError, match="at least one of face or motion"):
        VisualConfig(face=False, motion=None)
    with pytest.raises(ValueError, match="motion must be one of"):
        VisualConfig(motion="optical")
    with pytest.raises(ValueError, match="pos_embedding must be one of"):
        make_adaptor(mg.lm, 1, pos_embedding="learned")


def test_causal_smoothing_reads_only_vectors_ready_by_the_horizon():
    """3 vectors at 5 fps centred at 0.1, 0.3, 0.5 s and ready at 0.2, 0.4, 0.6 s (a flow's second frame)."""
    z = torch.tensor([[[2.0], [10.0], [20.0]]])
    rate = StreamRate(5.0, 0.1)
    ready = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    times = torch.tensor([0.0, 0.15, 0.2, 0.25, 0.35, 0.4, 0.45, 1.0])
    out = temporal_smoothing(z, rate, times, ready=ready, lookahead_s=0.0)[0, :, 0]
    # zero before anything is ready, then held at the last vector ready
    assert out.tolist() == pytest.approx([0.0, 0.0, 2.0, 2.0, 2.0, 10.0, 10.0, 20.0])
    ahead = temporal_smoothing(z, rate, times, ready=ready, lookahead_s=0.2)[0, :, 0]
    # interpolated wherever the next vector is ready by t + 0.2 s (the offline values from 0.4 s on)
    assert ahead.tolist() == pytest.approx([2.0, 2.0, 6.0, 8.0, 10.0, 15.0, 17.5, 20.0])
    whole = temporal_smoothing(z, rate, times, ready=ready, lookahead_s=10.0)
    assert torch.equal(whole, temporal_smoothing(z, rate, times))  # a lookahead past the clip: the offline smoothing


def test_causal_smoothing_of_overlapping_segments_averages_the_tokens_ready():
    """Tokens 4-7 of Synchformer segment 0 and 0-3 of segment 1 share instants; segment 1 is ready 8 frames later."""
    from expotion.extractors.streams import feature_ready_times

    rate = DEFAULT_RATES.synchformer
    z = torch.zeros(1, 16, 1)
    z[0, 4:8, 0] = 1.0
    z[0, 8:12, 0] = 3.0
    ready = feature_ready_times("synchformer", 16)
    assert ready.tolist() == pytest.approx([15 / 25] * 8 + [23 / 25] * 8)
    shared = torch.tensor([9, 11, 13, 15]) / 25
    early = temporal_smoothing(z, rate, shared, ready=ready, lookahead_s=0.3)  # only segment 0 by 0.36 + 0.3 s
    assert early[0, :, 0].tolist() == pytest.approx([1.0] * 4)
    late = temporal_smoothing(z, rate, shared, ready=ready, lookahead_s=0.6)
    assert late[0, :, 0].tolist() == pytest.approx([2.0] * 4, abs=1e-5)  # both segments: their mean, as offline
    offline = temporal_smoothing(z, rate, torch.arange(60) / 50)
    assert torch.allclose(temporal_smoothing(z, rate, torch.arange(60) / 50, ready=ready, lookahead_s=2.0), offline,
                          atol=1e-6)


def test_each_stream_times_its_vectors_by_the_last_frame_they_read():
    from expotion.extractors.streams import feature_ready_times

    r = DEFAULT_RATES
    assert feature_ready_times("marlin", 3).tolist() == pytest.approx([15 / 80, 31 / 80, 47 / 80])
    assert feature_ready_times("raft", 3).tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert feature_ready_times("clip", 3).tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert feature_ready_times("farneback", 3).tolist() == pytest.approx([0.25, 0.5, 0.75])
    stride5 = Rates(synchformer_stride=5)
    tokens = feature_ready_times("synchformer", 24, stored=stride5.synchformer)  # the stored stride, not the default
    assert tokens[::8].tolist() == pytest.approx([15 / 25, 20 / 25, 25 / 25])
    # a vector is never ready before the centre of what it describes
    for name in ("marlin", "synchformer", "raft", "clip", "farneback"):
        rate = getattr(r, name)
        assert (feature_ready_times(name, 40).numpy() >= rate.times(40) - 1e-9).all(), name


def test_causal_prefix_step_reads_no_later_prefix_position(model_and_l):
    """With non-zero gates, changing prefix positions after t changes no logit at a sequence step <= t."""
    mg, n_adapted = model_and_l
    lm = mg.lm
    codes = torch.randint(0, lm.card, (1, 4, 40), generator=torch.Generator().manual_seed(1))
    cond = text_tensors(lm, ["calm piano"])
    sequence = lm.pattern_provider.get_pattern(40).build_pattern_sequence(codes, lm.special_token_id, keep_only_valid_steps=True)[0]
    t = 17
    for causal, expect_unchanged in ((CausalConfig(0.1), True), (None, False)):
        adaptor = make_adaptor(lm, n_adapted, causal=causal)
        with torch.no_grad():
            adaptor.gates.fill_(0.7)
        feats, rates = features(1, 2.0)
        steps = sequence.shape[-1]
        logits = []
        for _ in range(2):
            prefix = adaptor.prefix(feats, rates, steps)
            with adaptor.attached(prefix), torch.no_grad():
                logits.append(lm(sequence, [], condition_tensors=cond))
            with torch.no_grad():
                adaptor.h0[t + 1 :] += torch.randn_like(adaptor.h0[t + 1 :])
        assert torch.equal(logits[0][..., : t + 1, :], logits[1][..., : t + 1, :]) == expect_unchanged
        assert not torch.equal(logits[0], logits[1])


def test_causal_option_round_trips_and_old_configs_read_as_before():
    cfg = AdaptorConfig(causal=CausalConfig(0.25))
    assert AdaptorConfig.from_dict(cfg.to_dict()) == cfg
    old = AdaptorConfig().to_dict()
    del old["causal"]
    assert AdaptorConfig.from_dict(old).causal is None
    with pytest.raises(ValueError, match="lookahead_s must be >= 0"):
        CausalConfig(-0.1)


def test_lookahead_is_the_causal_option(model_and_l):
    mg, n_adapted = model_and_l
    assert make_adaptor(mg.lm, n_adapted).lookahead_s is None
    assert make_adaptor(mg.lm, n_adapted, causal=CausalConfig(0.3)).lookahead_s == 0.3
