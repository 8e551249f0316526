"""How every method trains its parameters: AdamW and a learning rate that warms up linearly, then follows a cosine.

One dataclass, :class:`Optimization`, holds the settings (``model.optim`` in a config); each method's module gives
its own defaults (Expotion: §4.2 of its paper; CLIP + flow: §5.1 of its paper, as audiocraft's solver reads it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

WARMUPS = ("warmup_steps", "warmup_fraction", "warmup_epochs")  # the ways to give the warmup's length


class ScheduleError(ValueError):
    """A learning-rate schedule the run cannot follow (told in one line before training starts)."""


@dataclass(frozen=True)
class Optimization:
    """AdamW's settings, the gradient clipping and the learning-rate schedule of a run.

    The warmup lasts ``warmup_steps`` updates, or ``warmup_fraction`` of all updates, or ``warmup_epochs`` epochs:
    at most one is set (none: no warmup). Its first update is taken at ``lr / warmup``, or at zero with
    ``warmup_from_zero`` (audiocraft's cosine scheduler: the full rate is reached at update ``warmup`` itself);
    then the rate follows a cosine down to ``min_lr`` at the last update. A warmup that lasts the whole run is
    refused unless ``whole_run_warmup`` says it is meant. ``max_norm`` clips the gradient norm (0: no clipping;
    ``--trainer.gradient_clip_val``, when given, replaces it).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_norm: float = 0.0
    warmup_steps: int | None = None
    warmup_fraction: float | None = None
    warmup_epochs: float | None = None
    warmup_from_zero: bool = False
    min_lr: float = 0.0
    whole_run_warmup: bool = False

    @classmethod
    def of(cls, value: Optimization | dict) -> Optimization:
        """The settings as given to a module: the dataclass itself, or its fields as a dict (a saved hparams)."""
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in dict(value).items() if k in known})


def warmup_cosine(step: int, warmup: int, total: int, floor: float, from_zero: bool = False) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``floor`` at step ``total``.

    The warmup's first step has the factor ``1 / warmup``, or 0 with ``from_zero`` (audiocraft's cosine scheduler,
    which the CLIP + flow paper trained with: the full rate is reached at step ``warmup`` itself).
    """
    if step < warmup:
        return (step + (0 if from_zero else 1)) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_updates(optim: Optimization, total: int, per_epoch: int | None = None) -> int:
    """The warmup's length in updates for a run of ``total`` updates (``per_epoch`` of them per epoch).

    Refuses, in one line, two lengths given at once, and a warmup that never ends within the run unless
    ``optim.whole_run_warmup``.
    """
    given = [name for name in WARMUPS if getattr(optim, name) is not None]
    if len(given) > 1:
        values = " and ".join(f"{name} ({getattr(optim, name):g})" for name in given)
        raise ScheduleError(f"the learning-rate warmup is given twice, as {values}: keep one and set the other to "
                            f"null (e.g. --model.optim.{given[0]}=null)")
    if not given:
        return 0
    name = given[0]
    if name == "warmup_steps":
        warmup = max(1, int(optim.warmup_steps))
    elif name == "warmup_fraction":
        warmup = max(1, int(optim.warmup_fraction * total))
    else:
        if per_epoch is None:
            raise ScheduleError("a warmup in epochs needs the number of updates per epoch")
        warmup = max(1, int(optim.warmup_epochs * per_epoch))
    reached = warmup if optim.warmup_from_zero else warmup - 1  # the update taken at the full rate
    if reached >= total and not optim.whole_run_warmup:
        raise ScheduleError(f"the learning-rate warmup ({warmup} updates) lasts the whole run ({total} updates), so "
                            f"the rate never reaches {optim.lr:g}: lower --model.optim.{name}, train longer "
                            "(--trainer.max_steps), or pass --model.optim.whole_run_warmup=true if that is meant")
    return warmup


def adamw(params, optim: Optimization) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def learning_rate_schedule(optimizer: torch.optim.Optimizer, optim: Optimization, total: int,
                           per_epoch: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The rate per update of a run of ``total`` updates: :func:`warmup_cosine` from ``optim.lr`` down to
    ``optim.min_lr``."""
    warmup = warmup_updates(optim, total, per_epoch)
    floor = optim.min_lr / optim.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, floor, from_zero=optim.warmup_from_zero))


def rates_per_update(optim: Optimization, total: int) -> list[float]:
    """The learning rate of updates 0 ... ``total``, from the scheduler itself stepped once per update as Lightning
    steps it (for the docs' schedule table and its tests)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = learning_rate_schedule(optimizer, optim, total)
    rates = []
    for _ in range(total + 1):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates
