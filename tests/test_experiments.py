"""``expotion experiment``: the file's checks, a small experiment end to end, resuming, a failing row, SLURM scripts.

The small experiment has three rows on the shared small demo cache (2 s clips, 2 test clips): Expotion with
Synchformer (two training steps), text-only MusicGen, and an Expotion row whose MusicGen weights are missing.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from expotion.cli.main import main as cli_main
from expotion.experiments.spec import ExperimentError, load_experiment
from expotion.experiments.steps import keyed_command

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


# ---- the file's checks ---------------------------------------------------------------------------
def minimal(tmp_path: Path, **rows) -> dict:
    config = write(tmp_path / "a.yaml", "model: {}\n")
    row = {"name": "a", "method": "expotion", "configs": [str(config)], **rows}
    return {"data": {"cache": str(tmp_path / "cache"), "split": "val"}, "rows": [row]}


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.pop("data"), "data: missing"),
    (lambda d: d["data"].pop("cache"), "data.cache: missing"),
    (lambda d: d.update(colour="red"), "colour: unknown key"),
    (lambda d: d["rows"][0].update(method="nope"), "rows[0] (a).method: no method 'nope' is registered"),
    (lambda d: d["rows"][0].update(captions="generated"), "rows[0] (a).captions:"),
    (lambda d: d["rows"][0].update(configs=["missing.yaml"]), "rows[0] (a).configs: missing.yaml: no such file"),
    (lambda d: d["rows"][0].update(checkpoint="x.pt"), "rows[0] (a): give either configs (to train) or checkpoint"),
    (lambda d: d["rows"][0].update(name="a b"), "rows[0] (a b).name: 'a b' is used as a folder name"),
    (lambda d: d["rows"].append(dict(d["rows"][0])), "rows: the name 'a' is used twice"),
    (lambda d: d["rows"][0].update(method="musicgen_text"), "rows[0] (a).musicgen: missing"),
    (lambda d: d["eval"].update(workers=0) if "eval" in d else d.update(eval={"workers": 0}),
     "eval.workers: expected a positive integer, got 0"),
    (lambda d: d["rows"][0].update(overrides="--trainer.max_steps=2"), "rows[0] (a).overrides: expected a list"),
])
def test_each_problem_of_an_experiment_file_is_one_line_naming_the_file_and_the_key(tmp_path, change, expected):
    doc = minimal(tmp_path)
    change(doc)
    path = write(tmp_path / "experiment.yaml", doc)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any(expected in line for line in lines), lines


def test_all_problems_are_reported_together_and_yaml_errors_name_the_line(tmp_path):
    doc = minimal(tmp_path)
    doc["rows"][0].update(method="nope", captions="bad")
    doc["data"]["colour"] = 1
    path = write(tmp_path / "e.yaml", doc)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert len(str(err.value).splitlines()) == 3
    broken = write(tmp_path / "broken.yaml", "data: {cache: [\nrows: 1\n")
    with pytest.raises(ExperimentError, match=rf"^{broken}: line \d+ not valid YAML"):
        load_experiment(broken)
    assert cli_main(["experiment", "run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_the_shipped_experiment_files_are_valid():
    for name, n_rows in (("table1.yaml", 9), ("table1_tiny.yaml", 9)):
        cwd = os.getcwd()
        os.chdir(REPO)  # their paths are relative to the repository, like the training configs'
        try:
            experiment = load_experiment(Path("lightning_configs/experiments") / name)
        finally:
            os.chdir(cwd)
        assert len(experiment.rows) == n_rows
        assert {r.method for r in experiment.rows} == {"expotion", "musicgen_text", "clip_flow"}
        assert experiment.caption_kinds() == ["music", "fused"]


def test_options_that_only_change_speed_are_left_out_of_a_steps_key():
    assert keyed_command(["eval", "--workers", "4", "--out", "x"]) == keyed_command(["eval", "--out", "x"])
    assert keyed_command(["features", "--workers=2"]) == ["features"]


# ---- a small experiment end to end ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small_experiment(demo_cache, tiny_profile_cfg, tmp_path_factory) -> Path:
    """Three rows on the small demo cache; the third names MusicGen weights that do not exist."""
    cache, _ = demo_cache
    root = tmp_path_factory.mktemp("experiment")
    tiny = str(Path(tiny_profile_cfg.marlin_path).parent)
    base = write(root / "base.yaml", {
        "seed_everything": 0,
        "model": {"musicgen": tiny_profile_cfg.musicgen,
                  "adaptor": {"n_adapted": 1, "visual": {"face": False, "motion": "synchformer", "d1": 4, "d2": 4},
                              "max_seconds": 2.0}},
        "data": {"batch_size": 2, "num_workers": 0, "crop_seconds": 2.0},
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 0, "logger": False,
                    "enable_checkpointing": False,
                    "callbacks": [{"class_path": "expotion.solvers.callbacks.MethodExport"}]},
    })
    overlay = write(root / "overlay.yaml", "model: {adaptor: {n_adapted: 1}}\n")
    missing = write(root / "missing_weights.yaml", f"model: {{musicgen: {root / 'no-such-musicgen'}}}\n")
    write(root / "experiment.yaml", {
        "title": "small",
        "data": {"cache": str(cache), "split": "val"},
        "generation": {"args": ["--profile", "tiny", "--tiny-dir", tiny, "--seed", "0", "--top-k", "20"]},
        "eval": {"args": ["--weights-dir", tiny, "--metrics", "chroma,tempo,video_music"]},
        "rows": [
            {"name": "synchformer", "method": "expotion", "configs": [str(base), str(overlay)]},
            {"name": "musicgen", "method": "musicgen_text", "musicgen": tiny_profile_cfg.musicgen},
            {"name": "broken", "method": "expotion", "configs": [str(base), str(missing)]},
        ],
    })
    return root


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.fixture(scope="module")
def first_run(small_experiment):
    out = small_experiment / "out"
    started = time.perf_counter()
    status = cli_main(["experiment", "run", str(small_experiment / "experiment.yaml"), "--out", str(out)])
    return status, out, time.perf_counter() - started


def table_rows(out: Path) -> dict[str, dict]:
    with open(out / "table1.csv") as f:
        return {row["row"]: row for row in csv.DictReader(f)}


def test_every_row_runs_its_chain_and_a_failing_row_is_reported_while_the_others_finish(first_run):
    status, out, _ = first_run
    assert status == 1  # a row failed
    rows = table_rows(out)
    assert rows["synchformer"]["status"] == rows["musicgen"]["status"] == "ok"
    for name in ("synchformer", "musicgen"):
        assert float(rows[name]["tempo_error"]) >= 0 and 0 <= float(rows[name]["av_align"]) <= 1
        metrics = json.loads((out / "rows" / name / "eval" / "metrics.json").read_text())
        assert metrics["inputs"]["n_pairs"] == 2 and metrics["metrics"]["chroma"]["status"] == "ok"
    assert all((out / "rows/synchformer/generated" / p.name).read_bytes() != p.read_bytes()  # the video reached it
               for p in (out / "rows/musicgen/generated").glob("*.wav"))
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["tempo_error"] == ""
    assert broken["reason"].startswith("train: exit status 1: ")  # the line that says why, not the traceback's end
    assert "MusicGen model directory not found: " in broken["reason"] and broken["reason"].endswith("no-such-musicgen")
    markdown = (out / "table1.md").read_text()
    assert "| broken | expotion | manifest | failed [1] |" in markdown and "no-such-musicgen" in markdown
    assert "quoted from its Table 1" in markdown and "| motion Syncformer | Generated | 1.93 |" in markdown
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    provenance = json.loads((out / "table1.provenance.json").read_text())["rows"]["synchformer"]
    assert provenance["checkpoint"]["path"] == str(out / "rows/synchformer/train/adaptor.pt")
    assert len(provenance["configs"]) == 2 and provenance["steps"]["train"]["commit"]
    assert provenance["metrics_json"] == str(out / "rows/synchformer/eval/metrics.json")
    # one reference folder and one embedding cache for every row
    assert sorted(p.name for p in (out / "reference").iterdir()) == sorted(
        p.name for p in (out / "rows/musicgen/generated").glob("*.wav"))
    assert not (out / "rows/musicgen/train").exists()


def test_a_rerun_with_nothing_changed_changes_no_file(first_run, small_experiment, demo_cache):
    _, out, first_seconds = first_run
    before = snapshot(small_experiment) | {f"cache/{k}": v for k, v in snapshot(demo_cache[0]).items()}
    started = time.perf_counter()
    status = cli_main(["experiment", "run", str(small_experiment / "experiment.yaml"), "--out", str(out)])
    seconds = time.perf_counter() - started
    after = snapshot(small_experiment) | {f"cache/{k}": v for k, v in snapshot(demo_cache[0]).items()}
    assert status == 1  # the broken row is tried again and fails again
    assert changed(before, after) <= {"out/rows/broken/train.step.json", "out/rows/broken/logs/train.log"}
    assert seconds < first_seconds / 3


def test_changing_one_rows_overlay_reruns_that_row_only(first_run, small_experiment):
    _, out, _ = first_run
    before = snapshot(out)
    overlay = small_experiment / "overlay.yaml"
    original = overlay.read_text()
    overlay.write_text("model: {adaptor: {n_adapted: 2}}\n")
    try:
        assert cli_main(["experiment", "run", str(small_experiment / "experiment.yaml"), "--out", str(out)]) == 1
        touched = changed(before, snapshot(out))
    finally:
        overlay.write_text(original)
    assert {"rows/synchformer/train.step.json", "rows/synchformer/generate.step.json",
            "rows/synchformer/eval.step.json", "table1.md", "table1.csv", "table1.provenance.json"} <= touched
    assert not {k for k in touched if k.startswith(("rows/musicgen/", "reference/", "shared/"))}


def run_scripts(scripts: Path, names: list[str]) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = {name: subprocess.run(["bash", str(scripts / name)], env=env, capture_output=True, text=True)
            for name in names}
    return {name: d.returncode for name, d in done.items()}


def test_the_slurm_scripts_run_under_bash_and_give_the_same_rows(first_run, small_experiment):
    """The shared job, the untrained row's and the failing row's jobs, then the collecting job, run by bash as
    written: their rows equal the one-process run's (the trained row: the slow test below)."""
    _, out, _ = first_run
    cluster = small_experiment / "cluster"
    assert cli_main(["experiment", "slurm", str(small_experiment / "experiment.yaml"), "--out", str(cluster)]) == 0
    scripts = cluster / "slurm"
    names = sorted(p.name for p in scripts.iterdir())
    assert names == ["collect.sbatch", "row-broken.sbatch", "row-musicgen.sbatch", "row-synchformer.sbatch",
                     "shared.sbatch", "submit.sh"]
    assert "#SBATCH --nodes=1" in (scripts / "row-musicgen.sbatch").read_text()
    assert "--rows musicgen --no-table --devices 1 --num-nodes 1" in (scripts / "row-musicgen.sbatch").read_text()
    assert run_scripts(scripts, ["shared.sbatch", "row-musicgen.sbatch", "row-broken.sbatch", "collect.sbatch"]) == {
        "shared.sbatch": 0, "row-musicgen.sbatch": 0, "row-broken.sbatch": 1, "collect.sbatch": 0}
    alone, together = table_rows(cluster), table_rows(out)
    assert alone["musicgen"] == together["musicgen"] and alone["broken"] == together["broken"]
    assert alone["synchformer"]["status"] == "not run"
    lines = [line for line in (cluster / "table1.md").read_text().splitlines() if line.startswith("| musicgen |")]
    assert lines and all(line in (out / "table1.md").read_text() for line in lines)


