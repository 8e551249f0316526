"""The adaptor-only checkpoint: a few MB of weights plus what they were trained against.

It records the MusicGen it adapts (width, depth, codebooks, and where a local
model directory was), the visual features it reads (streams, shapes, rates)
and the extractor profile that computed them. It holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``. A file that
cannot be read, or that was made for another MusicGen or other features, is
refused with one line naming it and saying what is wrong.
Every exported checkpoint names the ``method`` that wrote it (``expotion`` here;
:mod:`expotion.methods.clipflow.checkpoint` writes the other), so ``generate`` can pick it,
and the captions it trained on (``captions``: manifest, generated:<kind> with the captioner,
model and prompt, or generic), so batch generation and eval can default to the same ones.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import asdict
from pathlib import Path

import torch

from expotion.core import tiny
from expotion.core.atomic import atomic_path
from expotion.core.rates import StreamRate
from expotion.core.weights import MissingWeightsError
from expotion.data.clips import FeatureSpec

FORMAT = "expotion-adaptor"
VERSION = 1
STRUCTURE = ("dim", "num_layers", "n_q", "card", "frame_rate")
DEFAULT_PROFILE = "real"
LEGACY_METHOD = "expotion"  # files exported before methods were recorded are Expotion adaptors
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pickled magic number opening a legacy torch.save file


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and what is wrong."""


class CheckpointMismatch(CheckpointError):
    """An adaptor checkpoint does not fit the MusicGen or the features it is used with."""


