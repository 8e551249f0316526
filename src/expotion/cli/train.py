"""Training entry point (LightningCLI).

    python -m expotion.train fit --config lightning_configs/tiny_cpu.yaml [--trainer.max_epochs=3 ...]
    python -m expotion.train fit --config ... --ckpt_path last      # resume at the next step
    python -m expotion.train fit --config lightning_configs/clip_flow_tiny.yaml   # the CLIP + flow method

Everything a run writes lives under ``--trainer.default_root_dir``, so rerunning the
same command with ``--ckpt_path last`` continues from its latest checkpoint. Bad
input (an unusable cache or checkpoint, missing weights) ends the command with
one line naming the file and the problem. The method is ``model.class_path``:
Expotion's adaptor by default, ``expotion.methods.clipflow.module.ClipFlowModule`` for the CLIP + flow method.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from expotion.core.known_warnings import silence_known_warnings
from expotion.core.weights import MissingWeightsError
from expotion.data.clips import ShardDataModule
from expotion.data.captions import CaptionSourceError
from expotion.data.shards import CacheError
import expotion.methods  # noqa: F401  (registers the methods)
from expotion.methods.registry import METHODS, method_named, method_of_module
from expotion.solvers.export import CheckpointError, load_file
from expotion.solvers.optimization import ScheduleError

# Classes of configs written before they were renamed or moved, and what they are now (checked first).
RENAMED_CLASSES = {
    "expotion.callbacks.AdaptorExport": "expotion.solvers.callbacks.MethodExport",
    "expotion.solvers.callbacks.AdaptorExport": "expotion.solvers.callbacks.MethodExport",
}
# Modules of configs written before the package was laid out by stage: the callbacks', and each built-in method's
# LightningModule's (by the method's registered name; the registry says where its class is now).
RENAMED_CALLBACKS = {"expotion.callbacks.": "expotion.solvers.callbacks."}
RENAMED_METHOD_MODULES = {"expotion.training.": "expotion", "expotion.clipflow.training.": "clip_flow"}
# Expotion's options of the optimizer and schedule before every method shared one ``model.optim`` group.
RENAMED_OPTIONS = ("lr", "weight_decay", "warmup_fraction", "warmup_epochs", "min_lr")


class OldSpelling(ValueError):
    """A config names a class or an option by the spelling it had before it moved; the message gives the new one."""


USER_ERRORS = (CacheError, CheckpointError, MissingWeightsError, ScheduleError, OldSpelling, CaptionSourceError)
DEFAULT_METHOD = "expotion"  # what a config that names no model.class_path trains


def trained_module(payload: object) -> str | None:
    """The LightningModule class a Lightning checkpoint was trained with: the class path LightningCLI recorded in
    its hyperparameters, else the one its weights' prefixes belong to (None when neither tells)."""
    if not isinstance(payload, dict):
        return None
    hparams = payload.get("hyper_parameters")
    if isinstance(hparams, dict) and isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"]
    state_dict = payload.get("state_dict")
    keys = state_dict.keys() if isinstance(state_dict, dict) else ()
    found = {m.module for m in METHODS.values()
             if m.module and m.weight_prefix and any(k.startswith(m.weight_prefix) for k in keys)}
    return found.pop() if len(found) == 1 else None


def describe_method(class_path: str) -> str:
    """A module's method name with its class path, e.g. ``CLIP + flow (expotion.methods.clipflow.module.ClipFlowModule)``."""
    method = method_of_module(class_path)
    return f"{method.title} ({class_path})" if method else class_path


def check_resumed_method(path: str | os.PathLike, payload: object, class_path: str) -> None:
    """Refuse resuming a run of one method with a config that trains another: LightningCLI would otherwise
    take the checkpoint's model and fail later on data the config chose for its own method. Classes other than
    the registered methods' modules (a user's subclass) are left to Lightning."""
    trained = trained_module(payload)
    if method_of_module(trained or "") and method_of_module(class_path) and trained != class_path:
        raise CheckpointError(f"{path}: a checkpoint of a {describe_method(trained)} run, but the config trains "
                              f"{describe_method(class_path)}; resume it with the config it was trained with, "
                              "or start without --ckpt_path")


