"""The precompute stage end to end on tiny models: schema, inspect, bad input, kill and resume, faults,
shards left outside the plan."""
import csv
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import CLIP_S, moving_frames, write_video
from conftest import precompute_config as config

from expotion.core.nodes import NodeShare
from expotion.core.rates import DEFAULT_RATES, FeatureShapeError, Rates, StreamRate, check_shape
from expotion.data.clips import ClipDataset, read_clips
from expotion.data.shards import (SCHEMA_VERSION, CacheError, NonFiniteError, ShardWriter, list_shards, open_shard,
                                  remove_stale_temporaries)
from expotion.cli.cache import main as cache_main
from expotion.evaluation.files import InputError, read_cache_split
from expotion.precompute.pipeline import merge_summary, run
from expotion.precompute.summary import written_clip_ids

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
        assert clip["synchformer"].shape[0] == r.synchformer_tokens(CLIP_S)
        assert StreamRate.from_attrs(clip["synchformer"].attrs) == r.synchformer  # tokens at their true times
        assert clip["raft"].shape == (r.raft_flows(CLIP_S), 2, 16, 16) and clip["raft"].attrs["fps"] == 5
        assert np.abs(clip["raft"][()]).max() > 0  # the arms move


def test_features_follow_the_video(demo_cache, small_demo, tiny_profile_cfg):
    """Different recordings (tempo, chords) give different features; a clip's codes are its own span of the music,
    encoded again to the same tokens."""
    from expotion.data.media import read_audio
    from expotion.musicgen.loading import encode_audio, load_musicgen

    cache, _ = demo_cache
    with h5py.File(cache / "train/shard-00000.h5") as f:
        a, b = f["clips/demo-000-000"], f["clips/demo-001-000"]
        for name in ("marlin", "synchformer", "raft", "codes"):
            assert not np.array_equal(a[name][()], b[name][()]), name
        stored = f["clips/demo-000-001/codes"][()]
    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    music = read_audio(small_demo.parent / "audio" / "demo-000.wav", musicgen.sample_rate)
    span = music[int(CLIP_S * musicgen.sample_rate) : int(2 * CLIP_S * musicgen.sample_rate)]  # clip 001: 2-4 s
    assert np.array_equal(encode_audio(musicgen, span), stored)


