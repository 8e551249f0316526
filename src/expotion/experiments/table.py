"""The experiment's table from what is finished: ``table1.md``, ``table1.csv``, ``table1.png`` and
``table1.provenance.json``.

A row is finished when each of its steps is done with the key its inputs give now (a row whose inputs changed
since is "not run yet", never shown with old numbers). Files are written only when their bytes change, so
collecting again with nothing new leaves them untouched.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from expotion.core.digests import sha256_file
from expotion.evaluation.metrics import SPEC_BY_KEY
from expotion.experiments import paper
from expotion.experiments.runner import Plan
from expotion.experiments.spec import RowSpec
from expotion.experiments.steps import StepFailed, write_if_changed

ALIGNMENT = ("av_align", "bas_motion_music", "bas_music_motion", "motion_tempo_error", "motion_tempo_error_octave")
STEM = "table1"


@dataclass
class RowResult:
    """A row's state (``ok``, ``failed`` or ``not run``), its reason, its metrics and where they came from."""

    row: RowSpec
    status: str
    reason: str = ""
    metrics: dict = field(default_factory=dict)  # metrics.json's "metrics"
    reference: dict = field(default_factory=dict)  # its "reference_metrics"
    provenance: dict = field(default_factory=dict)


def row_provenance(plan: Plan, row: RowSpec, records: dict[str, dict]) -> dict:
    checkpoint = plan.checkpoint(row)
    return {
        "method": row.method, "captions": row.captions, "run_dir": str(plan.row_dir(row)),
        "configs": {c: sha256_file(Path(c)) for c in row.configs if Path(c).is_file()},
        "overrides": row.overrides,
        "checkpoint": ({"path": str(checkpoint), "sha256": sha256_file(checkpoint)}
                       if checkpoint and checkpoint.is_file() else None),
        "musicgen": row.musicgen,
        "metrics_json": str(plan.results(row) / "metrics.json"),
        "steps": {name: {k: r.get(k) for k in ("command", "key", "commit", "code", "seconds", "log")}
                  for name, r in records.items()},
    }


def collect_row(plan: Plan, row: RowSpec) -> RowResult:
    """What the row's records say now: finished with its metrics, failed with the reason, or not run yet."""
    records: dict[str, dict] = {}
    for name, build in plan.row_steps(row):
        try:
            step = build()
        except StepFailed as err:
            return RowResult(row, "failed", f"{name}: {err}")
        if step is None:
            continue
        record = step.recorded() or {}
        if not step.is_done():
            if record.get("status") == "failed":
                return RowResult(row, "failed", f"{name}: {record.get('reason', 'no reason recorded')}")
            return RowResult(row, "not run", f"{name}: not run with the current inputs yet")
        records[name] = record
    doc = json.loads((plan.results(row) / "metrics.json").read_text())
    return RowResult(row, "ok", "", doc.get("metrics", {}), doc.get("reference_metrics", {}),
                     row_provenance(plan, row, records))


def cell(key: str, result: dict | None, notes: list[str]) -> str:
    """A number as eval's own table shows it (IS with its std over splits), or the status with a numbered reason."""
    if not result:
        return "—"
    if result.get("status") == "ok":
        text = f"{result['value']:.2f}" if abs(result["value"]) >= 0.01 or result["value"] == 0 else f"{result['value']:.2e}"
        return text + (f" ± {result['std']:.2f}" if key == "is" and "std" in result else "")
    return f"{result.get('status', '?')} {note(result.get('reason', ''), notes)}"


def note(reason: str, notes: list[str]) -> str:
    if reason not in notes:
        notes.append(reason)
    return f"[{notes.index(reason) + 1}]"


