"""The causal option end to end: frames after t + lookahead reach no logit at or before step t.

The frames of a synthetic clip go through the tiny extractors (the real extraction code), so the timing each stream
states for its vectors (``feature_ready_times``) is tested with the masks of the adaptor. The CLIP + flow method has
no causal option (its memory is read whole by MusicGen's cross-attention at every step; see docs/live.md).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from expotion.core.rates import DEFAULT_RATES
from expotion.data.media import ClipFrames
from expotion.extractors.bank import Extractors
from expotion.methods.expotion.adaptor import AdaptorConfig, CausalConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.musicgen.loading import load_musicgen

ROOT = Path(__file__).resolve().parents[1]
FPS, SECONDS = 25, 2.0
LOOKAHEAD_S = 0.2
STEP = 30  # sequence step t: EnCodec frame 30, 0.6 s
CUT_S = STEP / 50 + LOOKAHEAD_S  # frames after t + lookahead = 0.8 s are perturbed
VISUALS = {"marlin": VisualConfig(face=True, motion=None), "synchformer": VisualConfig(face=False, motion="synchformer"),
           "raft": VisualConfig(face=False, motion="raft")}
FACE_BOX = (24, 8, 88, 72)  # source pixels: MTCNN finds no face in synthetic frames, so the manifest box is given


@pytest.fixture(scope="module")
def extractors(tiny_profile_cfg):
    return Extractors(tiny_profile_cfg, names=tuple(VISUALS))


@pytest.fixture(scope="module")
def extracted(extractors) -> tuple[dict, dict]:
    """The arrays of every stream for the synthetic clip, and for the clip perturbed after ``CUT_S``."""
    clip = synthetic_clip()
    return tuple(extractors.video_features(c, SECONDS, FACE_BOX).arrays for c in (clip, perturbed_after(clip, CUT_S)))


@pytest.fixture(scope="module")
def lm(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen).lm


def synthetic_clip(seed: int = 0) -> ClipFrames:
    """A face-sized square moving over noise, 2 s at 25 fps."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (int(SECONDS * FPS), 96, 128, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        x = 10 + 3 * i
        frame[30:62, x : x + 32] = (200, 160, 120)
    return ClipFrames(frames, np.arange(len(frames)) / FPS, 1.0)


def perturbed_after(clip: ClipFrames, cut_s: float) -> ClipFrames:
    """The clip with every frame shown after ``cut_s`` replaced by other noise."""
    frames = clip.frames.copy()
    later = clip.times > cut_s + 1e-6
    frames[later] = np.random.default_rng(1).integers(0, 256, frames[later].shape, dtype=np.uint8)
    return ClipFrames(frames, clip.times, clip.scale)


def features(arrays: dict, stream: str) -> tuple[dict, dict]:
    names = [stream, f"{stream}_mask"] if stream == "marlin" else [stream]
    feats = {name: torch.from_numpy(np.asarray(arrays[name]).astype(np.float32))[None] for name in names}
    if stream == "marlin":
        assert bool(feats["marlin_mask"].all())  # every window has the face
    return feats, {stream: getattr(DEFAULT_RATES, stream)}


