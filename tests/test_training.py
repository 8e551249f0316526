"""Training system: cached text conditioning, data module, adaptor checkpoints, CLI, resume."""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from expotion.data.clips import ClipDataset, collate
from expotion.data.shards import CacheError
from expotion.methods.expotion.export import load_adaptor, save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature, text_hidden
from expotion.musicgen.text import text_condition
from expotion.solvers.export import CheckpointError, CheckpointMismatch, read_adaptor

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("marlin", "synchformer")


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


def cached_text(mg, captions):
    hidden = text_hidden(mg, captions)
    longest = max(h.shape[0] for h in hidden)
    batch = torch.zeros(len(hidden), longest, hidden[0].shape[1])
    mask = torch.zeros(len(hidden), longest, dtype=torch.long)
    for i, h in enumerate(hidden):
        batch[i, : len(h)], mask[i, : len(h)] = torch.from_numpy(h), 1
    return batch, mask


def test_cached_text_conditioning_equals_musicgen_with_its_dropout(musicgen):
    """In train mode, over many batches, the cache path gives MusicGen's own logits, dropout included."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = musicgen.lm
    captions = ["slow piano", "fast drums and bass"]
    hidden, mask = cached_text(musicgen, captions)
    codes = torch.randint(0, lm.card, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    lm.train()
    drops = 0
    try:
        for _ in range(12):
            state = lm.cfg_dropout.rng.get_state()
            attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
            reference = lm.compute_predictions(codes, attrs).logits
            lm.cfg_dropout.rng.set_state(state)
            cond = text_condition(lm, hidden, mask, captions)
            drops += int(cond["description"][1].sum() == 0)
            ours = lm.compute_predictions(codes, [], condition_tensors=cond).logits
            valid = ~torch.isnan(reference)
            assert torch.equal(ours[valid], reference[valid])
    finally:
        lm.eval()
    assert 0 < drops < 12  # both branches were exercised (p = 0.2)
    cond = text_condition(lm, hidden, mask, captions)  # eval: never dropped
    assert cond["description"][1].sum() == mask.sum()


def test_dataset_crops_and_collates(demo_cache):
    cache, _ = demo_cache
    train = ClipDataset(cache / "train", STREAMS, crop_seconds=1.0, random_crop=True)
    assert len(train) == 4 and train.spec.dims["synchformer"] == 32 and train.spec.rates["marlin"].fps == 5
    starts = {float(train[0]["start_s"]) for _ in range(20)}
    assert len(starts) > 1 and all(0 <= s <= 1.0 for s in starts)
    item = train[1]
    assert item["codes"].shape == (4, 50) and item["codes"].dtype == torch.int64
    assert item["marlin"].shape == (10, 32) and item["synchformer"].shape == (40, 32)
    val = ClipDataset(cache / "val", STREAMS, crop_seconds=2.0, random_crop=False)
    assert {float(val[i]["start_s"]) for i in range(len(val))} == {0.0}
    items = [train[0], train[1]]
    items[1]["text"] = items[1]["text"][:0]  # an empty caption state pads to a zero mask
    batch = collate(items)
    assert batch["codes"].shape == (2, 4, 50)
    assert batch["text_mask"].tolist() == [[1], [0]] and batch["text"][1].abs().sum() == 0
    generic = ClipDataset(cache / "train", STREAMS, 1.0, False, generic_prompt=True)
    assert not torch.equal(generic[0]["text"], train[0]["text"])
    # the generic-prompt ablation: every clip reads "music with catchy melody", and the spec records it for generation
    assert generic[0]["caption"] == generic.spec.prompt == "music with catchy melody"
    assert train.spec.prompt is None and train[0]["caption"].startswith("upbeat pop groove")


def test_dataset_refuses_bad_shards(demo_cache, tmp_path):
    cache, _ = demo_cache
    shutil.copytree(cache / "val", tmp_path / "val")
    shard = next((tmp_path / "val").glob("shard-*.h5"))
    with h5py.File(shard, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match=f"{shard.name}: schema_version 99"):
        ClipDataset(tmp_path / "val", STREAMS, 2.0, False)
    data = (cache / "val" / shard.name).read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="truncated or corrupt"):
        ClipDataset(tmp_path / "val", STREAMS, 2.0, False)
    with pytest.raises(CacheError, match=r"no clip has .* >= 30 s \(all 2 cached clips were skipped"):
        ClipDataset(cache / "val", STREAMS, crop_seconds=30.0, random_crop=False)


def test_a_crop_longer_than_the_cached_clips_names_the_flag_and_the_clip_length(demo_cache):
    with pytest.raises(CacheError) as refused:
        ClipDataset(demo_cache[0] / "val", STREAMS, crop_seconds=10.0, random_crop=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.endswith("the cache holds clips of 2 s, shorter than --data.crop_seconds 10: set "
                            "--data.crop_seconds to at most 2, or precompute longer clips (--clip-seconds)")


@pytest.mark.parametrize("captions", ["manifest", "generic"])
def test_training_reads_the_clips_generation_and_eval_read(demo_cache, captions):
    """One reader: the clips training keeps are those batch generation and eval read, with the same spans, text
    states and features."""
    from expotion.data.captions import CaptionSource
    from expotion.data.clips import read_clips
    from expotion.evaluation.files import read_cache_split

    split = demo_cache[0] / "train"
    train = ClipDataset(split, STREAMS, crop_seconds=2.0, random_crop=False, captions=captions)
    generation = read_clips(split, STREAMS, captions=CaptionSource.parse(captions))
    evaluation = read_cache_split(split, captions=captions)
    assert len(generation) == 4 and sorted(train.clips, key=lambda clip: clip.clip_id) == generation
    spans = [(c.clip_id, c.caption, c.start_s, c.duration_s, c.source, c.audio_source) for c in generation]
    assert spans == [(c.clip_id, c.caption, c.start_s, c.duration_s, c.source, c.audio_source)
                     for c in evaluation.values()]
    assert all(clip.codes_frames == 100 and clip.text_dim == train.spec.text_dim > 0 for clip in generation)
    by_id = {clip.clip_id: clip for clip in generation}
    for index, clip in enumerate(train.clips):
        item, features = train[index], by_id[clip.clip_id].features(STREAMS)
        assert item["clip_id"] == clip.clip_id and set(features) == {"marlin", "marlin_mask", "synchformer"}
        for name, value in features.items():
            assert torch.equal(item[name], value), name
        with h5py.File(clip.shard, "r") as f:
            assert torch.equal(item["text"], torch.from_numpy(f[clip.text][()]))
            assert torch.equal(item["codes"], torch.from_numpy(f["clips"][clip.clip_id]["codes"][()].astype("int64")))


def test_training_opens_each_shard_once_per_worker_process(demo_cache, tmp_path, monkeypatch):
    """Every clip is read many times over two epochs; each worker process opens each shard once, the main process
    none after the split was read."""
    from torch.utils.data import ConcatDataset, DataLoader

    train = ClipDataset(demo_cache[0] / "train", STREAMS, crop_seconds=1.0, random_crop=True)
    shards = {str(clip.shard) for clip in train.clips}
    log_dir = tmp_path / "opened"
    log_dir.mkdir()
    real_file = h5py.File

    def counted(path, *args, **kwargs):
        with (log_dir / str(os.getpid())).open("a") as opened:
            opened.write(f"{path}\n")
        return real_file(path, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counted)
    loader = DataLoader(ConcatDataset([train] * 5), batch_size=2, shuffle=True, num_workers=2, collate_fn=collate,
                        persistent_workers=True)
    read = [clip_id for _ in range(2) for batch in loader for clip_id in batch["clip_id"]]
    assert len(read) == 2 * 5 * len(train)
    per_process = {log.name: log.read_text().split() for log in log_dir.iterdir()}
    assert str(os.getpid()) not in per_process and 1 <= len(per_process) <= 2
    for opened in per_process.values():
        assert sorted(opened) == sorted(set(opened)) and set(opened) <= shards


def test_adaptor_checkpoint_round_trip_and_refusals(musicgen, demo_cache, tmp_path, tiny_profile_cfg):
    from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.musicgen.loading import TinyMusicGenConfig, save_tiny

    spec = ClipDataset(demo_cache[0] / "val", STREAMS, 2.0, False).spec
    sig = model_signature(musicgen)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(0.25)
    path = save_adaptor(tmp_path / "adaptor.pt", adaptor, sig, spec)
    assert torch.load(path, weights_only=True)["musicgen"]["num_layers"] == 4
    loaded, loaded_spec = load_adaptor(path, musicgen.lm, sig, spec)
    assert loaded_spec == spec
    assert all(torch.equal(v, adaptor.state_dict()[k]) for k, v in loaded.state_dict().items())
    other = load_musicgen(str(save_tiny(tmp_path / "mg6", cfg=TinyMusicGenConfig(num_layers=6))))
    with pytest.raises(CheckpointMismatch, match="num_layers: checkpoint 4 vs model 6"):
        load_adaptor(path, other.lm, model_signature(other))
    wrong = type(spec)({**spec.shapes, "marlin": (768,)}, spec.rates, spec.text_dim)
    with pytest.raises(CheckpointMismatch, match="expects 'marlin' features of shape"):
        load_adaptor(path, musicgen.lm, sig, wrong)
    (tmp_path / "junk.pt").write_bytes(b"")
    torch.save({"state_dict": {}}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not an expotion adaptor checkpoint"):
        read_adaptor(tmp_path / "junk.pt")


def tiny_config(tmp_path: Path, cache: Path, tiny_profile_cfg, every_n_steps: int = 2, batch_size: int = 2,
                musicgen: str | None = None) -> Path:
    """tiny_cpu.yaml on the test cache, with short crops; every output goes under --trainer.default_root_dir."""
    cfg = yaml.safe_load((ROOT / "lightning_configs" / "tiny_cpu.yaml").read_text())
    cfg["model"]["musicgen"] = musicgen or tiny_profile_cfg.musicgen
    cfg["model"]["adaptor"]["max_seconds"] = 2.0
    cfg["data"].update(cache_dir=str(cache), crop_seconds=1.0, batch_size=batch_size, num_workers=0)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False)
    cfg["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=every_n_steps)
    cfg["trainer"]["callbacks"][3]["init_args"].update(every_n_epochs=1, seconds=0.5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_cli_trains_logs_and_exports_adaptor(tmp_path, demo_cache, tiny_profile_cfg, musicgen, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from expotion.cli.train import main

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg, every_n_steps=2)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    assert cli.trainer.global_step == 4  # 4 train clips, batch 2, 2 epochs
    run = tmp_path / "run"
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == run / "lightning_logs" / "version_0"
    payload = read_adaptor(run / "adaptor.pt")
    assert payload["extractors"]["profile"] == "tiny"  # the cache's extractor profile travels with the adaptor
    adaptor, _ = load_adaptor(run / "adaptor.pt", musicgen.lm, model_signature(musicgen))
    assert adaptor.gates.abs().sum() > 0  # the gates moved from zero
    events = EventAccumulator(str(log_dir), size_guidance={"audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "train/acc_q0", "gates/layer_02", "gates/layer_03"} <= set(tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"])
    assert {"samples/generated", "samples/reference"} <= set(tags["audio"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("adaptor.") for k in ckpt["state_dict"])  # MusicGen is not copied into checkpoints
    assert not (tmp_path / "runs").exists()  # nothing of the config's own default_root_dir


def make_train(config: Path, *args: str, **popen) -> subprocess.Popen:
    """``make train CONFIG=... ARGS="..."`` from the repository root, as a user types it.

    ``-o install`` only keeps make from ever reinstalling the shared venv from a test."""
    cmd = ["make", "--no-print-directory", "-o", "install", "train", f"CONFIG={config}", f"ARGS={' '.join(args)}"]
    return subprocess.Popen(cmd, cwd=ROOT, text=True, **popen)


def step_checkpoints(run: Path) -> set[int]:
    return {int(re.search(r"step=(\d+)", p.stem).group(1)) for p in (run / "checkpoints").glob("epoch=*.ckpt")}


def test_make_train_ckpt_path_last_resumes_at_the_next_step(tmp_path, demo_cache, tiny_profile_cfg):
    """Killed mid-epoch, the same `make train` with --ckpt_path last continues at the next step: none redone or skipped."""
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg, every_n_steps=1, batch_size=1)  # 4 steps/epoch
    run = tmp_path / "run"
    root = f"--trainer.default_root_dir={run}"
    fresh = make_train(config, root, "--ckpt_path last", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = fresh.communicate(timeout=300)
    assert fresh.returncode != 0 and "Traceback" not in err
    assert f"error: --ckpt_path last: no last.ckpt in {run / 'checkpoints'}" in err
    assert not (run / "checkpoints").exists()  # nothing was trained

    proc = make_train(config, root, "--trainer.max_epochs=50", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline, step = time.time() + 240, 0
    while time.time() < deadline and step < 3:
        time.sleep(0.5)
        if last.exists():
            step = torch.load(last, weights_only=True)["global_step"]  # saved atomically by Lightning
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert killed_at >= 3
    # the kill can land between a step's checkpoint and last.ckpt: a step file past killed_at is one the resumed run
    # must write again, not one it may skip
    before = {step for step in step_checkpoints(run) if step <= killed_at}

    resumed = make_train(config, root, f"--trainer.max_steps={killed_at + 2}", "--ckpt_path last",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == killed_at + 2
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == killed_at + 2
    assert step_checkpoints(run) - before == {killed_at + 1, killed_at + 2}
    versions = sorted((run / "lightning_logs").glob("version_*"))
    assert len(versions) == 2  # the logger opened a new version; the checkpoints were found all the same
    assert scalar_steps(versions[-1], "train/loss") == [killed_at, killed_at + 1]


def test_a_step_interval_longer_than_an_epoch_still_saves_last_at_every_epoch_end(tmp_path, demo_cache,
                                                                                   tiny_profile_cfg, monkeypatch):
    """The paper configs checkpoint every 200 steps; an epoch end between two of them still writes last.ckpt, so a run
    stopped there loses nothing, and one stopped later loses less than an epoch."""
    from expotion.cli.train import main

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg, every_n_steps=3, batch_size=1)  # 4 steps/epoch
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    run = tmp_path / "run"
    assert step_checkpoints(run) == {3}  # the step interval's own checkpoint
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # the epoch's end


# ablation overlay -> (face, motion, generic prompt) it selects
ABLATIONS = {
    "face.yaml": (True, None, False),
    "face_synchformer.yaml": (True, "synchformer", False),
    "synchformer.yaml": (False, "synchformer", False),
    "raft.yaml": (False, "raft", False),
    "generated_prompt.yaml": (True, "synchformer", False),
    "generic_prompt.yaml": (True, "synchformer", True),
}


def test_every_config_parses(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from expotion.data.clips import ShardDataModule
    from expotion.methods.expotion.module import ExpotionModule

    class ParseOnly(LightningCLI):
        def instantiate_classes(self) -> None:
            pass

    configs = ROOT / "lightning_configs"
    paper, large = configs / "paper.yaml", configs / "musicgen_large.yaml"
    combos = [[configs / "tiny_cpu.yaml"], [paper]]
    combos += [[paper, configs / f"musicgen_{s}.yaml"] for s in ("small", "medium", "large")]
    overlays = sorted((configs / "ablations").glob("*.yaml"))
    assert {a.name for a in overlays} == set(ABLATIONS)
    combos += [[paper, large, a] for a in overlays]
    combos += [[paper, large, configs / "ddp_4gpu.yaml"]]
    combos += [[paper, large, configs / "official.yaml"],
               [paper, large, configs / "ablations" / "raft.yaml", configs / "official.yaml"]]
    for files in combos:
        args = [x for f in files for x in ("--config", str(f))]
        cli = ParseOnly(ExpotionModule, ShardDataModule, run=False, args=args)
        cfg = cli.config
        assert cfg.model.adaptor.n_adapted >= 1
        if files[-1].name == "musicgen_small.yaml":
            assert cfg.model.musicgen == "facebook/musicgen-small" and cfg.model.adaptor.n_adapted == 24
            assert cfg.trainer.default_root_dir == "runs/musicgen_small" and cfg.model.optim.lr == 0.01  # base kept
        if files[-1].parent.name == "ablations":  # each Table 1 / §4.5 row over the large size config
            visual = cfg.model.adaptor.visual
            assert (visual.face, visual.motion, cfg.data.generic_prompt) == ABLATIONS[files[-1].name], files[-1]
            assert cfg.model.adaptor.n_adapted == 48  # the overlay keeps the size config's other fields
        if files[-1].name == "ddp_4gpu.yaml":
            assert cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp" and cfg.data.batch_size == 10
        if files[-1].name == "official.yaml":
            model = cfg.model
            assert model.adaptor.prefix_causal and model.adaptor.pos_embedding == "official"
            assert model.objective.pooled and model.optim.weight_decay == 0.02 and model.optim.warmup_epochs == 2
            assert model.optim.min_lr == 1e-4 and model.optim.lr == 0.01 and model.adaptor.n_adapted == 48
            assert cfg.trainer.precision == "16-mixed" and cfg.trainer.gradient_clip_val == 0.1
            assert cfg.trainer.max_epochs == 20 and cfg.trainer.default_root_dir == "runs/musicgen_large"
            assert cfg.trainer.callbacks[0].class_path == "expotion.solvers.callbacks.RunCheckpoint"  # paper.yaml's kept
            raft = configs / "ablations" / "raft.yaml" in files
            assert model.adaptor.visual.motion == ("raft" if raft else "synchformer")


def test_runs_in_different_root_dirs_keep_their_own_exports(tmp_path, demo_cache, tiny_profile_cfg, monkeypatch, caplog):
    from expotion.cli.train import main

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg)
    exports = []
    for name, seed in (("a", 0), ("b", 1)):
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / name}", "--trainer.max_steps=1",
              f"--seed_everything={seed}"])
        exports.append(read_adaptor(tmp_path / name / "adaptor.pt")["state_dict"])
        assert (tmp_path / name / "checkpoints" / "last.ckpt").exists()
    assert not torch.equal(exports[0]["h0"], exports[1]["h0"])  # two runs, two exports
    assert "holds the adaptor of an earlier run" not in caplog.text
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'a'}", "--trainer.max_steps=1"])
    assert f"{tmp_path / 'a' / 'adaptor.pt'} holds the adaptor of an earlier run" in caplog.text
    assert torch.equal(read_adaptor(tmp_path / "b" / "adaptor.pt")["state_dict"]["h0"], exports[1]["h0"])


def tampered_copy(cache: Path, dest: Path, edits: dict[tuple[str, str, str], float]) -> Path:
    """A copy of ``cache`` with one value of (split, clip, stream) set to each given value."""
    shutil.copytree(cache, dest)
    for (split, clip, stream), value in edits.items():
        for shard in (dest / split).glob("shard-*.h5"):
            with h5py.File(shard, "a") as f:
                if clip in f["clips"]:
                    data = f["clips"][clip][stream]
                    row = data[0]
                    row.flat[0] = value
                    data[0] = row
    return dest


def test_nonfinite_features_skip_the_clip(tmp_path, demo_cache, tiny_profile_cfg, caplog, monkeypatch):
    from expotion.cli.train import main

    cache = tampered_copy(demo_cache[0], tmp_path / "cache", {("train", "demo-000-000", "synchformer"): float("nan"),
                                                              ("val", "demo-002-000", "marlin"): float("inf")})
    train = ClipDataset(cache / "train", STREAMS, crop_seconds=1.0, random_crop=True)
    index = [clip.clip_id for clip in train.clips].index("demo-000-000")
    assert train[index] is None and train[index - 1 if index else 1] is not None
    assert f"skip demo-000-000 in {cache / 'train'}" in caplog.text and "non-finite values (NaN/inf) in synchformer" in caplog.text
    batch = collate([train[index], train[(index + 1) % len(train)]])
    assert batch["codes"].shape[0] == 1 and collate([None, None]) is None
    val = ClipDataset(cache / "val", STREAMS, crop_seconds=1.0, random_crop=False)
    assert val[0] is None and val.first_usable()["clip_id"] == "demo-002-001"

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, cache, tiny_profile_cfg, batch_size=1)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    assert cli.trainer.global_step == 3  # 4 train clips, one skipped
    losses = cli.trainer.logged_metrics
    assert torch.isfinite(losses["train/loss"]) and torch.isfinite(losses["val/loss"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"audio": 0})
    events.Reload()
    assert "samples/generated" in events.Tags()["audio"]  # from the first finite validation clip


def run_train(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and the one error line of ``python -m expotion.train ARGS`` (no traceback allowed)."""
    from expotion.cli.train import run

    code = run(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return code, errors[0]


def test_unusable_caches_are_refused_in_one_line(tmp_path, demo_cache, tiny_profile_cfg, capsys, monkeypatch):
    from expotion.data.shards import ShardWriter

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg)

    def skipped_only(root: Path, recording: str, reason: str, duration_s: float | None = None) -> Path:
        """A cache whose one recording per split was skipped; ``duration_s``: it gave no clip for its length."""
        for split in ("train", "val"):
            writer = ShardWriter(root / split / "shard-00000.h5", {"split": split})
            if duration_s is not None:
                writer.cover(recording, duration_s, 0, duration_s)
            writer.skip(recording, reason)
            writer.commit()
        return root

    empty = skipped_only(tmp_path / "empty", "short-01", "recording is 4.0 s, shorter than one 10 s clip", 4.0)
    code, err = run_train(["fit", "--config", str(config), f"--data.cache_dir={empty}"], capsys)
    assert code == 2
    assert err.startswith(f"error: {empty / 'train'}: the cache holds no clips (1 shard(s); precompute skipped 1, "
                          "e.g. short-01: recording is 4.0 s, shorter than one 10 s clip)")
    assert "--clip-seconds (FEATURE_ARGS)" in err
    missing = skipped_only(tmp_path / "missing", "gone-01", "videos/gone.mp4: file not found")
    code, err = run_train(["fit", "--config", str(config), f"--data.cache_dir={missing}"], capsys)
    assert code == 2 and "--clip-seconds" not in err  # the lengths are not what went wrong
    assert err.endswith("e.g. gone-01: videos/gone.mp4: file not found); fix the skipped recordings or the manifest "
                        "(the cache's summary.json gives every reason) and rerun `make features`")

    code, err = run_train(["fit", "--config", str(config), "--data.crop_seconds=30"], capsys)
    assert code == 2
    assert f"{demo_cache[0] / 'train'}: no clip has codes, t5 and marlin, synchformer of >= 30 s" in err
    assert err.endswith("the cache holds clips of 2 s, shorter than --data.crop_seconds 30: set --data.crop_seconds "
                        "to at most 2, or precompute longer clips (--clip-seconds)")

    no_val = tmp_path / "no-val"
    shutil.copytree(demo_cache[0] / "train", no_val / "train")
    code, err = run_train(["fit", "--config", str(config), f"--data.cache_dir={no_val}"], capsys)
    assert code == 2
    assert f"{no_val} has no 'val' split (it has: train)" in err and "--data.val_split" in err
    assert "make features` first" not in err

    code, err = run_train(["fit", "--config", str(config), f"--data.cache_dir={tmp_path / 'nothing'}"], capsys)
    assert code == 2 and "no feature shards (run `make features` first)" in err