class ExpotionCLI(LightningCLI):
    """Any LightningModule as ``model.class_path`` (configs that name none train Expotion's adaptor), with
    checkpoint files checked up front."""

    def __init__(self, *args, **kwargs):
        given = kwargs.get("args")
        self.default_model = trained_class_path(list(given) if isinstance(given, list) else sys.argv[1:])
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """The default ``model.class_path`` is the one the command's configs name, not always Expotion's: when
        the class changes, jsonargparse keeps the first class's values of options both have (``optim``), defaults
        included, so CLIP + flow would train with Expotion's optimizer defaults."""
        parser.set_defaults({"model": {"class_path": self.default_model}})

    def parse_arguments(self, parser, args) -> None:
        """Refuse an unusable ``--ckpt_path`` file before LightningCLI reads hyperparameters from it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and "://" not in ckpt_path \
                and not ckpt_path.startswith("registry"):
            model = self.config[subcommand].get("model")
            class_path = model.get("class_path") if model is not None else None
            payload = load_file(ckpt_path)
            if class_path:
                check_resumed_method(ckpt_path, payload, class_path)

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last``: the run's newest last checkpoint, which must exist and be readable."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = self.last_checkpoint()
            check_resumed_method(config["ckpt_path"], load_file(config["ckpt_path"]),
                                 f"{type(self.model).__module__}.{type(self.model).__qualname__}")

    def last_checkpoint(self) -> str:
        """The newest ``last*.ckpt`` of the run's checkpoint callbacks, where Lightning would look for it."""
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        found = {path for cb in callbacks for path in cb._find_last_checkpoints(self.trainer)}
        if not found:
            where = ", ".join(sorted({str(cb.dirpath) for cb in callbacks})) or "(no ModelCheckpoint configured)"
            raise CheckpointError(f"--ckpt_path last: no last.ckpt in {where}; run without --ckpt_path to start "
                                  "training, or pass a checkpoint file")
        return max(found, key=os.path.getmtime)


def config_texts(args: list[str]) -> list[tuple[str, str]]:
    """(where, text) of the command line and of each ``--config`` file it names."""
    texts = [("the command line", " ".join(args))]
    for i, arg in enumerate(args):
        path = arg.removeprefix("--config=") if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        if path and Path(path).is_file():
            texts.append((path, Path(path).read_text(errors="replace")))
    return texts


def check_renamed_class_paths(args: list[str]) -> None:
    """Refuse, in one line naming the new spelling, a class path that moved (jsonargparse would only say that it
    cannot import it)."""
    for where, text in config_texts(args):
        for old, new in RENAMED_CLASSES.items():
            if re.search(rf"(?<![\w.]){re.escape(old)}(?!\w)", text):
                raise OldSpelling(f"{where}: {old} has been renamed: use {new}")
        modules = {old: method_named(name).module.rsplit(".", 1)[0] + "."
                   for old, name in RENAMED_METHOD_MODULES.items()}
        for old, new in {**modules, **RENAMED_CALLBACKS}.items():
            found = re.search(rf"(?<![\w.]){re.escape(old)}(\w+)", text)
            if found:
                raise OldSpelling(f"{where}: {found.group(0)} has moved: use {new}{found.group(1)}")


def config_model(text: str) -> dict:
    """The ``model`` section of a config file's text (empty when it has none or is not YAML: LightningCLI says so)."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def trained_class_path(args: list[str]) -> str:
    """The ``model.class_path`` the command trains: the last one its config files name, or the command line's,
    else the default method's."""
    command_line, *files = config_texts(args)
    found = method_named(DEFAULT_METHOD).module
    for _, text in files:
        found = str(config_model(text).get("class_path", found))
    named = re.findall(r"--model(?:\.class_path)?[= ]([\w.]+)(?=\s|$)", command_line[1])
    return named[-1] if named else found


def old_option(where: str, text: str) -> tuple[str, str] | None:
    """(old, new) spelling of the first optimizer option ``text`` gives where it was before ``model.optim``."""
    if where == "the command line":
        found = re.search(rf"--model\.(init_args\.)?({'|'.join(RENAMED_OPTIONS)})(?=[=\s]|$)", text)
        return (f"--model.{found.group(1) or ''}{found.group(2)}",
                f"--model.{found.group(1) or ''}optim.{found.group(2)}") if found else None
    model = config_model(text)
    model = model["init_args"] if isinstance(model.get("init_args"), dict) else model
    key = next((k for k in RENAMED_OPTIONS if k in model), None)
    return (f"model.{key}", f"model.optim.{key}") if key else None


def check_renamed_options(args: list[str]) -> None:
    """Refuse, in one line naming the new spelling, an optimizer option of a built-in method given where it was
    before every method shared ``model.optim`` (a user's own LightningModule keeps its own options)."""
    if method_of_module(trained_class_path(args)) is None:
        return
    for where, text in config_texts(args):
        renamed = old_option(where, text)
        if renamed:
            raise OldSpelling(f"{where}: {renamed[0]} has moved: use {renamed[1]}")


def main(args: list[str] | None = None) -> LightningCLI:
    silence_known_warnings()
    given = sys.argv[1:] if args is None else list(args)
    check_renamed_class_paths(given)
    check_renamed_options(given)
    return ExpotionCLI(None, ShardDataModule, args=args, save_config_kwargs={"overwrite": True})


def run(args: list[str] | None = None) -> int:
    """:func:`main` as a command: a problem with the user's files is one line on stderr and exit code 2."""
    try:
        main(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
