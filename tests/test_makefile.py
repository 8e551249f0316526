"""The Makefile's refusals: the demo's checkpoint and results folder never serve another cache, and the wrong
Python is named before anything is installed."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    """``make`` from the repository root; ``-o install`` keeps it from ever touching the shared venv."""
    return subprocess.run(["make", "--no-print-directory", "-o", "install", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def test_make_generate_on_another_cache_refuses_the_demo_checkpoint():
    done = make("generate", "SPLIT=cache/mine/val")
    assert done.returncode == 2
    assert "CHECKPOINT=runs/NAME/adaptor.pt" in done.stderr and "runs/tiny_cpu/adaptor.pt" in done.stderr
    assert "expotion.cli.main generate" not in done.stdout  # refused before the command ran


def test_make_generate_passes_the_checkpoint_named():
    dry = make("-n", "generate", "SPLIT=cache/mine/val", "CHECKPOINT=runs/mine/adaptor.pt").stdout
    assert "generate --cache cache/mine/val --out-dir outputs/generated --checkpoint runs/mine/adaptor.pt" in dry
    plain = make("-n", "generate", "SPLIT=cache/mine/val", "CHECKPOINT=").stdout
    assert "generate --cache cache/mine/val" in plain and "--checkpoint" not in plain  # plain MusicGen
    demo = make("-n", "generate").stdout
    assert "--cache cache/demo/val --out-dir outputs/generated --checkpoint runs/tiny_cpu/adaptor.pt" in demo


def test_make_eval_of_other_outputs_refuses_the_demo_results_folder():
    for args in (["GENERATED=outputs/mine"], ["CACHE=cache/mine"]):
        done = make("eval", *args)
        assert done.returncode == 2 and "RESULTS=results/NAME" in done.stderr, args
    assert "--out results/mine" in make("-n", "eval", "GENERATED=outputs/mine", "RESULTS=results/mine").stdout
    assert "--out results/demo" in make("-n", "eval").stdout  # the demo's own evaluation


def test_make_eval_runs_stage_one_on_the_workers_named():
    assert "--out results/demo --workers 2" in make("-n", "eval").stdout  # WORKERS' documented default
    assert "--workers 3" in make("-n", "eval", "WORKERS=3").stdout


def test_make_install_names_python_3_11_before_installing(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\necho 3.10\n')
    old.chmod(0o755)
    done = make("check-python", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}")
    assert done.returncode == 2
    assert f"{old} is Python 3.10; Expotion needs Python 3.11: run make again with PYTHON=python3.11" in done.stderr
    missing = make("check-python", f"VENV={tmp_path / 'venv'}", "PYTHON=no-such-python")
    assert missing.returncode == 2 and "PYTHON=python3.11" in missing.stderr
    assert make("check-python").returncode == 0  # the project's own venv
    dry = subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}"], cwd=ROOT,
                         text=True, capture_output=True, timeout=60).stdout
    assert dry.index("sys.version_info") < dry.index("-m venv")  # checked first


def test_make_table1_runs_the_tiny_experiment_by_default_and_the_file_named():
    dry = make("-n", "table1").stdout
    assert "experiment run lightning_configs/experiments/table1_tiny.yaml --out results/table1_tiny" in dry
    assert "weights make-tiny cache/tiny-weights" in dry  # the demo's models first
    real = make("-n", "table1", "EXPERIMENT=lightning_configs/experiments/table1.yaml", "TABLE1_OUT=results/t").stdout
    assert "experiment run lightning_configs/experiments/table1.yaml --out results/t" in real
    assert "make-tiny" not in real
