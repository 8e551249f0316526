"""Names of files and folders made from user text (clip ids, ``--label``), kept inside the results directory.

A clip id becomes a figure's file name as it is when it is a plain name (letters, digits, ``-``, ``_``, ``.`` not
leading) that no other figure, nor ``summary.png``, takes; any other id gets a sanitised name with a short hash
of the id, so two ids never share a file. A ``--label`` names a system's results folder, so one that is not a
single folder name (a path separator, ``.``, ``..``, a control character) is refused rather than rewritten: the
folder stays the label the user reads in ``results.md``.
"""
from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from expotion.evaluation.files import InputError

PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
RESERVED = {"summary"}  # the summary figure's stem
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def figure_names(clip_ids: list[str]) -> dict[str, str]:
    """A distinct, safe ``.png`` file name per clip id (unique also on case-insensitive file systems)."""
    names: dict[str, str] = {}
    taken = {f"{stem}.png" for stem in RESERVED}
    for clip_id in clip_ids:
        name = f"{clip_id}.png"
        if not PLAIN_NAME.fullmatch(clip_id) or name.lower() in taken:
            digest = hashlib.sha256(clip_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
            stem = UNSAFE.sub("_", clip_id).strip("._")[:60]
            name = f"clip-{stem + '-' if stem else ''}{digest}.png"
        taken.add(name.lower())
        names[clip_id] = name
    return names


def markdown_link(text: str, target: str) -> str:
    """``[text](target)`` with the text's brackets escaped and the target percent-encoded, so any name links."""
    shown = re.sub(r"([\\\[\]])", r"\\\1", text)
    return f"[{shown}]({quote(target)})"


def check_label(label: str) -> str:
    """``label`` if it can name one folder inside ``--out``; else an InputError saying why."""
    if not label.strip():
        raise InputError("--label: a label cannot be empty; it names the system's results folder under --out")
    bad = [c for c in label if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad or label in (".", ".."):
        what = f"contains {sorted(set(bad))!r}" if bad else f"is {label!r}"
        raise InputError(f"--label {label!r}: {what}; a label names the system's results folder under --out, so "
                         "it cannot hold a path separator or a control character, nor be '.' or '..'")
    return label
