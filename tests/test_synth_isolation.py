"""Only evaluation may know the answer key: pipeline code imports nothing of the simulated world.

The oracle, the click model and segments (`synth/world.py`) and even the world's vocabulary
(`synth/vocab.py`) stay out of training and pipeline code, so nothing the platform learns or
prints can lean on the simulation. Only `osmf_lib/synth` itself and the `osmf_lib/evaluation`
package import them; the CLI may import the landing writers behind `osmf synth` (and `osmf synth
serve`), which read nothing of the world back.

Imports are read from the syntax tree, so a comment or a string that mentions the world is fine,
while `from osmf_lib.synth import oracle`, a relative import or importlib are caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNTH = "osmf_lib.synth"
SCANNED = ("osmf_lib", "jobs", "dags")
# (module, what it may import): the simulator's front door, which writes files and reads nothing back.
FRONT_DOOR = {
    ("osmf_lib/cli.py", f"osmf_lib.synth.{name}")
    for name in ("write_landing", "Serving", "write_served_day", "build_world", "day_requests")
}


def _allowed(relative: Path) -> bool:
    parts = relative.parts
    return parts[:2] in (("osmf_lib", "synth"), ("osmf_lib", "evaluation"))


def _package(relative: Path) -> list[str]:
    """The package a relative import starts from: the module's folder (for __init__.py, itself)."""
    return list(relative.parent.parts)


def _is_synth(module: str) -> bool:
    return module == SYNTH or module.startswith(SYNTH + ".")


def synth_imports(source: str, relative: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for every import of the simulated world in `source` (the module at `relative`)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names if _is_synth(alias.name))
        elif isinstance(node, ast.ImportFrom):
            package = _package(relative)
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{module}.{alias.name}" for alias in node.names]
            yield from ((node.lineno, name) for name in names if _is_synth(name))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and _is_synth(first.value):
                yield node.lineno, first.value


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in {"import_module", "__import__"}


def test_only_the_world_and_evaluation_import_the_world() -> None:
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if _allowed(relative):
                continue
            offenders += [
                f"{relative}:{line} {name}"
                for line, name in synth_imports(path.read_text(), relative)
                if (str(relative), name) not in FRONT_DOOR
            ]
    assert not offenders, f"only osmf_lib/synth and osmf_lib/evaluation may import {SYNTH}: {offenders}"


@pytest.mark.parametrize(
    ("source", "relative"),
    [
        ("import osmf_lib.synth.oracle", "osmf_lib/grm.py"),
        ("import osmf_lib.synth.oracle as o", "jobs/train_grm.py"),
        ("from osmf_lib.synth import oracle", "osmf_lib/pairs.py"),
        ("from osmf_lib.synth.oracle import Oracle", "osmf_lib/pairs.py"),
        ("from osmf_lib.synth.world import SEGMENTS", "osmf_lib/grouping.py"),
        ("from osmf_lib.synth import build_world", "osmf_lib/pairs.py"),
        ("from osmf_lib.synth.vocab import ATTRIBUTE_VALUES", "osmf_lib/grouping.py"),
        ("from .synth import world", "osmf_lib/pairs.py"),
        ("from ..synth.oracle import Oracle", "osmf_lib/gmllm/train.py"),
        ("from .. import synth", "osmf_lib/gmllm/__init__.py"),
        ("import importlib\nimportlib.import_module('osmf_lib.synth.world')", "osmf_lib/grm.py"),
    ],
)
def test_the_scan_catches_every_form_of_import(source: str, relative: str) -> None:
    assert list(synth_imports(source, Path(relative)))


@pytest.mark.parametrize(
    "source",
    [
        "# osmf_lib.synth.oracle is for evaluation only",
        "NOTE = 'see osmf_lib.synth.world'",
        "from osmf_lib import tables, grouping",
        "from .paag import stages",
    ],
)
def test_the_scan_ignores_mentions_and_other_modules(source: str) -> None:
    assert not list(synth_imports(source, Path("osmf_lib/pairs.py")))


def test_evaluation_and_the_world_itself_are_allowed() -> None:
    assert _allowed(Path("osmf_lib/evaluation/grm.py"))
    assert _allowed(Path("osmf_lib/evaluation/stages.py"))
    assert _allowed(Path("osmf_lib/synth/landing.py"))
    assert not _allowed(Path("osmf_lib/grm/stages.py"))
    # A name that only starts like the package is not the package.
    assert not _allowed(Path("osmf_lib/evaluate_grm.py"))
    assert not _allowed(Path("osmf_lib/evaluations/grm.py"))
    assert not _allowed(Path("jobs/evaluate_and_publish.py"))