def test_on_fit_start_places_every_musicgen_part_on_the_module_device(tmp_path, demo_cache, tiny_profile_cfg):
    """Device plumbing on CPU: what audiocraft keeps outside the LM's module tree follows the module's device."""
    import lightning as L

    from expotion.data.clips import ShardDataModule
    from expotion.methods.expotion.adaptor import AdaptorConfig
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.methods.expotion.module import ExpotionModule

    module = ExpotionModule(tiny_profile_cfg.musicgen, AdaptorConfig(2, VisualConfig(), max_seconds=2.0))
    mg = module.musicgen
    mg.device = mg.lm.condition_provider.conditioners["description"].device = "elsewhere"
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, ShardDataModule(str(demo_cache[0]), batch_size=2, num_workers=0, crop_seconds=1.0))
    assert_placed(mg, module.device)


def assert_placed(mg, device: torch.device) -> None:
    conditioners = mg.lm.condition_provider.conditioners.values()
    parts = [mg.lm, mg.compression_model, *(v for c in conditioners for v in vars(c).values()
                                            if isinstance(v, torch.nn.Module))]
    assert all(p.device == device for part in parts for p in part.parameters())
    assert all(c.device == device for c in conditioners if hasattr(c, "device"))
    assert mg.device == device
    assert (mg.autocast.autocast is not None) == (device.type not in ("cpu", "meta"))


