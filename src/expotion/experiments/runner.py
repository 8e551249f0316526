"""``expotion experiment run``: every row of an experiment file, trained (or reused), generated and evaluated.

Shared work runs once, before the rows: the cache (``expotion features``, when the file names a manifest), the
generated captions the rows read (``expotion caption``, one kind after the other), and the test split's reference
music. Every row's evaluation reads the one reference folder and the one embedding cache, so reference embeddings
and first-stage results are computed once. Each step is a command line run in its own process; what it records
makes a rerun skip it (:mod:`expotion.experiments.steps`). A failed step ends its row, with its reason, and the
other rows go on.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from expotion.core import atomic
from expotion.core.digests import sha256_file
from expotion.data.captions import CaptionSource
from expotion.experiments.spec import Experiment, RowSpec
from expotion.experiments.steps import Step, StepFailed, python_command, run_step, tree_digest
from expotion.methods.registry import method_named

SHARED = "shared"
ROWS = "rows"
ROW_STEPS = ("train", "generate", "eval")


def log(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """Where everything of one experiment goes under ``out``, and each step's command and inputs."""

    experiment: Experiment
    out: Path
    devices: int = 1
    num_nodes: int = 1
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return Path(self.experiment.data.cache)

    @property
    def split(self) -> Path:
        return self.cache / self.experiment.data.split

    @property
    def reference(self) -> Path:
        return self.out / "reference"

    def row_dir(self, row: RowSpec) -> Path:
        return self.out / ROWS / row.name

    def step(self, folder: Path, name: str, command: list[str], outputs: list[Path], inputs: dict[str, str],
             content_digest: bool = True) -> Step:
        return Step(name, command, outputs, inputs, folder / f"{name}.step.json", folder / "logs" / f"{name}.log",
                    content_digest)

    def cache_digest(self) -> str:
        return tree_digest(self.cache, content=False)

    # ---- shared steps --------------------------------------------------------------------------
    def features_step(self) -> Step | None:
        data = self.experiment.data
        if not data.manifest:
            return None
        command = python_command("features", "--manifest", data.manifest, "--cache", str(self.cache), *data.args)
        return self.step(self.out / SHARED, "features", command, [self.cache / "summary.json"],
                         {"manifest": sha256_file(Path(data.manifest))})

    def captions_step(self, features: Step | None) -> Step | None:
        kinds = self.experiment.caption_kinds()
        if not kinds:
            return None
        commands = [python_command("caption", "--cache", str(self.cache), "--captioner", kind,
                                   *self.experiment.captions.args) for kind in kinds]
        command = [sys.executable, "-m", "expotion.experiments.sequence", *(w for c in commands for w in ("--", *c))]
        origin = features.key if features else f"cache {self.cache}"
        return self.step(self.out / SHARED, "captions", command, [self.cache], {"cache": origin}, content_digest=False)

    def reference_step(self) -> Step:
        command = [sys.executable, "-m", "expotion.experiments.references", str(self.split), str(self.reference)]
        return self.step(self.out / SHARED, "reference", command, [self.reference], {"cache": self.cache_digest()})

    # ---- a row's steps -------------------------------------------------------------------------
    def caption_source(self, row: RowSpec) -> str:
        return str(CaptionSource.parse(row.captions))

    def train_step(self, row: RowSpec) -> Step | None:
        if not row.configs:
            return None
        run = self.row_dir(row) / "train"
        command = python_command(
            "train", "fit", *(w for c in row.configs for w in ("--config", c)), *self.experiment.training.args,
            *row.overrides, f"--data.cache_dir={self.cache}", f"--data.captions={self.caption_source(row)}",
            f"--trainer.default_root_dir={run}", "--trainer.enable_progress_bar=false",
            f"--trainer.devices={self.devices}", f"--trainer.num_nodes={self.num_nodes}")
        inputs = {f"config {c}": sha256_file(Path(c)) for c in row.configs} | {"cache": self.cache_digest()}
        return self.step(self.row_dir(row), "train", command, [self.checkpoint(row)], inputs)

    def checkpoint(self, row: RowSpec) -> Path | None:
        """The exported file a row generates with: its own training's, the reused one, or None (MusicGen alone)."""
        if row.checkpoint:
            return Path(row.checkpoint)
        method = method_named(row.method)
        return self.row_dir(row) / "train" / method.export_name if method.module else None

    def generate_step(self, row: RowSpec) -> Step:
        checkpoint = self.checkpoint(row)
        if checkpoint is not None and not checkpoint.is_file():
            raise StepFailed(f"checkpoint {checkpoint}: no such file")
        model = ["--checkpoint", str(checkpoint)] if checkpoint else ["--musicgen", str(row.musicgen)]
        command = python_command("generate", "--cache", str(self.split), "--out-dir", str(self.generated(row)),
                                 *model, "--captions", self.caption_source(row), *self.experiment.generation.args,
                                 *self.parallel("--devices", "--num-nodes"))
        model_digest = sha256_file(checkpoint) if checkpoint else str(row.musicgen)
        return self.step(self.row_dir(row), "generate", command, [self.generated(row)],
                         {"model": model_digest, "cache": self.cache_digest()})

    def parallel(self, devices: str, nodes: str) -> list[str]:
        return ([devices, str(self.devices)] if self.devices > 1 else []) + \
               ([nodes, str(self.num_nodes)] if self.num_nodes > 1 else [])

    def generated(self, row: RowSpec) -> Path:
        return self.row_dir(row) / "generated"

    def results(self, row: RowSpec) -> Path:
        return self.row_dir(row) / "eval"

    def eval_step(self, row: RowSpec) -> Step:
        settings = self.experiment.eval
        workers = ["--workers", str(settings.workers)] if settings.workers > 1 else []
        command = python_command("eval", "--generated", str(self.generated(row)), "--reference", str(self.reference),
                                 "--cache", str(self.split), "--cache-captions", self.caption_source(row),
                                 "--out", str(self.results(row)), "--cache-dir", str(self.out / "eval-cache"),
                                 "--label", row.name, *settings.args, *workers)
        inputs = {"generated": tree_digest(self.generated(row)), "reference": tree_digest(self.reference),
                  "cache": self.cache_digest()}
        return self.step(self.row_dir(row), "eval", command, [self.results(row)], inputs)

    def row_steps(self, row: RowSpec):
        """(name, build) for each of the row's steps, in order; ``build`` plans the step when its inputs exist."""
        yield "train", lambda: self.train_step(row)
        yield "generate", lambda: self.generate_step(row)
        yield "eval", lambda: self.eval_step(row)


