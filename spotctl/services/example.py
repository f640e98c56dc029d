"""``spotctl example``: a workspace with a config and an example ledger built from the packaged
scenario. EXAMPLE DATA, not a bill."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from spotctl.example_scenario import ExampleSummary

MARK = "# Written by `spotctl example`"
EXAMPLE_TOML = MARK + """: EXAMPLE DATA, not a bill.
[ledger]
path = "spotctl.db"

[[providers]]
name = "example-cloud"
kind = "hyperstack"
api_key_env = "EXAMPLE_CLOUD_API_KEY"

[[tiers]]
name = "llama-70b"
model = "llama-70b"
backend = "localcloud"
provider = "example-cloud"
"""


def build_workspace(directory: Path, end: datetime) -> tuple[Path, ExampleSummary]:
    """Write ``directory``/spotctl.toml (mode 0600) and an example ledger ending at ``end``
    beside it; returns the config's path and what was written. Only a previous example
    workspace is replaced, never anything else."""
    from spotctl.example_scenario import build_example
    from spotctl.ledger.db import Ledger

    _prepare(directory)
    cfg_path = directory / "spotctl.toml"
    fd = os.open(cfg_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(EXAMPLE_TOML)
    with Ledger(directory / "spotctl.db") as ledger:
        summary = build_example(ledger, end)
    return cfg_path, summary


def _prepare(directory: Path) -> None:
    """An empty workspace. Only a previous example workspace is replaced, never anything else."""
    import shutil

    from spotctl.errors import UsageError

    if directory.exists():
        cfg = directory / "spotctl.toml"
        ours = cfg.is_file() and cfg.read_text(encoding="utf-8").startswith(MARK)
        if not ours and (not directory.is_dir() or any(directory.iterdir())):
            raise UsageError(f"{directory} exists and is not an example workspace; "
                             "give another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
