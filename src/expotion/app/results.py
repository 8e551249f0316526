"""``expotion study results study.yaml``: mean rating and 95% bootstrap CI per system and question.

Writes ``results.csv`` and ``ratings.png`` (grouped bars per question, one bar per system with
its CI, in the style of the paper's Fig. 3) and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .study import Study, StudyError, load_study
from .study_store import Response, StudyStore


@dataclass(frozen=True)
class Summary:
    system: str
    question: str
    n: int
    mean: float
    ci_low: float
    ci_high: float


def bootstrap_ci(scores: np.ndarray, resamples: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the ratings with replacement ``resamples`` times."""
    means = rng.choice(scores, size=(resamples, len(scores)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(study: Study, responses: list[Response], resamples: int = 10000, seed: int = 0) -> list[Summary]:
    """One row per (system, question) in the study's order; every cell gets its own seeded generator."""
    rows = []
    for s_index, system in enumerate(sorted(study.systems)):
        for q_index, question in enumerate(study.questions):
            scores = np.array([r.score for r in responses if r.system == system and r.question == question.id], float)
            if scores.size == 0:
                rows.append(Summary(system, question.id, 0, float("nan"), float("nan"), float("nan")))
                continue
            rng = np.random.default_rng([seed, s_index, q_index])
            rows.append(Summary(system, question.id, int(scores.size), float(scores.mean()),
                                *bootstrap_ci(scores, resamples, rng)))
    return rows


def write_csv(rows: list[Summary], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["system", "question", "n", "mean", "ci95_low", "ci95_high"])
        for r in rows:
            writer.writerow([r.system, r.question, r.n, f"{r.mean:.4f}", f"{r.ci_low:.4f}", f"{r.ci_high:.4f}"])


def plot(study: Study, rows: list[Summary], path: Path) -> None:
    """Grouped bars: one group per question, one bar per system, 95% CI whiskers, y on the rating scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted(study.systems)
    questions = [q.id for q in study.questions]
    by_key = {(r.system, r.question): r for r in rows}
    width = 0.8 / len(systems)
    x = np.arange(len(questions))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(questions), 3.6))
    for i, system in enumerate(systems):
        cells = [by_key[(system, q)] for q in questions]
        means = np.array([c.mean for c in cells])
        err = np.array([[c.mean - c.ci_low for c in cells], [c.ci_high - c.mean for c in cells]])
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, means, width, yerr=err, capsize=3, label=system,
               edgecolor="black", linewidth=0.5)
    low, high = study.scale
    ax.set_ylim(min(0, low), high + 0.25)
    ax.set_xticks(x, [q.label for q in study.questions])
    ax.set_ylabel(f"mean rating ({low}–{high})")
    ax.grid(axis="y", linestyle=":", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(ncols=min(len(systems), 3), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def format_table(study: Study, rows: list[Summary], participants: int) -> str:
    lines = [f"{study.title}: {participants} participants, mean [95% bootstrap CI] per system and question",
             f"{'system':24s} {'question':14s} {'n':>5s} {'mean':>6s}  95% CI"]
    for r in rows:
        ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.n else "no ratings"
        lines.append(f"{r.system:24s} {r.question:14s} {r.n:5d} {r.mean:6.2f}  {ci}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study_command", required=True)
    results = sub.add_parser("results", help="mean and 95%% bootstrap CI per system and question; CSV and figure")
    results.add_argument("study", type=Path, help="the study file (study.yaml)")
    results.add_argument("--out", type=Path, default=None, help="output directory (default: <database stem>-results)")
    results.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    results.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        study = load_study(args.study)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not study.database.is_file():
        print(f"error: {study.database}: no responses database yet (run `expotion app --study {args.study}`)",
              file=sys.stderr)
        return 2
    responses = StudyStore(study.database).responses()
    rows = summarise(study, responses, args.resamples, args.seed)
    out = args.out or study.database.parent / f"{study.database.stem}-results"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    plot(study, rows, out / "ratings.png")
    print(format_table(study, rows, len({r.participant for r in responses})))
    print(f"wrote {out / 'results.csv'} and {out / 'ratings.png'}")
    return 0