def run_shared(plan: Plan) -> None:
    """The cache, the captions and the references; a failure here stops the experiment (every row needs them)."""
    features = plan.features_step()
    for build, clear in ((lambda: features, []), (lambda: plan.captions_step(features), []),
                         (plan.reference_step, [plan.reference])):
        step = build()  # planned only now: the reference's key reads the cache as the captions left it
        if step is None:
            continue
        log(f"{step.name}: {'unchanged, skipped' if step.is_done() else f'running (log: {step.log})'}")
        run_step(step, clear)
    if not plan.split.is_dir():
        raise StepFailed(f"{plan.split}: no such split in the cache (data.split: {plan.experiment.data.split})")


def run_row(plan: Plan, row: RowSpec) -> str | None:
    """The row's steps in order; None when all are done, else the reason it failed (recorded beside the step)."""
    for name, build in plan.row_steps(row):
        try:
            step = build()
            if step is None:
                continue
            if step.is_done():
                log(f"{row.name}: {name}: unchanged, skipped")
                continue
            log(f"{row.name}: {name}: running (log: {step.log})")
            run_step(step, [step.outputs[0].parent if name == "train" else step.outputs[0]])
        except StepFailed as err:
            log(f"{row.name}: FAILED at {name}: {err}")
            record_failure(plan.row_dir(row) / f"{name}.step.json", name, str(err))
            return f"{name}: {err}"
    return None


def record_failure(record: Path, name: str, reason: str) -> None:
    """A failure found before the step's command ran (e.g. a missing checkpoint) is recorded like one it reported."""
    try:
        if json.loads(record.read_text()).get("reason") == reason:
            return
    except (OSError, ValueError):
        pass
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(record, json.dumps({"step": name, "status": "failed", "reason": reason}, indent=2))


def run_experiment(plan: Plan, rows: list[str] | None = None) -> dict[str, str | None]:
    """The shared steps, then each chosen row (default: all); each row's failure reason, None for a finished row."""
    run_shared(plan)
    chosen = [r for r in plan.experiment.rows if rows is None or r.name in rows]
    return {row.name: run_row(plan, row) for row in chosen}
