"""The precompute stage end to end on tiny models: schema, inspect, bad input, kill and resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from conftest import CLIP_S, moving_frames, precompute_config as config, write_video

from expotion.cache import SCHEMA_VERSION, CacheError, list_shards, open_shard
from expotion.cache import main as cache_main
from expotion.pipeline import run, written_clip_ids
from expotion.rates import DEFAULT_RATES

ROOT = Path(__file__).resolve().parents[1]



def test_every_clip_written_with_schema(demo_cache):
    cache, summary = demo_cache
    assert summary.written == {"train": 4, "val": 2} and summary.skipped == []
    shards = list_shards(cache)
    assert [p.relative_to(cache).as_posix() for p in shards] == ["train/shard-00000.h5", "val/shard-00000.h5"]
    r = DEFAULT_RATES
    with open_shard(shards[0]) as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["split"] == "train"
        assert f["text/generic"].shape[1] == f["clips/demo-000-000/t5"].shape[1]
        clip = f["clips/demo-000-001"]
        assert clip.attrs["start_s"] == CLIP_S and clip.attrs["duration_s"] == CLIP_S
        assert clip.attrs["sample_rate"] == 32000 and clip.attrs["source"] == "videos/demo-000.mp4"
        assert "BPM" in clip.attrs["caption"]
        assert clip["codes"].shape == (4, r.codes_frames(CLIP_S)) and clip["codes"].attrs["frame_rate"] == 50
        assert clip["marlin"].shape[0] == r.marlin_windows(CLIP_S) and clip["marlin"].attrs["fps"] == 5
        assert clip["marlin_mask"][()].all()  # the manifest's face box covers every window
        assert clip["synchformer"].shape[0] == r.synchformer_tokens(CLIP_S) and clip["synchformer"].attrs["fps"] == 25
        assert clip["raft"].shape == (r.raft_flows(CLIP_S), 2, 16, 16) and clip["raft"].attrs["fps"] == 5
        assert np.abs(clip["raft"][()]).max() > 0  # the arms move


def test_features_follow_the_video(demo_cache):
    """Different recordings (tempo, chords) give different features; the same clip's codes are stable."""
    cache, _ = demo_cache
    with h5py.File(cache / "train/shard-00000.h5") as f:
        a, b = f["clips/demo-000-000"], f["clips/demo-001-000"]
        for name in ("marlin", "synchformer", "raft", "codes"):
            assert not np.array_equal(a[name][()], b[name][()]), name


