"""The caption stage through the commands, on the small demo cache and the tiny captioner stand-ins: one caption per
clip with provenance, reruns that write nothing, a changed caption that recomputes only its text states, and
training, batch generation and eval reading the generated captions."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from expotion.cli.main import main as expotion
from expotion.core.tiny import CAPTIONING, make_tiny, tiny_path, write as write_tiny
from expotion.data.captions import CaptionUpdate, rewrite_shard, stored_caption
from expotion.data.shards import list_shards, open_shard
from expotion.musicgen.loading import load_musicgen, text_hidden

ROOT = Path(__file__).resolve().parents[1]
TOKENS = "8"  # short captions keep the tiny runs quick


@pytest.fixture(scope="module")
def tiny_captioners(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-captioners")
    make_tiny(root, CAPTIONING)
    return root


def caption(cache: Path, tiny: Path, *extra: str) -> int:
    return expotion(["caption", "--cache", str(cache), "--weights-dir", str(tiny), "--max-new-tokens", TOKENS,
                     "--device", "cpu", "--batch-size", "3", *extra])


@pytest.fixture(scope="module")
def captioned(demo_cache, tiny_captioners, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A copy of the demo cache with music captions; and the shards' bytes before captioning."""
    cache = tmp_path_factory.mktemp("captioned") / "cache"
    shutil.copytree(demo_cache[0], cache)
    before = {p.relative_to(cache).as_posix(): p.read_bytes() for p in list_shards(cache)}
    assert caption(cache, tiny_captioners) == 0
    return cache, before


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a shard (verified), by its path in the file."""
    out = {}
    with open_shard(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def all_datasets(cache: Path) -> dict[str, np.ndarray]:
    return {f"{p.relative_to(cache).as_posix()}:{k}": v for p in list_shards(cache) for k, v in datasets(p).items()}


def stored(cache: Path, kind: str = "music") -> dict[str, tuple[str, dict, np.ndarray, str]]:
    """Each clip's stored caption of ``kind``: text, provenance, text states, and the MusicGen of its shard."""
    out = {}
    for path in list_shards(cache):
        with open_shard(path) as f:
            musicgen = json.loads(f.attrs["models"])["musicgen"]
            for clip_id, g in f["clips"].items():
                entry = stored_caption(g, kind)
                if entry is None:
                    continue
                out[clip_id] = (entry.text, entry.provenance, g[f"captions/{kind}/t5"][()], musicgen)
    return out


