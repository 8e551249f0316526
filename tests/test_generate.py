"""Generation: token equality with plain MusicGen at zero gates, exact durations, muxing, batch mode, bad input,
the library API (progress, devices) and outputs that never destroy an input."""
import json
import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import moving_frames, write_video

from expotion.cli.main import main as cli_main
from expotion.core.outputs import OutputError
from expotion.data.clips import GENERIC_PROMPT, ClipDataset
from expotion.data.media import iter_clip_frames
from expotion.inference import ModelSettings, SamplingSettings, generate_for_cache, generate_for_video, load_models
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.methods.expotion.export import save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature
from expotion.musicgen.windows import (GenerationError, decoding_steps, default_extend_stride, generate_tokens,
                                       generation_windows)

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
    from expotion.core.rates import DEFAULT_RATES as R

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


def test_default_stride_is_half_a_window_capped_at_audiocrafts_18s(musicgen, spec):
    assert [default_extend_stride(w) for w in (10.0, 30.0, 40.0)] == [5.0, 15.0, 18.0]
    assert musicgen.max_duration == 30.0
    generate_tokens(musicgen, ["x"], 0.1, seed=0, top_k=20)
    assert musicgen.extend_stride == 15.0  # plain MusicGen, 30 s window
    generate_tokens(musicgen, ["x"], 0.1, adaptor_for(musicgen, spec, 0.0), random_features(1.0), spec.rates,
                    seed=0, top_k=20)
    assert musicgen.extend_stride == 1.0  # the 2 s adaptor window


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


def test_batch_mode_writes_one_wav_per_clip_and_its_video(demo_cache, small_demo, checkpoint, tmp_path,
                                                          tiny_profile_cfg, capsys):
    code = cli_main(["generate", "--cache", str(demo_cache[0] / "val"), "--out-dir", str(tmp_path / "gen"),
                     "--reference-dir", str(tmp_path / "ref"), "--mux-dir", str(tmp_path / "videos"),
                     "--checkpoint", str(checkpoint), *tiny_args(tiny_profile_cfg)])
    assert code == 0
    names = ["demo-002-000.wav", "demo-002-001.wav"]
    assert sorted(p.name for p in (tmp_path / "gen").glob("*.wav")) == names
    assert sorted(p.name for p in (tmp_path / "ref").glob("*.wav")) == names
    assert sf.info(tmp_path / "gen" / "demo-002-000.wav").duration == pytest.approx(2.0, abs=0.02)
    source, _ = sf.read(small_demo.parent / "audio" / "demo-002.wav", dtype="float32")
    reference, _ = sf.read(tmp_path / "ref" / "demo-002-001.wav", dtype="float32")
    assert np.abs(reference - source[64000:128000]).max() < 1e-3  # the second 2 s of the recording
    out = capsys.readouterr().out
    assert "generated 2 of 2 clips" in out and "wrote 2 of 2 clip videos" in out

    # --mux-dir: each clip's span of the source video (2-4 s for clip 001), with its generated music
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["demo-002-000.mp4", "demo-002-001.mp4"]
    video = small_demo.parent / "videos" / "demo-002.mp4"
    with av.open(str(tmp_path / "videos" / "demo-002-001.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert float(v.duration * v.time_base) == pytest.approx(2.0, abs=1 / 30 + 1e-3)
        assert float(a.duration * a.time_base) == pytest.approx(2.0, abs=0.05)
        clip = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    spans = {start: frames for start in (0.0, 2.0)
             for _, frames in iter_clip_frames(video, [(start, 2.0)], max_short_side=4096)}
    assert len(clip) == len(spans[2.0].frames) == 60  # 2 s at 30 fps
    right = np.abs(clip - spans[2.0].frames).mean()
    wrong = np.abs(clip - spans[0.0].frames).mean()
    assert right < 2.0 and right < 0.25 * wrong, (right, wrong)  # H.264 re-encoding error only


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
    from expotion.musicgen.loading import TinyMusicGenConfig, save_tiny

    other = save_tiny(tmp_path / "mg6", cfg=TinyMusicGenConfig(num_layers=6))
    args = [*base, "--prompt", "x", "--checkpoint", str(checkpoint)]
    args[args.index("--musicgen") + 1] = str(other)
    assert cli_main(args) == 2
    assert "num_layers: checkpoint 4 vs model 6" in caplog.text
    wide = type(spec)({"marlin": (768,), "synchformer": (768,)}, spec.rates, spec.text_dim)
    wide_ckpt = save_adaptor(tmp_path / "wide.pt", ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig()),
                                                                   wide.dims, 50.0), model_signature(musicgen), wide)
    assert cli_main([*base, "--prompt", "x", "--checkpoint", str(wide_ckpt)]) == 2
    assert "adaptor expects 'marlin' features of shape (768,), the 'tiny' extractors' output has (32,)" in caplog.text
    with pytest.raises(GenerationError, match="prompt is empty"):
        generate_tokens(musicgen, [""], 1.0)