def test_inspect_prints_rates_and_lengths(demo_cache, capsys):
    cache, _ = demo_cache
    assert cache_main(["inspect", str(cache / "train/shard-00000.h5")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_clips"] == 4
    ds = summary["clips"]["demo-000-000"]["datasets"]
    assert ds["codes"]["frame_rate"] == 50 and ds["codes"]["seconds"] == pytest.approx(CLIP_S)
    assert ds["marlin"]["fps"] == 5 and ds["marlin"]["seconds"] == pytest.approx(CLIP_S)
    assert ds["synchformer"]["fps"] == 12.5 and ds["synchformer"]["segment_hop"] == pytest.approx(0.32)
    assert ds["synchformer"]["seconds"] == pytest.approx(1.92) and ds["raft"]["fps"] == 5  # 5 segments end at frame 48


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


def test_synchformer_stride_is_a_precompute_option_recorded_in_the_shard(small_demo, tiny_profile_cfg, tmp_path, capsys):
    from expotion.cli.main import main as expotion

    paper = Rates(synchformer_stride=5)
    cache = tmp_path / "cache"
    features = ["features", "--manifest", str(small_demo), "--cache", str(cache), "--profile", "tiny",
                "--tiny-dir", tiny_profile_cfg.weights_dir, "--device", "cpu", "--extractors", "synchformer",
                "--clip-seconds", str(CLIP_S), "--recordings-per-shard", "1", "--workers", "2"]
    assert expotion([*features, "--synchformer-stride", "5"]) == 0
    assert "(3 new shards, 0 reused)" in capsys.readouterr().out
    with open_shard(cache / "train/shard-00000.h5") as f:
        assert json.loads(f.attrs["rates"])["synchformer_stride"] == 5
        tokens = f["clips/demo-000-000/synchformer"]
        assert tokens.shape[0] == paper.synchformer_tokens(CLIP_S) == 7 * 8  # (50 - 16) // 5 + 1 segments
        assert StreamRate.from_attrs(tokens.attrs) == paper.synchformer
    assert expotion(features) == 0
    assert "(3 new shards, 0 reused)" in capsys.readouterr().out  # another stride is another assignment
    with open_shard(cache / "train/shard-00000.h5") as f:
        assert f["clips/demo-000-000/synchformer"].shape[0] == DEFAULT_RATES.synchformer_tokens(CLIP_S)


@pytest.mark.parametrize("seconds, message", [
    (2.01, "--clip-seconds 2.01: a clip must be a positive whole number of EnCodec frames (0.02 s each at 50 Hz)"),
    (3.333, "--clip-seconds 3.333: a clip must be a positive whole number of EnCodec frames (0.02 s each at 50 Hz)"),
    (0.0, "argument --clip-seconds: must be greater than 0, got 0"),  # refused while the command line is parsed
    (-2.0, "argument --clip-seconds: must be greater than 0, got -2"),
])
def test_clip_seconds_off_the_encodec_frame_grid_are_refused_before_any_work(seconds, message, small_demo,
                                                                             tiny_profile_cfg, tmp_path, capsys):
    """EnCodec gives whole 20 ms frames, so a 2.01 s clip's codes never had the frame count its streams are cut to."""
    from expotion.cli.main import main as expotion

    argv = ["features", "--manifest", str(small_demo), "--cache", str(tmp_path / "cache"), "--profile", "tiny",
            "--tiny-dir", tiny_profile_cfg.weights_dir, "--extractors", "codes", "--clip-seconds", str(seconds)]
    try:
        status = expotion(argv)
    except SystemExit as exit:  # argparse's own refusal of a non-positive number
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("extra, message", [
    (["--extractors", "marlin,bogus"], "unknown extractors ['bogus']; choose from"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "CUDA"),
    (["--device", "gpu0"], "--device gpu0: not a torch device (e.g. cpu, cuda, cuda:1)"),
])
def test_settings_that_cannot_run_here_are_refused_before_any_work(extra, message, small_demo, tiny_profile_cfg,
                                                                   tmp_path, capsys):
    """A typo in --extractors or a device this machine lacks is one line, not a failure in every worker."""
    from expotion.cli.main import main as expotion

    assert expotion(["features", "--manifest", str(small_demo), "--cache", str(tmp_path / "cache"), "--profile", "tiny",
                     "--tiny-dir", tiny_profile_cfg.weights_dir, "--workers", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("seconds", [1.02, 1.98, 3.14])
def test_clip_seconds_on_the_grid_give_codes_of_their_frame_count(seconds, small_demo, tiny_profile_cfg, tmp_path):
    cfg = replace(config(small_demo, tmp_path / "cache", tiny_profile_cfg), names=("codes",), clip_seconds=seconds)
    assert sum(run(cfg).written.values()) == 3 * int(4.0 // seconds)  # three 4 s recordings
    for shard in list_shards(tmp_path / "cache"):
        with open_shard(shard) as f:
            for clip in f["clips"].values():
                assert clip["codes"].shape[-1] == round(seconds * 50)


def test_missing_weights_fail_before_any_work(small_demo, tmp_path):
    from expotion.core.weights import MissingWeightsError
    from expotion.extractors.bank import real_profile

    with pytest.raises(MissingWeightsError, match="marlin_vit_base_ytf.encoder.pt") as err:
        run(config(small_demo, tmp_path / "cache", real_profile(tmp_path / "no-weights")))
    assert "24-01-04T16-39-21.pt" in str(err.value)
    assert not (tmp_path / "cache").exists()  # no folder, no .lock: nothing is created before the check passes


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
    sf.write(root / "short_audio.wav", np.zeros(32000, np.float32), 32000)  # 1 s beside a 4 s video
    rows = [
        ("good", "videos/demo-000.mp4", "audio/demo-000.wav", "drums", "100 18 220 138"),
        ("corrupt", "corrupt.mp4", "", "x", ""),
        ("truncated", "truncated.mp4", "", "x", "100 18 220 138"),
        ("silent", "silent.mp4", "", "x", "0 0 40 40"),
        ("noaudio", "only_audio.wav", "", "x", ""),
        ("short", "short.mp4", wav.relative_to(root), "x", "0 0 40 40"),
        ("shortaudio", "videos/demo-001.mp4", "short_audio.wav", "x", "0 0 40 40"),
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
    assert reasons["short"].endswith("short.mp4: 1.20 s is shorter than one clip (2 s)")
    assert reasons["shortaudio"] == (f"{bad_inputs.parent / 'short_audio.wav'}: 1.00 s (its video "
                                     f"{bad_inputs.parent / 'videos' / 'demo-001.mp4'} lasts 4.00 s) is shorter than "
                                     "one clip (2 s)")
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
def extract_cmd(manifest: Path, cache: Path, tiny_dir: Path, workers: int = 1) -> list[str]:
    return [sys.executable, str(ROOT / "precompute" / "extract.py"), "--manifest", str(manifest), "--cache", str(cache),
            "--profile", "tiny", "--tiny-dir", str(tiny_dir), "--clip-seconds", str(CLIP_S),
            "--recordings-per-shard", "1", "--workers", str(workers)]


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


def test_ctrl_c_stops_with_one_line(small_demo, tiny_profile_cfg, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the run waits for another run's lock:
    one line and status 130, no traceback, nothing written."""
    from expotion.data.shards import cache_lock

    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with cache_lock(cache, on_wait=print):  # the other run
        proc = subprocess.Popen(extract_cmd(small_demo, cache, tiny_dir, workers=2), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        waiting = ""
        while "waiting for it to finish" not in waiting and proc.poll() is None:
            waiting = proc.stderr.readline()
        os.killpg(proc.pid, signal.SIGINT)
        err = waiting + proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: `expotion features` stopped" in err and "Traceback" not in err, err[-2000:]
    assert not list_shards(cache)


def extract_cli():
    """``precompute/extract.py`` loaded as a module, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location("extract_cli", ROOT / "precompute" / "extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_files(a: Path, b: Path) -> list[str]:
    """Relative paths that differ (missing on one side or not byte-identical) between two caches."""
    files = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    files |= {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    return sorted(f for f in files if not ((a / f).is_file() and (b / f).is_file()
                                           and (a / f).read_bytes() == (b / f).read_bytes()))


# ---- the worker count does not change the cache -------------------------------------------------
def test_one_and_two_workers_write_bit_identical_caches(small_demo, demo_cache, tiny_profile_cfg, tmp_path):
    """Every worker runs the extractors with the same torch thread count, so N does not change a single bit."""
    cache = tmp_path / "cache"
    summary = run(config(small_demo, cache, tiny_profile_cfg, workers=2))
    assert summary.new_shards == 2  # one shard per worker
    assert same_files(cache, demo_cache[0]) == []


# ---- non-finite features -----------------------------------------------------------------------
def test_shard_writer_refuses_non_finite_values(tmp_path):
    from expotion.extractors.bank import stored_layout

    writer = ShardWriter(tmp_path / "train" / "shard-00000.h5", {"split": "train"})
    layout = stored_layout(("marlin", "raft", "t5"), DEFAULT_RATES)
    good = {"marlin": np.ones((4, 8), np.float32), "t5": np.ones((3, 8), np.float32)}
    writer.add_clip("ok", good, {"caption": "x"}, layout)
    bad = [({"marlin": np.full((4, 8), np.nan, np.float32)}, r"NaN or inf in marlin \(32 of 32 values\)"),
           ({"t5": np.array([[np.inf, 0, 0]], np.float32)}, r"NaN or inf in t5 \(1 of 3 values\)"),
           ({"raft": np.array([1.0, 7e4], np.float32)}, r"raft \(1 of 2 values\).*overflow above 65504")]
    for arrays, message in bad:
        with pytest.raises(NonFiniteError, match=message):
            writer.add_clip("bad", {**good, **arrays}, {"caption": "x"}, layout)
    with pytest.raises(NonFiniteError, match="text/generic"):
        writer.add_text("generic", np.array([[np.nan]], np.float32))
    with h5py.File(writer.commit()) as f:
        assert list(f["clips"]) == ["ok"] and "text" not in f  # nothing of the refused clips was written


def test_clips_with_non_finite_or_misshapen_features_are_skipped_with_a_reason(
        small_demo, tiny_profile_cfg, tmp_path, monkeypatch):
    from expotion.extractors.bank import STREAMS

    stream = STREAMS["synchformer"]
    calls = []

    def faulty(ex, model, clip, duration_s, face_box, out):
        stream.compute(ex, model, clip, duration_s, face_box, out)
        tokens = out.arrays["synchformer"]
        calls.append(1)
        if len(calls) == 1:
            tokens[3, 5] = np.nan
        elif len(calls) == 2:
            tokens[0, 0] = 1e5  # finite in float32, inf once stored as float16
        elif len(calls) == 3:
            check_shape("synchformer", tokens[1:].shape, tokens.shape, duration_s)

    monkeypatch.setitem(STREAMS, "synchformer", replace(stream, compute=faulty))
    summary = run(config(small_demo, tmp_path / "cache", tiny_profile_cfg, names=("synchformer",)))
    reasons = {s["clip"]: s["reason"] for s in summary.skipped}
    assert sorted(reasons) == ["demo-000-000", "demo-000-001", "demo-001-000"]
    assert reasons["demo-000-000"].startswith(f"{small_demo.parent / 'videos/demo-000.mp4'}: 0-2 s: NaN or inf in "
                                              "synchformer (1 of ")
    assert "2-4 s: NaN or inf in synchformer (1 of " in reasons["demo-000-001"]
    assert "0-2 s: synchformer: output shape (39, " in reasons["demo-001-000"]
    assert summary.written == {"train": 1, "val": 2}
    for path in list_shards(tmp_path / "cache"):
        with h5py.File(path) as f:
            for group in f["clips"].values():
                assert np.isfinite(group["synchformer"][()]).all()


# ---- concurrent and killed runs ----------------------------------------------------------------
def test_a_second_run_waits_for_the_cache_lock(small_demo, demo_cache, tiny_profile_cfg, tmp_path, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache[0], cache)
    before = (cache / "summary.json").stat().st_mtime_ns
    fd = os.open(cache / ".lock", os.O_RDWR)
    os.write(fd, b"pid 4242 on host-a\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the cache
    result = {}
    second = threading.Thread(target=lambda: result.update(summary=run(config(small_demo, cache, tiny_profile_cfg))))
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        second.start()
        deadline = time.time() + 60
        while "waiting" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert second.is_alive() and (cache / "summary.json").stat().st_mtime_ns == before  # waits, touches nothing
        os.close(fd)  # the first run ends
        second.join(60)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cache} is being written by another precompute run (pid 4242 on host-a); "
        "waiting for it to finish (Ctrl-C to stop)"]
    assert result["summary"].reused_shards == 2 and result["summary"].new_shards == 0
    assert (cache / ".lock").read_bytes() == b""  # released


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()
    (tmp_path / "train").mkdir()
    stale = tmp_path / "train" / f".shard-00000.tmp-{finished.pid}-0a1b.h5"
    live = tmp_path / "train" / f".shard-00001.tmp-{os.getpid()}-2c3d.h5"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


POOL_PARENT = """
import multiprocessing as mp, os, sys, time
from pathlib import Path
from expotion.precompute.pipeline import die_with_parent

def init(parent, ready):
    die_with_parent(parent)
    (Path(ready) / str(os.getpid())).touch()

if __name__ == "__main__":
    pool = mp.get_context(sys.argv[1]).Pool(2, initializer=init, initargs=(os.getpid(), sys.argv[2]))
    pool.map_async(time.sleep, [600, 600])
    time.sleep(600)
"""


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def seconds_until_ended(pids: list[int], since: float, limit: float = 10.0) -> float:
    """Seconds from ``since`` (a ``perf_counter`` time) until every process of ``pids`` has ended."""
    while any(process_alive(p) for p in pids) and time.perf_counter() - since < limit:
        time.sleep(0.01)
    return time.perf_counter() - since


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_die_with_a_killed_parent(tmp_path, method):
    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(POOL_PARENT)
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen([sys.executable, str(script), method, str(ready)], env=env)
    deadline = time.time() + 120
    while len(list(ready.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.1)
    workers = [int(p.name) for p in ready.iterdir()]
    assert len(workers) == 2 and all(process_alive(p) for p in workers)
    killed = time.perf_counter()
    parent.kill()
    parent.wait()
    assert seconds_until_ended(workers, killed) < 2.0


# ---- clip coverage: empty splits, dropped tails, --keep-tail ----------------------------------------
def test_a_split_without_clips_names_clip_seconds_and_exits_non_zero(small_demo, tiny_profile_cfg, tmp_path, capsys):
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    code = extract_cli().main(["--manifest", str(small_demo), "--cache", str(tmp_path / "cache"), "--profile", "tiny",
                               "--tiny-dir", str(tiny_dir), "--extractors", "raft", "--clip-seconds", "5"])
    out = capsys.readouterr().out
    assert code == 3
    assert "clips written: {}" in out
    short = {"train": 2, "val": 1}
    for split in ("train", "val"):
        assert (f"split '{split}' got no clips: every recording in it was skipped; {short[split]} recording(s) "
                "shorter than one 5 s clip (the longest lasts 4.00 s): pass a shorter --clip-seconds (with make: "
                "FEATURE_ARGS=\"--clip-seconds N\") or fix the recordings.\n") in out + "\n"
    assert json.loads((tmp_path / "cache" / "summary.json").read_text())["empty_splits"] == ["train", "val"]


def test_a_split_skipped_for_other_reasons_names_them_not_clip_seconds(small_demo, tiny_profile_cfg, tmp_path,
                                                                        capsys):
    rows = small_demo.read_text().splitlines()
    missing = [rows[1].replace("videos/demo-000.mp4", f"videos/gone-{i}.mp4").replace("demo-000", f"gone-{i}")
               for i in range(3)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([rows[0], *missing, rows[2].replace(",train,", ",val,")]) + "\n")
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    code = extract_cli().main(["--manifest", str(manifest), "--data-root", str(small_demo.parent), "--cache",
                               str(tmp_path / "cache"), "--profile", "tiny", "--tiny-dir", str(tiny_dir),
                               "--extractors", "raft", "--clip-seconds", "5"])
    out = capsys.readouterr().out
    assert code == 3
    gone = small_demo.parent / "videos" / "gone-0.mp4"
    assert (f"split 'train' got no clips: every recording in it was skipped; 3 skipped, 3 for 'file not found' "
            f"(e.g. {gone}: file not found); fix those recordings or the manifest (the skipped list above and in "
            "summary.json gives each reason).") in out.splitlines()
    assert "split 'val' got no clips: every recording in it was skipped; 1 recording(s) shorter than one 5 s clip " \
           "(the longest lasts 4.00 s): pass a shorter --clip-seconds" in out
    assert out.count("--clip-seconds") == 2  # the val split's hint only


def test_a_face_box_outside_the_frame_skips_its_recording_and_one_mostly_outside_is_warned(
        small_demo, tiny_profile_cfg, tmp_path, caplog):
    rows = small_demo.read_text().splitlines()
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([rows[0], rows[1].replace("100 18 220 138", "900 10 1000 80"),
                                   rows[2].replace("100 18 220 138", "300 200 400 300"), rows[3]]) + "\n")
    cfg = replace(config(manifest, tmp_path / "cache", tiny_profile_cfg, names=("raft",)),
                  data_root=small_demo.parent)
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        summary = run(cfg)
    video = small_demo.parent / "videos"
    assert summary.skipped == [{"clip": "demo-000", "split": "train", "reason": f"{video / 'demo-000.mp4'}: "
                                "face_box 900 10 1000 80 does not overlap the 320x256 frame"}]
    assert summary.written == {"train": 2, "val": 2}
    assert (f"{video / 'demo-001.mp4'}: face_box 300 200 400 300: 89% of the box lies outside the 320x256 frame; "
            "the face crop is clipped") in caplog.messages


def test_a_missing_data_root_is_refused_before_any_work(small_demo, tiny_profile_cfg, tmp_path, capsys):
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    code = extract_cli().main(["--manifest", str(small_demo), "--data-root", str(tmp_path / "nowhere"), "--cache",
                               str(tmp_path / "cache"), "--profile", "tiny", "--tiny-dir", str(tiny_dir)])
    assert code == 2
    assert capsys.readouterr().err == f"error: --data-root {tmp_path / 'nowhere'}: no such folder\n"
    assert not (tmp_path / "cache").exists()


def test_dropped_tails_are_listed_and_keep_tail_takes_an_overlapping_last_clip(small_demo, tiny_profile_cfg, tmp_path):
    manifest = tmp_path / "one.csv"  # the first demo recording alone, 4 s long
    manifest.write_text("\n".join(small_demo.read_text().splitlines()[:2]) + "\n")
    cfg = replace(config(manifest, tmp_path / "plain", tiny_profile_cfg, names=("raft",)),
                  clip_seconds=3.0, data_root=small_demo.parent)
    plain = run(cfg)
    assert plain.written == {"train": 1}
    assert plain.coverage == [{"recording": "demo-000", "duration_s": 4.0, "planned_clips": 1, "clips": 1, "dropped_s": 1.0,
                              "split": "train"}]
    assert ("dropped after the last whole clip, in 1 recordings (--keep-tail adds a last clip that overlaps the one "
            "before):\n  demo-000: 1.00 s of 4.00 s") in plain.report()

    tail = run(replace(cfg, cache=tmp_path / "tail", keep_tail=True))
    assert written_clip_ids(tmp_path / "tail") == ["demo-000-000", "demo-000-001"]
    assert all(c["dropped_s"] == 0 for c in tail.coverage) and "dropped after" not in tail.report()
    with h5py.File(tmp_path / "tail/train/shard-00000.h5") as t, h5py.File(tmp_path / "plain/train/shard-00000.h5") as p:
        assert t["clips/demo-000-001"].attrs["start_s"] == 1.0 and t["clips/demo-000-001"].attrs["duration_s"] == 3.0
        np.testing.assert_array_equal(t["clips/demo-000-000/raft"][()], p["clips/demo-000-000/raft"][()])
        assert t["clips/demo-000-001/raft"].shape == p["clips/demo-000-000/raft"].shape


def test_extractor_output_checks_are_exceptions(tiny_profile_cfg):
    from expotion.extractors.bank import Extractors
    from expotion.extractors.raft import compute_flow, load_raft

    ex = Extractors(tiny_profile_cfg, ("codes",))
    with pytest.raises(FeatureShapeError, match=r"^codes: output shape \(75,\) for a 2 s clip, expected \(100,\)$"):
        ex.codes(np.zeros(48000, np.float32), 2.0)  # 1.5 s of audio for a 2 s clip
    raft = load_raft("small", tiny_profile_cfg.raft_checkpoint)
    with pytest.raises(ValueError, match="optical flow needs at least 2 frames, got 1"):
        compute_flow(raft, np.zeros((1, 64, 64, 3), np.uint8), tiny_profile_cfg.flow)


@pytest.mark.slow
def test_two_runs_started_at_once_give_one_wait_message_and_the_cache_of_one_run(small_demo, tiny_profile_cfg, tmp_path):
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    run(config(small_demo, tmp_path / "single", tiny_profile_cfg, per_shard=1))
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen(extract_cmd(small_demo, cache, tiny_dir), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=900) for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    waits = [line for _, err in outputs for line in err.splitlines() if "waiting for it to finish" in line]
    assert len(waits) == 1, waits
    print("\n".join(["wait message:", *waits, "second run's summary:", *[out for out, _ in outputs if "3 reused" in out]]))
    assert sorted("3 new shards" in out for out, _ in outputs) == [False, True]
    assert same_files(cache, tmp_path / "single") == []


@pytest.mark.slow
def test_killing_a_two_worker_run_stops_its_workers(small_demo, tiny_profile_cfg, tmp_path):
    tiny_dir = Path(tiny_profile_cfg.marlin_path).parent
    cache = tmp_path / "cache"
    proc = subprocess.Popen(extract_cmd(small_demo, cache, tiny_dir, workers=2), env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 600, set()
    while len(workers) < 2 and time.time() < deadline:  # each busy worker writes a temporary named by its pid
        workers |= {int(p.name.split(".tmp-")[1].split("-")[0]) for p in cache.rglob(".shard-*.tmp-*.h5")}
        time.sleep(0.05)
    assert len(workers) == 2 and proc.pid not in workers
    killed = time.perf_counter()
    proc.kill()
    proc.wait()
    elapsed = seconds_until_ended(sorted(workers), killed)
    print(f"workers {sorted(workers)} ended within {elapsed:.3f} s of SIGKILL to the run (pid {proc.pid})")
    assert elapsed < 2.0


# ---- shards outside the plan -------------------------------------------------------------------
STREAMS = ("marlin", "synchformer", "raft")


def removals(caplog) -> list[str]:
    return [m for m in caplog.messages if m.startswith("removed ")]


def manifest_with(small_demo: Path, path: Path, splits: dict[str, str | None]) -> Path:
    """The demo manifest with recordings moved to another split (``{id: split}``) or left out (``{id: None}``)."""
    with small_demo.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            split = splits.get(row["id"], row["split"])
            if split is not None:
                writer.writerow({**row, "split": split})
    return path


def test_more_recordings_per_shard_remove_the_shards_of_the_old_plan(small_demo, tiny_profile_cfg, tmp_path, caplog):
    """1 recording per shard, then 2: train/shard-00001 (demo-001, now in train/shard-00000) goes, but only once
    the new plan is complete; a partial run (here one node of two, which writes nothing) removes nothing.
    (Without RAFT, the slowest extractor, to be quick.)"""
    names, cache = ("codes", "t5", "marlin"), tmp_path / "cache"
    run(config(small_demo, cache, tiny_profile_cfg, names=names, per_shard=1))
    old = cache / "train/shard-00001.h5"
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        partial = run(config(small_demo, cache, tiny_profile_cfg, names=names, node=NodeShare(1, 2, "test")))
        assert partial.missing == ["train/shard-00000.h5"] and old.exists() and removals(caplog) == []  # val: reused
        summary = run(config(small_demo, cache, tiny_profile_cfg, names=names))
    assert removals(caplog) == [f"removed stale shard {old}: not in this run's plan "
                                "(2 recordings per shard give 'train' 1 shard(s))"]
    run(config(small_demo, tmp_path / "fresh", tiny_profile_cfg, names=names))
    assert same_files(cache, tmp_path / "fresh") == [".lock-node-1-of-2"]  # shards and summary.json of one run
    ids = [clip.clip_id for clip in ClipDataset(cache / "train", ("marlin",), CLIP_S, False).clips]
    assert sorted(ids) == ["demo-000-000", "demo-000-001", "demo-001-000", "demo-001-001"]
    assert len(ids) == summary.written["train"] == 4


def test_a_recording_moved_to_another_split_or_dropped_leaves_its_old_split(small_demo, demo_cache, tiny_profile_cfg,
                                                                           tmp_path, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache[0], cache)
    moved = manifest_with(small_demo, tmp_path / "moved.csv", {"demo-002": "train"})  # from val
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        summary = run(config(moved, cache, tiny_profile_cfg, data_root=small_demo.parent))
    assert summary.written == {"train": 6} and (summary.new_shards, summary.reused_shards) == (1, 1)
    assert removals(caplog) == [
        f"removed stale shard {cache / 'val/shard-00000.h5'}: split 'val' is not in the manifest",
        f"removed split directory {cache / 'val'}: split 'val' is not in the manifest"]
    assert [p.relative_to(cache).as_posix() for p in list_shards(cache)] == ["train/shard-00000.h5",
                                                                             "train/shard-00001.h5"]
    assert [c.clip_id for c in read_clips(cache, STREAMS)] == written_clip_ids(demo_cache[0])  # each clip once

    caplog.clear()
    dropped = manifest_with(small_demo, tmp_path / "dropped.csv", {"demo-002": None})
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        summary = run(config(dropped, cache, tiny_profile_cfg, data_root=small_demo.parent))
    assert summary.written == {"train": 4} and summary.new_shards == 0
    assert removals(caplog) == [f"removed stale shard {cache / 'train/shard-00001.h5'}: not in this run's plan "
                                "(2 recordings per shard give 'train' 1 shard(s))"]
    assert [c.clip_id for c in read_clips(cache, STREAMS)] == written_clip_ids(demo_cache[0] / "train")


def test_only_shards_of_the_cache_layout_are_removed(small_demo, demo_cache, tiny_profile_cfg, tmp_path, caplog):
    """--merge-summary, like the last node, removes the shards outside the plan: here val's, as the manifest has
    no val recording left. Files that are not shards of <cache>/<split>/ stay, and so does val/ that holds them."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache[0], cache)
    val_shard = (cache / "val/shard-00000.h5").read_bytes()
    user = {"notes.txt": b"mine", "val/README.md": b"mine", "val/shard-00000.h5.bak": val_shard,
            "val/shard-00009.h5": b"not HDF5", "val/old/shard-00000.h5": val_shard,
            "backup/shard-00000.h5": val_shard}  # the last two: shard copies outside <cache>/<their split>/
    for name, data in user.items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(data)
    dropped = manifest_with(small_demo, tmp_path / "dropped.csv", {"demo-002": None})
    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        summary = merge_summary(config(dropped, cache, tiny_profile_cfg, data_root=small_demo.parent))
    assert summary.written == {"train": 4}
    assert removals(caplog) == [
        f"removed stale shard {cache / 'val/shard-00000.h5'}: split 'val' is not in the manifest"]
    assert {name: (cache / name).read_bytes() for name in user} == user


def test_readers_refuse_a_clip_id_in_two_shards(demo_cache, tmp_path):
    """A shard copied under another shard's name (as an older version's stale shard would be) fails every reader,
    naming the id and both files, instead of giving its clips twice."""
    split = tmp_path / "cache" / "train"
    shutil.copytree(demo_cache[0] / "train", split)
    shutil.copy(split / "shard-00000.h5", split / "shard-00001.h5")
    message = re.escape(f"clip id 'demo-000-000' is in two shards, {split / 'shard-00000.h5'} and "
                        f"{split / 'shard-00001.h5'}; rerun `make features`")
    with pytest.raises(CacheError, match=message):
        ClipDataset(split, STREAMS, CLIP_S, False)
    with pytest.raises(CacheError, match=message):
        read_clips(split, STREAMS)
    with pytest.raises(InputError, match=message):
        read_cache_split(split)
