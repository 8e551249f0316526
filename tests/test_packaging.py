"""Packaging: one set of pins, every import declared, nothing installed that nothing imports; the install stamp."""
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
EXTRAS = ("precompute", "eval", "app", "test", "docs")
# Requirements expotion never imports itself, with the installed sources that import them.
IMPORTED_BY_DEPENDENCIES = {
    "torchmetrics": "lightning/pytorch",
    "flashy": "audiocraft",
    "einops": "audiocraft",
    "julius": "audiocraft",
    "num2words": "audiocraft",
    "spacy": "audiocraft",
    "xformers": "audiocraft",
    "jsonargparse": "lightning/pytorch/cli.py",
    "tensorboard": "torch/utils/tensorboard",
    "sentencepiece": "transformers/convert_slow_tokenizer.py",  # reads T5's spiece.model
    "timm": "hear21passt/models/helpers/vit_helpers.py",  # the original PaSST in the oracle tests
}
# Requirements nobody imports because they are run: each with the file that runs it and the name it is run by there
# (a command, a MkDocs theme or plugin, a mkdocstrings handler), which its distribution must provide.
RUN_AS_TOOLS = {
    "mkdocs": ("Makefile", "mkdocs"),
    "mkdocs-material": ("mkdocs.yml", "material"),
    "mkdocstrings": ("mkdocs.yml", "mkdocstrings"),
    "mkdocstrings-python": ("mkdocs.yml", "python"),
    "import-linter": ("Makefile", "lint-imports"),
}
# Run with the original projects' checkouts to write golden fixtures, never by the installed stack.
RUN_OUTSIDE = {ROOT / "tests" / "golden.py"}


def pins(name: str) -> list[str]:
    lines = (ROOT / "requirements" / f"{name}.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dist_name(requirement: str) -> str:
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@cache
def modules_of() -> dict[str, set[str]]:
    """Installed distribution name -> its top-level import names."""
    out: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            out.setdefault(dist_name(dist), set()).add(module)
    return out


def imported_modules(*folders: str) -> set[str]:
    """Top-level names of every absolute import (at any depth, lazy ones included) under ``folders``."""
    names = set()
    for folder in folders:
        for path in set((ROOT / folder).rglob("*.py")) - RUN_OUTSIDE:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "expotion"}


def test_pyproject_requirement_files_and_conda_pin_the_same_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == pins("base")
    extras = project["optional-dependencies"]
    assert {name: extras[name] for name in EXTRAS} == {name: pins(name) for name in EXTRAS}
    assert extras["all"] == ["expotion[precompute,eval,app]"]
    files = ("base", *EXTRAS)
    conda = (ROOT / "environment.yml").read_text()
    assert re.findall(r"^\s*- -r requirements/(\w+)\.txt", conda, re.M) == list(files)
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    assert re.findall(r"(?<!--no-deps )-r requirements/(\w+)\.txt", makefile) == list(files)
    assert "--no-deps -r requirements/nodeps.txt" in makefile


@pytest.mark.parametrize("folders, groups", [(("src", "precompute", "bench"), ("base", "precompute", "eval", "app", "nodeps")),
                                             (("tests",), ("base", "precompute", "eval", "app", "nodeps", "test"))])
def test_every_imported_package_is_declared(folders, groups):
    declared = {dist_name(r) for group in groups for r in pins(group)}
    local = {p.stem for folder in folders for p in (ROOT / folder).rglob("*.py")}
    undeclared = {}
    for module in sorted(imported_modules(*folders) - local):
        dists = {d for d, mods in modules_of().items() if module in mods}
        if not dists & declared:
            undeclared[module] = sorted(dists) or "not installed"
    assert undeclared == {}


def test_every_requirement_is_imported_by_expotion_or_a_dependency():
    ours = imported_modules("src", "precompute", "bench", "tests")
    unused = []
    for group in ("base", *EXTRAS, "nodeps"):
        for requirement in pins(group):
            name = dist_name(requirement)
            modules = modules_of()[name]
            if modules & ours or name in RUN_AS_TOOLS:
                continue
            where = SITE / IMPORTED_BY_DEPENDENCIES.get(name, "-")
            files = [where] if where.is_file() else list(where.rglob("*.py"))
            pattern = re.compile(rf"^\s*(import|from) ({'|'.join(modules)})\b", re.M)
            if not any(pattern.search(f.read_text(errors="replace")) for f in files):
                unused.append(f"{group}.txt: {requirement}")
    assert unused == []


# ---- the install stamp -------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_install_stamp_follows_the_requirement_contents_not_file_times(tmp_path):
    """`make install` runs its recipe with a Python that does nothing (PY=true), in a copy of the project files
    (``-o check-python``: that true is no Python 3.11 is tested in test_makefile.py)."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / ".venv").mkdir()
    true = shutil.which("true")

    def make(*args: str) -> str:
        result = subprocess.run(["make", "-o", "check-python", *args, f"PY={true}"], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "pip install" in make("-n", "install")  # nothing installed yet
    make("install")
    assert "pip install" not in make("-n", "install")
    later = time.time() + 60  # a fresh clone: every file newer than the stamp, contents unchanged
    for path in [tmp_path / "Makefile", tmp_path / "pyproject.toml", *(tmp_path / "requirements").iterdir()]:
        os.utime(path, (later, later))
    assert "pip install" not in make("-n", "install")
    with (tmp_path / "requirements" / "eval.txt").open("a") as f:
        f.write("another-package==1.0\n")
    assert "pip install" in make("-n", "install")


@pytest.mark.parametrize("name", sorted(RUN_AS_TOOLS))
def test_every_tool_requirement_is_run_by_the_name_its_distribution_provides(name):
    """A tool counts as used only where the project runs it, by a name that pinned distribution really provides."""
    file, used_as = RUN_AS_TOOLS[name]
    assert name in {dist_name(r) for group in EXTRAS for r in pins(group)}
    dist = distribution(name)
    provided = {entry.name for entry in dist.entry_points} | {
        Path(str(f)).parent.name for f in dist.files or () if str(f).startswith("mkdocstrings_handlers/")}
    assert used_as in provided
    text = (ROOT / file).read_text()
    if file == "Makefile":
        assert re.search(rf"^\t\S*/{re.escape(used_as)}(\s|$)", text, re.M), f"the Makefile never runs {used_as}"
    else:
        config = yaml.safe_load(text)
        plugins = {key: value for plugin in config["plugins"]
                   for key, value in (plugin.items() if isinstance(plugin, dict) else [(plugin, {})])}
        assert used_as in {config["theme"]["name"], *plugins, *plugins["mkdocstrings"]["handlers"]}
