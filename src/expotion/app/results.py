"""``expotion study results study.yaml``: mean rating and 95% bootstrap CI per system and question; paired differences.

Every participant rates every clip for every system, so ratings are not independent: a lenient rater
is lenient on every trial, and an easy clip is easy for every system. The CI is therefore a two-way
cluster bootstrap that resamples whole participants and whole clips, each with all their ratings;
resampling single ratings as if independent gave "95%" CIs that held the true mean only about half
the time in simulation. With ``--fixed-clips`` only participants are resampled: the CI then speaks
for these clips, not for other videos.

Writes ``results.csv``, ``differences.csv`` and ``ratings.png`` (grouped bars per question, one bar
per system with its CI, in the style of the paper's Fig. 3) and prints both tables. Only the study
file's current clips, systems and questions are summarised; other stored ratings are counted and left out.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expotion.app.study import Study, StudyError, load_study
from expotion.app.study_store import DatabaseProblem, Response, checked_responses
from expotion.core import option_types as opt


@dataclass(frozen=True)
class Estimate:
    """A mean rating with its bootstrap CI; the CI is NaN when undefined (see ``bootstrap_ci``)."""

    participants: int
    clips: int
    n: int  # ratings
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Summary:
    system: str
    question: str
    estimate: Estimate


@dataclass(frozen=True)
class Difference:
    """``system`` minus ``other``, over the (participant, clip) pairs that rated both."""

    system: str
    other: str
    question: str
    estimate: Estimate


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` units is drawn in each resample (``resamples`` × ``n``)."""
    return rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)


def rated_part(grid: np.ndarray) -> np.ndarray:
    """``grid`` without the participants (rows) and clips (columns) that hold no rating."""
    rated = ~np.isnan(grid)
    return grid[rated.any(axis=1)][:, rated.any(axis=0)]


def bootstrap_ci(grid: np.ndarray, resamples: int, rng: np.random.Generator, level: float = 0.95,
                 resample_clips: bool = True) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``grid`` (participants × clips, NaN where not rated).

    Each resample draws whole participants and (with ``resample_clips``) whole clips with replacement
    and keeps every rating where a drawn participant meets a drawn clip, so correlated ratings move
    together. NaN with fewer than two participants, or two clips when clips are resampled: one rater
    (or one clip) says nothing about how raters (or clips) vary.
    """
    grid = rated_part(grid)
    participants, clips = grid.shape
    if participants < 2 or (resample_clips and clips < 2):
        return float("nan"), float("nan")
    rated = ~np.isnan(grid)
    by_participant = resample_counts(participants, resamples, rng)
    by_clip = resample_counts(clips, resamples, rng) if resample_clips else np.ones((resamples, clips))
    sums = ((by_participant @ np.where(rated, grid, 0.0)) * by_clip).sum(axis=1)
    counts = ((by_participant @ rated) * by_clip).sum(axis=1)
    means = np.divide(sums, counts, out=np.full(resamples, np.nan), where=counts > 0)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return float(low), float(high)


def estimate(grid: np.ndarray, resamples: int, rng: np.random.Generator, resample_clips: bool) -> Estimate:
    rated = rated_part(grid)
    if rated.size == 0:
        return Estimate(0, 0, 0, float("nan"), float("nan"), float("nan"))
    return Estimate(rated.shape[0], rated.shape[1], int((~np.isnan(rated)).sum()), float(np.nanmean(rated)),
                    *bootstrap_ci(rated, resamples, rng, resample_clips=resample_clips))


def left_out_reason(study: Study, response: Response) -> str | None:
    """Why a stored rating is not summarised (its clip, system or question left the study file), or None."""
    if response.clip not in study.clips:
        return f"clip '{response.clip}'"
    if response.system not in study.systems:
        return f"system '{response.system}'"
    if response.question not in {q.id for q in study.questions}:
        return f"question '{response.question}'"
    return None


def current_ratings(study: Study, responses: list[Response]) -> tuple[list[Response], Counter[str]]:
    """The ratings of the study's current clips, systems and questions, and a count of the others by reason."""
    reasons = [left_out_reason(study, r) for r in responses]
    kept = [r for r, why in zip(responses, reasons, strict=True) if why is None]
    return kept, Counter(why for why in reasons if why is not None)


def rating_grids(study: Study, responses: list[Response]) -> dict[tuple[str, str], np.ndarray]:
    """(system, question) -> participants × clips ratings (NaN where not rated), current ratings only."""
    kept, _ = current_ratings(study, responses)
    participants = {p: i for i, p in enumerate(sorted({r.participant for r in kept}))}
    clips = {c: j for j, c in enumerate(study.clips)}
    grids = {(s, q.id): np.full((len(participants), len(clips)), np.nan)
             for s in sorted(study.systems) for q in study.questions}
    for r in kept:
        grids[(r.system, r.question)][participants[r.participant], clips[r.clip]] = r.score
    return grids


def summarise(study: Study, responses: list[Response], resamples: int = 10000, seed: int = 0,
              resample_clips: bool = True) -> list[Summary]:
    """One row per (system, question) in the study's order; every cell gets its own seeded generator."""
    grids = rating_grids(study, responses)
    return [Summary(system, question.id, estimate(grids[(system, question.id)], resamples,
                                                  np.random.default_rng([seed, s_index, q_index]), resample_clips))
            for s_index, system in enumerate(sorted(study.systems))
            for q_index, question in enumerate(study.questions)]