@pytest.mark.slow
def test_the_tiny_table1_runs_whole_and_its_slurm_scripts_give_the_same_table(tmp_path):
    """``table1_tiny.yaml`` end to end (every row of the paper's Table 1), a second run that changes no file, and
    its SLURM scripts under bash giving the same table."""
    for command in (["weights", "make-tiny", "cache/tiny-weights"],):
        assert cli_main(command) == 0
    if not (REPO / "demo_data/manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "expotion.demo.synth", "demo_data"], cwd=REPO, check=True)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        experiment = "lightning_configs/experiments/table1_tiny.yaml"
        assert cli_main(["experiment", "run", experiment, "--out", str(tmp_path / "one")]) == 0
        before = snapshot(tmp_path / "one")
        assert cli_main(["experiment", "run", experiment, "--out", str(tmp_path / "one")]) == 0
        assert not changed(before, snapshot(tmp_path / "one"))
        assert cli_main(["experiment", "slurm", experiment, "--out", str(tmp_path / "jobs")]) == 0
        scripts = tmp_path / "jobs" / "slurm"
        names = ["shared.sbatch", *sorted(p.name for p in scripts.glob("row-*.sbatch")), "collect.sbatch"]
        assert set(run_scripts(scripts, names).values()) == {0}
    finally:
        os.chdir(cwd)
    assert (tmp_path / "jobs/table1.csv").read_bytes() == (tmp_path / "one/table1.csv").read_bytes()
    assert (tmp_path / "jobs/table1.md").read_text() == (tmp_path / "one/table1.md").read_text()