def test_place_musicgen_moves_parts_outside_the_module_tree(tiny_profile_cfg):
    """A text encoder held in a conditioner's __dict__ (as audiocraft's T5Conditioner does) moves with the rest.

    The target is the meta device, where nothing starts, so every check fails for a part left behind."""
    from expotion.musicgen.loading import place_musicgen

    meta = torch.device("meta")
    mg = load_musicgen(tiny_profile_cfg.musicgen)
    conditioner = mg.lm.condition_provider.conditioners["description"]
    conditioner.__dict__["t5"] = torch.nn.Linear(2, 2)
    conditioner.device = "cpu"  # audiocraft's T5Conditioner tokenizes onto this device
    place_musicgen(mg, meta)
    assert conditioner.t5.weight.device == meta
    assert conditioner.device == meta and mg.device == meta
    assert_placed(mg, meta)


@pytest.mark.gpu
def test_two_training_steps_with_audio_samples_on_cuda(tmp_path, demo_cache, tiny_profile_cfg, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from expotion.cli.train import main

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg)
    cli = main(["fit", "--config", str(config), "--trainer.accelerator=gpu", "--trainer.devices=1",
                "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    assert cli.trainer.global_step == 2
    assert_placed(cli.model.musicgen, torch.device("cuda", 0))
    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"audio": 0})
    events.Reload()
    assert {"samples/generated", "samples/reference"} <= set(events.Tags()["audio"])


