"""Only evaluation may know the answer key: no training or pipeline code imports the click oracle.

Imports are read from the syntax tree, so a comment or a string that mentions the oracle is
fine, while `from osmf_lib.synth import oracle`, a relative import or importlib are caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORACLE = "osmf_lib.synth.oracle"
SCANNED = ("osmf_lib", "jobs")


def _allowed(relative: Path) -> bool:
    parts = relative.parts
    return parts[:2] == ("osmf_lib", "synth") or (parts[0] == "osmf_lib" and parts[1].startswith("evaluate"))


def _package(relative: Path) -> list[str]:
    """The package a relative import starts from: the module's folder (for __init__.py, itself)."""
    return list(relative.parent.parts)


def _is_oracle(module: str) -> bool:
    return module == ORACLE or module.startswith(ORACLE + ".")


def oracle_imports(source: str, relative: Path) -> Iterator[int]:
    """Line numbers at which `source` (the module at `relative`) imports the oracle."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(_is_oracle(alias.name) for alias in node.names):
                yield node.lineno
        elif isinstance(node, ast.ImportFrom):
            package = _package(relative)
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if _is_oracle(module) or any(_is_oracle(f"{module}.{alias.name}") for alias in node.names):
                yield node.lineno
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and _is_oracle(first.value):
                yield node.lineno


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in {"import_module", "__import__"}


def test_only_evaluation_imports_the_oracle() -> None:
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if _allowed(relative):
                continue
            offenders += [f"{relative}:{line}" for line in oracle_imports(path.read_text(), relative)]
    assert not offenders, f"only osmf_lib/synth and osmf_lib/evaluate* may import {ORACLE}: {offenders}"


@pytest.mark.parametrize(
    ("source", "relative"),
    [
        ("import osmf_lib.synth.oracle", "osmf_lib/grm.py"),
        ("import osmf_lib.synth.oracle as o", "jobs/train_grm.py"),
        ("from osmf_lib.synth import oracle", "osmf_lib/pairs.py"),
        ("from osmf_lib.synth.oracle import Oracle", "osmf_lib/pairs.py"),
        ("from .synth import oracle", "osmf_lib/pairs.py"),
        ("from ..synth.oracle import Oracle", "osmf_lib/gmllm/train.py"),
        ("from .. import synth\nfrom ..synth import oracle", "osmf_lib/gmllm/__init__.py"),
        ("import importlib\nimportlib.import_module('osmf_lib.synth.oracle')", "osmf_lib/grm.py"),
    ],
)
def test_the_scan_catches_every_form_of_import(source: str, relative: str) -> None:
    assert list(oracle_imports(source, Path(relative)))


@pytest.mark.parametrize(
    "source",
    [
        "# osmf_lib.synth.oracle is for evaluation only",
        "NOTE = 'see osmf_lib.synth.oracle'",
        "from osmf_lib.synth import world, vocab",
        "from osmf_lib.synth.world import build_world",
        "from .synth import landing",
    ],
)
def test_the_scan_ignores_mentions_and_other_modules(source: str) -> None:
    assert not list(oracle_imports(source, Path("osmf_lib/pairs.py")))


def test_evaluation_and_the_world_itself_are_allowed() -> None:
    assert _allowed(Path("osmf_lib/evaluate.py"))
    assert _allowed(Path("osmf_lib/evaluate/report.py"))
    assert _allowed(Path("osmf_lib/synth/landing.py"))
    assert not _allowed(Path("osmf_lib/grm.py"))
    assert not _allowed(Path("jobs/evaluate_and_publish.py"))