def refuse_model_loading(monkeypatch) -> None:
    """Make loading any model fail the test: the checks under test must refuse before that."""
    import expotion.cli.generate

    monkeypatch.setattr(expotion.cli.generate, "load_models", lambda *a, **k: pytest.fail("models were loaded"))


@pytest.mark.parametrize("stride", [0.0, -5.0, 0.001], ids=["zero", "negative", "under-one-frame"])
def test_generation_windows_refuse_a_stride_that_never_advances(stride):
    import signal

    def hung(*_):
        raise TimeoutError("generation_windows did not return in 5 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(GenerationError, match="extend stride .* must be positive"):
            generation_windows(11.0, 10.0, stride, 50.0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("stride, says", [("0", "argument --extend-stride: must be greater than 0"),
                                          ("-3", "argument --extend-stride: must be greater than 0"),
                                          ("10", "--extend-stride 10: must be in (0, 10) seconds"),
                                          ("45", "--extend-stride 45: must be in (0, 10) seconds")])
def test_extend_stride_outside_the_window_is_refused_before_models_load(stride, says, tmp_path, checkpoint,
                                                                         tiny_profile_cfg, caplog, capsys,
                                                                         monkeypatch):
    refuse_model_loading(monkeypatch)
    video = write_video(tmp_path / "v.mp4", moving_frames(20, 64, 80), fps=25)
    argv = ["generate", "--video", str(video), "--out", str(tmp_path / "o.wav"), "--prompt", "x", "--checkpoint",
            str(checkpoint), *tiny_args(tiny_profile_cfg), f"--extend-stride={stride}"]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:  # argparse's refusal
        code = exit_.code
    assert code == 2
    errors = [line for line in (caplog.text + capsys.readouterr().err).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and says in errors[0]
    assert not (tmp_path / "o.wav").exists()


def test_extend_stride_is_checked_against_plain_musicgens_window_before_loading(tmp_path, tiny_profile_cfg,
                                                                              caplog, monkeypatch):
    refuse_model_loading(monkeypatch)
    video = write_video(tmp_path / "v.mp4", moving_frames(20, 64, 80), fps=25)
    assert cli_main(["generate", "--video", str(video), "--out", str(tmp_path / "o.wav"), "--prompt", "x",
                     *tiny_args(tiny_profile_cfg), "--extend-stride", "30"]) == 2
    assert "--extend-stride 30: must be in (0, 30) seconds" in caplog.text  # the tiny MusicGen's 30 s segments


def test_mux_onto_the_input_video_is_refused_and_leaves_it_intact(tmp_path, checkpoint, tiny_profile_cfg, caplog,
                                                                  monkeypatch):
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    refuse_model_loading(monkeypatch)
    original = video.read_bytes()
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(video, tmp_path / "hard.mp4")
    base = ["generate", "--video", str(video), "--prompt", "pop", "--checkpoint", str(checkpoint),
            *tiny_args(tiny_profile_cfg)]
    for target in (video, tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "sub" / ".." / "v.mp4"):
        caplog.clear()
        assert cli_main([*base, "--out", str(tmp_path / "o.wav"), "--mux", str(target)]) == 2
        assert f"muxed video {target} is the input video {video}: writing it would destroy the input video" in caplog.text
        assert video.read_bytes() == original
    assert cli_main([*base, "--out", str(tmp_path / "link.mp4")]) == 2  # the wav onto the video, through a symlink
    assert "output wav" in caplog.text and video.read_bytes() == original
    assert cli_main([*base, "--out", str(tmp_path / "o.wav"), "--mux", str(tmp_path / "o.wav")]) == 2
    assert "is the output wav" in caplog.text
    assert not (tmp_path / "o.wav").exists()


def test_missing_mux_folder_is_created_and_a_blocked_one_refused_before_generation(tmp_path, tiny_profile_cfg, caplog,
                                                                                    monkeypatch):
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    base = ["generate", "--video", str(video), "--prompt", "jazz", *tiny_args(tiny_profile_cfg)]
    muxed = tmp_path / "new" / "deeper" / "o.mp4"
    assert cli_main([*base, "--out", str(tmp_path / "o.wav"), "--mux", str(muxed)]) == 0
    with av.open(str(muxed)) as c:
        assert c.streams.video and c.streams.audio
    assert [p.name for p in muxed.parent.iterdir()] == ["o.mp4"]  # no temporary left behind
    (tmp_path / "blocker").write_text("a file where a folder should be")
    refuse_model_loading(monkeypatch)
    assert cli_main([*base, "--out", str(tmp_path / "o2.wav"), "--mux", str(tmp_path / "blocker" / "o.mp4")]) == 2
    assert f"muxed video {tmp_path / 'blocker' / 'o.mp4'}: cannot create its folder" in caplog.text
    assert not (tmp_path / "o2.wav").exists()


def test_batch_prompts_come_from_the_flag_the_file_or_the_checkpoint(demo_cache, small_demo, musicgen, spec, tmp_path,
                                                                      tiny_profile_cfg, caplog):
    """Each clip's prompt: its cached caption; --prompts (here the manifest, by recording id: the same captions, so
    the same music); --prompt for every clip; or the generic prompt of a checkpoint trained with it (§4.5)."""
    torch.manual_seed(0)
    adaptor = adaptor_for(musicgen, spec, 0.5, seconds=10.0)
    captions = save_adaptor(tmp_path / "captions.pt", adaptor, model_signature(musicgen), spec)
    generic = save_adaptor(tmp_path / "generic.pt", adaptor, model_signature(musicgen),
                           replace(spec, prompt=GENERIC_PROMPT))

    def batch(name: str, checkpoint: Path, *extra: str) -> tuple[dict[str, str], dict[str, bytes]]:
        out = tmp_path / name
        assert cli_main(["generate", "--cache", str(demo_cache[0] / "val"), "--out-dir", str(out), "--checkpoint",
                         str(checkpoint), *tiny_args(tiny_profile_cfg), *extra]) == 0
        prompts = json.loads((out / "summary.json").read_text())["prompts"]
        return prompts, {p.name: p.read_bytes() for p in sorted(out.glob("*.wav"))}

    cached, music = batch("cached", captions)
    assert list(cached) == ["demo-002-000", "demo-002-001"]
    assert set(cached.values()) == {"mid-tempo pop groove at 110 BPM in B major with drums and bright synth chords"}
    assert batch("file", captions, "--prompts", str(small_demo)) == (cached, music)
    jazz, jazz_music = batch("flag", captions, "--prompt", "slow jazz")
    assert set(jazz.values()) == {"slow jazz"} and jazz_music.keys() == music.keys() and jazz_music != music
    assert batch("generic", generic) == batch("generic-flag", captions, "--prompt", GENERIC_PROMPT)
    assert set(batch("generic", generic)[0].values()) == {GENERIC_PROMPT}

    (tmp_path / "partial.json").write_text(json.dumps({"demo-002-000": "calm"}))
    base = ["generate", "--cache", str(demo_cache[0] / "val"), "--out-dir", str(tmp_path / "bad"), "--checkpoint",
            str(captions), *tiny_args(tiny_profile_cfg)]
    for extra, message in (
            (["--prompts", str(tmp_path / "partial.json")],
             f"{tmp_path / 'partial.json'}: no prompt for 1 of the 2 clips, by clip or recording id: demo-002-001"),
            (["--prompts", str(tmp_path / "partial.json"), "--prompt", "x"], "give one of --prompt, --prompts and --captions"),
            (["--prompts", str(tmp_path / "none.json")], f"--prompts {tmp_path / 'none.json'}: file not found")):
        caplog.clear()
        assert cli_main([*base, *extra]) == 2
        assert message in caplog.text
    assert not list((tmp_path / "bad").glob("*.wav"))
    video = write_video(tmp_path / "v.mp4", moving_frames(25, 64, 80), fps=25)
    assert cli_main(["generate", "--video", str(video), "--out", str(tmp_path / "v.wav"), "--prompts",
                     str(small_demo), *tiny_args(tiny_profile_cfg)]) == 2
    assert "--prompts gives the prompts of a cached split's clips (--cache); for one video, use --prompt" in caplog.text


def test_outputs_the_writers_cannot_make_are_refused_before_generation(tmp_path, demo_cache, checkpoint,
                                                                        tiny_profile_cfg, caplog, monkeypatch):
    """The writers pick the format from the name, and a batch's reference and generated wavs share names: both
    would fail or destroy work only after generating, so they are refused first."""
    video = write_video(tmp_path / "v.mp4", moving_frames(25, 64, 80), fps=25)
    single = ["generate", "--video", str(video), "--prompt", "pop", *tiny_args(tiny_profile_cfg)]
    batch = ["generate", "--cache", str(demo_cache[0] / "val"), "--checkpoint", str(checkpoint),
             *tiny_args(tiny_profile_cfg)]
    (tmp_path / "alias").symlink_to(tmp_path / "gen", target_is_directory=True)
    cases = {
        (*single, "--out", str(tmp_path / "o.m4a")): f"output wav {tmp_path / 'o.m4a'}: the file name must end in .wav",
        (*single, "--out", str(tmp_path / "o")): f"output wav {tmp_path / 'o'}: the file name must end in .wav",
        (*single, "--out", str(tmp_path / "o.wav"), "--mux", str(tmp_path / "o.avi")):
            f"muxed video {tmp_path / 'o.avi'}: the file name must end in .mp4 or .mov or .mkv",
        (*batch, "--out-dir", str(tmp_path / "gen"), "--reference-dir", str(tmp_path / "alias")):
            f"--reference-dir {tmp_path / 'alias'} is --out-dir {tmp_path / 'gen'}: each clip's generated wav would "
            "replace its reference",
    }
    refuse_model_loading(monkeypatch)
    for args, message in cases.items():
        caplog.clear()
        assert cli_main(list(args)) == 2, message
        assert message in caplog.text
    assert not list(tmp_path.glob("o*"))
    models = load_models(ModelSettings(checkpoint=checkpoint, profile="tiny",
                                       tiny_dir=Path(tiny_profile_cfg.marlin_path).parent,
                                       musicgen=tiny_profile_cfg.musicgen))
    with pytest.raises(OutputError, match="generated wav would replace its reference"):
        generate_for_cache(models, demo_cache[0] / "val", tmp_path / "gen", reference_dir=tmp_path / "gen")


@pytest.fixture(scope="module")
def short_window_checkpoint(musicgen, spec, tmp_path_factory):
    """An adaptor trained on 2 s windows, so a 5 s video takes four windows."""
    path = tmp_path_factory.mktemp("ckpt2") / "adaptor.pt"
    return save_adaptor(path, adaptor_for(musicgen, spec, 0.5, seconds=2.0), model_signature(musicgen), spec)


def test_library_api_reports_progress_over_all_windows(tmp_path, short_window_checkpoint, tiny_profile_cfg):
    """No argparse: settings, models loaded once, a progress callback; one total over every window."""
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    models = load_models(ModelSettings(checkpoint=short_window_checkpoint, musicgen=tiny_profile_cfg.musicgen,
                                       profile="tiny", tiny_dir=tiny_dir, device="cpu"))
    video = write_video(tmp_path / "v.mp4", moving_frames(125, 64, 80), fps=25)
    events = []
    result = generate_for_video(models, video, "calm piano", tmp_path / "o.wav", sampling=SamplingSettings(top_k=50),
                                progress=lambda stage, done, total: events.append((stage, done, total)))
    steps = [(done, total) for stage, done, total in events if stage == "generate"]
    windows = generation_windows(5.0, 2.0, 1.0, 50.0)
    expected = sum(decoding_steps(models.musicgen.lm, w) for w in windows)
    assert len(windows) == 4 and {total for _, total in steps} == {expected}
    assert [done for done, _ in steps] == list(range(1, expected + 1))  # one bar from 0 to its total
    assert [stage for stage, *_ in events if stage != "generate"] == ["faces", "features"]
    assert list(result.timings) == ["video features", "music", "audio"]
    assert sf.info(result.wav).duration == pytest.approx(5.0, abs=0.02)


def test_cli_shows_one_bar_with_a_total_and_times_every_stage(tmp_path, short_window_checkpoint, tiny_profile_cfg,
                                                              capsys):
    video = write_video(tmp_path / "v.mp4", moving_frames(125, 64, 80), fps=25)
    start = time.perf_counter()
    assert cli_main(["generate", "--video", str(video), "--prompt", "pop", "--checkpoint", str(short_window_checkpoint),
                     "--out", str(tmp_path / "o.wav"), *tiny_args(tiny_profile_cfg)]) == 0
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    totals = set(re.findall(r"music:\s+\d+%\|[^|]*\|\s*\d+/(\d+)", captured.err))
    assert len(totals) == 1, captured.err[-2000:]  # one bar over all four windows, always with its total
    assert not re.search(r"^\s*\d+ /\s+\d+", captured.err, re.M)  # no bare counts
    took = re.search(r"took ([\d.]+) s from the command's start: (.*)", captured.out)
    stages = {name.strip(): float(value) for name, value in re.findall(r"([a-z ]+) ([\d.]+) s", took.group(2))}
    assert list(stages) == ["imports and checks", "loading models", "video features", "music", "audio"]
    assert sum(stages.values()) == pytest.approx(float(took.group(1)), abs=0.3)
    assert float(took.group(1)) == pytest.approx(elapsed, abs=0.2)  # the whole command, models and features included


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_every_model_runs_on_the_device_with_a_bfloat16_adaptor(device, tmp_path, checkpoint, musicgen, spec,
                                                                 tiny_profile_cfg):
    models = load_models(ModelSettings(checkpoint=checkpoint, musicgen=tiny_profile_cfg.musicgen, profile="tiny",
                                       tiny_dir=Path(tiny_profile_cfg.marlin_path).parent, device=device,
                                       adaptor_dtype="bfloat16"))
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    result = generate_for_video(models, video, "pop", tmp_path / "o.wav", face_box=(10, 10, 50, 50),
                                sampling=SamplingSettings(top_k=50))
    wav, _ = sf.read(result.wav)
    assert len(wav) == 64000 and np.isfinite(wav).all()
    devices = models.devices()
    assert {"musicgen.lm", "musicgen.compression_model", "conditioner.description", "conditioning", "extractor.marlin",
            "extractor.synchformer"} <= set(devices)
    expected = str(torch.device(device, 0) if device == "cuda" else torch.device(device))
    assert all(found == {expected} for found in devices.values()), devices
    assert {p.dtype for p in models.conditioning.parameters()} == {torch.bfloat16}
    # at zero gates a bfloat16 adaptor still leaves MusicGen's tokens exactly as they were
    with torch.no_grad():
        models.conditioning.gates.zero_()
    feats = random_features(1.0)
    ours = generate_tokens(models.musicgen, ["pop"], 1.0, models.conditioning, feats, spec.rates, seed=3, top_k=50)
    plain = generate_tokens(models.musicgen, ["pop"], 1.0, seed=3, top_k=50)
    assert torch.equal(ours, plain)


def test_device_defaults_to_cuda_when_present_and_cuda_without_it_is_refused(tmp_path, tiny_profile_cfg, caplog):
    assert ModelSettings().device == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        return
    video = write_video(tmp_path / "v.mp4", moving_frames(25, 64, 80), fps=25)
    assert cli_main(["generate", "--video", str(video), "--prompt", "x", "--out", str(tmp_path / "o.wav"),
                     "--device", "cuda", *tiny_args(tiny_profile_cfg)]) == 2
    assert "--device cuda: CUDA is not available on this machine" in caplog.text


def test_a_face_box_outside_the_frame_is_refused_and_one_mostly_outside_warned(tmp_path, tiny_profile_cfg, caplog):
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    base = ["generate", "--video", str(video), "--prompt", "jazz", "--out", str(tmp_path / "o.wav"),
            *tiny_args(tiny_profile_cfg)]
    assert cli_main([*base, "--face-box", "900 10 1000 80"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{video}: --face-box 900 10 1000 80 does not overlap the 80x64 frame"]
    assert not (tmp_path / "o.wav").exists()
    caplog.clear()
    assert cli_main([*base, "--face-box", "60 40 100 80"]) == 0
    assert (f"{video}: --face-box 60 40 100 80: 70% of the box lies outside the 80x64 frame; the face crop is "
            "clipped") in caplog.messages
