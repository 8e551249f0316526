"""Checkpoint faults on the command line: unreadable or mismatched files are refused in one line naming them,
for `expotion generate --checkpoint` and for resuming training with `--ckpt_path`; an adaptor finds the MusicGen
and the extractors it was trained with."""
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import moving_frames, write_video
from test_training import run_train, tiny_config

from expotion.cli.main import main as cli_main
from expotion.data.clips import ClipDataset
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.methods.expotion.export import save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature
from expotion.solvers.export import read_adaptor


class WritesAFile:
    """Pickled code: unpickling it would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def unusable_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Broken copies of ``good``, each with the words its refusal must contain."""
    data = good.read_bytes()
    empty, truncated, code = tmp_path / "empty.pt", tmp_path / "truncated.pt", tmp_path / "code.pt"
    empty.write_bytes(b"")
    truncated.write_bytes(data[: len(data) // 2])
    torch.save({"format": "expotion-adaptor", "hook": WritesAFile(tmp_path / "ran")}, code)
    text, junk = tmp_path / "README.md", tmp_path / "junk.pt"
    text.write_text("# Expotion\n\nMusic for videos.\n")
    junk.write_bytes(bytes(range(101, 140)))
    legacy_code = tmp_path / "legacy_code.pt"
    torch.save({"hook": WritesAFile(tmp_path / "ran")}, legacy_code, _use_new_zipfile_serialization=False)
    not_torch = "not a torch checkpoint (a PyTorch .pt/.ckpt file)"
    return {"empty": (empty, "empty file (0 bytes), not a checkpoint"),
            "truncated": (truncated, "unreadable checkpoint (truncated or corrupt): "),
            "code": (code, "refused: it holds pickled Python objects (posix.mkdir) besides tensors"),
            "legacy code": (legacy_code, "refused: it holds pickled Python objects (posix.mkdir) besides tensors"),
            "text": (text, not_torch), "junk": (junk, not_torch)}


def narrowed_copy(cache: Path, dest: Path, stream: str, width: int) -> Path:
    """A copy of ``cache`` whose ``stream`` features have another width (as another extractor would give)."""
    shutil.copytree(cache, dest)
    for shard in dest.rglob("shard-*.h5"):
        with h5py.File(shard, "a") as f:
            for group in f["clips"].values():
                old = group[stream]
                data, attrs = old[()][..., :width], dict(old.attrs)
                del group[stream]
                group.create_dataset(stream, data=data).attrs.update(attrs)
    return dest


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


@pytest.fixture(scope="module")
def adaptor_file(musicgen, demo_cache, tmp_path_factory) -> Path:
    spec = ClipDataset(demo_cache[0] / "val", ("marlin", "synchformer"), 2.0, False).spec
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    return save_adaptor(tmp_path_factory.mktemp("ckpt") / "adaptor.pt", adaptor, model_signature(musicgen), spec)


def generate_error(args: list[str], caplog) -> str:
    """Run `expotion generate ARGS`; it must fail with exit code 2 and exactly one single-line error."""
    caplog.clear()
    assert cli_main(["generate", *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_generate_refuses_unusable_adaptor_files_in_one_line(tmp_path, demo_cache, adaptor_file, caplog):
    batch = ["--cache", str(demo_cache[0] / "val"), "--out-dir", str(tmp_path / "out")]
    for name, (path, words) in unusable_files(tmp_path, adaptor_file).items():
        assert generate_error([*batch, "--checkpoint", str(path)], caplog).startswith(f"{path}: {words}"), name
    assert not (tmp_path / "ran").exists()  # the pickled code never ran

    payload = torch.load(adaptor_file, weights_only=True)
    n = payload["state_dict"]["h0"].shape[0]
    payload["state_dict"]["h0"] = payload["state_dict"]["h0"][:, :5]
    torch.save(payload, tmp_path / "reshaped.pt")
    assert generate_error([*batch, "--checkpoint", str(tmp_path / "reshaped.pt")], caplog) == (
        f"{tmp_path / 'reshaped.pt'}: the adaptor weights do not fit: h0 has shape ({n}, 5), the adaptor ({n}, 64)")

    narrow = narrowed_copy(demo_cache[0], tmp_path / "narrow", "synchformer", 16)
    message = generate_error(["--cache", str(narrow / "val"), "--out-dir", str(tmp_path / "out"),
                              "--checkpoint", str(adaptor_file)], caplog)
    assert message == (f"{adaptor_file}: adaptor expects 'synchformer' features of shape (32,), "
                       f"{narrow / 'val'} clip demo-002-000 has (16,)")
    assert not (tmp_path / "out").exists()  # refused before anything was generated


def test_resume_refuses_unusable_checkpoints_in_one_line(tmp_path, demo_cache, tiny_profile_cfg, capsys, monkeypatch):
    from expotion.cli.train import run
    from expotion.musicgen.loading import TinyMusicGenConfig, save_tiny

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg)
    fit = ["fit", "--config", str(config), "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    assert run(fit) == 0
    capsys.readouterr()
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    elsewhere = [*fit, f"--trainer.default_root_dir={tmp_path / 'other'}"]
    for name, (path, words) in unusable_files(tmp_path, good).items():
        code, error = run_train([*elsewhere, "--ckpt_path", str(path)], capsys)
        assert code == 2 and error.startswith(f"error: {path}: {words}"), name
    assert not (tmp_path / "ran").exists()

    narrow = narrowed_copy(demo_cache[0], tmp_path / "narrow", "synchformer", 16)
    code, error = run_train([*elsewhere, f"--data.cache_dir={narrow}", "--ckpt_path", str(good)], capsys)
    assert code == 2 and error.startswith(f"error: {good}: adaptor expects 'synchformer' features of shape (32,)")
    assert "got (16,)" in error

    other = save_tiny(tmp_path / "mg6", cfg=TinyMusicGenConfig(num_layers=6))
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    shutil.copy(good, tmp_path / "other" / "checkpoints" / "last.ckpt")
    code, error = run_train([*elsewhere, f"--model.musicgen={other}", "--ckpt_path", "last"], capsys)
    assert code == 2 and "num_layers: checkpoint 4 vs model 6" in error
    assert error.startswith(f"error: {tmp_path / 'other' / 'checkpoints' / 'last.ckpt'}: ")


def test_generate_uses_the_musicgen_and_extractors_it_was_trained_with(tmp_path, demo_cache, tiny_profile_cfg,
                                                                       monkeypatch, caplog):
    """Trained with a relative MusicGen path and the tiny extractors; generated from another folder, after the
    project moved, without --musicgen or --profile."""
    from expotion.cli.train import main

    project = tmp_path / "project"
    shutil.copytree(Path(tiny_profile_cfg.musicgen), project / "models" / "musicgen_tiny")
    monkeypatch.chdir(project)
    config = tiny_config(project, demo_cache[0], tiny_profile_cfg, musicgen="models/musicgen_tiny")
    main(["fit", "--config", str(config), "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    payload = read_adaptor(project / "run" / "adaptor.pt")
    assert payload["musicgen"]["local"] == {"path": str(project / "models" / "musicgen_tiny"),
                                            "from_run": "../models/musicgen_tiny"}
    assert payload["extractors"]["profile"] == "tiny"
    assert payload["extractors"]["weights_dir"]["path"] == str(Path(tiny_profile_cfg.weights_dir).resolve())

    moved = tmp_path / "moved"
    project.rename(moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    video = write_video(elsewhere / "v.mp4", moving_frames(50, 64, 80), fps=25)
    code = cli_main(["generate", "--video", str(video), "--prompt", "calm piano", "--checkpoint",
                     str(moved / "run" / "adaptor.pt"), "--out", "o.wav", "--top-k", "50"])
    assert code == 0, caplog.text
    wav, sr = sf.read(elsewhere / "o.wav")
    assert sr == 32000 and len(wav) == 64000 and np.abs(wav).max() > 0
    assert "MARLIN" not in caplog.text


def as_clip_flow_checkpoint(good: Path, dest: Path, class_path: bool = True) -> Path:
    """``good`` (an Expotion Lightning checkpoint) dressed as a CLIP + flow run's: its weights under
    ``conditioner.``, and the class LightningCLI records unless ``class_path`` is False."""
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"] = {"conditioner." + k.removeprefix("adaptor."): v for k, v in ckpt["state_dict"].items()}
    ckpt["hyper_parameters"].pop("_class_path")
    if class_path:
        ckpt["hyper_parameters"]["_class_path"] = "expotion.methods.clipflow.module.ClipFlowModule"
    torch.save(ckpt, dest)
    return dest


def test_resume_refuses_a_checkpoint_of_the_other_method_in_one_line(tmp_path, demo_cache, tiny_profile_cfg, capsys,
                                                                     monkeypatch):
    from test_training import ROOT

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, demo_cache[0], tiny_profile_cfg)
    fit = ["fit", "--config", str(config), "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    assert run_train_ok(fit, capsys) == 0
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(good, weights_only=True)["hyper_parameters"]["_class_path"] == "expotion.methods.expotion.module.ExpotionModule"
    elsewhere = [*fit, f"--trainer.default_root_dir={tmp_path / 'other'}"]
    clip_flow = "a checkpoint of a CLIP + flow (expotion.methods.clipflow.module.ClipFlowModule) run"
    expotion = "Expotion (expotion.methods.expotion.module.ExpotionModule)"
    for recorded in (True, False):  # the class LightningCLI records, else the weights' prefixes tell
        path = as_clip_flow_checkpoint(good, tmp_path / f"clip_flow_{recorded}.ckpt", recorded)
        code, error = run_train([*elsewhere, "--ckpt_path", str(path)], capsys)
        assert code == 2 and error == (f"error: {path}: {clip_flow}, but the config trains {expotion}; resume it "
                                       "with the config it was trained with, or start without --ckpt_path")

    clip_flow_config = ["fit", "--config", str(ROOT / "lightning_configs" / "clip_flow_tiny.yaml"),
                        f"--trainer.default_root_dir={tmp_path / 'other'}"]
    code, error = run_train([*clip_flow_config, "--ckpt_path", str(good)], capsys)
    assert code == 2 and error.startswith(f"error: {good}: a checkpoint of a {expotion} run, but the config trains "
                                          "CLIP + flow (expotion.methods.clipflow.module.ClipFlowModule); ")
    assert not (tmp_path / "other").exists()  # refused before anything ran


def run_train_ok(args: list[str], capsys) -> int:
    from expotion.cli.train import run

    code = run(args)
    capsys.readouterr()
    return code


def test_files_torch_did_not_write_are_named_as_such_and_legacy_torch_files_load(tmp_path):
    from expotion.solvers.export import CheckpointError, load_file

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_file(legacy)["w"], torch.ones(2))
    text = tmp_path / "notes.ckpt"
    text.write_text("not weights\n")
    with pytest.raises(CheckpointError) as err:
        load_file(text)
    assert str(err.value) == f"{text}: not a torch checkpoint (a PyTorch .pt/.ckpt file)"


def test_an_adaptor_exported_by_an_earlier_version_loads_and_generates_its_tokens(tiny_profile_cfg):
    """``tests/data/adaptor_v1``: an ``adaptor.pt`` and the tokens it generated when it was written (see the README
    there). Loading it with the same tiny MusicGen must give those tokens, so exported files stay usable."""
    from expotion.methods.expotion.export import load_adaptor
    from expotion.musicgen.windows import generate_tokens

    data = Path(__file__).parent / "data" / "adaptor_v1"
    saved = np.load(data / "adaptor_tokens.npz")
    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    adaptor, spec = load_adaptor(data / "adaptor.pt", musicgen.lm, model_signature(musicgen))
    assert adaptor.gates.abs().min() > 0.4  # open gates: the tokens differ from plain MusicGen's
    feats = {name: torch.from_numpy(saved[name]) for name in ("marlin", "synchformer", "marlin_mask")}
    tokens = generate_tokens(musicgen, ["calm piano"], 2.0, adaptor, feats, spec.rates, seed=7, top_k=50)
    plain = generate_tokens(musicgen, ["calm piano"], 2.0, seed=7, top_k=50)
    assert torch.equal(tokens, torch.from_numpy(saved["tokens"]))
    assert not torch.equal(plain, tokens)


def test_an_export_without_a_caption_record_keeps_todays_default_prompts(tmp_path):
    """``tests/data/adaptor_v1`` records no caption source: batch generation then prompts with the manifest's
    captions (or the generic prompt of a generic-prompt checkpoint), as before the source was recorded."""
    from dataclasses import replace

    from expotion.data.captions import GENERIC_PROMPT
    from expotion.inference.batch import Prompts
    from expotion.solvers.export import CheckpointError, read_adaptor, spec_from_dict, trained_captions

    path = Path(__file__).parent / "data" / "adaptor_v1" / "adaptor.pt"
    payload = read_adaptor(path)
    assert "captions" not in payload and trained_captions(path, payload) == {}
    spec = replace(spec_from_dict(payload["features"]), captions=trained_captions(path, payload))
    assert Prompts().following(spec) == Prompts()
    assert Prompts().following(spec).choice(spec) == {"source": "manifest", "chosen_by": "default"}
    generic = replace(spec, prompt=GENERIC_PROMPT)
    assert Prompts().following(generic).choice(generic) == {"source": "generic", "chosen_by": "checkpoint"}
    trained = replace(spec, captions={"source": "generated:fused"})
    assert Prompts().following(trained).choice(trained) == {"source": "generated:fused", "chosen_by": "checkpoint"}
    assert Prompts(captions="manifest").following(trained).choice(trained) == {"source": "manifest",
                                                                               "chosen_by": "--captions"}
    assert Prompts(text="slow jazz").following(trained).choice(trained)["chosen_by"] == "--prompt"
    with pytest.raises(CheckpointError, match=f"{path}: its 'captions' entry has no caption source"):
        trained_captions(path, {"captions": {"made_by": []}})
