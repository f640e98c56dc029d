"""`spotctl compare` and the fully loaded line, against figures computed by hand."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.clock import from_ms, iso
from spotctl.ledger.db import Ledger
from tests.test_accounting_capacity import H0, MIN, _day

PRICES = """
[[offers]]
name = "cheap"
model = "m"
input_usd_per_mtok = 0.03
output_usd_per_mtok = 0.05
source = "test"
as_of = "2026-11"

[[offers]]
name = "any"
model = "*"
input_usd_per_mtok = 2.5
output_usd_per_mtok = 10
source = "test"
as_of = "2026-11"

[[offers]]
name = "nobody"
model = "unserved"
input_usd_per_mtok = 1
output_usd_per_mtok = 1
source = "test"
as_of = "2026-11"
"""


def _workspace(tmp_path: Path) -> Path:
    cfg = tmp_path / "spotctl.toml"
    cfg.write_text('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\nrated_output_tokens_per_s = 500\n'
                   '[[fixed_costs]]\nname = "gateway VPS"\nusd_per_month = 730.5\n')
    with Ledger(tmp_path / "spotctl.db") as led:
        _day(led)
    (tmp_path / "prices.toml").write_text(PRICES)
    return cfg


def _run(*args):
    return CliRunner().invoke(app, list(args))


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """The console entry point in process: exit code, stdout, stderr (errors mapped to the
    documented exit codes, as for a user)."""
    import sys

    import pytest

    from spotctl.cli.main import run

    monkeypatch.setattr(sys, "argv", ["spotctl", *args])
    with pytest.raises(SystemExit) as exc:
        run()
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_compare_prices_the_windows_tokens_exactly(tmp_path):
    cfg = _workspace(tmp_path)
    r = _run("--config", str(cfg), "compare", "--since", iso(from_ms(H0)), "--until",
             iso(from_ms(H0 + 180 * MIN)), "--prices", str(tmp_path / "prices.toml"), "--json")
    assert r.exit_code == 0, r.output
    js = json.loads(r.stdout)
    assert js["self_hosted_usd"] == "6.138000"
    by = {o["name"]: o for o in js["offers"]}
    assert set(by) == {"cheap", "any"} and js["offers_without_tier"] == ["nobody"]
    prompt, out = 720 * 50, 720 * 1000  # the day's usage rows
    cheap = (Decimal(prompt) * Decimal("0.03") + Decimal(out) * Decimal("0.05")) / 1_000_000
    assert Decimal(by["cheap"]["usd"]) == cheap  # 0.03708
    assert by["cheap"]["savings_pct"] == str(((cheap - Decimal("6.138")) / cheap * 100)
                                             .quantize(Decimal("0.01")))
    # full load: $3/h over 500 tok/s = 1.6667 $/Mtok; the offer: cheap ÷ 0.72 Mtok
    full = Decimal(6_000_000) / Decimal(500 * 7200)
    assert Decimal(by["cheap"]["break_even_utilisation"]) == (
        full / (cheap * 1_000_000 / out)).quantize(Decimal("0.0001"))
    anyone = Decimal(prompt) * Decimal("2.5") / 10**6 + Decimal(out) * 10 / 10**6  # 7.29
    assert Decimal(by["any"]["usd"]) == anyone
    assert Decimal(by["any"]["savings_pct"]) > 0  # self-hosting won against this one
    assert Decimal(by["any"]["break_even_utilisation"]) < Decimal("0.2")
    # 3 h of a $730.50 month (730.5 h) is exactly $3
    assert js["fully_loaded"]["fixed_costs_usd"] == "3.000000"
    assert js["fully_loaded"]["fully_loaded_usd"] == "9.138000"


def test_cost_json_carries_the_fully_loaded_line_outside_spend(tmp_path):
    cfg = _workspace(tmp_path)
    r = _run("--config", str(cfg), "cost", "--since", iso(from_ms(H0)), "--until",
             iso(from_ms(H0 + 180 * MIN)), "--json")
    js = json.loads(r.stdout)
    assert js["spend_usd"] == "6.138000"
    assert js["fully_loaded"]["fully_loaded_usd"] == "9.138000"


LOADED = ("Fully loaded (estimate, not invoice-true; outside the spend and the band): $9.14 = "
          "$6.14 billed + $3.00 of [[fixed_costs]] pro-rated to the window (gateway VPS $3.00)")


def test_plain_cost_and_compare_print_the_fully_loaded_line_apart(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    cfg = _workspace(tmp_path)
    window = ("--since", iso(from_ms(H0)), "--until", iso(from_ms(H0 + 180 * MIN)))
    code, out, err = cli(capsys, monkeypatch, "--config", str(cfg), "cost", *window)
    assert code == 0, err
    assert LOADED in out
    # the invoice-true total is untouched: the table's total is the billed $6.14
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert "$6.14" in total and "9.14" not in total
    code, out, err = cli(capsys, monkeypatch, "--config", str(cfg), "compare", *window,
                         "--prices", str(tmp_path / "prices.toml"))
    assert code == 0, err
    assert LOADED in out
    # without [[fixed_costs]], no such line
    cfg.write_text(cfg.read_text().split("[[fixed_costs]]")[0])
    code, out, err = cli(capsys, monkeypatch, "--config", str(cfg), "cost", *window)
    assert code == 0 and "Fully loaded" not in out


def test_bad_prices_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    cfg = _workspace(tmp_path)
    bad = tmp_path / "bad.toml"
    for text, says in (("[[offers]]\nname = 'x'\n", "missing model"),
                       ("[[offers]]\nname='x'\nmodel='m'\ninput_usd_per_mtok=-1\n"
                        "output_usd_per_mtok=1\nsource='s'\nas_of='a'\n", "price ≥ 0"),
                       ("nonsense = 1\n", "unknown key"), ("[[offers\n", "not valid TOML")):
        bad.write_text(text)
        code, _out, err = cli(capsys, monkeypatch, "--config", str(cfg), "compare",
                              "--prices", str(bad))
        assert code == 2 and says in err and err.count("\n") == 1, err
    code, _out, err = cli(capsys, monkeypatch, "--config", str(cfg), "compare", "--prices",
                          str(tmp_path / "missing.toml"))
    assert code == 2 and "not found" in err


def test_the_shipped_prices_are_the_example_file_and_parse():
    from spotctl.services.economics import load_offers, prices_path

    root = Path(__file__).resolve().parents[1]
    shipped = root / "spotctl" / "accounting" / "hosted-prices.toml"
    assert shipped.read_text() == (root / "examples" / "hosted-prices.toml").read_text()
    offers = load_offers(shipped)
    assert all(o.source and o.as_of for o in offers) and len(offers) >= 5
    from spotctl.config import Config

    assert prices_path(Config(), None)[0] == shipped
