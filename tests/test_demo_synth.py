"""The synthetic demo dataset is well formed, reproducible, and its video follows its music."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from expotion.demo.synth import MANIFEST_COLUMNS, SAMPLE_RATE, TEMPO_RANGE, plan, synthesize_demo
from expotion.demo.video import Figure, draw_head, pose_at

N, DURATION, N_VAL, FPS, SIZE = 3, 4.0, 1, 30, (160, 128)


def _make(root: Path, seed: int) -> Path:
    return synthesize_demo(root, n_recordings=N, duration_s=DURATION, seed=seed, n_val=N_VAL, fps=FPS, size=SIZE)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def annotations(manifest: Path) -> dict:
    return json.loads((manifest.parent / "annotations.json").read_text())["recordings"]


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = np.concatenate([f.to_ndarray()[0] for f in c.decode(stream)])
        return samples, stream.sample_rate


def test_manifest_layout(manifest: Path, rows: list[dict[str, str]], annotations: dict) -> None:
    with manifest.open(newline="") as f:
        assert next(csv.reader(f)) == list(MANIFEST_COLUMNS) == ["id", "video", "audio", "caption", "split", "face_box"]
    assert [r["id"] for r in rows] == ["demo-000", "demo-001", "demo-002"]
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    for i, r in enumerate(rows):
        assert (manifest.parent / r["video"]).is_file()
        assert (r["audio"] != "") == (i % 2 == 0)
        if r["audio"]:
            assert (manifest.parent / r["audio"]).is_file()
        assert f"{annotations[r['id']]['tempo_bpm']} BPM" in r["caption"]
    assert set(annotations) == {r["id"] for r in rows}


def test_face_box_is_fixed_inside_frame_and_about_120px_at_full_size(rows: list[dict[str, str]]) -> None:
    x0, y0, x1, y1 = (int(v) for v in rows[0]["face_box"].split())
    assert {r["face_box"] for r in rows} == {rows[0]["face_box"]}
    assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1]
    fx0, fy0, fx1, fy1 = Figure(320, 256).face_box()
    assert 100 <= fx1 - fx0 <= 130 and 100 <= fy1 - fy0 <= 130


def test_head_stays_in_face_box_in_every_frame() -> None:
    fig = Figure(*SIZE)
    x0, y0, x1, y1 = fig.face_box()
    for rec in plan(N, DURATION, seed=0, n_val=N_VAL):
        for k in range(int(DURATION * FPS)):
            canvas = np.zeros((fig.height, fig.width, 3), np.float32)
            draw_head(canvas, fig, pose_at(rec.song, k / FPS))
            ys, xs = np.nonzero(canvas.any(axis=2))
            assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1


def test_wav_format(manifest: Path, rows: list[dict[str, str]]) -> None:
    info = sf.info(str(manifest.parent / rows[0]["audio"]))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert info.frames == round(DURATION * SAMPLE_RATE)


def test_mp4_video_and_audio_streams(manifest: Path, rows: list[dict[str, str]]) -> None:
    for r in rows:
        frames = _frames(manifest.parent / r["video"])
        assert frames.shape == (int(DURATION * FPS), SIZE[1], SIZE[0], 3)
        samples, rate = _audio(manifest.parent / r["video"])
        assert abs(len(samples) / rate - DURATION) < 0.05


def test_video_audio_is_the_wav_music(manifest: Path, rows: list[dict[str, str]]) -> None:
    wav, _ = sf.read(str(manifest.parent / rows[0]["audio"]), dtype="float32")
    aac, rate = _audio(manifest.parent / rows[0]["video"])
    assert rate == SAMPLE_RATE
    assert np.corrcoef(wav, aac[: len(wav)])[0, 1] > 0.95


def test_rerun_with_same_parameters_is_skipped(manifest: Path) -> None:
    before = manifest.stat().st_mtime_ns
    assert _make(manifest.parent, seed=0) == manifest
    assert manifest.stat().st_mtime_ns == before


def test_deterministic_per_seed(manifest: Path, rows: list[dict[str, str]], tmp_path: Path) -> None:
    wav = sf.read(str(manifest.parent / rows[0]["audio"]), dtype="int16")[0]
    first = _frames(manifest.parent / rows[0]["video"])[0]
    again, other = _make(tmp_path / "again", seed=0).parent, _make(tmp_path / "other", seed=1).parent
    assert np.array_equal(sf.read(str(again / rows[0]["audio"]), dtype="int16")[0], wav)
    assert np.array_equal(_frames(again / rows[0]["video"])[0], first)
    assert not np.array_equal(sf.read(str(other / rows[0]["audio"]), dtype="int16")[0], wav)
    assert not np.array_equal(_frames(other / rows[0]["video"])[0], first)


def _window_energy(x: np.ndarray, times: np.ndarray, half: float) -> float:
    h = int(half * SAMPLE_RATE)
    centres = (times * SAMPLE_RATE).astype(int)
    return float(np.mean([np.mean(x[max(0, c - h):c + h] ** 2) for c in centres if c + h <= len(x)]))


def _in_break(ann: dict, times: np.ndarray) -> np.ndarray:
    bar_s = 4 * 60 / ann["tempo_bpm"]
    return np.isin((times // bar_s).astype(int), ann["breaks"])


def test_audio_energy_peaks_on_annotated_beats_and_not_in_breaks(manifest: Path, rows: list[dict[str, str]],
                                                                   annotations: dict) -> None:
    for r in rows[::2]:
        ann = annotations[r["id"]]
        x, _ = sf.read(str(manifest.parent / r["audio"]), dtype="float32")
        beats = np.array(ann["beat_times"])
        beat_s = 60 / ann["tempo_bpm"]
        rest = _in_break(ann, beats)
        assert rest.any() and (~rest).any()
        played, silent = beats[~rest], beats[rest]
        assert _window_energy(x, played, 0.02) > 5 * _window_energy(x, played + beat_s / 2, 0.02)
        assert _window_energy(x, silent, 0.02) < 0.2 * _window_energy(x, played, 0.02)


def test_a_third_of_the_bars_after_the_first_are_breaks(annotations: dict) -> None:
    for ann in annotations.values():
        n_bars = len(ann["chords"])
        assert 0 not in ann["breaks"] and set(ann["breaks"]) <= set(range(1, n_bars))
        assert len(ann["breaks"]) == round(n_bars / 3)


def _motion_energy(frames: np.ndarray, face_box: tuple[int, int, int, int]) -> np.ndarray:
    """Mean absolute frame difference outside the face box: the arms only."""
    x0, y0, x1, y1 = face_box
    keep = np.ones(frames.shape[1:3], bool)
    keep[y0:y1, x0:x1] = False
    diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=3)
    return diff[:, keep].mean(axis=1)


def test_body_motion_pulses_at_the_tempo(manifest: Path, rows: list[dict[str, str]], annotations: dict) -> None:
    for r in rows:
        motion = _motion_energy(_frames(manifest.parent / r["video"]), Figure(*SIZE).face_box())
        beat_hz = annotations[r["id"]]["tempo_bpm"] / 60
        spectrum = np.abs(np.fft.rfft((motion - motion.mean()) * np.hanning(len(motion)), n=8192))
        freqs = np.fft.rfftfreq(8192, 1 / FPS)
        band = (freqs > 0.9 * TEMPO_RANGE[0] / 60) & (freqs < 6.0)  # above the breaks' on/off at bar rate
        peak = freqs[band][np.argmax(spectrum[band])]
        assert abs(peak / beat_hz - 1) < 0.05
        phase = (((np.arange(len(motion)) + 0.5) / FPS) * beat_hz) % 1.0
        near = np.minimum(phase, 1 - phase) < 0.15
        far = np.abs(phase - 0.5) < 0.15
        assert motion[near].mean() > 3 * motion[far].mean()


def test_the_body_holds_still_in_breaks(manifest: Path, rows: list[dict[str, str]], annotations: dict) -> None:
    """In break bars the arms rest, so the flow-rate cue (motion or none) is visible at any frame rate."""
    for r in rows:
        ann = annotations[r["id"]]
        motion = _motion_energy(_frames(manifest.parent / r["video"]), Figure(*SIZE).face_box())
        between = (np.arange(len(motion)) + 1) / FPS  # time of the later frame of each pair
        rest = _in_break(ann, between) & _in_break(ann, between - 1 / FPS)
        assert rest.sum() >= FPS // 4
        assert motion[rest].mean() < 0.05 * motion[~rest].mean()


def test_mouth_differs_between_major_and_minor_bars(manifest: Path, rows: list[dict[str, str]],
                                                    annotations: dict) -> None:
    fig = Figure(*SIZE)
    s = fig.s
    rows_, cols = (int(fig.head_y + 8 * s), int(fig.head_y + 40 * s)), (int(fig.cx - 20 * s), int(fig.cx + 20 * s))
    mouth = (slice(*rows_), slice(*cols))
    background = (slice(0, int(10 * s)), slice(0, int(20 * s)))
    checked = 0
    for r in rows:
        ann = annotations[r["id"]]
        bar_s = 4 * 60 / ann["tempo_bpm"]
        first, second = ann["chords"][:2]
        if second["start"] + bar_s / 2 >= DURATION:
            continue
        assert first["quality"] != second["quality"]
        frames = _frames(manifest.parent / r["video"])
        a, b = (frames[round((c["start"] + bar_s / 2) * FPS)].astype(np.float32) for c in (first, second))
        assert np.abs(a[mouth] - b[mouth]).mean() > 10
        assert np.abs(a[background] - b[background]).mean() < 3
        checked += 1
    assert checked >= 1
