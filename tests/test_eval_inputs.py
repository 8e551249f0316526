"""``expotion eval`` around the metrics: flagged clips, captions by recording, clip videos from a cached split,
devices and batches."""
from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from eval_synth import click_track, tone, write_video, write_wav

from expotion.cli.main import main as expotion_main
from expotion.core import tiny
from expotion.data.video_writing import mux_audio
from expotion.data.shards import list_shards, open_shard
from expotion.evaluation import embed, languagebind, models
from expotion.evaluation.batching import full_precision
from expotion.evaluation.files import captions_for_clips, read_captions
from expotion.evaluation.video import VideoClip, uniform_frames

SR = 22050


@pytest.fixture(autouse=True)
def empty_model_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    wdir = tmp_path_factory.mktemp("weights")
    for key in tiny.EVALUATION:
        tiny.write(key, wdir)
    return wdir


def music(seconds: float, bpm: float = 120.0, pitch: float = 330.0, sr: int = SR) -> np.ndarray:
    return click_track(bpm, seconds, sr=sr) + 0.5 * tone(pitch, seconds, sr)


def run_eval(tmp_path: Path, weights: Path, *extra: str, out: str = "out", cache: str = "embeddings") -> int:
    return expotion_main(["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                          "--out", str(tmp_path / out), "--weights-dir", str(weights),
                          "--cache-dir", str(tmp_path / cache), "--device", "cpu", *extra])


def per_clip(out: Path) -> dict[str, dict]:
    with (out / "per_clip.csv").open() as f:
        return {row["clip_id"]: row for row in csv.DictReader(f)}


def clip_ids(split: Path) -> list[str]:
    ids = []
    for shard in list_shards(split):
        with open_shard(shard) as f:
            ids += list(f["clips"])
    return sorted(ids)


# ---- excluded and suspicious clips --------------------------------------------------------------


@pytest.mark.parametrize("side, seconds, rms, reference_s, expected", [
    ("generated", 0.5, -20.0, 0.52, ["generated audio lasts 0.50 s: under 1 s"]),
    ("generated", 5.0, -20.0, 10.0, ["generated audio lasts 5.00 s: 50% of the reference's 10.00 s"]),
    ("generated", 9.5, -20.0, 10.0, []),
    ("generated", 0.1, float("-inf"), 4.0, ["generated audio is silent (digital silence)",
                                           "generated audio lasts 0.10 s: under 1 s, 2% of the reference's 4.00 s"]),
    ("reference", 0.5, -70.0, None, ["reference audio is silent (RMS -70.0 dBFS)", "reference audio lasts 0.50 s: under 1 s"]),
])
def test_audio_problems_name_each_threshold_once(side, seconds, rms, reference_s, expected):
    from expotion.evaluation.checks import audio_problems

    assert audio_problems(side, seconds, rms, reference_s) == expected