def test_pooled_loss_is_one_cross_entropy_over_every_valid_position():
    from expotion.musicgen.objective import codebook_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 30, 16, generator=g)
    codes = torch.randint(0, 16, (2, 4, 30), generator=g)
    mask = torch.ones(2, 4, 30, dtype=torch.bool)
    for k in range(4):  # the delay pattern: codebook k has k fewer valid positions
        mask[:, k, :k] = False
    log_p = logits.log_softmax(-1).gather(-1, codes[..., None])[..., 0]
    by_hand = -(log_p * mask).sum() / mask.sum()
    pooled, ce, _ = codebook_cross_entropy(logits, codes, mask, pooled=True)
    assert pooled.item() == pytest.approx(by_hand.item(), abs=1e-6)
    default, ce_default, _ = codebook_cross_entropy(logits, codes, mask)
    per_codebook = torch.stack([-(log_p[:, k] * mask[:, k]).sum() / mask[:, k].sum() for k in range(4)])
    assert default.item() == pytest.approx(per_codebook.mean().item(), abs=1e-6)
    assert torch.equal(ce, ce_default)
    assert abs(pooled.item() - default.item()) > 1e-5


def test_warmup_cosine_schedule():
    from expotion.solvers.optimization import warmup_cosine

    factors = [warmup_cosine(step, 4, 20, 0.01) for step in range(21)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[20] == pytest.approx(0.01) and factors[12] == pytest.approx(0.505)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def official_config(tmp_path: Path, demo_cache, tiny_profile_cfg, accelerator: str, precision: str) -> Path:
    """The tiny config with ``official.yaml`` on top (3 epochs of 2 steps, no audio samples)."""
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg, every_n_steps=100)
    cfg = yaml.safe_load(config.read_text())
    official = yaml.safe_load((ROOT / "lightning_configs" / "official.yaml").read_text())
    cfg["model"]["adaptor"].update(official["model"]["adaptor"])
    cfg["model"]["optim"].update(official["model"]["optim"])
    cfg["model"].update({k: v for k, v in official["model"].items() if k not in ("adaptor", "optim")})
    cfg["trainer"].update(official["trainer"], max_epochs=3, accelerator=accelerator, precision=precision)
    cfg["trainer"]["callbacks"][3]["init_args"]["every_n_epochs"] = 0
    config.write_text(yaml.safe_dump(cfg))
    return config


