"""Beat F1 on shifted beat lists, tempo from madmom on click tracks of known BPM, and the madmom import shim."""
from __future__ import annotations

import importlib.metadata
import math
import subprocess
import sys

import numpy as np
import pytest
from eval_synth import beat_times, click_track

from expotion.evaluation import rhythm

ORIGINAL_DISTRIBUTION = importlib.metadata.distribution


def test_madmom_imports_through_the_shim():
    madmom = rhythm.import_madmom()
    assert madmom.__version__ == "0.17.post1"
    assert rhythm.madmom_version() == "0.17.post1"
    assert importlib.metadata.distribution is ORIGINAL_DISTRIBUTION  # the patch is undone after the import


def test_beat_tracking_works_as_the_first_madmom_use_in_a_process():
    code = ("import numpy as np; from expotion.evaluation.rhythm import track_beats; "
            "print(len(track_beats(np.zeros(44100, np.float32))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()


@pytest.mark.parametrize(
    "shift_s, expected",
    [(0.0, 1.0), (0.05, 1.0), (-0.069, 1.0), (0.071, 0.0), (0.25, 0.0)],
)
def test_beat_f1_of_shifted_beats(shift_s, expected):
    """Every beat moved by the same offset: all hits inside the ±70 ms window, none outside."""
    ref = np.arange(1.0, 9.0, 0.5)
    assert rhythm.beat_f1(ref, ref + shift_s) == pytest.approx(expected)


def test_beat_f1_counts_partial_matches():
    ref = np.arange(1.0, 9.0, 0.5)  # 16 beats
    est = ref[::2]  # every other beat: precision 1, recall 1/2
    assert rhythm.beat_f1(ref, est) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    extra = np.sort(np.concatenate([ref, ref[:-1] + 0.25]))  # 31 beats, 16 hits: P = 16/31, R = 1
    assert rhythm.beat_f1(ref, extra) == pytest.approx(2 * (16 / 31) / (16 / 31 + 1))


def test_beat_f1_trimming_and_empty_lists():
    ref = np.arange(0.5, 9.0, 0.5)
    est = np.concatenate([ref[ref < 5.0] + 0.2, ref[ref >= 5.0]])  # wrong before 5 s, right after
    assert rhythm.beat_f1(ref, est, trim_s=5.0) == pytest.approx(1.0)
    assert rhythm.beat_f1(ref, est) < 0.6
    assert rhythm.beat_f1(ref, np.array([])) == 0.0
    assert rhythm.beat_f1(np.array([]), np.array([])) == 0.0


def test_tempo_from_beats_and_errors():
    assert rhythm.tempo_from_beats(np.arange(0, 10, 0.5)) == pytest.approx(120.0)
    assert math.isnan(rhythm.tempo_from_beats(np.array([1.0])))
    assert rhythm.tempo_error(90.0, 120.0) == 30.0
    assert rhythm.octave_tempo_error(60.0, 120.0) == 0.0
    assert rhythm.octave_tempo_error(240.0, 120.0) == 0.0
    assert rhythm.octave_tempo_error(130.0, 120.0) == pytest.approx(10.0)
    assert rhythm.octave_tempo_error(70.0, 120.0) == pytest.approx(20.0)  # 2 x 70 = 140


@pytest.mark.parametrize("bpm", [75.0, 100.0, 128.0])
def test_madmom_tempo_on_click_tracks(bpm):
    """The tracked tempo of a synthetic click track is within 1.5 BPM, and its beats match the clicks."""
    beats = rhythm.track_beats(click_track(bpm, 10.0, sr=rhythm.SAMPLE_RATE))
    assert abs(rhythm.tempo_from_beats(beats) - bpm) <= 1.5
    assert rhythm.beat_f1(beat_times(bpm, 10.0), beats) >= 0.9
