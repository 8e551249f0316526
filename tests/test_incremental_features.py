"""Features as frames arrive: pushing a clip's frames one at a time gives its offline features, each emitted with
the frame its last sample reads, with the face tracked causally and memory bounded by the streams' windows."""
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import moving_frames

from expotion.data.manifest import load_manifest
from expotion.data.media import ClipFrames, iter_clip_frames, probe_video
from expotion.extractors.bank import Extractors
from expotion.extractors.face import CausalFaceTracker, causal_track, smooth_track
from expotion.extractors.incremental import IncrementalFeatures

STREAMS = ("marlin", "synchformer", "raft", "clip", "farneback")
CLIP_S = 2.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the per-window model calls are small, and on a shared 2-core machine two threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_clip(small_demo):
    """The first 2 s of a demo recording (30 fps, 320x256) as decoded, with its manifest face box."""
    rec = load_manifest(small_demo)[0]
    fps = probe_video(rec.video).fps
    (_, clip), = iter_clip_frames(rec.video, [(0.0, CLIP_S)], 256)
    np.testing.assert_allclose(clip.times, np.arange(len(clip.frames)) / fps, atol=1e-9)
    return clip, fps, rec.face_box


@pytest.fixture(scope="module")
def runs(demo_clip, tiny_profile_cfg):
    """The offline features of the clip, and the incremental ones with what was out after each push."""
    clip, fps, box = demo_clip
    ex = Extractors(tiny_profile_cfg, STREAMS)
    n = len(clip.frames)
    offline = ex.video_features(clip, n / fps, box)
    live = IncrementalFeatures(ex, STREAMS, fps, clip.frames.shape[1:3], box, clip.scale)
    counts, complete = [], [live.complete_until_s()]
    for frame in clip.frames:
        live.push(frame)
        counts.append({k: len(v) for k, v in live.features().items()})
        complete.append(live.complete_until_s())
    live.finish()
    complete.append(live.complete_until_s())
    return ex, offline.arrays, live.features(), counts, complete


@pytest.mark.parametrize("stream", STREAMS)
def test_pushed_frames_give_the_offline_features(runs, stream):
    """Equal to float32 rounding: offline runs each encoder on batches of windows (8 MARLIN windows, 8 segments,
    8 flows, 16 CLIP frames), incrementally on one at a time, and CPU kernels may sum in another order for
    another batch shape. So each value is within 1e-5 of it relatively, or of the stream's largest magnitude
    absolutely (a value near zero: RAFT's six refinement steps carry the rounding on, measured 7e-7 of its
    largest). Farneback (OpenCV on each pair either way) and the masks are exact."""
    ex, offline, live, _, _ = runs
    keys = [k for k in offline if k == stream or k.startswith(f"{stream}_")]
    assert keys and sorted(keys) == sorted(k for k in live if k == stream or k.startswith(f"{stream}_"))
    for key in keys:
        got = live[key].numpy()
        assert got.shape == offline[key].shape and got.dtype == offline[key].dtype, key
        assert len(got) > 0
        if got.dtype == bool or stream == "farneback":
            assert np.array_equal(got, offline[key]), key
        else:
            scale = np.abs(offline[key]).max()
            np.testing.assert_allclose(got, offline[key], rtol=1e-5, atol=1e-5 * scale, err_msg=key)


def last_sample_times(stream: str, count: int, rates) -> np.ndarray:
    """The grid time of the last frame each of ``count`` features reads, from the streams' window sizes."""
    k = np.arange(count)
    if stream == "marlin":
        return (k * rates.marlin_stride + rates.marlin_window - 1) / rates.marlin_video_fps
    if stream == "synchformer":  # 8 tokens per segment, all read its last frame
        segment = k // rates.synchformer_tokens_per_segment
        return (segment * rates.synchformer_stride + rates.synchformer_segment - 1) / rates.synchformer_video_fps
    if stream in ("raft", "farneback"):  # a flow reads the second frame of its pair
        return (k + 1) / getattr(rates, f"{stream}_video_fps")
    return k / rates.clip_video_fps


