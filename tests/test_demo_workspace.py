"""`spotctl demo --dir D` replaces only a previous demo workspace, never anything else."""

from __future__ import annotations

import pytest

from spotctl.demo.run import Demo
from spotctl.errors import ExitCode, UsageError


def test_a_directory_that_is_not_a_demo_workspace_is_left_alone(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError) as err:
        Demo(d).prepare()  # before: shutil.rmtree(d)
    assert err.value.exit_code == ExitCode.USAGE
    assert (d / "thesis.tex").read_text() == "years of work"


def test_a_previous_demo_workspace_is_replaced(tmp_path):
    d = tmp_path / "demo"
    Demo(d).prepare()
    (d / "leftover.db").write_text("x")
    Demo(d).prepare()
    assert not (d / "leftover.db").exists()
    assert (d / "spotctl.toml").read_text().startswith("# Written by `spotctl demo`")
    assert (d / "spotctl.toml").stat().st_mode & 0o077 == 0  # it names a key's variable: 0600


@pytest.mark.parametrize("args, needle", [
    (["--seconds", "5"], "--seconds must be between 20 and 3600"),
    (["--engine", "vllm"], "--engine vllm is not wired into the demo yet"),
])
def test_demo_bad_input_is_exit_2_before_anything_starts(tmp_path, args, needle):
    from typer.testing import CliRunner

    from spotctl.cli.main import app

    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "d"), *args])
    assert result.exit_code == ExitCode.USAGE and needle in result.stderr
    assert not (tmp_path / "d").exists()
