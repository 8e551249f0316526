"""The registry of conditioning methods: every shared stage finds a method here, by name, and never imports one.

A method registers once, in its own package's ``__init__``, the facts the stages need: the name its exported
files carry (``method``), its LightningModule (for training), the file its export callback writes, the prefix of
its weights in Lightning checkpoints (to name the method of a run being resumed), and how to rebuild its trained
part from an exported file onto a loaded MusicGen. A third-party package registers the same way, from a module
listed under the ``expotion.methods`` entry-point group.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expotion.data.clips import FeatureSpec
from expotion.musicgen.video_conditioning import VideoConditioning

Loader = Callable[[Path, dict, object], tuple[VideoConditioning, FeatureSpec]]


@dataclass(frozen=True)
class Method:
    """What the shared stages know of a method."""

    name: str  # the ``method`` of its exported files
    title: str  # how messages name it
    module: str = ""  # class path of its LightningModule; empty: it does not train
    export_name: str = ""  # the file its export callback writes in the run folder
    weight_prefix: str = ""  # its trained weights' prefix in a Lightning checkpoint
    load: Loader | None = None  # its trained part from an exported file (None: nothing is trained)


METHODS: dict[str, Method] = {}


class UnknownMethod(KeyError):
    """No method of this name is registered; the message lists the ones that are."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_method(method: Method) -> Method:
    """Add ``method`` (a second registration under one name replaces the first: a plug-in may override)."""
    METHODS[method.name] = method
    return method


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise UnknownMethod(f"no method '{name}' is registered (known: {', '.join(sorted(METHODS))}); a plug-in "
                            "method registers under the 'expotion.methods' entry-point group")
    return METHODS[name]


def method_of_module(class_path: str) -> Method | None:
    """The method whose LightningModule is ``class_path`` (None for any other class, e.g. a user's subclass)."""
    return next((m for m in METHODS.values() if m.module and m.module == class_path), None)
