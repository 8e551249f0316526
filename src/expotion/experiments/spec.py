"""The experiment file: one cache, one test split, the settings every row shares, and the rows (one system each).

A YAML file with the parts ``data``, ``captions``, ``training``, ``generation``, ``eval`` and ``rows``; each part
is a dataclass here. Every problem of a file is reported, one line each, naming the file and the key, before
anything runs. Paths are relative to the directory the command runs in, as in the training configs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from expotion.data.captions import CaptionSource, CaptionSourceError


class ExperimentError(ValueError):
    """An experiment file that cannot run; one line per problem, each naming the file and the key."""


@dataclass(frozen=True)
class DataSpec:
    """The one cache every row reads, and its test split. With ``manifest``, ``expotion features`` builds the cache."""

    cache: str
    split: str = "test"
    manifest: str | None = None
    args: list[str] = field(default_factory=list)  # ``expotion features`` options (profile, extractors, workers ...)


@dataclass(frozen=True)
class CaptionsSpec:
    """How ``expotion caption`` runs for the generated captions the rows ask for (``generated:<kind>``)."""

    args: list[str] = field(default_factory=list)  # e.g. [--weights-dir, weights, --device, cuda]


@dataclass(frozen=True)
class TrainingSpec:
    """LightningCLI overrides every training row gets (before the row's own)."""

    args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationSpec:
    """``expotion generate --cache`` options shared by every row (seed, top-k, profile, batch size ...)."""

    args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvalSpec:
    """``expotion eval`` options shared by every row; ``workers`` processes run its first stage."""

    args: list[str] = field(default_factory=list)  # e.g. [--weights-dir, weights, --metrics, "fad,kl,..."]
    workers: int = 1


@dataclass(frozen=True)
class RowSpec:
    """One system of the table: a registered method trained from ``configs`` (LightningCLI configs, later ones
    override, then ``overrides``), or reused from ``checkpoint``; generated and evaluated with ``captions``.

    A method that trains nothing (text-only MusicGen) gives ``musicgen`` instead.
    """

    name: str
    method: str
    configs: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    captions: str = "manifest"
    checkpoint: str | None = None
    musicgen: str | None = None


@dataclass(frozen=True)
class Experiment:
    path: Path
    title: str
    data: DataSpec
    rows: list[RowSpec]
    captions: CaptionsSpec = CaptionsSpec()
    training: TrainingSpec = TrainingSpec()
    generation: GenerationSpec = GenerationSpec()
    eval: EvalSpec = EvalSpec()

    def row(self, name: str) -> RowSpec:
        return next(r for r in self.rows if r.name == name)

    def caption_kinds(self) -> list[str]:
        """The generated caption kinds the rows read, in first-use order."""
        kinds = (CaptionSource.parse(r.captions).kind for r in self.rows)
        return list(dict.fromkeys(k for k in kinds if k))


PARTS = {"data": DataSpec, "captions": CaptionsSpec, "training": TrainingSpec, "generation": GenerationSpec,
         "eval": EvalSpec}
ROW_NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_fields(cls, raw: object, where: str, problems: list[str]) -> dict:
    """``raw`` as keyword arguments of the dataclass ``cls``: unknown, missing and mistyped keys become problems."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems += [f"{where}.{key}: unknown key (known: {', '.join(fields)})" for key in raw if key not in fields]
    kept = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}.{name}: missing")
            continue
        value, kind = raw[name], str(f.type)
        if kind.startswith("list"):
            if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
                problems.append(f"{where}.{name}: expected a list of strings, got {value!r}")
                continue
            value = [str(v) for v in value]
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{where}.{name}: expected a positive integer, got {value!r}")
                continue
        elif not (isinstance(value, str) and value.strip()) and not (value is None and "None" in kind):
            problems.append(f"{where}.{name}: expected a non-empty string, got {value!r}")
            continue
        kept[name] = value
    return kept


def check_row(row: RowSpec, where: str, problems: list[str]) -> None:
    """What the registry, the files and the caption spelling say about one row."""
    from expotion.methods.registry import UnknownMethod, method_named

    if not set(row.name) <= ROW_NAME_CHARACTERS:
        problems.append(f"{where}.name: '{row.name}' is used as a folder name: use letters, digits, '_', '-' or '.'")
    try:
        CaptionSource.parse(row.captions)
    except CaptionSourceError as err:
        problems.append(f"{where}.captions: {err}")
    try:
        method = method_named(row.method)
    except UnknownMethod as err:
        problems.append(f"{where}.method: {err}")
        return
    if not method.module:
        if row.configs or row.checkpoint:
            problems.append(f"{where}: method '{row.method}' trains nothing: give musicgen, not configs or checkpoint")
        if not row.musicgen:
            problems.append(f"{where}.musicgen: missing (method '{row.method}' generates with a MusicGen alone)")
        return
    if row.musicgen:
        problems.append(f"{where}.musicgen: only for a method that trains nothing; '{row.method}' reads its "
                        "MusicGen from its config or checkpoint")
    if bool(row.configs) == bool(row.checkpoint):
        problems.append(f"{where}: give either configs (to train) or checkpoint (to reuse), not "
                        f"{'both' if row.configs else 'neither'}")
    problems += [f"{where}.configs: {c}: no such file" for c in row.configs if not Path(c).is_file()]
    if row.checkpoint and row.overrides:
        problems.append(f"{where}.overrides: a reused checkpoint is not trained; overrides apply to training only")


def load_experiment(path: str | Path) -> Experiment:
    """The experiment in ``path``, checked whole; :class:`ExperimentError` lists every problem, one line each."""
    import expotion.methods  # noqa: F401  (registers the built-in methods)

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ExperimentError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ExperimentError(f"{path}:{line} not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping with data and rows, got {type(raw).__name__}")
    problems: list[str] = []
    known = {"title", "rows", *PARTS}
    problems += [f"{key}: unknown key (known: {', '.join(sorted(known))})" for key in raw if key not in known]
    parts = {}
    for key, cls in PARTS.items():
        if key == "data" and key not in raw:
            problems.append("data: missing (the cache and the test split)")
        elif key in raw:
            try:
                parts[key] = cls(**check_fields(cls, raw[key], key, problems))
            except TypeError:  # a required key is missing: already a problem
                pass
    rows: list[RowSpec] = []
    raw_rows = raw.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        problems.append("rows: expected a non-empty list of rows")
        raw_rows = []
    for n, raw_row in enumerate(raw_rows):
        where = f"rows[{n}]" + (f" ({raw_row['name']})" if isinstance(raw_row, dict) and "name" in raw_row else "")
        kwargs = check_fields(RowSpec, raw_row, where, problems)
        if "name" in kwargs and "method" in kwargs:
            row = RowSpec(**kwargs)
            check_row(row, where, problems)
            rows.append(row)
    seen: set[str] = set()
    for row in rows:
        if row.name in seen:
            problems.append(f"rows: the name '{row.name}' is used twice; each row needs its own")
        seen.add(row.name)
    if problems:
        raise ExperimentError("\n".join(f"{path}: {p}" for p in problems))
    title = raw.get("title")
    return Experiment(path=path, title=str(title) if title else path.stem, rows=rows, **parts)