@pytest.mark.parametrize("stream", STREAMS)
def test_each_feature_comes_with_the_last_frame_it_reads(runs, demo_clip, stream):
    """A feature is out right after the push of the source frame its last grid sample shows, not a frame later;
    complete_until_s is the last pushed frame's time, so every feature timed up to it is out."""
    ex, _, live, counts, complete = runs
    clip, fps, _ = demo_clip
    ready = last_sample_times(stream, len(live[stream]), ex.rates)
    shown = np.searchsorted(clip.times, ready + 1e-6, side="right") - 1  # the frame each reads, as sampled
    emitted_at = [next(i for i, c in enumerate(counts) if c[stream] > k) for k in range(len(ready))]
    assert emitted_at == list(shown)
    for i, c in enumerate(counts):
        assert c[stream] == (ready <= complete[i + 1]).sum() + ((ready > complete[i + 1]) & (shown <= i)).sum()
        assert (ready[: c[stream]] < (i + 1) / fps).all()


def test_complete_until_is_the_last_frame_then_the_end(runs, demo_clip):
    _, _, _, counts, complete = runs
    clip, fps, _ = demo_clip
    n = len(clip.frames)
    assert complete[0] == -np.inf
    assert complete[1:-1] == [i / fps for i in range(n)]
    assert complete[-1] == n / fps
    assert all(a <= b for a, b in zip(complete, complete[1:]))


def face_video(n: int, away: range) -> np.ndarray:
    """A photographed face moving sideways at 25 fps, gone during frames ``away``."""
    import matplotlib.cbook
    from PIL import Image

    portrait = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    face = np.asarray(portrait.resize((128, 160)))
    frames = np.zeros((n, 160, 192, 3), np.uint8)
    for i in range(n):
        if i not in away:
            x = int(32 + 30 * np.sin(i / 12))
            frames[i, :, x : x + 128] = face
    return frames


def test_causal_face_crops_match_offline_and_ignore_later_frames(tiny_profile_cfg):
    """With causal tracking, the MARLIN features of detected faces are the same pushed one frame at a time as
    offline; and offline, a face leaving later changes no window before it (it does with the default
    smoothing, which reads detections ahead)."""
    from dataclasses import replace

    fps, n = 25, int(4.0 * 25)
    frames = face_video(n, range(30, 70))  # away from 1.2 s to 2.8 s
    left = frames.copy()
    left[85:] = 0  # and in this copy, gone for good at 3.4 s
    clip = ClipFrames(frames, np.arange(n) / fps, 1.0)
    causal = Extractors(replace(tiny_profile_cfg, face_tracking="causal"), ("marlin",))
    offline = causal.video_features(clip, n / fps, None).arrays
    live = IncrementalFeatures(causal, ("marlin",), fps, frames.shape[1:3])
    for frame in frames:
        live.push(frame)
    live.finish()
    got = {k: v.numpy() for k, v in live.features().items()}
    mask = offline["marlin_mask"]
    assert mask[:5].all() and not mask.all()  # the face is found, and its absence (1.6 s) masked
    assert np.array_equal(got["marlin_mask"], mask)
    np.testing.assert_allclose(got["marlin"], offline["marlin"], rtol=1e-5, atol=1e-6)

    before = 17  # windows ending before 3.4 s (window k reads up to (16k + 15) / 80 s)
    gone = causal.video_features(ClipFrames(left, clip.times, 1.0), n / fps, None).arrays
    assert np.array_equal(gone["marlin_mask"][:before], mask[:before])  # (to rounding: other batches of windows)
    np.testing.assert_allclose(gone["marlin"][:before], offline["marlin"][:before], rtol=1e-5, atol=1e-6)
    smooth = Extractors(tiny_profile_cfg, ("marlin",))
    a = smooth.video_features(clip, n / fps, None).arrays
    b = smooth.video_features(ClipFrames(left, clip.times, 1.0), n / fps, None).arrays
    assert np.abs(a["marlin"][:before] - b["marlin"][:before]).max() > 1e-3