def lr_per_step(log_dir: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if t.startswith("lr-"))
    return [e.value for e in events.Scalars(tag)]


def test_official_options_train_with_their_schedule(tmp_path, demo_cache, tiny_profile_cfg, musicgen, monkeypatch):
    """official.yaml on CPU (full precision: fp16 needs a GPU): causal prefix, official positions, pooled loss,
    weight decay, clipping, 2 warmup epochs and a cosine down to 1e-4."""
    from expotion.cli.train import main
    from expotion.solvers.optimization import warmup_cosine

    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(official_config(tmp_path, demo_cache, tiny_profile_cfg, "cpu", "32-true"))])
    module = cli.model
    assert module.adaptor.cfg.prefix_causal and module.objective.pooled and cli.trainer.gradient_clip_val == 0.1
    assert cli.trainer.global_step == 6  # 4 train clips, batch 2, 3 epochs
    lr = module.optim.lr
    expected = [lr * warmup_cosine(step, 4, 6, 1e-4 / lr) for step in range(6)]  # warmup: 2 epochs = 4 steps
    assert lr_per_step(cli.trainer.log_dir) == pytest.approx(expected, rel=1e-5)
    assert module.adaptor.gates.abs().sum() > 0
    adaptor, _ = load_adaptor(tmp_path / "run" / "adaptor.pt", musicgen.lm, model_signature(musicgen))
    assert adaptor.cfg.pos_embedding == "official" and adaptor.cfg.prefix_causal