def test_excluded_and_suspicious_clips_are_named_with_the_thresholds(weights, tmp_path, capsys):
    for clip_id in ("ok", "broken", "silent", "short"):
        write_wav(tmp_path / "ref" / f"{clip_id}.wav", music(4.0), SR)
    write_wav(tmp_path / "gen" / "ok.wav", music(4.0, pitch=440.0), SR)
    (tmp_path / "gen" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    write_wav(tmp_path / "gen" / "silent.wav", np.zeros(4 * SR, np.float32), SR)
    write_wav(tmp_path / "gen" / "short.wav", music(4.0)[: SR // 10], SR)
    assert run_eval(tmp_path, weights, "--metrics", "fad,kl,chroma") == 0
    captured = capsys.readouterr()
    md = (tmp_path / "out" / "results.md").read_text()
    assert md in captured.out  # the console shows what results.md holds
    assert "3 clips left out of some metric, 2 suspicious" in captured.err

    lines = md.splitlines()
    excluded = lines[lines.index("Excluded clips:") + 1 :]
    broken = next(line for line in excluded if line.startswith("- broken: generated: "))
    assert "broken.wav" in broken and "corrupt or unreadable" in broken
    assert broken.endswith("left out of FAD-VGG, KL, KL(gen‖ref), KL both, Chroma")
    assert any(line.startswith("- short: generated: passt: audio of 0.100 s is too short") for line in excluded)
    assert any(line.startswith("- silent: chroma similarity (silent clip) undefined") for line in excluded)

    header = next(line for line in lines if line.startswith("Suspicious clips"))
    for threshold in ("RMS below -60 dBFS", "under 1 s", "under 90% of its reference's duration"):
        assert threshold in header
    assert "- silent: generated audio is silent (digital silence)" in lines
    assert "- short: generated audio lasts 0.10 s: under 1 s, 2% of the reference's 4.00 s" in lines
    assert not any(line.startswith("- ok:") for line in lines)

    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(doc["suspicious_clips"]) == ["short", "silent"]
    assert sorted(doc["excluded_clips"]) == ["broken", "short", "silent"]
    assert "-60 dBFS" in doc["conventions"]["suspicious_clips"]
    rows = per_clip(tmp_path / "out")
    assert rows["silent"]["rms_dbfs_generated"] == "-inf" and float(rows["ok"]["seconds_generated"]) == 4.0
    assert rows["short"]["suspicious"].startswith("generated audio lasts 0.10 s") and rows["ok"]["suspicious"] == ""


def test_a_quiet_but_audible_clip_is_not_flagged(weights, tmp_path):
    write_wav(tmp_path / "ref" / "a.wav", music(3.0), SR)
    write_wav(tmp_path / "gen" / "a.wav", 0.05 * music(3.0), SR)  # about -43 dBFS RMS
    write_wav(tmp_path / "gen" / "b.wav", 0.0005 * music(3.0), SR)  # about -82 dBFS RMS
    write_wav(tmp_path / "ref" / "b.wav", music(3.0), SR)
    assert run_eval(tmp_path, weights, "--metrics", "chroma") == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(doc["suspicious_clips"]) == ["b"]
    assert doc["suspicious_clips"]["b"][0].startswith("generated audio is silent (RMS -8")


# ---- captions -------------------------------------------------------------------------------------


def test_manifest_captions_reach_every_clip_of_their_recording(small_demo, demo_cache, weights, tmp_path):
    """The demo manifest and the clip ids precompute gave its val recording (``demo-002-000``, ``demo-002-001``)."""
    ids = clip_ids(demo_cache[0] / "val")
    assert ids == ["demo-002-000", "demo-002-001"]
    for n, clip_id in enumerate(ids):
        write_wav(tmp_path / "gen" / f"{clip_id}.wav", music(2.0, pitch=300.0 + 50 * n), SR)
        write_wav(tmp_path / "ref" / f"{clip_id}.wav", music(2.0), SR)
    assert run_eval(tmp_path, weights, "--captions", str(small_demo), "--metrics", "text_audio") == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["metrics"]["text_audio"]["status"] == "ok" and doc["metrics"]["text_audio"]["n_clips"] == 2
    assert doc["inputs"]["n_captions"] == 2
    caption = "mid-tempo pop groove at 110 BPM in B major with drums and bright synth chords"
    assert {row["caption"] for row in per_clip(tmp_path / "out").values()} == {caption}


def test_caption_matching_prefers_the_clip_id_then_the_recording(tmp_path):
    captions = {"take-001": "recording caption", "take-001-001": "clip caption", "other": "unused"}
    found = captions_for_clips(["take-001-000", "take-001-001", "take-002-000"], captions, tmp_path / "c.json")
    assert found == {"take-001-000": "recording caption", "take-001-001": "clip caption"}
    (tmp_path / "m.jsonl").write_text('{"video": "v/take-001.mp4", "caption": "from the video name"}\n')
    assert read_captions(tmp_path / "m.jsonl") == {"take-001": "from the video name"}
    (tmp_path / "m.csv").write_text("video,caption\nv/take-002.mp4,slow strings\n")  # id defaults to the video stem
    assert read_captions(tmp_path / "m.csv") == {"take-002": "slow strings"}


def test_captions_matching_no_clip_are_an_error_naming_ids_from_both_sides(weights, tmp_path, capsys):
    for clip_id in ("rec-000", "rec-001"):
        write_wav(tmp_path / "gen" / f"{clip_id}.wav", music(2.0), SR)
        write_wav(tmp_path / "ref" / f"{clip_id}.wav", music(2.0), SR)
    (tmp_path / "captions.json").write_text(json.dumps({"alice-01": "jazz", "bob-03": "pop"}))
    assert run_eval(tmp_path, weights, "--captions", str(tmp_path / "captions.json")) == 2
    err = capsys.readouterr().err
    for named in ("alice-01", "bob-03", "rec-000", "rec-001", "<recording>-NNN"):
        assert named in err
    assert not (tmp_path / "out").exists()


def test_clap_footnote_gives_its_reason_once(tmp_path):
    for clip_id in ("a", "b"):
        write_wav(tmp_path / "gen" / f"{clip_id}.wav", music(2.0), SR)
        write_wav(tmp_path / "ref" / f"{clip_id}.wav", music(2.0), SR)
    (tmp_path / "captions.json").write_text(json.dumps({"a": "jazz", "b": "pop"}))
    assert run_eval(tmp_path, tmp_path / "no-weights", "--captions", str(tmp_path / "captions.json"),
                    "--metrics", "text_audio") == 0
    reason = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["text_audio"]["reason"]
    assert reason.count("laion/larger_clap_music") == 1 and reason.count("Put it in") == 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.count("Put it in") == 1 and f"[1] {reason}" in md


# ---- clip videos: a cached split's spans of the source videos, or per-clip files --------------------


def cut_losslessly(src: Path, first: int, stop: int, out: Path) -> Path:
    """Frames [first, stop) of ``src`` re-encoded without loss (x264 qp 0), as a per-clip video."""
    with av.open(str(src)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if first <= i < stop]
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        for i, frame in enumerate(frames):
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def test_a_span_of_the_source_gives_the_frames_of_the_clip_cut_from_it(weights, tmp_path):
    src = write_video(tmp_path / "source.mp4", n_frames=100, fps=25, seed=3)  # 4 s
    span = VideoClip(src, 1.0, 2.0)
    cut = cut_losslessly(src, 25, 75, tmp_path / "cut.mp4")
    (tmp_path / "clips").mkdir()
    music_wav = write_wav(tmp_path / "tone.wav", tone(440.0, 2.0, 32000), 32000)
    muxed = mux_audio(cut, music_wav, tmp_path / "clips" / "rec-000.mp4")
    from_span, from_file = uniform_frames(span, 8), uniform_frames(VideoClip(muxed), 8)
    assert all(np.array_equal(a, b) for a, b in zip(from_span, from_file, strict=True))
    assert not np.array_equal(uniform_frames(VideoClip(src), 8)[0], from_span[0])
    cfg = languagebind.TowerConfig(add_time_attn=True, num_frames=8)
    assert torch.equal(languagebind.video_input(span, cfg), languagebind.video_input(muxed, cfg))
    with pytest.raises(Exception, match="video ends at 3.96 s, the clip needs 3-5 s"):
        uniform_frames(VideoClip(src, 3.0, 2.0), 8)

    write_wav(tmp_path / "gen" / "rec-000.wav", music(2.0), SR)
    write_wav(tmp_path / "ref" / "rec-000.wav", music(2.0), SR)
    assert run_eval(tmp_path, weights, "--videos", str(tmp_path / "clips"), "--metrics", "video_audio") == 0
    va = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["video_audio"]
    assert va["status"] == "ok" and va["n_clips"] == 1


def test_a_cached_split_gives_captions_and_source_video_spans(demo_cache, small_demo, weights, tmp_path, capsys):
    split = demo_cache[0] / "val"
    ids = clip_ids(split)
    for n, clip_id in enumerate(ids):
        write_wav(tmp_path / "gen" / f"{clip_id}.wav", music(2.0, pitch=300.0 + 50 * n), SR)
        write_wav(tmp_path / "ref" / f"{clip_id}.wav", music(2.0), SR)
    assert run_eval(tmp_path, weights, "--cache", str(split), "--metrics", "text_audio,video_audio") == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for table in ("metrics", "reference_metrics"):
        for key in ("text_audio", "video_audio"):
            assert doc[table][key]["status"] == "ok" and doc[table][key]["n_clips"] == 2, (table, key)
    assert doc["inputs"]["n_video_spans"] == 2 and doc["inputs"]["n_captions"] == 2
    source = small_demo.parent / "videos" / "demo-002.mp4"
    rows = per_clip(tmp_path / "out")
    assert rows["demo-002-000"]["video"] == f"{source} [0.000-2.000 s]"
    assert rows["demo-002-001"]["video"] == f"{source} [2.000-4.000 s]"
    assert rows["demo-002-001"]["caption"].startswith("mid-tempo pop groove")
    assert doc["models"]["languagebind_video"]["computed"] == 2  # one embedding per span

    assert run_eval(tmp_path, weights, "--cache", str(split), "--data-root", str(tmp_path / "moved")) == 2
    assert "none of the source videos it names exists" in capsys.readouterr().err
    assert run_eval(tmp_path, weights, "--cache", str(demo_cache[0] / "train")) == 2
    err = capsys.readouterr().err
    assert "none of its 4 clips is among the 2 paired clips" in err and "demo-000-000" in err and "demo-002-000" in err


# ---- devices and batches --------------------------------------------------------------------------


MODEL_EXTRACTORS = [name for name, ex in embed.catalog().items() if ex.load is not None]


@pytest.mark.parametrize("name", MODEL_EXTRACTORS)
def test_every_evaluation_model_is_on_the_device_it_was_given(weights, name):
    """The meta device tells a threaded device argument from a default: nothing lands there by accident."""
    ex = embed.catalog()[name]
    loaded = ex.load(models.resolve(ex.weight_key, weights), torch.device("meta"))
    module = getattr(loaded, "model", loaded)
    tensors = [*module.parameters(), *module.buffers()]
    assert tensors and {t.device.type for t in tensors} == {"meta"}


def batch_inputs(tmp_path: Path) -> None:
    """Clips whose windows stack (equal lengths) and one whose windows differ in shape (a 10 s window and a tail)."""
    for n, seconds in enumerate((3.0, 3.0, 3.0, 11.5)):
        write_wav(tmp_path / "gen" / f"c{n}.wav", music(seconds, bpm=100 + 10 * n, pitch=300.0 + 40 * n), SR)
        write_wav(tmp_path / "ref" / f"c{n}.wav", music(seconds, pitch=330.0 + 10 * n), SR)
    for n in range(3):
        write_video(tmp_path / "videos" / f"c{n}.mp4", seed=n)
    captions = {"c0": "jazz", "c1": "slow sad strings with a cello", "c2": "upbeat pop", "c3": "jazz"}
    (tmp_path / "captions.json").write_text(json.dumps(captions))


def test_batch_size_changes_neither_embeddings_nor_metrics(weights, tmp_path):
    batch_inputs(tmp_path)
    common = ("--videos", str(tmp_path / "videos"), "--captions", str(tmp_path / "captions.json"),
              "--metrics", "fad,kl,is,text_audio,video_audio")
    for size in (1, 3):
        assert run_eval(tmp_path, weights, *common, "--batch-size", str(size), out=f"out{size}", cache=f"emb{size}") == 0
    one = {p.relative_to(tmp_path / "emb1"): p for p in (tmp_path / "emb1").rglob("*.npz")}
    three = {p.relative_to(tmp_path / "emb3"): p for p in (tmp_path / "emb3").rglob("*.npz")}
    assert one.keys() == three.keys() and len(one) == 5 * 8 + 3 + 3  # five audio extractors x 8 files, 3 videos, 3 captions
    for rel, path in one.items():
        with np.load(path) as a, np.load(three[rel]) as b:
            assert a.files == b.files
            for k in a.files:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=str(rel))
    docs = [json.loads((tmp_path / f"out{size}" / "metrics.json").read_text()) for size in (1, 3)]
    assert [d["inputs"]["batch_size"] for d in docs] == [1, 3]
    for key, result in docs[0]["metrics"].items():
        assert result["status"] == "ok", key
        assert docs[1]["metrics"][key]["value"] == pytest.approx(result["value"], rel=1e-5, abs=1e-6), key


def test_cuda_asked_for_without_cuda_is_an_input_error(weights, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_wav(tmp_path / "gen" / "a.wav", music(2.0), SR)
    write_wav(tmp_path / "ref" / "a.wav", music(2.0), SR)
    assert run_eval(tmp_path, weights, "--device", "cuda") == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


@pytest.mark.gpu
def test_eval_of_demo_like_outputs_on_cuda_matches_the_cpu(weights, tmp_path):
    batch_inputs(tmp_path)
    for name in MODEL_EXTRACTORS:
        ex = embed.catalog()[name]
        loaded = ex.load(models.resolve(ex.weight_key, weights), torch.device("cuda"))
        assert {p.device.type for p in getattr(loaded, "model", loaded).parameters()} == {"cuda"}, name
    common = ("--videos", str(tmp_path / "videos"), "--captions", str(tmp_path / "captions.json"),
              "--metrics", "fad,kl,is,tempo,beat,text_audio,video_audio,chroma")
    for device in ("cuda", "cpu"):
        assert run_eval(tmp_path, weights, *common, "--device", device, out=device, cache=f"emb-{device}") == 0
    gpu, cpu = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("cuda", "cpu"))
    assert gpu["inputs"]["device"] == "cuda"
    for key, result in cpu["metrics"].items():
        assert result["status"] == "ok" and gpu["metrics"][key]["status"] == "ok", key
        assert gpu["metrics"][key]["value"] == pytest.approx(result["value"], rel=1e-3, abs=1e-4), key


def test_models_run_without_tf32_and_the_settings_come_back():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with full_precision():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