def test_causal_track_reads_only_earlier_detections():
    times = np.arange(10) / 5.0
    boxes = np.tile([10.0, 20.0, 50.0, 60.0], (10, 1)) + np.arange(10)[:, None]
    boxes[4] = np.nan
    query = np.arange(0, 2.0, 1 / 80)
    track, valid = causal_track(times, boxes, query)
    for q, box, ok in zip(query, track, valid, strict=True):
        seen = [b for t, b in zip(times, boxes, strict=True) if t <= q + 1e-6 and not np.isnan(b).any()]
        assert ok and np.array_equal(box, np.median(seen[-5:], axis=0))
    later = boxes.copy()
    later[6:] += 100  # detections after 1.2 s move: boxes before them do not
    moved, _ = causal_track(times, later, query)
    early = query < 1.2 - 1e-9
    assert np.array_equal(moved[early], track[early]) and not np.array_equal(moved[~early], track[~early])
    smooth, _ = smooth_track(times, later, query)
    assert not np.array_equal(smooth[early], smooth_track(times, boxes, query)[0][early])  # smoothing looks ahead
    tracker = CausalFaceTracker()
    tracker.add(0.0, boxes[0])
    tracker.add(1.0, boxes[1])
    assert np.array_equal(tracker.at(0.5)[0], boxes[0])  # the detection at 1 s is not read before 1 s
    with pytest.raises(ValueError, match="ask in time order"):
        tracker.at(0.2)
    tracker.add(1.2, np.full(4, np.nan))
    assert tracker.at(2.0)[1] is True and tracker.at(2.01)[1] is False  # a second after the last face found


def test_smooth_face_tracking_is_refused_without_a_box(tiny_profile_cfg):
    ex = Extractors(tiny_profile_cfg, ("marlin", "clip"))
    with pytest.raises(ValueError, match="face-tracking causal"):
        IncrementalFeatures(ex, ("marlin",), 25, (64, 80))
    IncrementalFeatures(ex, ("clip",), 25, (64, 80))  # no stream reads faces: nothing to track
    with pytest.raises(ValueError, match="not video streams"):
        IncrementalFeatures(ex, ("raft",), 25, (64, 80))
    live = IncrementalFeatures(ex, ("clip",), 25, (64, 80))
    with pytest.raises(ValueError, match=r"frame 0 is uint8 \(64, 81, 3\)"):
        live.push(np.zeros((64, 81, 3), np.uint8))


def held_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("streams", [
    ("marlin", "synchformer", "clip", "farneback"),
    pytest.param(STREAMS, marks=pytest.mark.slow),  # RAFT-small's 300 flows take about a minute on one core
])
def test_memory_is_bounded_by_the_windows_on_a_long_input(tiny_profile_cfg, streams):
    """60 s of 25 fps frames: the streams hold at most one window of samples each, and the memory in use grows
    between 20 s and 60 s by no more than the features emitted meanwhile (holding the frames would be 15 MB)."""
    ex = Extractors(tiny_profile_cfg, streams)
    fps, n = 25, 60 * 25
    frames = moving_frames(50, 64, 80)
    live = IncrementalFeatures(ex, streams, fps, (64, 80), (10, 10, 60, 60))
    bound = sum({"marlin": 16, "synchformer": 16, "raft": 2, "clip": 1, "farneback": 2}[s] for s in streams)
    tracemalloc.start()
    try:
        held, at_20 = [], None
        for i in range(n):
            live.push(frames[i % len(frames)])
            held.append(live.held_samples())
            if i == 20 * fps:
                at_20 = held_bytes(), sum(a.data.nbytes for a in live.emitted.values())
        grown = held_bytes() - at_20[0]
        features_grown = sum(a.data.nbytes for a in live.emitted.values()) - at_20[1]
    finally:
        tracemalloc.stop()
    assert max(held) == bound
    assert grown <= features_grown + 1_000_000, (grown, features_grown)
    live.finish()
    assert len(live.features()["farneback"]) == 60 * 4 - 1


def test_causal_face_tracking_is_a_recorded_extractor_option(tiny_profile_cfg):
    """Chosen for a cache with `expotion features --face-tracking causal`; recorded only when not the default,
    so caches written before the option keep their assignment."""
    import argparse
    from dataclasses import replace

    from expotion.precompute.command import add_arguments

    assert "face_tracking" not in tiny_profile_cfg.describe()
    assert replace(tiny_profile_cfg, face_tracking="causal").describe()["face_tracking"] == "causal"
    with pytest.raises(ValueError, match="face_tracking must be one of"):
        replace(tiny_profile_cfg, face_tracking="ahead")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--manifest", "m.csv", "--cache", "c"]).face_tracking == "smooth"
    chosen = parser.parse_args(["--manifest", "m.csv", "--cache", "c", "--face-tracking", "causal"])
    assert chosen.face_tracking == "causal"
