"""A stream states its own facts where it is registered: a new stream, registered here alone, is stored by precompute
with its own dtype and rate and windowed by long-video extraction on its own grid, with no table elsewhere edited."""
from fractions import Fraction

import h5py
import numpy as np
import pytest
from conftest import CLIP_S, moving_frames, write_video
from conftest import precompute_config as config
from torch import nn

from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate, check_shape, sample_indices
from expotion.data.media import iter_clip_frames, probe_video
from expotion.data.shards import list_shards
from expotion.extractors.bank import STREAMS, Extractors, VideoFeatures
from expotion.extractors.long_video import plan_windows, video_features
from expotion.extractors.streams import Stream, rates_matching
from expotion.precompute.pipeline import run

FPS = 3.0  # the new stream's own rate: 3 frames a second, one vector per consecutive pair


def brightness_rate(rates: Rates) -> StreamRate:
    return StreamRate(FPS, 0.5 / FPS)  # centred between the two frames of its pair


def brightness(ex, model, clip, duration_s, face_box, out: VideoFeatures) -> None:
    """Mean brightness and its change between consecutive frames sampled at 3 fps."""
    frames = clip.frames[sample_indices(clip.times, FPS, Rates.frames_at(duration_s, FPS))].astype(np.float64)
    level = frames.mean(axis=(1, 2, 3))
    pairs = np.stack([level[1:], np.diff(level)], axis=1).astype(np.float32)
    check_shape("brightness", pairs.shape, (max(len(level) - 1, 0), 2), duration_s)
    out.arrays["brightness"] = pairs


@pytest.fixture
def registered(monkeypatch):
    stream = Stream("brightness", load=lambda path, device, cfg: nn.Identity(), rate=brightness_rate,
                    shape=lambda model, cfg: (2,), compute=brightness, pairwise=True, dtype=np.float32)
    monkeypatch.setitem(STREAMS, "brightness", stream)
    return stream


def test_precompute_stores_a_new_stream_with_its_own_dtype_and_rate(registered, small_demo, tiny_profile_cfg,
                                                                    tmp_path):
    summary = run(config(small_demo, tmp_path / "cache", tiny_profile_cfg, names=("brightness",)))
    assert summary.skipped == []
    shards = list_shards(tmp_path / "cache" / "train")
    assert shards
    with h5py.File(shards[0]) as f:
        clips = list(f["clips"])
        data = f["clips"][clips[0]]["brightness"]
        assert data.dtype == np.float32  # its own dtype, not the video features' float16
        assert data.shape == (int(CLIP_S * FPS) - 1, 2)  # pairwise: one fewer than its frames
        assert StreamRate.from_attrs(data.attrs) == brightness_rate(DEFAULT_RATES)
        assert set(f["clips"][clips[0]]) == {"brightness"}
    assert rates_matching(DEFAULT_RATES, {"brightness": brightness_rate(DEFAULT_RATES)}) == DEFAULT_RATES


def test_long_video_extraction_windows_a_new_stream_on_its_own_grid(registered, tiny_profile_cfg, tmp_path):
    windows = plan_windows(10.0, 1.6, DEFAULT_RATES, 5.0, ("brightness",))
    length = Fraction(5, 3)  # 1.6 s rounded to the stream's 1/3 s period
    assert [w.start_s for w in windows] == [float(k * length) for k in range(6)]
    assert windows[0].decode_s == pytest.approx(float(length) + 1 / FPS)  # a pair needs the frame after it
    ex = Extractors(tiny_profile_cfg, ("brightness",))
    video = write_video(tmp_path / "v.mp4", moving_frames(int(7.3 * 25), 48, 64), fps=25)
    duration = probe_video(video).duration_s
    (_, whole_clip), = iter_clip_frames(video, [(0.0, duration)], ex.cfg.max_short_side)
    whole = ex.video_features(whole_clip, duration)
    stitched = video_features(ex, video, duration, window_s=1.6)
    assert len(plan_windows(duration, 1.6, ex.rates, ex.cfg.face_detect_fps, ("brightness",))) == 4
    assert sorted(stitched.arrays) == ["brightness"]
    assert stitched.arrays["brightness"].shape == whole.arrays["brightness"].shape == (int(duration * FPS) - 1, 2)
    np.testing.assert_allclose(stitched.arrays["brightness"], whole.arrays["brightness"], rtol=1e-6)


def test_a_stream_states_when_its_vectors_are_ready_or_cannot_condition_a_causal_model(registered):
    from dataclasses import replace

    from expotion.extractors.streams import feature_ready_times

    assert all(stream.last_frame is not None for name, stream in STREAMS.items() if name != "brightness")
    with pytest.raises(ValueError, match="'brightness' stream does not state when its vectors are ready"):
        feature_ready_times("brightness", 4)
    timed = replace(registered, last_frame=lambda rates, i: (i + 1) / FPS)  # a pair is ready with its second frame
    assert feature_ready_times(timed, 3).tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