def differences(study: Study, responses: list[Response], resamples: int = 10000, seed: int = 0,
                resample_clips: bool = True) -> list[Difference]:
    """Every two systems per question: the within-participant, within-clip difference, bootstrapped like a mean.

    Pairing removes each participant's and clip's own level, so the difference is far more precise
    than comparing the two systems' separate CIs.
    """
    grids = rating_grids(study, responses)
    systems = sorted(study.systems)
    return [Difference(a, b, question.id,
                       estimate(grids[(a, question.id)] - grids[(b, question.id)], resamples,
                                np.random.default_rng([seed, q_index, i, j, 1]), resample_clips))
            for q_index, question in enumerate(study.questions)
            for (i, a), (j, b) in itertools.combinations(enumerate(systems), 2)]


def write_estimates(path: Path, keys: list[str], mean: str, rows: list[tuple[list[str], Estimate]]) -> None:
    """A CSV of estimates: the ``keys`` columns naming each row, then its counts, ``mean`` and CI."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "participants", "clips", "n", mean, "ci95_low", "ci95_high"])
        for names, e in rows:
            writer.writerow([*names, e.participants, e.clips, e.n, f"{e.mean:.4f}", f"{e.ci_low:.4f}",
                             f"{e.ci_high:.4f}"])


def plot(study: Study, rows: list[Summary], path: Path) -> None:
    """Grouped bars: one group per question, one bar per system, 95% CI whiskers, y on the rating scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted(study.systems)
    questions = [q.id for q in study.questions]
    by_key = {(r.system, r.question): r.estimate for r in rows}
    width = 0.8 / len(systems)
    x = np.arange(len(questions))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(questions), 3.6))
    for i, system in enumerate(systems):
        cells = [by_key[(system, q)] for q in questions]
        means = np.array([c.mean for c in cells])
        err = [[c.mean - c.ci_low for c in cells], [c.ci_high - c.mean for c in cells]]
        err = np.nan_to_num(err)  # an undefined CI draws no whisker
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


def ci_text(e: Estimate, resample_clips: bool) -> str:
    """The CI, or why there is none (a zero-width interval from one rater would look like certainty)."""
    if e.n == 0:
        return "no ratings"
    if e.participants < 2:
        return "undefined: 1 participant"
    if resample_clips and e.clips < 2:
        return "undefined: 1 clip (--fixed-clips resamples participants only)"
    return f"[{e.ci_low:.2f}, {e.ci_high:.2f}]"


def format_table(study: Study, rows: list[Summary], diffs: list[Difference], participants: int,
                 resample_clips: bool) -> str:
    over = "participants and clips" if resample_clips else "participants (clips fixed)"
    labelled = [(r.system, r) for r in rows] + [(f"{d.system} − {d.other}", d) for d in diffs]
    width = max(len("system − other"), *(len(label) for label, _ in labelled))

    def line(label: str, question: str, participants: str, n: str, mean: str, ci: str) -> str:
        return f"{label:{width}s} {question:14s} {participants:>12s} {n:>5s} {mean:>6s}  {ci}"

    def row(label: str, r: Summary | Difference) -> str:
        e = r.estimate
        return line(label, r.question, str(e.participants), str(e.n), f"{e.mean:.2f}", ci_text(e, resample_clips))

    lines = [f"{study.title}: {participants} participants, {len(study.clips)} clips; "
             f"95% CI by a cluster bootstrap over {over}",
             line("system", "question", "participants", "n", "mean", "95% CI"),
             *(row(label, r) for label, r in labelled[:len(rows)])]
    if diffs:
        lines += ["", "Paired differences (the same participant rating the same clip):",
                  line("system − other", "question", "participants", "n", "mean", "95% CI"),
                  *(row(label, d) for label, d in labelled[len(rows):])]
    return "\n".join(lines)


def left_out_text(left_out: Counter[str]) -> str:
    reasons = ", ".join(f"{count} of {why}" for why, count in sorted(left_out.items()))
    return f"left out {sum(left_out.values())} stored ratings no longer in the study file: {reasons}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study_command", required=True)
    results = sub.add_parser("results", help="mean and 95%% bootstrap CI per system and question, paired "
                                             "differences; CSV and figure")
    results.add_argument("study", type=Path, help="the study file (study.yaml)")
    results.add_argument("--out", type=Path, default=None, help="output directory (default: <database stem>-results)")
    results.add_argument("--resamples", type=opt.positive_int, default=10000, help="bootstrap resamples")
    results.add_argument("--fixed-clips", action="store_true",
                         help="resample participants only: a CI for these clips, not for other videos")
    results.add_argument("--seed", type=opt.seed, default=0)


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
    try:
        responses = checked_responses(study.database, study.scale)
    except DatabaseProblem as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept, left_out = current_ratings(study, responses)
    resample_clips = not args.fixed_clips
    rows = summarise(study, kept, args.resamples, args.seed, resample_clips)
    diffs = differences(study, kept, args.resamples, args.seed, resample_clips)
    out = args.out or study.database.parent / f"{study.database.stem}-results"
    out.mkdir(parents=True, exist_ok=True)
    write_estimates(out / "results.csv", ["system", "question"], "mean",
                    [([r.system, r.question], r.estimate) for r in rows])
    write_estimates(out / "differences.csv", ["system", "minus", "question"], "mean_difference",
                    [([d.system, d.other, d.question], d.estimate) for d in diffs])
    plot(study, rows, out / "ratings.png")
    print(format_table(study, rows, diffs, len({r.participant for r in kept}), resample_clips))
    if left_out:
        print(left_out_text(left_out))
    print(f"wrote {out / 'results.csv'}, {out / 'differences.csv'} and {out / 'ratings.png'}")
    return 0
