"""Generation: token equality with plain MusicGen at zero gates, exact durations, muxing, batch mode, bad input."""
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import moving_frames, write_video

from expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.checkpoint import save_adaptor
from expotion.cli import main as cli_main
from expotion.data import ClipDataset
from expotion.embedding import VisualConfig
from expotion.generation import GenerationError, generate_tokens
from expotion.musicgen import load_musicgen, model_signature

STREAMS = ("marlin", "synchformer")


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


@pytest.fixture(scope="module")
def spec(demo_cache):
    return ClipDataset(demo_cache[0] / "val", STREAMS, 2.0, False).spec


def adaptor_for(musicgen, spec, gate: float, seconds: float = 2.0) -> ConditionAdaptor:
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=seconds), spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(gate)
    return adaptor


def random_features(seconds: float) -> dict:
    from expotion.rates import DEFAULT_RATES as R

    return {"marlin": torch.randn(1, R.marlin_windows(seconds), 32), "synchformer": torch.randn(1, R.synchformer_tokens(seconds), 32)}


@pytest.mark.parametrize("duration", [1.5, 5.0], ids=["one-window", "long-form"])
def test_zero_gates_generate_plain_musicgen_tokens(musicgen, spec, duration):
    adaptor = adaptor_for(musicgen, spec, 0.0)  # window 2 s, stride 1 s: 5 s takes four windows
    ours = generate_tokens(musicgen, ["calm piano"], duration, adaptor, random_features(duration), spec.rates,
                           seed=7, top_k=50)
    musicgen.max_duration, kept = 2.0, musicgen.max_duration
    try:
        musicgen.set_generation_params(duration=duration, top_k=50, cfg_coef=3.0, extend_stride=1.0)
        torch.manual_seed(7)
        plain = musicgen.generate(["calm piano"], return_tokens=True)[1]
    finally:
        musicgen.max_duration = kept
    assert ours.shape == plain.shape == (1, 4, int(duration * 50))
    assert torch.equal(ours, plain)
    trained = generate_tokens(musicgen, ["calm piano"], duration, adaptor_for(musicgen, spec, 1.0),
                              random_features(duration), spec.rates, seed=7, top_k=50)
    assert not torch.equal(trained, plain)  # non-zero gates do steer generation


def test_each_window_gets_its_own_slice_of_the_video(musicgen, spec):
    adaptor = adaptor_for(musicgen, spec, 1.0)
    starts = []
    original = adaptor.prefix
    adaptor.prefix = lambda feats, rates, steps, start_s=None: starts.append(float(start_s[0])) or original(feats, rates, steps, start_s)
    generate_tokens(musicgen, ["x"], 4.0, adaptor, random_features(4.0), spec.rates, seed=0, top_k=20)
    assert starts == [0.0, 1.0, 2.0]


