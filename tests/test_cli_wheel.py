"""The built wheel in a clean venv: what a user gets from `pip install spotctl`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*argv: object, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel built from this tree, installed with its runtime dependencies only (pinned by
    constraints.txt) in a venv that sees nothing else."""
    d = tmp_path_factory.mktemp("wheel")
    built = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", d / "dist", ROOT)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((d / "dist").glob("spotctl-*.whl"))
    assert sh(sys.executable, "-m", "venv", d / "venv").returncode == 0
    pip = sh(d / "venv" / "bin" / "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return wheel, d / "venv" / "bin"


@pytest.mark.slow
def test_wheel_carries_the_scenario_and_declares_the_demo_extra(wheel_venv):
    wheel, _ = wheel_venv
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "spotctl/data/scenario.toml" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Provides-Extra: demo" in meta
    assert "Requires-Dist: openai" in meta and 'extra == "demo"' in meta


@pytest.mark.slow
def test_wheel_runs_example_and_help_in_a_clean_venv(wheel_venv, tmp_path):
    _, bin_ = wheel_venv
    out = sh(bin_ / "spotctl", "example", "--dir", tmp_path / "ex", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "EXAMPLE DATA" in out.stdout and "P10" in out.stdout
    assert sh(bin_ / "spotctl", "--help").returncode == 0
    # the fleet extra is not installed: commands that do not launch machines still work
    assert sh(bin_ / "python", "-c", "import sky").returncode != 0


@pytest.mark.slow
def test_demo_without_its_extra_says_how_to_get_it(wheel_venv, tmp_path):
    _, bin_ = wheel_venv
    out = sh(bin_ / "spotctl", "demo", "--dir", tmp_path / "d", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert "pip install 'spotctl[demo]'" in out.stderr and out.stderr.count("\n") == 1
