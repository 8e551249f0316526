"""Video–music alignment on synthetic videos and click tracks with known answers.

Two kinds of motion are used, because the two scores look at opposite events:
AV-Align pairs onsets with motion *peaks* (bursts), beat alignment pairs beats
with motion *stops* (kinematic beats). The burst video puts its bursts at the
click times; the oscillation video puts its stops there.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from eval_synth import burst_offsets, click_track, oscillation_offsets, write_pan_video
from scipy.special import erf

from expotion.data.media import MediaError
from expotion.evaluation import alignment, motion_onsets, rhythm
from expotion.evaluation.video import VideoClip

SR = 22050
SECONDS = 10.0
BURST_FPS = 24  # 250 ms is exactly 6 frames
# Bursts centred between two frames (i + 0.5), so one frame pair holds each burst's fastest motion.
BURST_FRAMES = np.array([12, 18, 40, 64, 70, 100, 130, 136, 160, 190, 215])
BURSTS = (BURST_FRAMES + 0.5) / BURST_FPS
OSC_FPS = 30


def clicks_at(times: np.ndarray, seconds: float = SECONDS, sr: int = SR) -> np.ndarray:
    out = np.zeros(int(seconds * sr), np.float32)
    click = click_track(60.0, 0.05, sr=sr, first_beat_s=0.0)
    for t in times:
        i = int(round(t * sr))
        n = min(len(click), len(out) - i)
        out[i : i + n] += click[:n]
    return out


def music_of(samples: np.ndarray, sr: int = SR, track_beats: bool = False) -> alignment.Music:
    from expotion.evaluation.audio import resample

    beats = rhythm.track_beats(resample(samples, sr, rhythm.SAMPLE_RATE)) if track_beats else np.zeros(0)
    return alignment.Music.from_arrays(motion_onsets.audio_onsets(samples, sr), beats)


@pytest.fixture(scope="module")
def burst_motion(tmp_path_factory) -> alignment.Motion:
    path = write_pan_video(tmp_path_factory.mktemp("v") / "bursts.mp4", burst_offsets(BURSTS, SECONDS, BURST_FPS),
                           BURST_FPS)
    return alignment.Motion.from_arrays(motion_onsets.video_motion(path))


@pytest.fixture(scope="module")
def oscillation_motion(tmp_path_factory) -> alignment.Motion:
    """A pan that stops and turns twice a second (at 0.5, 1.0, 1.5, ... s): 2 Hz motion."""
    path = write_pan_video(tmp_path_factory.mktemp("v") / "oscillation.mp4",
                           oscillation_offsets(2.0, SECONDS, OSC_FPS), OSC_FPS)
    return alignment.Motion.from_arrays(motion_onsets.video_motion(path))


# --- the building blocks, by hand ------------------------------------------------------------------------------------

def test_video_peaks_follow_the_reference_conventions():
    flow = np.array([0.0, 0.5, 0.2, 0.05, 0.09, 0.01, 0.3, 0.3, 0.1, 0.8])  # pair flows
    motion = alignment.Motion(flow, fps=10.0)
    # trajectory = [0.0, 0.0, 0.5, 0.2, 0.05, 0.09, 0.01, 0.3, 0.3, 0.1, 0.8]: frame 0 repeats frame 1.
    # Strict maxima >= 0.1: index 2 (0.5); index 5 (0.09) is under the threshold; the 0.3 plateau is no strict
    # maximum; the last frame cannot be one.
    np.testing.assert_allclose(motion.peaks(), [0.2])
    assert motion.window == pytest.approx(0.1)


def test_av_align_matches_each_video_peak_once_within_an_open_window():
    video = np.array([1.0, 2.0, 3.0])
    # 0.95 and 1.04 both fall in 1.0's window, but it is taken once; 2.1 is exactly on the edge (open interval).
    audio = np.array([0.95, 1.04, 2.1, 2.95])
    assert [(i, j) for i, j in alignment.matched_peaks(audio, video, 0.1)] == [(0, 0), (3, 2)]
    assert alignment.av_align(audio, video, 0.1) == pytest.approx(2 / (4 + 3 - 2))
    assert alignment.av_align(np.zeros(0), video, 0.1) == 0.0
    with pytest.raises(alignment.AlignmentFailure, match="undefined"):
        alignment.av_align(np.zeros(0), np.zeros(0), 0.1)


def test_beat_alignment_by_hand():
    sigma = alignment.BAS_SIGMA_S
    beats = np.array([1.0, 2.0])
    targets = np.array([1.03, 2.5, 3.0])
    expected = (math.exp(-0.03**2 / (2 * sigma**2)) + math.exp(-0.5**2 / (2 * sigma**2))) / 2
    assert alignment.beat_alignment(beats, targets) == pytest.approx(expected)
    assert alignment.beat_alignment(beats, np.zeros(0)) == 0.0
    assert math.isnan(alignment.beat_alignment(np.zeros(0), targets))


def test_beat_alignment_of_random_beats_is_at_its_analytic_chance_level():
    """Music beats at uniformly random times against kinematic beats every P seconds: each beat's distance to the
    nearest kinematic beat is uniform on [0, P/2], so E = (2/P) σ √(π/2) erf(P / (2√2 σ))."""
    period, sigma = 0.5, alignment.BAS_SIGMA_S
    kinematic = np.arange(0.0, 1000.0 + period, period)
    random_beats = np.random.default_rng(0).uniform(1.0, 999.0, 20000)
    chance = (2 / period) * sigma * math.sqrt(math.pi / 2) * erf(period / (2 * math.sqrt(2) * sigma))
    assert chance == pytest.approx(0.2507, abs=1e-4)
    assert alignment.beat_alignment(random_beats, kinematic) == pytest.approx(chance, abs=0.01)


def test_kinematic_beats_find_stops_between_samples():
    t = (np.arange(100) + 0.5) / 25.0  # sample times of pair flows at 25 fps
    stop = 2.0  # exactly between samples 49 and 50
    motion = alignment.Motion(np.abs(np.sin(np.pi * (t - stop) / 1.0)) * 3.0, fps=25.0)
    beats = motion.kinematic_beats()
    assert np.min(np.abs(beats - stop)) < 0.005


def test_autocorrelation_tempo_of_a_periodic_speed():
    fps = 25.0  # 2 Hz is 12.5 frames: the parabola has to find the fractional lag
    t = np.arange(250) / fps
    speed = np.abs(np.sin(2 * np.pi * 1.0 * t))  # |sin| at 1 Hz repeats every 0.5 s: 120 BPM
    assert alignment.autocorrelation_tempo(speed, fps) == pytest.approx(120.0, abs=1.0)
    assert math.isnan(alignment.autocorrelation_tempo(np.ones(250), fps))


def test_shifted_pairs_never_pair_a_clip_with_its_own_video():
    pairs = alignment.shifted_pairs(5, shifts=10, seed=0)
    assert all(a != v for a, v in pairs)
    assert sorted(pairs) == sorted({(a, v) for a in range(5) for v in range(5) if a != v})  # every wrong pair once
    few = alignment.shifted_pairs(5, shifts=2, seed=0)
    assert len(few) == 10 and all(a != v for a, v in few)
    assert sorted(few) == sorted(alignment.shifted_pairs(5, shifts=2, seed=0))
    assert alignment.shifted_pairs(1, shifts=10, seed=0) == []


# --- synthetic videos and click tracks -------------------------------------------------------------------------------

def test_farneback_flow_of_the_synthetic_bursts(burst_motion):
    assert burst_motion.fps == BURST_FPS
    assert burst_motion.duration == pytest.approx(SECONDS)
    # Each burst is a smooth 6 px step over ~3 frames; the video is otherwise still.
    assert burst_motion.pair_flow[BURST_FRAMES].min() > 2.0
    still = np.ones(len(burst_motion.pair_flow), bool)
    for f in BURST_FRAMES:
        still[f - 2 : f + 3] = False
    assert burst_motion.pair_flow[still].max() < alignment.PEAK_MIN_FLOW
    # One video peak per burst, at the frame ending the burst's fastest pair (the reference's i / fps).
    np.testing.assert_allclose(burst_motion.peaks(), (BURST_FRAMES + 1) / BURST_FPS)


def test_motion_from_decoded_frames_equals_motion_from_the_file(tmp_path):
    import av

    path = write_pan_video(tmp_path / "v.mp4", burst_offsets([0.5, 1.2], 2.0, BURST_FPS), BURST_FPS)
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    from_file = alignment.Motion.from_arrays(motion_onsets.video_motion(path))
    from_frames = alignment.Motion.from_frames(frames, BURST_FPS)
    np.testing.assert_array_equal(from_frames.pair_flow, from_file.pair_flow)
    assert from_frames.fps == from_file.fps


def test_motion_of_a_span_is_that_part_of_the_whole_file(tmp_path):
    """A clip cut from a source recording by a cached span: frames in [2, 6) s are frames 48..143 at 24 fps."""
    path = write_pan_video(tmp_path / "v.mp4", burst_offsets(BURSTS, SECONDS, BURST_FPS), BURST_FPS)
    whole = motion_onsets.video_motion(path)["pair_flow"]
    span = motion_onsets.video_motion(VideoClip(path, start_s=2.0, duration_s=4.0))
    assert span["fps"] == BURST_FPS
    np.testing.assert_array_equal(span["pair_flow"], whole[48:143])


def test_av_align_of_clicks_at_the_bursts(burst_motion):
    music = music_of(clicks_at(BURSTS))
    assert len(music.onsets) == len(BURSTS)
    assert alignment.av_align(music.onsets, burst_motion.peaks(), burst_motion.window) >= 0.95


def test_av_align_of_clicks_shifted_by_250_ms(burst_motion):
    """Shifted by 250 ms (6 frames), a click lands on a burst only where another burst sits 6 frames later:
    frames 12 -> 18, 64 -> 70 and 130 -> 136. So 3 of 11 clicks match: IoU = 3 / (11 + 11 - 3)."""
    later = set(BURST_FRAMES)
    hits = sum(int(f + 6 in later) for f in BURST_FRAMES)
    assert hits == 3
    expected = hits / (len(BURSTS) + len(BURSTS) - hits)
    music = music_of(clicks_at(BURSTS + 0.25))
    assert alignment.av_align(music.onsets, burst_motion.peaks(), burst_motion.window) == pytest.approx(expected)
    assert expected == pytest.approx(0.158, abs=1e-3)


def random_click_times(seed: int, n: int = 40, gap: float = 0.08, lo: float = 0.2, hi: float = SECONDS - 0.2) -> np.ndarray:
    """``n`` times spread uniformly over [lo, hi], at least ``gap`` apart so that each click gives its own onset."""
    rng = np.random.default_rng(seed)
    return lo + np.sort(rng.uniform(0, hi - lo - (n - 1) * gap, n)) + np.arange(n) * gap


def test_av_align_of_random_clicks_is_near_chance(burst_motion):
    """Onsets at random times: each falls in one of the n_v windows of ±1 frame with p = n_v · 2w / T, so
    E[matched] = n_a p and chance IoU = E[m] / (n_a + n_v - E[m]). Averaged over 8 random click tracks
    (their spread, std / √8, is about 0.011)."""
    peaks, w = burst_motion.peaks(), burst_motion.window
    scores, chances = [], []
    for seed in range(8):
        onsets = music_of(clicks_at(random_click_times(seed))).onsets
        assert len(onsets) == 40
        expected_matches = len(onsets) * len(peaks) * 2 * w / SECONDS
        chances.append(expected_matches / (len(onsets) + len(peaks) - expected_matches))
        scores.append(alignment.av_align(onsets, peaks, w))
    assert np.mean(chances) == pytest.approx(0.0775, abs=1e-3)
    assert np.mean(scores) == pytest.approx(np.mean(chances), abs=0.02)


def test_beat_alignment_of_clicks_at_the_stops(oscillation_motion):
    music = music_of(click_track(120.0, SECONDS, sr=SR, first_beat_s=0.5), track_beats=True)
    scores = alignment.score_clip(oscillation_motion, music)
    assert scores.values["bas_motion_music"] >= 0.95
    assert scores.values["bas_music_motion"] >= 0.95


def test_beat_alignment_of_clicks_shifted_by_250_ms(oscillation_motion):
    """Stops every 0.5 s, beats 250 ms after each: every distance is 0.25 s, so both directions give
    exp(-0.25² / 2σ²) = exp(-12.5)."""
    music = music_of(click_track(120.0, SECONDS, sr=SR, first_beat_s=0.75), track_beats=True)
    scores = alignment.score_clip(oscillation_motion, music)
    expected = math.exp(-(0.25**2) / (2 * alignment.BAS_SIGMA_S**2))
    assert expected == pytest.approx(3.7e-6, rel=0.01)
    for key in ("bas_motion_music", "bas_music_motion"):
        assert scores.values[key] == pytest.approx(expected, abs=1e-3)


def test_motion_tempo_against_120_and_60_bpm(oscillation_motion):
    assert oscillation_motion.tempo() == pytest.approx(120.0, abs=1.5)
    at_120 = alignment.score_clip(oscillation_motion, music_of(click_track(120.0, SECONDS, sr=SR), track_beats=True))
    assert at_120.music_tempo == pytest.approx(120.0, abs=1.5)
    assert at_120.values["motion_tempo_error"] < 3.0
    at_60 = alignment.score_clip(oscillation_motion, music_of(click_track(60.0, SECONDS, sr=SR), track_beats=True))
    assert at_60.music_tempo == pytest.approx(60.0, abs=1.5)
    assert at_60.values["motion_tempo_error_octave"] < 3.0
    assert at_60.values["motion_tempo_error"] == pytest.approx(60.0, abs=3.0)
    # Twice as many stops as beats: every beat has a stop, but only half the stops have a beat.
    assert at_60.values["bas_music_motion"] >= 0.95
    assert at_60.values["bas_motion_music"] == pytest.approx(0.5, abs=0.06)


# --- bad input: a reason, never a crash or a NaN ---------------------------------------------------------------------

def test_still_video_fails_with_a_reason(tmp_path):
    path = write_pan_video(tmp_path / "still.mp4", np.zeros(60), 24)
    motion = alignment.Motion.from_arrays(motion_onsets.video_motion(path))
    assert motion.peaks().size == 0
    with pytest.raises(alignment.AlignmentFailure, match="still video"):
        alignment.score_clip(motion, music_of(click_track(120.0, 2.5, sr=SR)))


def test_silent_audio_fails_with_a_reason(burst_motion):
    with pytest.raises(alignment.AlignmentFailure, match="silent audio"):
        alignment.score_clip(burst_motion, music_of(np.zeros(int(SECONDS * SR), np.float32)))


def test_video_shorter_than_one_second_fails_with_a_reason(tmp_path):
    path = write_pan_video(tmp_path / "short.mp4", burst_offsets([0.3], 0.75, 24), 24)
    motion = alignment.Motion.from_arrays(motion_onsets.video_motion(path))
    with pytest.raises(alignment.AlignmentFailure, match="video shorter than 1 s"):
        alignment.score_clip(motion, music_of(click_track(120.0, 2.0, sr=SR)))


def test_mismatched_durations_are_scored_on_the_overlap_with_a_note(burst_motion):
    """Audio of 6 s against the 10 s video: the bursts of the first 6 s all match, and the later video peaks
    do not count against the score."""
    first = BURSTS[BURSTS < 6.0 - 1 / BURST_FPS]
    music = music_of(clicks_at(first, seconds=6.0))
    scores = alignment.score_clip(burst_motion, music)
    assert scores.values["av_align"] == pytest.approx(1.0)
    assert scores.notes == ["durations differ (video 10.00 s, audio 6.00 s): scored on the first 6.00 s"]


def test_unreadable_video_is_a_media_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="bad.mp4"):
        motion_onsets.video_motion(bad)


def test_a_variable_frame_rate_video_is_timed_by_its_own_timestamps(tmp_path):
    """A phone-style file: a 30 fps grid with a quarter of its frames skipped, so 248 frames last 11 s (not 8.3 s).
    Every time eval derives (frames, peaks, kinematic beats, the duration) comes from the file's timestamps."""
    import av
    from conftest import moving_frames, write_video

    slots = [i for i in range(330) if i % 4 != 3]  # frame slots kept on the 30 fps grid
    path = write_video(tmp_path / "vfr.mp4", moving_frames(len(slots), 64, 80), fps=30,
                       pts=[round(i * 1000 / 30) for i in slots])
    with av.open(str(path)) as container:
        own = np.array([f.time for f in container.decode(video=0)])
    own -= own[0]
    arrays = motion_onsets.video_motion(path)
    np.testing.assert_allclose(arrays["frame_times"], own, atol=1e-9)
    motion = alignment.Motion.from_arrays(arrays)
    np.testing.assert_allclose(motion.times, own, atol=1e-9)
    assert motion.fps == pytest.approx(30.0, abs=0.5)  # the typical interval: one slot of the grid (ms-rounded)
    assert motion.duration == pytest.approx(own[-1] + 1 / motion.fps) and motion.duration == pytest.approx(11.0, abs=0.05)
    peaks = motion.peaks()
    assert len(peaks) and np.all(np.isin(peaks, own))  # peaks sit on real frames, at their own times
    assert np.all(np.diff(motion.speed_times()) == pytest.approx(1 / motion.fps))
    beats = motion.kinematic_beats()
    assert np.all((beats >= 0) & (beats <= own[-1]))
    from expotion.evaluation.video import frames_at_even_times

    chosen = frames_at_even_times(list(own), 30.0, 12)
    assert np.abs(own[chosen] - np.linspace(0, own[-1], 12)).max() < 2 / 30  # spread in time, not in frame count


def test_a_constant_rate_video_keeps_index_over_rate_times(tmp_path):
    path = write_pan_video(tmp_path / "v.mp4", burst_offsets(BURSTS, SECONDS, BURST_FPS), BURST_FPS)
    motion = alignment.Motion.from_arrays(motion_onsets.video_motion(path))
    assert motion.frame_times is None and motion.fps == BURST_FPS
    np.testing.assert_array_equal(motion.times, np.arange(len(motion.pair_flow) + 1) / BURST_FPS)
    assert motion.duration == (len(motion.pair_flow) + 1) / BURST_FPS
