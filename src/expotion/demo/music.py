"""Synthetic songs: a drum groove plus a chord pad, with exact beat, chord and break annotations.

The annotations are the ground truth the video renderer and the evaluation tests
rely on, so every onset in the audio is placed exactly at an annotated time.
A third of the bars (never the first) are breaks where the drums stop and the
performer holds still: a cue that slow video sampling, 2 to 4 frames a second,
still sees, unlike the beat itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
BEATS_PER_BAR = 4
PEAK_DBFS = -1.0
BREAK_FRACTION = 1 / 3

# Progressions as (semitones above the tonic, quality). The second chord always
# differs in quality from the first, so even a two-bar clip shows both a smile and
# a frown; later bars keep mixing qualities.
PROGRESSIONS: dict[str, tuple[tuple[tuple[int, str], ...], ...]] = {
    "major": (
        ((0, "maj"), (9, "min"), (5, "maj"), (7, "maj")),
        ((0, "maj"), (2, "min"), (7, "maj"), (0, "maj")),
        ((0, "maj"), (4, "min"), (5, "maj"), (7, "maj")),
    ),
    "minor": (
        ((0, "min"), (8, "maj"), (3, "maj"), (10, "maj")),
        ((0, "min"), (10, "maj"), (8, "maj"), (10, "maj")),
        ((0, "min"), (3, "maj"), (10, "maj"), (5, "min")),
    ),
}
TRIAD = {"maj": (0, 4, 7), "min": (0, 3, 7)}


@dataclass(frozen=True)
class Chord:
    """One bar's chord: pitch class of the root, quality and its degree in the key."""

    root: int
    quality: str
    degree: int


@dataclass(frozen=True)
class Song:
    """Everything needed to render a recording and to check it afterwards."""

    tempo_bpm: int
    key: int
    mode: str
    chords: tuple[Chord, ...]
    duration_s: float
    breaks: frozenset[int]

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def bar_s(self) -> float:
        return BEATS_PER_BAR * self.beat_s

    def beat_times(self) -> np.ndarray:
        """Onset time of every beat inside the recording (first beat at t = 0)."""
        n = int(math.floor(self.duration_s / self.beat_s - 1e-9)) + 1
        return np.arange(n) * self.beat_s

    def bar_index(self, t: float) -> int:
        return min(int(t // self.bar_s), len(self.chords) - 1)

    def beat_is_played(self, beat: int) -> bool:
        """Whether the drums (and the performer) mark this beat: false inside break bars."""
        return beat // BEATS_PER_BAR not in self.breaks

    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.key]} {self.mode}"


def draw_breaks(rng: np.random.Generator, n_bars: int) -> frozenset[int]:
    """``BREAK_FRACTION`` of the bars after the first, at random places so only the video can tell where."""
    n_breaks = int(round(n_bars * BREAK_FRACTION))
    return frozenset(int(b) for b in 1 + rng.choice(n_bars - 1, size=min(n_breaks, n_bars - 1), replace=False))


def plan_song(rng: np.random.Generator, tempo_bpm: int, mode: str, duration_s: float) -> Song:
    """Draw key, progression and breaks; the chord changes every bar and cycles every four."""
    key = int(rng.integers(12))
    options = PROGRESSIONS[mode]
    progression = options[int(rng.integers(len(options)))]
    n_bars = int(math.ceil(duration_s / (BEATS_PER_BAR * 60.0 / tempo_bpm)))
    chords = tuple(
        Chord((key + step) % 12, quality, step)
        for step, quality in (progression[b % len(progression)] for b in range(n_bars))
    )
    return Song(tempo_bpm, key, mode, chords, duration_s, draw_breaks(rng, n_bars))


