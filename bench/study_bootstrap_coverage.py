"""How often the listening study's "95%" CI holds the true mean, by how the bootstrap resamples (a simulation).

    python bench/study_bootstrap_coverage.py [--participants 20] [--clips 10] [--studies 400] [--resamples 1000]

Each simulated study has every participant rate every clip: 3 + rater level (sd 0.8) + clip level (sd 0.5) +
noise (sd 0.7). The population mean is 3. Three CIs come from ``expotion.app.results.bootstrap_ci`` on the same
ratings: the two-way cluster bootstrap ``expotion study results`` uses (whole participants and whole clips), the
participants alone (``--fixed-clips``) and every rating on its own, as if independent. The script prints the share
of studies whose CI held 3.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from expotion.app.results import bootstrap_ci


def simulated_study(rng: np.random.Generator, participants: int, clips: int) -> np.ndarray:
    clip_level = 0.5 * rng.standard_normal(clips)
    rater_level = 0.8 * rng.standard_normal((participants, 1))
    return 3 + rater_level + clip_level + 0.7 * rng.standard_normal((participants, clips))


def coverage(participants: int, clips: int, studies: int, resamples: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits: Counter[str] = Counter()
    for _ in range(studies):
        grid = simulated_study(rng, participants, clips)
        for name, ratings, clips_too in (("participants and clips (two-way)", grid, True),
                                         ("participants alone", grid, False),
                                         ("single ratings, as if independent", grid.reshape(-1, 1), False)):
            low, high = bootstrap_ci(ratings, resamples, rng, resample_clips=clips_too)
            hits[name] += low <= 3 <= high
    return {name: hits[name] / studies for name in hits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--participants", type=int, default=20)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--studies", type=int, default=400)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{args.studies} simulated studies of {args.participants} participants x {args.clips} clips "
          f"(rater sd 0.8, clip sd 0.5, noise sd 0.7), {args.resamples} resamples, seed {args.seed}")
    for name, share in coverage(args.participants, args.clips, args.studies, args.resamples, args.seed).items():
        print(f"  resampling {name:36s} held the true mean in {100 * share:.1f}% of studies")


if __name__ == "__main__":
    main()