def load_file(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` of a checkpoint, with a one-line refusal for a file it cannot use.

    ``weights_only`` never runs code stored in a pickle; such a file is refused, as is
    an empty, truncated or otherwise corrupt one, and a file torch.save did not write.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    if not is_torch_file(path):
        raise CheckpointError(f"{path}: not a torch checkpoint (a PyTorch .pt/.ckpt file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused: it holds pickled Python objects{what} besides tensors and plain "
                              "values, which a checkpoint never needs; they were not run") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse the file is reported the same way
        detail = str(err).strip().split("\n")[0].split(". ")[0]
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt): "
                              f"{type(err).__name__}{': ' + detail if detail else ''}") from None


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` opens as torch.save writes (a zip archive, or a pickle starting with torch's legacy magic
    number), so that any other file (text, an image) is named as such rather than as corrupt or pickled code."""
    with path.open("rb") as f:
        head = f.read(32)
    return head.startswith(ZIP_MAGIC) or (head.startswith(b"\x80") and LEGACY_MAGIC in head)


def local_dir(where: str | os.PathLike, run_dir: Path) -> dict:
    """Where a local directory is, absolute and relative to the run that used it (so it is found after a move)."""
    absolute = Path(where).expanduser().resolve()
    return {"path": str(absolute), "from_run": os.path.relpath(absolute, run_dir.resolve())}


def find_local_dir(record: dict, checkpoint: Path) -> Path:
    """A recorded directory: where it was, else at the same place relative to the checkpoint, else beside it."""
    recorded = Path(record["path"])
    candidates = [recorded, checkpoint.parent / record["from_run"], checkpoint.parent / recorded.name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MissingWeightsError(f"{checkpoint}: it was trained with {recorded.name} from {recorded}; not found there "
                              f"nor at {', '.join(str(c) for c in candidates[1:])}")


def spec_to_dict(spec: FeatureSpec) -> dict:
    return {"shapes": {k: list(v) for k, v in spec.shapes.items()},
            "rates": {k: asdict(v) for k, v in spec.rates.items()}, "text_dim": spec.text_dim,
            **({"prompt": spec.prompt} if spec.prompt is not None else {})}


def spec_from_dict(d: dict) -> FeatureSpec:
    return FeatureSpec({k: tuple(v) for k, v in d["shapes"].items()},
                       {k: StreamRate(**v) for k, v in d["rates"].items()}, int(d["text_dim"]),
                       prompt=d.get("prompt"))


def write_checkpoint(path: str | os.PathLike, method: str, config: dict, musicgen: dict, spec: FeatureSpec,
                     state_dict: dict[str, torch.Tensor], **extra) -> Path:
    """Save a method's export atomically (a reader never sees half a file): its format, version and method, its
    config, the MusicGen it was trained on (and where a local one was), the features and extractor profile it
    reads, its weights and ``extra`` entries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    musicgen = dict(musicgen)
    if Path(musicgen["name"]).expanduser().is_dir():
        musicgen["local"] = local_dir(musicgen["name"], path.parent)
    extractors = dict(spec.extractors)
    if extractors.get("weights_dir"):
        extractors["weights_dir"] = local_dir(extractors["weights_dir"], path.parent)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "config": config,
        "musicgen": musicgen,
        "features": spec_to_dict(spec),
        "extractors": extractors,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        **({"captions": spec.captions} if spec.captions else {}),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def trained_captions(path: str | os.PathLike | None, payload: dict) -> dict:
    """The caption source a checkpoint trained on (:func:`expotion.data.captions.source_record`), or ``{}`` for one
    exported before it was recorded; a record without its source is refused naming the file."""
    record = payload.get("captions", {})
    if not isinstance(record, dict) or (record and not isinstance(record.get("source"), str)):
        raise CheckpointError(f"{path}: its 'captions' entry has no caption source: {record!r}")
    return record


def method_of(payload: dict) -> str:
    """The training method a checkpoint was exported by (checkpoints from before methods were recorded: Expotion)."""
    return str(payload.get("method", LEGACY_METHOD))


def check_method(path: Path, payload: dict, method: str, what: str) -> None:
    """Refuse a checkpoint that another method exported; ``what`` names the expected kind in the message."""
    if method_of(payload) != method:
        raise CheckpointMismatch(f"{path}: a checkpoint of the '{method_of(payload)}' method, not {what}")


def read_adaptor(path: str | os.PathLike) -> dict:
    payload = load_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an expotion adaptor checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: adaptor checkpoint version {payload.get('version')}, expected {VERSION}")
    return payload


def musicgen_source(path: str | os.PathLike, payload: dict) -> str:
    """What to load the adaptor's MusicGen from: its recorded local directory (found even after a move), or its name."""
    saved = payload["musicgen"]
    return str(find_local_dir(saved["local"], Path(path))) if "local" in saved else saved["name"]


def extractor_profile(path: str | os.PathLike | None, payload: dict, profile: str | None = None,
                      tiny_dir: Path | None = None) -> tuple[str, Path]:
    """The extractor profile (and tiny weights directory) to compute features with: the ones given, else the
    ones the adaptor was trained with, else the real profile."""
    saved = payload.get("extractors", {})
    profile = profile or saved.get("profile") or DEFAULT_PROFILE
    if tiny_dir is None:
        trained_here = profile == "tiny" and saved.get("profile") == "tiny" and saved.get("weights_dir")
        tiny_dir = find_local_dir(saved["weights_dir"], Path(path)) if trained_here else tiny.DEFAULT_DIR
    return profile, tiny_dir


def check_compatible(path: Path, payload: dict, musicgen: dict, spec: FeatureSpec | None) -> None:
    """Refuse a checkpoint trained for another MusicGen structure or other feature shapes/rates."""
    saved = payload["musicgen"]
    diffs = [f"{k}: checkpoint {saved.get(k)} vs model {musicgen.get(k)}" for k in STRUCTURE if saved.get(k) != musicgen.get(k)]
    if diffs:
        raise CheckpointMismatch(f"{path}: adaptor was trained for MusicGen '{saved.get('name')}', "
                                 f"not '{musicgen.get('name')}' ({'; '.join(diffs)})")
    if spec is not None:
        want = spec_from_dict(payload["features"])
        for name, shape in want.shapes.items():
            if spec.shapes.get(name) != shape or spec.rates.get(name) != want.rates[name]:
                raise CheckpointMismatch(
                    f"{path}: adaptor expects '{name}' features of shape {shape} at {want.rates[name]}, "
                    f"got {spec.shapes.get(name)} at {spec.rates.get(name)}")


def check_state_dict(path: Path, saved: dict, expected: dict, what: str = "adaptor") -> None:
    """Refuse weights whose names or shapes differ from the module (``what``: its name) they are loaded into, in
    one line."""
    problems = [f"missing {name}" for name in sorted(expected.keys() - saved.keys())]
    problems += [f"unexpected {name}" for name in sorted(saved.keys() - expected.keys())]
    problems += [f"{name} has shape {tuple(saved[name].shape)}, the {what} {tuple(expected[name].shape)}"
                 for name in sorted(expected.keys() & saved.keys()) if saved[name].shape != expected[name].shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointMismatch(f"{path}: the {what} weights do not fit: {'; '.join(problems[:3])}{more}")


def check_feature_shapes(path: Path, spec: FeatureSpec, shapes: dict[str, tuple[int, ...]], source: str,
                         hint: str = "") -> None:
    """Refuse features whose shapes per time step are not the ones the adaptor was trained on.

    ``source`` names where the features came from (a cache clip, an extractor profile); ``hint`` ends the
    message with what to do about it.
    """
    for name, shape in spec.shapes.items():
        got = tuple(shapes[name]) if name in shapes else None
        if got != shape:
            raise CheckpointMismatch(f"{path}: adaptor expects '{name}' features of shape {shape}, "
                                     f"{source} has {got}{hint}")
