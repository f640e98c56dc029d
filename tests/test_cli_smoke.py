"""A few whole-process runs of the installed ``spotctl``: what a shell or cron really sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotctl.testing import write_config

SPOTCTL = Path(sys.executable).with_name("spotctl")


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SPOTCTL_CONFIG", "SPOTCTL_DEBUG")}
    return subprocess.run([str(SPOTCTL), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60, check=False)


def test_console_script_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("spotctl ")


@pytest.mark.parametrize("args", [("cost", "--bogus"), ("up",), ("costs",)])
def test_usage_errors_exit_2_one_line(args, tmp_path):
    # before: exit 1 "internal error: NoSuchOption ..." from the console script
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("spotctl: error: ")
    assert out.stdout == ""


def test_config_after_the_command_and_json(tmp_path):
    cfg = write_config(tmp_path, {"ledger": {"path": "spotctl.db"}})
    assert run("--config", cfg, "keys", "create", "k1", "--json").returncode == 0
    out = run("keys", "list", "--json", "--config", cfg)
    assert out.returncode == 0, out.stderr
    assert [k["name"] for k in json.loads(out.stdout)["keys"]] == ["k1"]


def test_a_broken_ledger_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "spotctl.db").write_bytes(b"this is not sqlite" * 100)
    cfg = write_config(tmp_path, {"ledger": {"path": "spotctl.db"}})
    out = run("-c", cfg, "cost")
    assert out.returncode == 1
    assert "not a usable spotctl ledger" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1