@pytest.fixture(scope="module")
def checkpoint(musicgen, spec, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "adaptor.pt"
    return save_adaptor(path, adaptor_for(musicgen, spec, 0.5, seconds=10.0), model_signature(musicgen), spec)


def tiny_args(tiny_profile_cfg) -> list[str]:
    return ["--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--tiny-dir",
            str(Path(tiny_profile_cfg.marlin_path).parent), "--top-k", "50"]


@pytest.mark.parametrize("seconds", [3.0, 10.0, 25.0])
def test_output_length_equals_video_length_and_mux(tmp_path, seconds, checkpoint, tiny_profile_cfg, caplog):
    fps = 25
    video = write_video(tmp_path / "v.mp4", moving_frames(int(seconds * fps), 96, 128), fps=fps)
    out, muxed = tmp_path / "out.wav", tmp_path / "out.mp4"
    code = cli_main(["generate", "--video", str(video), "--prompt", "upbeat pop", "--checkpoint", str(checkpoint),
                     "--out", str(out), "--mux", str(muxed), *tiny_args(tiny_profile_cfg)])
    assert code == 0
    wav, sr = sf.read(out)
    assert sr == 32000 and abs(len(wav) / sr - seconds) <= 1 / 50
    assert "no face detected: the face features are masked" in caplog.text  # moving squares carry no face
    with av.open(str(muxed)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        v_dur = float(v.duration * v.time_base)
        a_dur = float(a.duration * a.time_base)
        assert abs(v_dur - seconds) < 0.05 and abs(a_dur - v_dur) < 0.05
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == int(seconds * fps)  # the video stream was copied, frame for frame


def test_plain_musicgen_without_checkpoint(tmp_path, tiny_profile_cfg):
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    code = cli_main(["generate", "--video", str(video), "--prompt", "jazz", "--out", str(tmp_path / "o.wav"),
                     *tiny_args(tiny_profile_cfg)])
    assert code == 0 and sf.info(tmp_path / "o.wav").duration == pytest.approx(2.0, abs=0.02)


def test_batch_mode_writes_one_wav_per_clip(demo_cache, small_demo, checkpoint, tmp_path, tiny_profile_cfg, capsys):
    code = cli_main(["generate", "--cache", str(demo_cache[0] / "val"), "--out-dir", str(tmp_path / "gen"),
                     "--reference-dir", str(tmp_path / "ref"), "--checkpoint", str(checkpoint), *tiny_args(tiny_profile_cfg)])
    assert code == 0
    names = ["demo-002-000.wav", "demo-002-001.wav"]
    assert sorted(p.name for p in (tmp_path / "gen").glob("*.wav")) == names
    assert sorted(p.name for p in (tmp_path / "ref").glob("*.wav")) == names
    assert sf.info(tmp_path / "gen" / "demo-002-000.wav").duration == pytest.approx(2.0, abs=0.02)
    source, _ = sf.read(small_demo.parent / "audio" / "demo-002.wav", dtype="float32")
    reference, _ = sf.read(tmp_path / "ref" / "demo-002-001.wav", dtype="float32")
    assert np.abs(reference - source[64000:128000]).max() < 1e-3  # the second 2 s of the recording
    assert "generated 2 of 2 clips" in capsys.readouterr().out


def test_bad_inputs_get_clear_messages(tmp_path, checkpoint, tiny_profile_cfg, caplog, musicgen, spec):
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    base = ["generate", "--video", str(video), "--out", str(tmp_path / "o.wav"), *tiny_args(tiny_profile_cfg)]
    assert cli_main([*base, "--prompt", "   "]) == 2
    assert "prompt is empty" in caplog.text
    assert cli_main([*base, "--prompt", "la " * 1000]) == 2
    assert "keep it under 2000" in caplog.text
    empty = tmp_path / "empty.mp4"  # a video stream without a single frame (only audio packets)
    with av.open(str(empty), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = 64, 64
        a = c.add_stream("aac", rate=32000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 32000, 0
        c.mux(a.encode(frame))
        c.mux(a.encode(None))
    assert cli_main([*base[:2], str(empty), *base[3:], "--prompt", "x"]) == 2
    assert "empty.mp4: the video has no frames" in caplog.text
    from expotion.musicgen import TinyMusicGenConfig, save_tiny_musicgen

    other = save_tiny_musicgen(tmp_path / "mg6", TinyMusicGenConfig(num_layers=6))
    args = [*base, "--prompt", "x", "--checkpoint", str(checkpoint)]
    args[args.index("--musicgen") + 1] = str(other)
    assert cli_main(args) == 2
    assert "num_layers: checkpoint 4 vs model 6" in caplog.text
    wide = type(spec)({"marlin": (768,), "synchformer": (768,)}, spec.rates, spec.text_dim)
    wide_ckpt = save_adaptor(tmp_path / "wide.pt", ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig()),
                                                                   wide.dims, 50.0), model_signature(musicgen), wide)
    assert cli_main([*base, "--prompt", "x", "--checkpoint", str(wide_ckpt)]) == 2
    assert "adaptor expects 'marlin' features of shape (768,), the 'tiny' extractors give (32,)" in caplog.text
    with pytest.raises(GenerationError, match="prompt is empty"):
        generate_tokens(musicgen, [""], 1.0)