def files(cache: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the cache (but the lock files) with its modification time."""
    return {p.relative_to(cache).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(cache.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}


def test_caption_writes_one_caption_per_clip_with_provenance(captioned, tiny_captioners):
    cache, before = captioned
    captions = stored(cache)
    assert sorted(captions) == ["demo-000-000", "demo-000-001", "demo-001-000", "demo-001-001", "demo-002-000",
                                "demo-002-001"]
    musicgen = load_musicgen(next(iter(captions.values()))[3])
    for clip_id, (text, provenance, states, _) in captions.items():
        assert text.strip(), clip_id
        assert provenance == {"captioner": "music", "reads": ["audio"], "model": "Qwen2AudioForConditionalGeneration",
                              "model_path": str(tiny_path(tiny_captioners, "captioner_qwen2_audio").resolve()),
                              "prompt": "Please describe the music.",
                              "generation": {"max_new_tokens": 8, "do_sample": False, "temperature": 1.0,
                                             "top_p": 1.0, "seed": 0}}
        # the states precompute would store for this text, by the shard's own MusicGen
        np.testing.assert_array_equal(states, text_hidden(musicgen, [text])[0])
    # every dataset the shards held before is still there, unchanged, with its checksum
    for name, data in before.items():
        old_path = cache.parent / "old.h5"
        old_path.write_bytes(data)
        old, new = datasets(old_path), datasets(cache / name)
        with h5py.File(cache / name, "r") as f:
            clip_ids = set(f["clips"])
        assert set(new) - set(old) == {f"clips/{c}/captions/music/t5" for c in clip_ids}
        for key, value in old.items():
            np.testing.assert_array_equal(new[key], value, err_msg=key)
    summary = json.loads((cache / "captions-summary.json").read_text())["music"]
    assert sorted(summary["written"]) == sorted(captions) and summary["skipped"] == []
    assert summary["clips"] == 6 and len(summary["shards_rewritten"]) == 2


def test_flamingo_captions_are_stored_with_provenance_beside_the_music_ones(captioned, tiny_captioners, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(captioned[0], cache)
    music = stored(cache)
    assert caption(cache, tiny_captioners, "--captioner", "flamingo") == 0
    flamingo = stored(cache, "flamingo")
    assert sorted(flamingo) == sorted(music)
    musicgen = load_musicgen(next(iter(flamingo.values()))[3])
    for clip_id, (text, provenance, states, _) in flamingo.items():
        assert text.strip(), clip_id
        assert provenance == {"captioner": "flamingo", "reads": ["audio"],
                              "model": "AudioFlamingo3ForConditionalGeneration",
                              "model_path": str(tiny_path(tiny_captioners, "captioner_audioflamingo3").resolve()),
                              "prompt": "Please describe the music.",
                              "generation": {"max_new_tokens": 8, "do_sample": False, "temperature": 1.0,
                                             "top_p": 1.0, "seed": 0}}
        np.testing.assert_array_equal(states, text_hidden(musicgen, [text])[0])
    for clip_id, (text, provenance, states, _) in stored(cache).items():  # the music captions are untouched
        assert (text, provenance) == music[clip_id][:2]
        np.testing.assert_array_equal(states, music[clip_id][2])


def test_cache_inspect_lists_each_clips_captions(captioned, capsys):
    cache, _ = captioned
    capsys.readouterr()
    assert expotion(["cache", "inspect", str(cache / "val" / "shard-00000.h5")]) == 0
    clips = json.loads(capsys.readouterr().out)["clips"]
    captions = stored(cache)
    for clip_id, clip in clips.items():
        assert clip["captions"]["music"]["caption"] == captions[clip_id][0]
        assert clip["captions"]["music"]["t5"] == list(captions[clip_id][2].shape)
        assert "captions" not in clip["datasets"]


def test_a_rerun_with_nothing_changed_writes_nothing(captioned, tiny_captioners, capsys):
    cache, _ = captioned
    before = files(cache)
    capsys.readouterr()
    assert caption(cache, tiny_captioners) == 0
    out = capsys.readouterr().out
    assert "0 written" in out and "6 already up to date" in out
    assert files(cache) == before  # bytes and modification times of every shard and the summary


def test_a_changed_caption_recomputes_only_its_text_states(captioned, tiny_captioners, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(captioned[0], cache)
    original = stored(cache)
    edited = "demo-001-000"
    text, provenance, states, _ = original[edited]
    shard = cache / "train" / "shard-00000.h5"
    # a caption edited by hand: other text and provenance, and (on purpose) states of zeros the stage must replace
    rewrite_shard(shard, [CaptionUpdate(edited, "music", "an edited caption", {**provenance, "prompt": "edited"},
                                        np.zeros_like(states))])
    before = all_datasets(cache)
    val_before = files(cache)["val/shard-00000.h5"]
    capsys.readouterr()
    assert caption(cache, tiny_captioners) == 0
    assert "1 written (1 replacing another provenance's), 1 with new text states" in capsys.readouterr().out
    after = all_datasets(cache)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {f"train/shard-00000.h5:clips/{edited}/captions/music/t5"}
    assert set(after) == set(before)
    np.testing.assert_array_equal(after[f"train/shard-00000.h5:clips/{edited}/captions/music/t5"], states)
    assert stored(cache)[edited][:2] == (text, provenance)
    assert files(cache)["val/shard-00000.h5"] == val_before  # a shard with nothing to update is not touched

    # another prompt for one split: its captions get the new provenance; a text that changes gets new states
    before = all_datasets(cache)
    assert caption(cache, tiny_captioners, "--split", "val", "--prompt", "Describe the rhythm.") == 0
    after, captions = all_datasets(cache), stored(cache)
    musicgen = load_musicgen(captions[edited][3])
    for clip_id, (text, provenance, states, _) in captions.items():
        assert provenance["prompt"] == ("Describe the rhythm." if clip_id.startswith("demo-002") else
                                        "Please describe the music."), clip_id
        np.testing.assert_array_equal(states, text_hidden(musicgen, [text])[0])
    assert {k for k in before if not np.array_equal(before[k], after[k])} <= {
        f"val/shard-00000.h5:clips/{c}/captions/music/t5" for c in ("demo-002-000", "demo-002-001")}


def train_config(tmp_path: Path, cache: Path, musicgen: str) -> Path:
    cfg = yaml.safe_load((ROOT / "lightning_configs" / "tiny_cpu.yaml").read_text())
    cfg["model"]["musicgen"] = musicgen
    cfg["model"]["adaptor"]["max_seconds"] = 2.0
    cfg["data"].update(cache_dir=str(cache), crop_seconds=1.0, batch_size=4, num_workers=0)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, max_steps=1)
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "AudioSamples" not in c["class_path"]]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_on_generated_captions_reads_their_text_states(captioned, tiny_profile_cfg, tmp_path, monkeypatch,
                                                                 capsys):
    from expotion.cli.train import main, run

    cache, _ = captioned
    monkeypatch.chdir(tmp_path)
    config = train_config(tmp_path, cache, tiny_profile_cfg.musicgen)
    cli = main(["fit", "--config", str(config), "--data.captions", "generated:music"])
    assert cli.trainer.global_step == 1
    captions = stored(cache)
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert len(batch["clip_id"]) == 4
    for b, clip_id in enumerate(batch["clip_id"]):
        text, _, states, _ = captions[clip_id]
        assert batch["caption"][b] == text
        n = int(batch["text_mask"][b].sum())
        assert n == len(states)
        torch.testing.assert_close(batch["text"][b, :n], torch.from_numpy(states), rtol=0, atol=0)
    # a kind the cache has no captions of: one line naming a clip and the command that writes them
    assert run(["fit", "--config", str(config), "--data.captions", "generated:scene"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "clip demo-000-000" in err[0] and "has no scene caption" in err[0]
    assert "`expotion caption --cache CACHE --captioner scene`" in err[0]
    assert run(["fit", "--config", str(config), "--data.captions", "made-up"]) == 2
    assert "generated:<kind>" in capsys.readouterr().err


def test_generation_and_eval_default_to_the_captions_the_checkpoint_trained_on(captioned, tiny_profile_cfg, tmp_path,
                                                                               monkeypatch, capsys):
    import huggingface_hub.constants
    import soundfile as sf

    from expotion.cli.train import main as train
    from expotion.data.captions import GENERIC_PROMPT
    from expotion.solvers.export import read_adaptor

    cache, _ = captioned
    monkeypatch.chdir(tmp_path)
    config = train_config(tmp_path, cache, tiny_profile_cfg.musicgen)
    assert train(["fit", "--config", str(config), "--data.captions", "generated:music",
                  "--trainer.max_steps", "2"]).trainer.global_step == 2
    checkpoint = tmp_path / "run" / "adaptor.pt"
    assert read_adaptor(checkpoint)["captions"] == {
        "source": "generated:music",
        "made_by": [{"captioner": "music", "model": "Qwen2AudioForConditionalGeneration",
                     "prompt": "Please describe the music."}]}
    generated = {c: v[0] for c, v in stored(cache).items() if c.startswith("demo-002")}

    def generate(out: str, *extra: str) -> dict:
        capsys.readouterr()
        assert expotion(["generate", "--cache", str(cache / "val"), "--out-dir", str(tmp_path / out),
                         "--checkpoint", str(checkpoint), "--tiny-dir", str(Path(tiny_profile_cfg.marlin_path).parent),
                         "--top-k", "50", "--device", "cpu", *extra]) == 0
        return json.loads((tmp_path / out / "summary.json").read_text())

    summary = generate("trained")  # no --captions: the checkpoint's own
    assert summary["captions"] == {"source": "generated:music", "chosen_by": "checkpoint"}
    assert summary["prompts"] == generated  # the text each clip's music was generated from, through T5
    assert ("prompts: the cache's generated:music captions (the captions the checkpoint was trained on)"
            in capsys.readouterr().out)
    summary = generate("generic", "--captions", "generic")  # an explicit source still wins
    assert summary["captions"] == {"source": "generic", "chosen_by": "--captions"}
    assert summary["prompts"] == {clip_id: GENERIC_PROMPT for clip_id in generated}
    assert "prompts: the generic prompt 'music with catchy melody' (--captions)" in capsys.readouterr().out

    # eval scores the music against the captions it was generated from, unless told otherwise
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    write_tiny("clap_music", tmp_path / "weights")
    rng = np.random.default_rng(0)
    (tmp_path / "ref").mkdir()
    for clip_id in generated:
        sf.write(tmp_path / "ref" / f"{clip_id}.wav", 0.1 * rng.standard_normal(32000 * 2), 32000)
    args = ["eval", "--generated", str(tmp_path / "trained"), "--reference", str(tmp_path / "ref"), "--cache",
            str(cache / "val"), "--metrics", "text_audio", "--weights-dir", str(tmp_path / "weights"),
            "--cache-dir", str(tmp_path / "embeddings"), "--device", "cpu"]
    assert expotion([*args, "--out", str(tmp_path / "scores")]) == 0
    assert "(the cache's generated:music captions: the captions the music was generated from, per" in \
        capsys.readouterr().err
    assert expotion([*args, "--out", str(tmp_path / "manifest-scores"), "--cache-captions", "manifest"]) == 0
    for out, expected in (("scores", "generated:music"), ("manifest-scores", "manifest")):
        assert json.loads((tmp_path / out / "metrics.json").read_text())["inputs"]["cache_captions"] == expected
    import csv

    with (tmp_path / "scores" / "per_clip.csv").open() as f:
        assert {row["clip_id"]: row["caption"] for row in csv.DictReader(f)} == {
            c: t.strip() for c, t in generated.items()}


def test_batch_generation_prompts_with_the_generated_captions(captioned, tiny_profile_cfg, tmp_path):
    cache, _ = captioned
    assert expotion(["generate", "--cache", str(cache / "val"), "--out-dir", str(tmp_path / "out"),
                     "--captions", "generated:music", "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny",
                     "--tiny-dir", str(Path(tiny_profile_cfg.marlin_path).parent), "--top-k", "50",
                     "--device", "cpu"]) == 0
    prompts = json.loads((tmp_path / "out" / "summary.json").read_text())["prompts"]
    assert prompts == {c: v[0] for c, v in stored(cache).items() if c.startswith("demo-002")}


def test_eval_text_audio_reads_the_generated_captions(captioned, tmp_path, monkeypatch):
    import huggingface_hub.constants
    import soundfile as sf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cache, _ = captioned
    write_tiny("clap_music", tmp_path / "weights")
    rng = np.random.default_rng(0)
    for side in ("gen", "ref"):
        (tmp_path / side).mkdir()
        for clip_id in ("demo-002-000", "demo-002-001"):
            sf.write(tmp_path / side / f"{clip_id}.wav", 0.1 * rng.standard_normal(32000 * 2), 32000)
    args = ["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"), "--cache",
            str(cache / "val"), "--metrics", "text_audio", "--weights-dir", str(tmp_path / "weights"),
            "--cache-dir", str(tmp_path / "embeddings"), "--device", "cpu"]
    assert expotion([*args, "--out", str(tmp_path / "generated"), "--cache-captions", "generated:music"]) == 0
    assert expotion([*args, "--out", str(tmp_path / "manifest")]) == 0
    captions = stored(cache)

    def per_clip(out: str) -> dict[str, dict]:
        import csv

        with (tmp_path / out / "per_clip.csv").open() as f:
            return {row["clip_id"]: row for row in csv.DictReader(f)}

    generated, manifest = per_clip("generated"), per_clip("manifest")
    for clip_id, row in generated.items():
        assert row["caption"] == captions[clip_id][0].strip() != manifest[clip_id]["caption"]
        assert row["text_audio"] and row["text_audio"] != manifest[clip_id]["text_audio"]
    assert expotion([*args, "--out", str(tmp_path / "scene"), "--cache-captions", "generated:scene"]) == 2


def test_fused_captions_and_a_bad_recording_skipped_with_its_reason(demo_cache, small_demo, tiny_captioners,
                                                                   tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache[0], cache)
    data = tmp_path / "data"
    shutil.copytree(small_demo.parent, data)
    with h5py.File(cache / "train" / "shard-00000.h5", "r") as f:
        gone = data / str(f["clips"]["demo-001-000"].attrs["source"])
    gone.unlink()
    assert caption(cache, tiny_captioners, "--captioner", "fused", "--data-root", str(data)) == 1
    out = capsys.readouterr().out
    assert "4 written" in out and "2 skipped" in out
    for clip_id in ("demo-001-000", "demo-001-001"):
        assert f"skipped {clip_id}: {gone}" in out
    summary = json.loads((cache / "captions-summary.json").read_text())["fused"]
    assert [s["clip"] for s in summary["skipped"]] == ["demo-001-000", "demo-001-001"]
    captions = stored(cache, "fused")
    assert len(captions) == 4 and {p["reads"][0] for _, p, _, _ in captions.values()} == {"video"}