def metric_table(results: list[RowResult], keys: tuple[str, ...], notes: list[str], reference: dict | None) -> list[str]:
    specs = [SPEC_BY_KEY[k] for k in keys]
    lines = ["| Row | Method | Captions | Status | " + " | ".join(f"{s.label} {s.arrow}" for s in specs) + " |",
             "|---|---|---|---|" + "---|" * len(specs)]
    for r in results:
        status = "ok" if r.status == "ok" else f"{r.status} {note(r.reason, notes)}"
        lines.append(f"| {r.row.name} | {r.row.method} | {r.row.captions} | {status} | "
                     + " | ".join(cell(k, r.metrics.get(k), notes) for k in keys) + " |")
    if reference:
        lines.append("| reference audio | | | | " + " | ".join(cell(k, reference.get(k), notes) for k in keys) + " |")
    return lines


def markdown(plan: Plan, results: list[RowResult]) -> str:
    notes: list[str] = []
    finished = [r for r in results if r.status == "ok"]
    reference = finished[0].reference if finished else None
    lines = [f"# {plan.experiment.title}", "",
             f"Experiment `{plan.experiment.path}`, cache `{plan.cache}`, test split `{plan.experiment.data.split}`: "
             f"{len(finished)} of {len(results)} rows finished. Every number is traced to its run in "
             f"`{STEM}.provenance.json`.", "", "## Table 1 columns", ""]
    lines += metric_table(results, paper.COLUMNS, notes, reference)
    lines += ["", "## Video–music alignment", ""]
    lines += metric_table(results, ALIGNMENT, notes, reference)
    if notes:
        lines += [""] + [f"[{n}] {reason}" for n, reason in enumerate(notes, 1)]
    lines += ["", f"![one panel per metric]({STEM}.png)", ""] + paper.quoted_block()
    return "\n".join(lines) + "\n"


def csv_bytes(results: list[RowResult]) -> bytes:
    keys = (*paper.COLUMNS, *ALIGNMENT)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "method", "captions", "status", "reason", *keys])
    for r in results:
        values = [r.metrics[k]["value"] if r.metrics.get(k, {}).get("status") == "ok" else "" for k in keys]
        writer.writerow([r.row.name, r.row.method, r.row.captions, r.status, r.reason,
                         *(f"{v:.6g}" if v != "" else "" for v in values)])
    return buffer.getvalue().encode()


def figure_bytes(results: list[RowResult]) -> bytes:
    """One panel per metric, one bar per finished row (failed rows are left out of the bars, named in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*paper.COLUMNS, *ALIGNMENT[:4])
    finished = [r for r in results if r.status == "ok"]
    cols = 4
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(keys) + cols - 1) // cols)))
    for ax, key in zip(axes.flat, keys):
        spec = SPEC_BY_KEY[key]
        values = [r.metrics.get(key, {}) for r in finished]
        heights = [v["value"] if v.get("status") == "ok" else 0.0 for v in values]
        ax.bar(range(len(finished)), heights, color="tab:blue")
        ax.set_xticks(range(len(finished)), [r.row.name for r in finished], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{spec.label} {spec.arrow}", fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    failed = [r.row.name for r in results if r.status != "ok"]
    if failed:
        fig.suptitle(f"not shown (failed or not run): {', '.join(failed)}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_table(plan: Plan) -> list[RowResult]:
    """Collect every row and write the four files into the experiment's folder (only those whose bytes change)."""
    results = [collect_row(plan, row) for row in plan.experiment.rows]
    provenance = {"experiment": str(plan.experiment.path), "experiment_sha256": sha256_file(plan.experiment.path),
                  "cache": str(plan.cache), "split": plan.experiment.data.split,
                  "rows": {r.row.name: {"status": r.status, "reason": r.reason, **r.provenance} for r in results}}
    outputs = {f"{STEM}.md": markdown(plan, results).encode(), f"{STEM}.csv": csv_bytes(results),
               f"{STEM}.png": figure_bytes(results),
               f"{STEM}.provenance.json": (json.dumps(provenance, indent=2) + "\n").encode()}
    for name, data in outputs.items():
        write_if_changed(plan.out / name, data)
    return results