@pytest.mark.gpu
def test_official_options_train_in_fp16_with_a_grad_scaler(tmp_path, demo_cache, tiny_profile_cfg, monkeypatch):
    from expotion.cli.train import main

    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(official_config(tmp_path, demo_cache, tiny_profile_cfg, "gpu", "16-mixed"))])
    assert cli.trainer.precision_plugin.scaler is not None and cli.trainer.global_step == 6
    assert torch.isfinite(cli.model.adaptor.gates).all() and cli.model.adaptor.gates.abs().sum() > 0


def test_checkpoint_records_the_synchformer_stride(musicgen, demo_cache, tmp_path):
    from dataclasses import replace

    from expotion.core.rates import Rates
    from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig

    spec = ClipDataset(demo_cache[0] / "val", STREAMS, 2.0, False).spec
    paper = replace(spec, rates={**spec.rates, "synchformer": Rates(synchformer_stride=5).synchformer})
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    path = save_adaptor(tmp_path / "adaptor.pt", adaptor, model_signature(musicgen), paper)
    saved = torch.load(path, weights_only=True)["features"]["rates"]["synchformer"]
    assert saved["segment_len"] == 8 and saved["segment_hop"] == pytest.approx(5 / 25)
    with pytest.raises(CheckpointMismatch, match="expects 'synchformer' features of shape .* segment_hop=0.2"):
        load_adaptor(path, musicgen.lm, model_signature(musicgen), spec)
