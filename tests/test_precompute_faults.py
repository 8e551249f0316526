"""Precompute under adversarial input and faults: split names, changed inputs, one failing recording, truncated
recordings, corrupt shards (rebuilt by the next run, named by every reader)."""
import csv
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import moving_frames, write_video
from conftest import precompute_config as config

from expotion.data.clips import ClipDataset, read_clips
from expotion.data.manifest import ManifestError
from expotion.data.shards import CacheError, list_shards, open_shard
from expotion.cli.cache import main as cache_main
from expotion.precompute.pipeline import run
from expotion.precompute.summary import written_clip_ids


def demo_copy(small_demo: Path, dest: Path, edits: dict[str, dict[str, str]] | None = None) -> Path:
    """A copy of the demo data whose manifest has ``edits`` ({id: {column: value}}) applied; the manifest path."""
    shutil.copytree(small_demo.parent, dest)
    manifest = dest / small_demo.name
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, **(edits or {}).get(row["id"], {})} for row in rows)
    return manifest


def test_a_split_that_escapes_the_cache_stops_the_run_before_any_work(small_demo, tiny_profile_cfg, tmp_path):
    manifest = demo_copy(small_demo, tmp_path / "data", {"demo-001": {"split": "../../escaped"}})
    with pytest.raises(ManifestError, match=r"manifest.csv:3: split '../../escaped' is not a name"):
        run(config(manifest, tmp_path / "out" / "cache", tiny_profile_cfg))
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


def test_a_changed_audio_column_or_audio_file_recomputes_that_shard(small_demo, tiny_profile_cfg, tmp_path):
    """demo-000's audio pointed at demo-002's music: its shard (only) is rewritten, with the new path and the codes
    of that music (equal to demo-002's own clips, cut at the same times); then the file rewritten in place."""
    cache = tmp_path / "cache"
    manifest = demo_copy(small_demo, tmp_path / "data")
    cfg = config(manifest, cache, tiny_profile_cfg, names=("codes",), per_shard=1)
    run(cfg)
    shard = cache / "train/shard-00000.h5"
    with h5py.File(shard) as f:
        old_codes = f["clips/demo-000-000/codes"][()]
    demo_copy(small_demo, tmp_path / "edited", {"demo-000": {"audio": "audio/demo-002.wav"}})
    shutil.copy(tmp_path / "edited" / manifest.name, manifest)
    summary = run(cfg)
    assert (summary.new_shards, summary.reused_shards) == (1, 2)
    with h5py.File(shard) as f, h5py.File(cache / "val/shard-00000.h5") as val:
        assert f["clips/demo-000-000"].attrs["audio_source"] == "audio/demo-002.wav"
        for clip in ("000", "001"):
            assert np.array_equal(f[f"clips/demo-000-{clip}/codes"][()], val[f"clips/demo-002-{clip}/codes"][()])
        assert not np.array_equal(f["clips/demo-000-000/codes"][()], old_codes)
    shutil.copy(tmp_path / "data/audio/demo-000.wav", tmp_path / "data/audio/demo-002.wav")  # same path, new file
    summary = run(cfg)
    assert (summary.new_shards, summary.reused_shards) == (2, 1)  # both recordings that read demo-002.wav
    with h5py.File(shard) as f:
        assert np.array_equal(f["clips/demo-000-000/codes"][()], old_codes)


def test_an_unexpected_error_in_one_recording_skips_it_and_later_shards_are_written(
        small_demo, tiny_profile_cfg, tmp_path, monkeypatch):
    """The second clip of the first recording fails inside an extractor: that recording is skipped whole (its
    first clip, already stored, is removed) with the error as its reason; every later recording and shard is
    written."""
    from expotion.extractors.bank import STREAMS

    stream, calls = STREAMS["synchformer"], []

    def failing(ex, model, clip, duration_s, face_box, out):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected fault")
        stream.compute(ex, model, clip, duration_s, face_box, out)

    monkeypatch.setitem(STREAMS, "synchformer", replace(stream, compute=failing))
    summary = run(config(small_demo, tmp_path / "cache", tiny_profile_cfg, names=("synchformer",), per_shard=1))
    assert summary.skipped == [{"clip": "demo-000", "split": "train", "reason": (
        f"{small_demo.parent / 'videos/demo-000.mp4'}: failed with RuntimeError: injected fault")}]
    assert written_clip_ids(tmp_path / "cache") == ["demo-001-000", "demo-001-001", "demo-002-000", "demo-002-001"]
    entry = next(c for c in summary.coverage if c["recording"] == "demo-000")
    assert (entry["planned_clips"], entry["clips"], entry["dropped_s"]) == (2, 0, 4.0)
    assert "demo-000: 0 of 2 clips written, 4.00 s of 4.00 s in no clip" in summary.report()


