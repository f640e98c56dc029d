"""Every example configuration in examples/ is valid for the current schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotctl.config import parse_config

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.toml")
                  if p.name not in ("scenario.toml", "hosted-prices.toml"))


def test_there_are_examples_for_every_provider_kind():
    kinds = set()
    for path in EXAMPLES:
        cfg = parse_config(path.read_text(), path)
        kinds |= {p.kind for p in cfg.providers}
    assert {"hyperstack", "runpod", "vast", "lambda"} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path: Path):
    cfg = parse_config(path.read_text(), path)
    for tier in cfg.tiers:
        assert tier.public_model
        if tier.provider:
            assert cfg.provider(tier.provider).api_key_env, "keys come from the environment"
