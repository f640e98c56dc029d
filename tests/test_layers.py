"""The architecture's rules, checked on the source: SQL lives only in spotctl/ledger/, and the
import arrows run one way (cli → services → adapters → the bottom modules)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "spotctl"
SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")

def _py_files():
    return sorted(p for p in PKG.rglob("*.py"))


def test_sql_only_in_the_ledger():
    offenders = []
    for path in _py_files():
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(("ledger/", "localcloud/")):  # the ledger; the local cloud's own books
            continue
        if SQL_CALL.search(path.read_text(encoding="utf-8")):
            offenders.append(rel)
    assert not offenders, f"SQL outside spotctl/ledger/: {offenders}"


# Which top-level packages a package may import (at module level or inside functions).
LOWER = {"config", "clock", "money", "errors", "naming", "__init__", "__main__", "py"}
ALLOWED = {
    # the CLI opens the ledger and renders (accounting's pure formatting); everything that
    # orchestrates fleet, gateway, billing or the local cloud is one call into services/.
    # `ledger` stays: cli/common.open_ledger_for opens the configured ledger for the read
    # commands, and `ledger check` runs the ledger's checks itself
    "cli": {"services", "accounting", "ledger", "cli"},
    "services": {"fleet", "gateway", "billing", "accounting", "ledger", "localcloud", "engine",
                 "services", "demo", "example_scenario"},
    "accounting": {"accounting", "ledger"},
    "ledger": {"ledger"},
    "billing": {"billing", "clients", "ledger"},
    "clients": {"clients"},
    "gateway": {"gateway", "ledger", "accounting", "billing", "engine"},
    "fleet": {"fleet", "clients", "engine", "ledger"},
    "engine": {"engine"},
    "demo": {"demo", "localcloud"},
    "localcloud": {"localcloud"},
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
        wrong = _imports(path) - ALLOWED[package] - LOWER
        if wrong:
            bad[path.relative_to(PKG).as_posix()] = sorted(wrong)
    assert not bad, f"imports against the arrows: {bad}"


def test_every_package_is_walked():
    packages = {d.name for d in PKG.iterdir() if (d / "__init__.py").is_file()}
    assert packages == set(ALLOWED), f"packages without their arrows: {packages - set(ALLOWED)}"