def test_inspect_prints_rates_and_lengths(demo_cache, capsys):
    cache, _ = demo_cache
    assert cache_main(["inspect", str(cache / "train/shard-00000.h5")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_clips"] == 4
    ds = summary["clips"]["demo-000-000"]["datasets"]
    assert ds["codes"]["frame_rate"] == 50 and ds["codes"]["seconds"] == pytest.approx(CLIP_S)
    assert ds["marlin"]["fps"] == 5 and ds["marlin"]["seconds"] == pytest.approx(CLIP_S)
    assert ds["synchformer"]["fps"] == 25 and ds["raft"]["fps"] == 5


def test_rerun_reuses_finished_shards(demo_cache, small_demo, tiny_profile_cfg):
    cache, _ = demo_cache
    before = {p: p.stat().st_mtime_ns for p in list_shards(cache)}
    summary = run(config(small_demo, cache, tiny_profile_cfg))
    assert summary.reused_shards == 2 and summary.new_shards == 0
    assert {p: p.stat().st_mtime_ns for p in list_shards(cache)} == before


def test_shard_with_other_schema_or_truncated_is_refused(demo_cache, tmp_path):
    cache, _ = demo_cache
    old = tmp_path / "old.h5"
    shutil.copy(cache / "val/shard-00000.h5", old)
    with h5py.File(old, "a") as f:
        f.attrs["schema_version"] = 0
    with pytest.raises(CacheError, match="old.h5: schema_version 0"):
        open_shard(old)
    cut = tmp_path / "cut.h5"
    data = (cache / "val/shard-00000.h5").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CacheError, match="cut.h5: not a readable HDF5 shard"):
        open_shard(cut)


def test_missing_weights_fail_before_any_work(small_demo, tmp_path):
    from expotion.features import real_profile
    from expotion.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="marlin_vit_base_ytf.encoder.pt") as err:
        run(config(small_demo, tmp_path / "cache", real_profile(tmp_path / "no-weights")))
    assert "24-01-04T16-39-21.pt" in str(err.value)
    assert not (tmp_path / "cache").exists() or not list_shards(tmp_path / "cache")


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_inputs(small_demo, tmp_path_factory):
    """A manifest mixing one good recording with every kind of bad input."""
    root = tmp_path_factory.mktemp("bad")
    demo = small_demo.parent
    shutil.copytree(demo / "videos", root / "videos")
    shutil.copytree(demo / "audio", root / "audio")
    wav = root / "audio" / "demo-000.wav"
    frames = moving_frames(60, 64, 80)
    (root / "corrupt.mp4").write_bytes(b"\x00garbage" * 500)
    good = (root / "videos" / "demo-000.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    write_video(root / "silent.mp4", frames, fps=25)
    write_video(root / "noface.mp4", moving_frames(60, 96, 128, seed=1), fps=25)  # MTCNN finds no face in noise
    sf.write(root / "only_audio.wav", np.zeros(32000 * 3, np.float32), 32000)
    write_video(root / "short.mp4", frames[:30], fps=25)
    pts = [i * 40 for i in range(30)] + [1200 + i * 80 for i in range(30)]
    write_video(root / "vfr.mkv", frames, fps=25, pts=pts)
    write_video(root / "odd.mkv", moving_frames(60, 67, 91), fps=25, codec="ffv1")
    write_video(root / "huge.mkv", np.zeros((2, 32, 8200, 3), np.uint8), fps=10, codec="ffv1")
    rows = [
        ("good", "videos/demo-000.mp4", "audio/demo-000.wav", "drums", "100 18 220 138"),
        ("corrupt", "corrupt.mp4", "", "x", ""),
        ("truncated", "truncated.mp4", "", "x", "100 18 220 138"),
        ("silent", "silent.mp4", "", "x", "0 0 40 40"),
        ("noaudio", "only_audio.wav", "", "x", ""),
        ("short", "short.mp4", wav.relative_to(root), "x", "0 0 40 40"),
        ("vfr", "vfr.mkv", wav.relative_to(root), "x", "0 0 40 40"),
        ("odd", "odd.mkv", wav.relative_to(root), "x", "0 0 40 40"),
        ("huge", "huge.mkv", wav.relative_to(root), "x", ""),
        ("noface", "noface.mp4", wav.relative_to(root), "x", ""),
        ("nocaption", "videos/demo-002.mp4", "", "", "100 18 220 138"),
    ]
    manifest = root / "manifest.csv"
    manifest.write_text("id,video,audio,caption,face_box\n" + "\n".join(",".join(map(str, r)) for r in rows))
    return manifest


def test_bad_inputs_are_reported_and_the_run_goes_on(bad_inputs, tiny_profile_cfg, tmp_path):
    summary = run(config(bad_inputs, tmp_path / "cache", tiny_profile_cfg, per_shard=4))
    reasons = {s["clip"]: s["reason"] for s in summary.skipped}
    assert "corrupt.mp4: corrupt or unreadable" in reasons["corrupt"]
    assert "truncated.mp4" in reasons["truncated"]
    assert "no audio stream, and the manifest gives no audio file" in reasons["silent"]
    assert "only_audio.wav: no video stream" in reasons["noaudio"]
    assert "shorter than one clip" in reasons["short"]
    assert "too large" in reasons["huge"]
    assert "missing caption" in reasons["nocaption-000"] and "missing caption" in reasons["nocaption-001"]
    notes = {(n["clip"], n["note"].split(":")[0]) for n in summary.notes}
    assert ("vfr-000", "variable frame rate") in notes
    assert ("noface-000", "no face detected") in notes  # masked, and the clip is kept for motion
    ids = written_clip_ids(tmp_path / "cache")
    assert ids == ["good-000", "good-001", "noface-000", "odd-000", "vfr-000"]
    with h5py.File(tmp_path / "cache/train/shard-00001.h5") as f:
        assert not f["clips/noface-000/marlin_mask"][()].any()
        assert f["clips/odd-000/raft"].shape[0] == DEFAULT_RATES.raft_flows(CLIP_S)
    report = summary.report()
    assert "skipped" in report and "corrupt" in report and "variable frame rate" in report


# ---- kill and resume ---------------------------------------------------------------------------
def extract_cmd(manifest: Path, cache: Path, tiny_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "precompute" / "extract.py"), "--manifest", str(manifest), "--cache", str(cache),
            "--profile", "tiny", "--tiny-dir", str(tiny_dir), "--clip-seconds", str(CLIP_S),
            "--recordings-per-shard", "1", "--workers", "1"]


def test_sigkill_then_rerun_gives_the_same_clips(small_demo, demo_cache, tiny_profile_cfg, tmp_path):
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(extract_cmd(small_demo, cache, tiny_dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("train/shard-00000.h5")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_shards(cache)
    assert 1 <= len(done) < 3, "the kill should land mid-run"
    for path in done:
        open_shard(path).close()  # every published shard is complete
    result = subprocess.run(extract_cmd(small_demo, cache, tiny_dir), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(done)} reused" in result.stdout
    assert not list(cache.rglob(".shard-*"))  # no temporary left behind
    assert written_clip_ids(cache) == written_clip_ids(demo_cache[0])
    with h5py.File(cache / "train/shard-00001.h5") as a, h5py.File(demo_cache[0] / "train/shard-00000.h5") as b:
        for name in ("codes", "marlin", "synchformer", "raft", "t5"):
            np.testing.assert_array_equal(a["clips/demo-001-000"][name][()], b["clips/demo-001-000"][name][()])


@pytest.mark.slow
def test_two_workers_write_the_same_cache(small_demo, demo_cache, tiny_profile_cfg, tmp_path):
    run(config(small_demo, tmp_path / "cache", tiny_profile_cfg, workers=2, per_shard=1))
    assert written_clip_ids(tmp_path / "cache") == written_clip_ids(demo_cache[0])
