"""The training split's per-element feature statistics, in one streaming pass.

Every time step of the clips read counts once. The pass reads each clip's
streams a few time steps at a time from the shards and folds them into running
moments in float64 (Chan et al.'s pairwise update of Welford's mean and sum of
squared deviations), so its memory is a few copies of one feature vector,
whatever the clips' length or number; the whole-array mean and standard
deviation are matched to float32 rounding (``tests/test_clipflow.py``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from expotion.data.clips import ClipDataset

log = logging.getLogger("expotion.methods.clipflow")
STATISTICS_CLIPS = 256  # clips read for the feature statistics
STEPS_PER_READ = 8  # time steps of one stream read from a shard at a time


class RunningMoments:
    """Count, mean and sum of squared deviations of vectors of one shape, in float64, updated batch by batch."""

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.m2 = torch.zeros(shape, dtype=torch.float64)

    def add(self, samples: torch.Tensor) -> None:
        """Fold in ``samples`` (N, *shape)."""
        samples = samples.to(torch.float64)
        batch = RunningMoments(tuple(self.mean.shape))
        batch.count, batch.mean = len(samples), samples.mean(0)
        batch.m2 = (samples - batch.mean).square_().sum(0)
        self.merge(batch)

    def merge(self, other: RunningMoments) -> None:
        """Fold in the moments of another set of vectors (Chan et al.'s pairwise update)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta.square() * (self.count * other.count / total)
        self.mean += delta * (other.count / total)
        self.count = total

    def std(self) -> torch.Tensor:
        """Per-element standard deviation with Bessel's correction (as ``torch.std``)."""
        return (self.m2 / max(1, self.count - 1)).sqrt()

    def overall_std(self) -> float:
        """The standard deviation over every element of every vector, from the per-element moments."""
        elements = self.mean.numel()
        overall_mean = self.mean.mean()
        m2 = self.m2.sum() + self.count * (self.mean - overall_mean).square().sum()
        return float((m2 / max(1, self.count * elements - 1)).sqrt())


def moments_of(samples: torch.Tensor) -> RunningMoments:
    """The moments of ``samples`` (N, *shape) held in memory at once."""
    moments = RunningMoments(tuple(samples.shape[1:]))
    moments.add(samples)
    return moments


def statistics_picks(count: int, clips: int) -> list[int]:
    """Up to ``clips`` indices spread evenly over ``count`` clips (every clip when there are fewer)."""
    n = min(clips, count)
    return sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)})


def clip_moments(dataset: ClipDataset, index: int, streams: tuple[str, ...]) -> dict[str, RunningMoments] | None:
    """One clip's moments per stream, read ``STEPS_PER_READ`` time steps at a time; None when any feature the
    training reads holds NaN or inf (the clip is skipped in training too)."""
    clip = dataset.clips[index]
    datasets = dataset.datasets(clip)
    bad = [] if np.isfinite(datasets["text"][()]).all() else ["text"]
    out = {}
    for name in streams:
        stored = datasets[name]
        out[name] = RunningMoments(tuple(stored.shape[1:]))
        for start in range(0, stored.shape[0], STEPS_PER_READ):
            chunk = torch.from_numpy(stored[start: start + STEPS_PER_READ].astype(np.float32))
            if not torch.isfinite(chunk).all():
                bad.append(name)
                break
            out[name].add(chunk)
    if bad:
        log.warning("statistics skip %s in %s: non-finite values (NaN/inf) in %s", clip.clip_id, clip.shard,
                    ", ".join(bad))
        return None
    return out


def stream_statistics(dataset: ClipDataset, streams: tuple[str, ...],
                      clips: int = STATISTICS_CLIPS) -> dict[str, RunningMoments]:
    """The moments of every time step of up to ``clips`` clips spread evenly over ``dataset``, per stream."""
    totals = {name: RunningMoments(dataset.spec.shapes[name]) for name in streams}
    for index in statistics_picks(len(dataset), clips):
        moments = clip_moments(dataset, index, streams)
        for name, clip in (moments or {}).items():
            totals[name].merge(clip)
    return totals
