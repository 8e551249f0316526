"""Clips a reader must know about: those left out of a metric, and those kept but suspicious.

A clip is left out of a metric when its data for that metric is absent (an
unreadable file, a model that cannot take it, no caption or video). A clip is
suspicious when its audio is silent or much shorter than expected: it stays in
every metric it has data for, since dropping it would flatter the scores, but
it is named next to the table.
"""
from __future__ import annotations

import math

from expotion.evaluation.embed import Store
from expotion.evaluation.files import Pairing

SILENT_RMS_DBFS = -60.0  # RMS over the whole clip below this is silent (digital silence is -inf)
MIN_SECONDS = 1.0  # audio shorter than this is too short to evaluate
MIN_FRACTION_OF_REFERENCE = 0.9  # generated audio shorter than this share of its reference was cut short

THRESHOLDS = (f"silent = RMS below {SILENT_RMS_DBFS:g} dBFS over the whole clip; "
              f"short = under {MIN_SECONDS:g} s, or generated audio under {MIN_FRACTION_OF_REFERENCE:.0%} "
              "of its reference's duration")


def audio_problems(side: str, seconds: float, rms_dbfs: float, reference_s: float | None = None) -> list[str]:
    """What is wrong with one side's audio: silence, and its length with every threshold it falls under
    (``reference_s``: the reference's length, for the generated side)."""
    problems = []
    if rms_dbfs < SILENT_RMS_DBFS:
        level = "digital silence" if math.isinf(rms_dbfs) else f"RMS {rms_dbfs:.1f} dBFS"
        problems.append(f"{side} audio is silent ({level})")
    short = [f"under {MIN_SECONDS:g} s"] if seconds < MIN_SECONDS else []
    if reference_s and seconds < MIN_FRACTION_OF_REFERENCE * reference_s:
        short.append(f"{seconds / reference_s:.0%} of the reference's {reference_s:.2f} s")
    if short:
        problems.append(f"{side} audio lasts {seconds:.2f} s: {', '.join(short)}")
    return problems


def suspicious(pairing: Pairing, store: Store, rows: dict[str, dict]) -> dict[str, list[str]]:
    """What looks wrong with each paired clip's audio, by clip id; also fills the rows' level columns."""
    found: dict[str, list[str]] = {}
    for clip_id in pairing.ids:
        stats = {}
        for side, path in (("generated", pairing.generated[clip_id]), ("reference", pairing.reference[clip_id])):
            arrays = store.get("signal", path)
            if arrays is None:
                continue
            stats[side] = (float(arrays["seconds"]), float(arrays["rms_dbfs"]))
            rows[clip_id][f"seconds_{side}"], rows[clip_id][f"rms_dbfs_{side}"] = stats[side]
        reference_s = stats["reference"][0] if "reference" in stats else None
        problems = [p for side, (seconds, rms) in stats.items()
                    for p in audio_problems(side, seconds, rms, reference_s if side == "generated" else None)]
        if problems:
            found[clip_id] = problems
            rows[clip_id]["suspicious"] = "; ".join(problems)
    return found


def excluded(results: dict, reference: dict, labels: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """``{clip id: {reason: [metric labels]}}`` for every clip left out of some metric."""
    out: dict[str, dict[str, list[str]]] = {}
    for found, suffix in ((results, ""), (reference, " (reference row)")):
        for key, result in found.items():
            for clip_id, reason in result.excluded.items():
                out.setdefault(clip_id, {}).setdefault(reason, []).append(labels[key] + suffix)
    return dict(sorted(out.items()))
