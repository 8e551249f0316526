"""Live sessions: a file played as a camera gives exactly offline generation's tokens (one window and several), the
wav grows valid, the latency log has its rows, and bad input gets one clear line."""
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import moving_frames, write_video

from expotion.cli.main import main as cli_main
from expotion.data.clips import ClipDataset
from expotion.extractors.long_video import video_features
from expotion.data.media import probe_video
from expotion.inference import ModelSettings, SamplingSettings, load_models
from expotion.inference.single import as_batch
from expotion.live.camera import FileCamera
from expotion.live.outputs import GrowingWav, read_latency_log
from expotion.live.reextracted_features import ReextractedFeatures
from expotion.live.session import LiveSession, LiveSettings
from expotion.extractors.incremental import IncrementalFeatures
from expotion.methods.expotion.adaptor import AdaptorConfig, CausalConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.methods.expotion.export import save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature
from expotion.musicgen.windows import generate_tokens

STREAMS = ("marlin", "synchformer")


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


@pytest.fixture(scope="module")
def checkpoint(musicgen, demo_cache, tmp_path_factory):
    """An Expotion adaptor on 2 s windows with open gates, so the video steers the tokens."""
    spec = ClipDataset(demo_cache[0] / "val", STREAMS, 2.0, False).spec
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(1.0)
    path = tmp_path_factory.mktemp("live-ckpt") / "adaptor.pt"
    return save_adaptor(path, adaptor, model_signature(musicgen), spec)


@pytest.fixture(scope="module")
def models(checkpoint, tiny_profile_cfg):
    return load_models(ModelSettings(checkpoint=checkpoint, musicgen=tiny_profile_cfg.musicgen, profile="tiny",
                                     tiny_dir=Path(tiny_profile_cfg.marlin_path).parent, device="cpu"))


@pytest.fixture(scope="module")
def causal_models(musicgen, demo_cache, tiny_profile_cfg, tmp_path_factory):
    """A live-capable model: Synchformer motion, the causal option with a 0.2 s lookahead, open gates."""
    spec = ClipDataset(demo_cache[0] / "val", ("synchformer",), 2.0, False).spec
    cfg = AdaptorConfig(2, VisualConfig(face=False), max_seconds=2.0, causal=CausalConfig(0.2))
    adaptor = ConditionAdaptor(musicgen.lm, cfg, spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(1.0)
    path = save_adaptor(tmp_path_factory.mktemp("live-causal") / "adaptor.pt", adaptor, model_signature(musicgen), spec)
    return load_models(ModelSettings(checkpoint=path, musicgen=tiny_profile_cfg.musicgen, profile="tiny",
                                     tiny_dir=Path(tiny_profile_cfg.marlin_path).parent, device="cpu"))


def demo_video(small_demo: Path, seconds: float, tmp_path: Path) -> Path:
    """The first demo recording cut to ``seconds`` (a synthetic face moving over a background)."""
    import av

    source = sorted(small_demo.parent.rglob("*.mp4"))[0]
    with av.open(str(source)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        fps = float(c.streams.video[0].average_rate)
    return write_video(tmp_path / "demo.mp4", np.stack(frames[: int(seconds * fps)]), fps=fps)


def offline_tokens(models, video: Path, seed: int) -> torch.Tensor:
    """What ``expotion generate`` samples for ``video`` (its features and call, without the wav)."""
    duration = probe_video(video).duration_s
    feats = video_features(models.extractors(), video, duration)
    return generate_tokens(models.musicgen, ["calm piano"], duration, models.conditioning, as_batch(feats.arrays),
                           models.rates, seed=seed, top_k=50)


@pytest.mark.parametrize("seconds", [1.6, 5.0], ids=["one-window", "four-windows"])
def test_live_tokens_equal_offline_generation(models, small_demo, tmp_path, seconds):
    video = demo_video(small_demo, seconds, tmp_path)
    camera = FileCamera(video, models.extractor_cfg.max_short_side, as_fast_as_possible=True)
    session = LiveSession(models, camera, "calm piano", SamplingSettings(seed=11, top_k=50), LiveSettings(chunk_s=0.4))
    result = session.run(tmp_path / "live.wav", tmp_path / "live.csv")
    expected = offline_tokens(models, video, seed=11)
    assert not result.stopped and result.tokens is not None
    assert torch.equal(result.tokens, expected)  # generation's own result
    assert torch.equal(result.codes, expected)  # and the codes streamed as they became final
    other = offline_tokens(models, video, seed=12)
    assert not torch.equal(other, expected)  # the seed matters, so equality is not an accident
    wav, sr = sf.read(result.wav)
    assert sr == 32000 and len(wav) == round(probe_video(video).duration_s * sr)
    rows = read_latency_log(result.log)
    assert [r.chunk for r in rows] == list(range(len(rows))) and rows[-1].video_end_s == pytest.approx(
        expected.shape[-1] / 50)
    for row in rows:
        assert row.ready_s >= row.arrival_s and row.latency_s == pytest.approx(row.ready_s - row.arrival_s, abs=2e-4)
        # a model conditioned on whole windows waits for the end of the chunk's window
        assert row.needed_video_s >= row.video_end_s - 1e-6


def test_a_causal_model_live_gives_offline_tokens_from_incremental_features_a_lookahead_ahead(causal_models,
                                                                                              small_demo, tmp_path):
    video = demo_video(small_demo, 5.0, tmp_path)
    camera = FileCamera(video, causal_models.extractor_cfg.max_short_side, as_fast_as_possible=True)
    session = LiveSession(causal_models, camera, "calm piano", SamplingSettings(seed=11, top_k=50),
                          LiveSettings(chunk_s=0.4))
    assert isinstance(session.features, IncrementalFeatures)
    result = session.run(tmp_path / "live.wav", tmp_path / "live.csv")
    expected = offline_tokens(causal_models, video, seed=11)
    assert torch.equal(result.tokens, expected) and torch.equal(result.codes, expected)
    rows = read_latency_log(result.log)
    # each chunk waited for the video up to its end, plus the codes its decode reads past it (6 frames) and the
    # delay pattern's (4 codebooks), plus the 0.2 s lookahead: not for its window's end
    assert all(row.needed_video_s <= row.video_end_s + (6 + 4) / 50 + 0.2 + 1e-6 for row in rows)
    assert rows[0].video_end_s == pytest.approx(0.4) and rows[0].needed_video_s < 1.0  # its window ends at 2 s


def test_live_command_writes_codes_wav_and_log_like_generate(models, checkpoint, tiny_profile_cfg, small_demo,
                                                             tmp_path, capsys):
    video = demo_video(small_demo, 3.0, tmp_path)
    out = tmp_path / "live.wav"
    code = cli_main(["live", "--video", str(video), "--out", str(out), "--codes", str(tmp_path / "codes.npy"),
                     "--checkpoint", str(checkpoint), "--prompt", "calm piano", "--seed", "5", "--top-k", "50",
                     "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--tiny-dir",
                     str(Path(tiny_profile_cfg.marlin_path).parent), "--device", "cpu", "--as-fast-as-possible"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "chunk 0: video 0.00-0.50 s, latency" in printed and "x real time" in printed
    codes = torch.from_numpy(np.load(tmp_path / "codes.npy"))
    assert torch.equal(codes, offline_tokens(models, video, seed=5))
    assert out.with_suffix(".latency.csv").is_file()
    generated = tmp_path / "generated.wav"
    assert cli_main(["generate", "--video", str(video), "--out", str(generated), "--checkpoint", str(checkpoint),
                     "--prompt", "calm piano", "--seed", "5", "--top-k", "50", "--musicgen", tiny_profile_cfg.musicgen,
                     "--profile", "tiny", "--tiny-dir", str(Path(tiny_profile_cfg.marlin_path).parent),
                     "--device", "cpu"]) == 0
    live, offline = sf.read(out)[0], sf.read(generated)[0]
    assert live.shape == offline.shape
    assert np.abs(live - offline).max() <= 2 / 32767  # chunked decoding, within 16-bit rounding


def test_a_file_plays_at_its_own_pace(models, small_demo, tmp_path):
    video = demo_video(small_demo, 1.0, tmp_path)
    camera = FileCamera(video, models.extractor_cfg.max_short_side).start()
    start, frames = time.perf_counter(), []
    while (frame := camera.next_frame(block=True)) is not None:
        frames.append(frame)
    assert len(frames) == round(camera.info.fps * 1.0)
    for frame in frames:  # released at its timestamp, not before
        assert frame.arrived - start >= frame.time_s - 0.01
    assert frames[-1].arrived - start == pytest.approx(frames[-1].time_s, abs=0.25)


def test_reextracted_features_equal_offline_features_as_frames_arrive(models, small_demo, tmp_path):
    video = demo_video(small_demo, 4.0, tmp_path)
    offline = video_features(models.extractors(), video, probe_video(video).duration_s).arrays
    camera = FileCamera(video, models.extractor_cfg.max_short_side, as_fast_as_possible=True).start()
    source = ReextractedFeatures(models.extractors(), models.streams, camera.info.fps, camera.info.size,
                                 scale=camera.info.scale)
    seen = 0
    while (frame := camera.next_frame(block=True)) is not None:
        source.push(frame.image)
        if len(source.images) % 20 == 0:
            feats = source.features()
            for name, tensor in feats.items():
                assert np.allclose(tensor.numpy(), offline[name][: len(tensor)].astype(tensor.numpy().dtype),
                                   atol=1e-6), name
                seen += len(tensor)
    source.finish()
    final = source.features()
    assert seen > 0 and set(final) == set(offline)
    for name, tensor in final.items():
        assert tensor.shape[0] == len(offline[name]), name


def test_the_wav_is_valid_after_every_chunk(tmp_path):
    path = tmp_path / "grow.wav"
    wav = GrowingWav(path, 32000)
    assert sf.info(path).frames == 0
    for k in range(1, 4):
        wav.append(np.full(1000, 0.25, np.float32))
        data, sr = sf.read(path)  # a player opening it mid-session
        assert sr == 32000 and len(data) == 1000 * k and np.allclose(data, 0.25, atol=1e-4)
    wav.close()
    header = path.read_bytes()[:44]
    assert struct.unpack("<I", header[40:44])[0] == 2 * 3000


def test_a_missing_camera_is_one_clear_line(tiny_profile_cfg, tmp_path, caplog):
    code = cli_main(["live", "--camera", "57", "--out", str(tmp_path / "o.wav"), "--prompt", "jazz",
                     "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--device", "cpu"])
    assert code == 2
    assert "camera 57: no camera at /dev/video57" in caplog.text
    assert not (tmp_path / "o.wav").exists()


def test_outputs_never_replace_the_video(tmp_path, tiny_profile_cfg, caplog):
    video = write_video(tmp_path / "v.mp4", moving_frames(25, 64, 80), fps=25)
    before = video.read_bytes()
    assert cli_main(["live", "--video", str(video), "--out", str(tmp_path / "o.wav"), "--log", str(video),
                     "--prompt", "jazz", "--musicgen", tiny_profile_cfg.musicgen, "--device", "cpu"]) == 2
    assert "--log" in caplog.text and "is the input video" in caplog.text and video.read_bytes() == before
