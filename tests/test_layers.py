"""The architecture's rules, checked on the source: SQL lives only in spotctl/ledger/, and the
import arrows run one way (cli → services → adapters → the bottom modules)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "spotctl"
SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")

# Files that still run SQL outside spotctl/ledger/ while issue 12 moves it there. This list may
# only shrink: a file that no longer runs SQL must be removed from it (the test says so).
NOT_YET_MOVED = {
}


def _py_files():
    return sorted(p for p in PKG.rglob("*.py"))


def test_sql_only_in_the_ledger():
    offenders, moved = [], []
    for path in _py_files():
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(("ledger/", "localcloud/")):
            continue
        runs_sql = bool(SQL_CALL.search(path.read_text(encoding="utf-8")))
        if runs_sql and rel not in NOT_YET_MOVED:
            offenders.append(rel)
        if not runs_sql and rel in NOT_YET_MOVED:
            moved.append(rel)
    assert not offenders, f"SQL outside spotctl/ledger/: {offenders}"
    assert not moved, f"no SQL left here any more: remove from NOT_YET_MOVED: {moved}"


# Which top-level packages a package may import (at module level or inside functions).
LOWER = {"config", "clock", "money", "errors", "__init__", "__main__", "py"}
ALLOWED = {
    "cli": {"services", "accounting", "ledger", "fleet", "gateway", "billing", "engine",
            "localcloud", "demo", "cli", "example_scenario"},
    "services": {"fleet", "gateway", "billing", "accounting", "ledger", "localcloud", "engine",
                 "services", "demo", "example_scenario"},
    "accounting": {"accounting", "ledger"},
    "ledger": {"ledger"},
    "billing": {"billing", "clients", "ledger"},
    "clients": {"clients"},
    "gateway": {"gateway", "ledger", "accounting", "billing", "engine"},
    "fleet": {"fleet", "clients", "engine", "ledger", "billing"},
    "engine": {"engine"},
}


# Arrows issue 12 turns around; this list may only shrink.
AGAINST_THE_ARROWS_FOR_NOW = {
    "billing/reconcile.py": {"accounting"},  # reconcile is orchestration: services/billing.py
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spotctl."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("spotctl."):
                    out.add(alias.name.split(".")[1])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    bad = {}
    for path in sorted((PKG / package).rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        wrong = _imports(path) - ALLOWED[package] - LOWER
        tolerated = AGAINST_THE_ARROWS_FOR_NOW.get(rel, set())
        if wrong - tolerated:
            bad[rel] = sorted(wrong - tolerated)
        if tolerated and not (wrong & tolerated):
            bad[rel] = ["fixed: remove it from AGAINST_THE_ARROWS_FOR_NOW"]
    assert not bad, f"imports against the arrows: {bad}"
