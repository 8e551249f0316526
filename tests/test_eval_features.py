"""Front ends and inputs: chroma of pure tones, VGGish/PaSST framing, LanguageBind inputs, decoding and pairing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_synth import tone, write_video, write_wav

from expotion.data.media import MediaError
from expotion.evaluation import audio, chroma, languagebind, passt, vggish
from expotion.evaluation.files import InputError, pair_directories, read_captions
from expotion.evaluation.maths import chroma_cosine
from expotion.evaluation.video import frame_indices

A4 = 440.0


def semitones(n: int) -> float:
    return A4 * 2 ** (n / 12)


@pytest.fixture(scope="module")
def a4_chroma() -> np.ndarray:
    return chroma.chromagram(tone(A4, 2.0, chroma.SAMPLE_RATE))


@pytest.mark.parametrize(
    "freq, low, high",
    [
        (A4, 0.999, 1.0),  # the same tone
        (2 * A4, 0.99, 1.0),  # an octave up: the same pitch class
        (A4 / 2, 0.95, 1.0),  # an octave down
        (semitones(6), 0.0, 0.01),  # tritone (D#)
        (semitones(7), 0.0, 0.01),  # fifth (E)
        (semitones(3), 0.0, 0.01),  # minor third (C)
    ],
)
def test_chroma_cosine_of_pure_tones(a4_chroma, freq, low, high):
    other = chroma.chromagram(tone(freq, 2.0, chroma.SAMPLE_RATE))
    assert low <= chroma_cosine(a4_chroma, other) <= high


def test_chroma_of_a_tone_peaks_at_its_pitch_class(a4_chroma):
    assert a4_chroma.shape[0] == 12
    assert int(np.argmax(a4_chroma.mean(axis=1))) == 9  # librosa orders C, C#, ..., A is 9


@pytest.mark.parametrize("seconds, frames", [(10.0, 10), (0.5, 0), (0.975, 1), (1.95, 2), (3.0, 3)])
def test_vggish_frames_are_complete_096s_patches(seconds, frames):
    """25 ms windows every 10 ms; 96 frames a patch, no overlap, incomplete patch dropped."""
    patches = vggish.log_mel_examples(np.random.default_rng(0).normal(size=int(seconds * 16000)) * 0.1)
    assert patches.shape == (frames, 96, 64)


def test_vggish_mel_filters():
    weights = vggish.mel_matrix(512)
    assert weights.shape == (257, 64)
    assert np.all(weights[0] == 0)
    hz = np.linspace(0, 8000, 257)
    active = hz[weights.sum(axis=1) > 0]
    assert active.min() >= 125 and active.max() <= 7500
    assert weights.max() <= 1.0


def test_vggish_log_mel_of_a_tone_peaks_in_the_right_band():
    patches = vggish.log_mel_examples(tone(1000.0, 1.0, 16000))
    band = int(np.argmax(patches[0].mean(axis=0)))
    edges = np.linspace(vggish.hertz_to_mel(125.0), vggish.hertz_to_mel(7500.0), 66)
    assert abs(edges[band + 1] - vggish.hertz_to_mel(1000.0)) < (edges[1] - edges[0])


def test_passt_front_end_shape_for_10s():
    """10 s at 32 kHz gives 1000 frames of 128 bands, which PaSST's 16/10 patching turns into 12 x 99 patches."""
    mel = passt.MelFrontEnd()(torch.full((1, 320000), 0.01))
    assert tuple(mel.shape) == (1, 1, 128, 1000)
    model = passt.PaSST(dim=8, depth=1, mlp_hidden=8)  # the released patching with a narrow width
    assert tuple(model.patch_embed(mel).shape[-2:]) == (12, 99)
    assert (model.freq_new_pos_embed.shape[2], model.time_new_pos_embed.shape[3]) == (12, 99)


def test_audio_chunking():
    x = np.zeros(25 * 100)
    chunks = audio.split_chunks(x, 1000, 15)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [len(c) for c in audio.split_chunks(np.zeros(2010), 1000, 15)] == [1000, 1000]
    assert audio.split_chunks(np.zeros(10), 1000, 15) == []