def render_song(song: Song, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Mix drums and pad, normalised to ``PEAK_DBFS``; float32 mono of exactly the duration."""
    n = int(round(song.duration_s * sample_rate))
    mix = drums(song, rng, sample_rate, n) + pad(song, sample_rate, n)
    peak = float(np.max(np.abs(mix)))
    return (mix * (10 ** (PEAK_DBFS / 20) / peak)).astype(np.float32)


def butterworth(x: np.ndarray, sample_rate: int, lowpass_hz: float | None = None,
                highpass_hz: float | None = None, order: int = 4) -> np.ndarray:
    """Zero-phase filter with Butterworth magnitude, applied in the frequency domain.

    Done with numpy's FFT because importing ``scipy.signal`` costs about a second
    in every worker process, more than the filtering itself.
    """
    freqs = np.fft.rfftfreq(len(x), 1 / sample_rate)
    gain = np.ones_like(freqs)
    if lowpass_hz is not None:
        gain /= np.sqrt(1 + (freqs / lowpass_hz) ** (2 * order))
    if highpass_hz is not None:
        gain /= np.sqrt(1 + (highpass_hz / np.maximum(freqs, 1e-3)) ** (2 * order))
    return np.fft.irfft(np.fft.rfft(x) * gain, n=len(x))


def _place(out: np.ndarray, hit: np.ndarray, t: float, sample_rate: int) -> None:
    """Add ``hit`` to ``out`` starting at time ``t``, truncated at the end."""
    start = int(round(t * sample_rate))
    stop = min(len(out), start + len(hit))
    if start < stop:
        out[start:stop] += hit[: stop - start]


def kick(sample_rate: int) -> np.ndarray:
    """Sine with a fast downward pitch sweep: the classic electronic kick."""
    t = np.arange(int(0.3 * sample_rate)) / sample_rate
    freq = 48 + 110 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return np.sin(phase) * np.exp(-t / 0.11)


def snare(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Band-passed noise burst over a short 190 Hz body."""
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    noise = butterworth(rng.standard_normal(len(t)), sample_rate, lowpass_hz=7000, highpass_hz=1200, order=2)
    body = 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
    return 0.9 * noise * np.exp(-t / 0.07) + body


def hihat(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Very short high-passed noise: quiet so beats stay the dominant onsets."""
    t = np.arange(int(0.06 * sample_rate)) / sample_rate
    noise = butterworth(rng.standard_normal(len(t)), sample_rate, highpass_hz=min(7000, 0.4 * sample_rate))
    return 0.12 * noise * np.exp(-t / 0.015)


def drums(song: Song, rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, closed hi-hat on every eighth; silent in breaks."""
    out = np.zeros(n)
    sounds = {"kick": kick(sample_rate), "snare": snare(rng, sample_rate), "hat": hihat(rng, sample_rate)}
    for i, t in enumerate(song.beat_times()):
        if not song.beat_is_played(i):
            continue
        _place(out, sounds["kick" if i % 2 == 0 else "snare"], t, sample_rate)
        _place(out, sounds["hat"], t, sample_rate)
        _place(out, sounds["hat"], t + song.beat_s / 2, sample_rate)
    return out


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _voice(freq: float, t: np.ndarray) -> np.ndarray:
    """Two slightly detuned saws plus a triangle an octave down: a thick, warm tone."""
    saw = sum(2 * ((f * t) % 1.0) - 1 for f in (freq * 0.997, freq * 1.003)) / 2
    tri = 2 * np.abs(2 * ((0.5 * freq * t) % 1.0) - 1) - 1
    return 0.7 * saw + 0.3 * tri


def _envelope(n_hold: int, sample_rate: int) -> np.ndarray:
    """Linear attack, sustain over the bar, exponential release into the next bar."""
    attack = int(0.06 * sample_rate)
    release = int(0.25 * sample_rate)
    env = np.ones(n_hold + release)
    env[:attack] = np.linspace(0, 1, attack, endpoint=False)
    env[n_hold:] = np.exp(-np.arange(release) / (0.06 * sample_rate))
    return env


def chord_notes(chord: Chord) -> list[float]:
    """Bass root in octave 2, triad from octave 3, root doubled an octave up."""
    base = 48 + chord.root
    return [36 + chord.root] + [base + i for i in TRIAD[chord.quality]] + [base + 12]


def pad(song: Song, sample_rate: int, n: int) -> np.ndarray:
    """Chord pad following ``song.chords``, low-passed so the drums cut through."""
    out = np.zeros(n)
    n_bar = int(round(song.bar_s * sample_rate))
    env = _envelope(n_bar, sample_rate)
    t = np.arange(len(env)) / sample_rate
    for b, chord in enumerate(song.chords):
        tone = sum(_voice(_midi_hz(m), t) for m in chord_notes(chord))
        _place(out, 0.08 * tone * env, b * song.bar_s, sample_rate)
    return butterworth(out, sample_rate, lowpass_hz=1800)


TEMPO_WORDS = {
    "slow": ("laid-back", "mellow", "relaxed"),
    "medium": ("steady", "mid-tempo", "easygoing"),
    "fast": ("upbeat", "energetic", "driving"),
}
MODE_WORDS = {"major": ("bright", "happy", "warm"), "minor": ("moody", "melancholic", "dark")}
TEMPLATES = (
    "{tempo} pop groove at {bpm} BPM in {key} with drums and {mood} synth chords",
    "{mood}, {tempo} electronic track in {key}, {bpm} BPM, punchy drums and a soft synth pad",
    "{tempo} drum loop at {bpm} BPM with kick, snare and hi-hats under {mood} pad chords in {key}",
)


def tempo_class(tempo_bpm: int) -> str:
    return "slow" if tempo_bpm < 100 else "medium" if tempo_bpm < 120 else "fast"


def caption(song: Song, rng: np.random.Generator) -> str:
    """Text prompt built from the synthesis parameters, with some wording variety."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    tempo_words = TEMPO_WORDS[tempo_class(song.tempo_bpm)]
    mood_words = MODE_WORDS[song.mode]
    return template.format(
        tempo=tempo_words[int(rng.integers(len(tempo_words)))],
        mood=mood_words[int(rng.integers(len(mood_words)))],
        bpm=song.tempo_bpm,
        key=song.key_name(),
    )


def annotation(song: Song) -> dict:
    """JSON-ready ground truth: tempo, key, beat times (breaks included), chords and break bars."""
    return {
        "tempo_bpm": song.tempo_bpm,
        "key": NOTE_NAMES[song.key],
        "mode": song.mode,
        "duration_s": song.duration_s,
        "beat_times": [round(float(t), 6) for t in song.beat_times()],
        "chords": [
            {"bar": b, "start": round(b * song.bar_s, 6), "root": NOTE_NAMES[c.root], "quality": c.quality}
            for b, c in enumerate(song.chords)
        ],
        "breaks": sorted(song.breaks),
    }
