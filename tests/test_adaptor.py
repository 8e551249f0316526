"""The condition adaptor against plain audiocraft MusicGen: identity at zero gates, training, streaming."""
import pytest
import torch

from expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.embedding import VisualConfig, temporal_smoothing
from expotion.musicgen import TinyMusicGenConfig, load_musicgen, save_tiny
from expotion.rates import DEFAULT_RATES, StreamRate

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


def make_adaptor(lm, n_adapted, motion="synchformer", seconds=2.0, per_layer=True):
    cfg = AdaptorConfig(n_adapted=n_adapted, visual=VisualConfig(face=True, motion=motion), per_layer_we=per_layer,
                        max_seconds=seconds)
    return ConditionAdaptor(lm, cfg, DIMS, 50.0)


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
    from expotion.objective import codebook_cross_entropy

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


def test_streaming_generation_sees_the_prefix_at_the_right_positions(model_and_l):
    """Tokens sampled step by step (streaming) have the logits a full teacher-forced pass gives."""
    mg, n_adapted = model_and_l
    lm = mg.lm
    adaptor = make_adaptor(lm, n_adapted)
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


def test_adaptor_rejects_bad_configuration(model_and_l):
    mg, _ = model_and_l
    with pytest.raises(ValueError, match="n_adapted must be in 1.."):
        make_adaptor(mg.lm, 99)
    with pytest.raises(ValueError, match="at least one of face or motion"):
        VisualConfig(face=False, motion=None)
    with pytest.raises(ValueError, match="motion must be one of"):
        VisualConfig(motion="optical")