def test_languagebind_audio_input_short_and_long():
    cfg = languagebind.TowerConfig(num_mel_bins=112, target_length=1036)
    short = languagebind.audio_input(np.random.default_rng(0).normal(size=16000 * 3).astype(np.float32), cfg)
    assert tuple(short.shape) == (1, 1, 3, 112, 1036)
    assert np.allclose(short[0, 0, 0], short[0, 0, 2])  # short audio: the three channels are equal
    long = np.random.default_rng(1).normal(size=16000 * 25).astype(np.float32)
    a, b = languagebind.audio_input(long, cfg), languagebind.audio_input(long, cfg)
    assert tuple(a.shape) == (1, 1, 3, 112, 1036)
    assert np.array_equal(a.numpy(), b.numpy())  # deterministic window choice
    assert not np.allclose(a[0, 0, 0], a[0, 0, 2])


def test_languagebind_video_input(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n_frames=12, size=(80, 64))
    cfg = languagebind.TowerConfig(add_time_attn=True, num_frames=8)
    x = languagebind.video_input(path, cfg)
    assert tuple(x.shape) == (1, 8, 3, 224, 224)
    assert list(frame_indices(12, 8)) == [0, 1, 3, 4, 6, 7, 9, 11]
    assert not np.allclose(x[0, 0], x[0, -1])  # the square has moved


def test_load_audio_wav_and_mp4(tmp_path):
    wav = write_wav(tmp_path / "a.wav", np.stack([tone(440, 1.0, 22050), np.zeros(22050, np.float32)], axis=1), 22050)
    samples, sr = audio.load_audio(wav)
    assert sr == 22050 and samples.shape == (22050,)
    assert np.max(np.abs(samples)) == pytest.approx(0.2, abs=0.01)  # stereo averaged
    up = audio.resample(samples, sr, 44100)
    assert len(up) == 44100
    with pytest.raises(MediaError, match="no audio stream"):
        audio.load_audio(write_video(tmp_path / "silent.mp4"))
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(MediaError, match="broken.wav"):
        audio.load_audio(tmp_path / "broken.wav")


def test_pairing_by_clip_id(tmp_path):
    for name in ("a.wav", "b.wav", "only_gen.wav", "notes.txt"):
        (tmp_path / "gen").mkdir(exist_ok=True)
        (tmp_path / "gen" / name).write_bytes(b"")
    for name in ("a.flac", "b.wav", "only_ref.wav"):
        (tmp_path / "ref").mkdir(exist_ok=True)
        (tmp_path / "ref" / name).write_bytes(b"")
    pairing = pair_directories(tmp_path / "gen", tmp_path / "ref")
    assert pairing.ids == ["a", "b"]
    assert pairing.reference["a"].name == "a.flac"
    assert pairing.only_generated == ["only_gen"] and pairing.only_reference == ["only_ref"]
    (tmp_path / "gen" / "a.mp3").write_bytes(b"")
    with pytest.raises(InputError, match="appears twice"):
        pair_directories(tmp_path / "gen", tmp_path / "ref")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "z.wav").write_bytes(b"")
    with pytest.raises(InputError, match="no clip id"):
        pair_directories(tmp_path / "other", tmp_path / "ref")


def test_captions_formats(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"a": "soft piano", "b": ""}))
    assert read_captions(tmp_path / "c.json") == {"a": "soft piano"}
    (tmp_path / "l.json").write_text(json.dumps([{"id": "a", "caption": "drums"}]))
    assert read_captions(tmp_path / "l.json") == {"a": "drums"}
    (tmp_path / "m.csv").write_text('id,video,caption\na,v.mp4,"slow, sad strings"\n')
    assert read_captions(tmp_path / "m.csv") == {"a": "slow, sad strings"}
    (tmp_path / "t.tsv").write_text("a\tbright brass\n\nb\tlow bass\n")
    assert read_captions(tmp_path / "t.tsv") == {"a": "bright brass", "b": "low bass"}
    (tmp_path / "bad.csv").write_text("name,text\na,b\n")
    with pytest.raises(InputError, match="'id' and 'caption'"):
        read_captions(tmp_path / "bad.csv")