def test_a_truncated_recordings_entry_counts_the_clips_written_and_the_seconds_dropped(
        small_demo, tiny_profile_cfg, tmp_path):
    """A 4 s Matroska file cut after about 2.6 s: its header still says 4 s; the clip at 0-2 s is written, the one
    at 2-4 s is skipped, and the recording's entry says so."""
    manifest = demo_copy(small_demo, tmp_path / "data", {"demo-000": {"video": "truncated.mkv", "face_box": "8 8 60 60"}})
    whole = write_video(tmp_path / "whole.mkv", moving_frames(100, 64, 80), fps=25).read_bytes()
    (tmp_path / "data/truncated.mkv").write_bytes(whole[: len(whole) * 2 // 3])
    summary = run(config(manifest, tmp_path / "cache", tiny_profile_cfg, names=("synchformer",), per_shard=1))
    written = [c for c in written_clip_ids(tmp_path / "cache") if c.startswith("demo-000-")]
    skipped = [s["clip"] for s in summary.skipped if s["clip"].startswith("demo-000")]
    assert skipped and len(written) + len(skipped) == 2, (written, summary.skipped)
    entry = next(c for c in summary.coverage if c["recording"] == "demo-000")
    assert entry["clips"] == len(written)
    assert entry["dropped_s"] == pytest.approx(entry["duration_s"] - 2.0 * len(written))
    assert entry["planned_clips"] == 2
    assert f"demo-000: {len(written)} of 2 clips written" in summary.report()


# ---- a corrupt shard ---------------------------------------------------------------------------------
def flip_codes(shard: Path, clip_id: str) -> None:
    """Invert 16 bytes inside the stored codes of ``clip_id`` (their first chunk on disk)."""
    with h5py.File(shard) as f:
        info = f[f"clips/{clip_id}/codes"].id.get_chunk_info(0)
    with shard.open("r+b") as raw:
        raw.seek(info.byte_offset + 8)
        data = raw.read(16)
        raw.seek(info.byte_offset + 8)
        raw.write(bytes(b ^ 0xFF for b in data))


def test_a_corrupt_shard_is_named_by_every_reader_rebuilt_by_features_and_training_then_runs(
        small_demo, tiny_profile_cfg, tmp_path, caplog, capsys, monkeypatch):
    from test_training import run_train, tiny_config

    from expotion.cli.train import main as train_main

    cache = tmp_path / "cache"
    cfg = config(small_demo, cache, tiny_profile_cfg, per_shard=1)
    run(cfg)
    shards = list_shards(cache)
    assert [p.relative_to(cache).as_posix() for p in shards] == [
        "train/shard-00000.h5", "train/shard-00001.h5", "val/shard-00000.h5"]
    corrupt = cache / "train/shard-00001.h5"
    flip_codes(corrupt, "demo-001-000")
    others = {p: p.read_bytes() for p in shards if p != corrupt}
    rebuild = "rerun `make features` (or `expotion features`) to rebuild it"

    with pytest.raises(CacheError) as err:
        open_shard(corrupt)
    assert str(err.value).startswith(f"{corrupt}: corrupt shard (") and str(err.value).endswith(rebuild)
    assert "\n" not in str(err.value)
    with pytest.raises(CacheError, match=f"^{corrupt}: corrupt shard"):
        ClipDataset(cache / "train", ("marlin",), 1.0, random_crop=False)
    with pytest.raises(CacheError, match=f"^{corrupt}: corrupt shard"):
        read_clips(cache / "train", ("marlin",))  # what generation reads
    capsys.readouterr()
    assert cache_main(["inspect", str(cache)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{corrupt}: corrupt shard" in err and "make features" in err
    monkeypatch.chdir(tmp_path)
    train_config = tiny_config(tmp_path, cache, tiny_profile_cfg)
    code, line = run_train(["fit", "--config", str(train_config), "--trainer.max_steps=2"], capsys)
    assert code != 0 and f"{corrupt}: corrupt shard" in line and "make features" in line

    with caplog.at_level(logging.WARNING, logger="expotion.precompute"):
        summary = run(cfg)
    assert (summary.new_shards, summary.reused_shards) == (1, 2)
    assert [m for m in caplog.messages if "corrupt" in m] == [
        next(m for m in caplog.messages if m.startswith(f"{corrupt}: corrupt shard"))]
    assert {p: p.read_bytes() for p in others} == others  # reused untouched, byte for byte
    with open_shard(corrupt) as f:
        assert sorted(f["clips"]) == ["demo-001-000", "demo-001-001"]
    train_main(["fit", "--config", str(train_config), "--trainer.max_steps=2"])
    assert (tmp_path / "run" / "adaptor.pt").exists()


def test_every_dataset_of_a_shard_carries_a_checksum(small_demo, tiny_profile_cfg, tmp_path):
    run(config(small_demo, tmp_path / "cache", tiny_profile_cfg, names=("marlin", "codes", "t5")))
    datasets = []
    with h5py.File(tmp_path / "cache/train/shard-00000.h5") as f:
        f.visititems(lambda name, obj: datasets.append((name, obj.fletcher32))
                     if isinstance(obj, h5py.Dataset) else None)
    assert datasets and all(checked for _, checked in datasets), datasets