def sequence_logits(lm, adaptor: ConditionAdaptor, feats: dict, rates: dict) -> torch.Tensor:
    """MusicGen's logits at every sequence step (B, K, S, card), before the delay pattern is reverted."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    codes = torch.randint(0, lm.card, (1, lm.n_q, int(SECONDS * 50)), generator=torch.Generator().manual_seed(0))
    pattern = lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence = pattern.build_pattern_sequence(codes, lm.special_token_id, keep_only_valid_steps=True)[0]
    cond = lm.condition_provider(lm.condition_provider.tokenize([ConditioningAttributes(text={"description": "x"})]))
    prefix = adaptor.prefix(feats, rates, sequence.shape[-1])
    with adaptor.attached(prefix), torch.no_grad():
        return lm(sequence, [], condition_tensors=cond)


def adaptor_pair(lm, stream: str, dims: dict) -> tuple[ConditionAdaptor, ConditionAdaptor]:
    """The same weights (non-zero gates) with the causal option and without it."""
    torch.manual_seed(0)
    cfg = AdaptorConfig(n_adapted=2, visual=VISUALS[stream], max_seconds=SECONDS, causal=CausalConfig(LOOKAHEAD_S))
    causal = ConditionAdaptor(lm, cfg, dims, 50.0)
    with torch.no_grad():
        causal.gates.fill_(1.0)
    offline = ConditionAdaptor(lm, AdaptorConfig(**{**cfg.__dict__, "causal": None}), dims, 50.0)
    offline.load_state_dict(causal.state_dict())
    return causal, offline


@pytest.mark.parametrize("stream", list(VISUALS))
def test_frames_after_t_plus_lookahead_change_no_logit_up_to_step_t(extracted, lm, stream):
    feats, rates = features(extracted[0], stream)
    moved, _ = features(extracted[1], stream)
    changed = (moved[stream] != feats[stream]).flatten(2).any(-1)[0]
    assert changed.any()  # the perturbation reaches the features ...
    dims = {stream: feats[stream].shape[-1] if stream != "raft" else 2}
    causal, offline = adaptor_pair(lm, stream, dims)
    before, after = sequence_logits(lm, causal, feats, rates), sequence_logits(lm, causal, moved, rates)
    # ... but no logit of a step whose time plus the lookahead is before the perturbed frames
    assert torch.equal(before[:, :, : STEP + 1], after[:, :, : STEP + 1])
    assert not torch.equal(before, after)  # later steps do hear it
    # without the option the same perturbation reaches earlier steps: this test can fail
    before, after = sequence_logits(lm, offline, feats, rates), sequence_logits(lm, offline, moved, rates)
    assert (before[:, :, : STEP + 1] - after[:, :, : STEP + 1]).abs().max() > 1e-4


def test_features_change_only_from_the_first_vector_timed_after_the_perturbed_frames(extracted):
    """Each stream's extraction reads no frame after its vectors' ready times (``feature_ready_times``), and each
    vector timed after the perturbed frames does read one (the times are not merely late)."""
    from expotion.extractors.streams import feature_ready_times

    base, moved = extracted
    for stream in VISUALS:
        ready = feature_ready_times(stream, len(base[stream])).numpy()
        changed = (base[stream] != moved[stream]).reshape(len(ready), -1).any(-1)
        assert not changed[ready <= CUT_S + 1e-6].any(), stream
        assert changed[ready > CUT_S + 1e-6].all(), stream


def test_live_tiny_config_trains_two_steps(tmp_path, demo_cache, tiny_profile_cfg, monkeypatch):
    from expotion.cli.train import main
    from expotion.methods.expotion.export import load_adaptor
    from expotion.musicgen.loading import model_signature

    cfg = yaml.safe_load((ROOT / "lightning_configs" / "live_tiny.yaml").read_text())
    assert cfg["model"]["adaptor"]["causal"] == {"lookahead_s": LOOKAHEAD_S}
    cfg["model"]["musicgen"] = tiny_profile_cfg.musicgen
    cfg["model"]["adaptor"]["max_seconds"] = 2.0
    cfg["data"].update(cache_dir=str(demo_cache[0]), crop_seconds=1.0, batch_size=2)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, max_steps=2)
    samples = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("AudioSamples"))
    samples["init_args"].update(every_n_epochs=1, seconds=0.5)  # generation with the causal adaptor at the epoch end
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 2
    assert cli.model.adaptor.lookahead_s == cli.model.lookahead_s == LOOKAHEAD_S
    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    adaptor, _ = load_adaptor(tmp_path / "run" / "adaptor.pt", musicgen.lm, model_signature(musicgen))
    assert adaptor.cfg.causal == CausalConfig(LOOKAHEAD_S) and adaptor.lookahead_s == LOOKAHEAD_S


@pytest.mark.parametrize("stream", list(VISUALS))
def test_the_prefix_up_to_step_t_needs_only_the_features_ready_by_t_plus_lookahead(extracted, lm, stream):
    """What live generation relies on: the features emitted so far give the prefix of every step whose time plus the
    lookahead they cover, as the whole clip's features do."""
    from expotion.extractors.streams import feature_ready_times

    feats, rates = features(extracted[0], stream)
    ready = feature_ready_times(stream, feats[stream].shape[1])
    emitted = {name: x[:, : int((ready <= CUT_S + 1e-6).sum())] for name, x in feats.items()}
    causal, _ = adaptor_pair(lm, stream, {stream: feats[stream].shape[-1] if stream != "raft" else 2})
    steps = lm.pattern_provider.get_pattern(int(SECONDS * 50)).num_sequence_steps
    whole, partial = causal.prefix(feats, rates, steps), causal.prefix(emitted, rates, steps)
    for layer_whole, layer_partial in zip(whole, partial, strict=True):
        for a, b in zip(layer_whole, layer_partial, strict=True):
            torch.testing.assert_close(a[..., : STEP + 1, :], b[..., : STEP + 1, :], rtol=0, atol=1e-6)
