"""`cost --plot` and the closing sentences, checked against hand-computed figures."""

from __future__ import annotations

from spotctl.accounting.html_report import robust_cap
from spotctl.accounting.plot import _runs, plot_report
from spotctl.accounting.sentences import busy_sentence, full_load_sentence, spot_sentence
from spotctl.ledger.records import UsageRecord
from spotctl.ledger.writes import record_usage
from spotctl.services.cost import add_summary, cost_report
from tests.test_accounting_capacity import H0, MIN, _day, cfg


def test_one_outlier_does_not_set_the_scale():
    assert robust_cap([1.0] * 9 + [100.0], 1.0) == 3.0  # P90 × 3
    assert robust_cap([1.0, 2.0, 3.0], 2.0) is None  # nothing far out: no cap
    assert _runs([(0, 1.0), (1, None), (2, 2.0), (3, 3.0)]) == [[(0, 1.0)], [(2, 2.0), (3, 3.0)]]


def test_plot_caps_the_outlier_and_leaves_gaps(ledger, monkeypatch, capsys):
    monkeypatch.setenv("NO_COLOR", "1")
    _day(ledger)  # tokens in the first two hours only; the third hour is hibernated
    # one very expensive bucket: a single small request in the 3rd hour (spend $0.12)
    record_usage(ledger, [UsageRecord("lone", H0 + 150 * MIN, H0 + 150 * MIN + 10, "ok",
                                      tier="big", completion_tokens=1)])
    rep = cost_report(ledger, cfg(), H0 - 60 * MIN, H0 + 180 * MIN, min_tokens=1)
    text = plot_report(rep, width=100)
    per = [b.usd_per_mtok_output for b in rep.buckets]
    assert per[0] is None  # the hour before the day: no tokens, so a gap, not $0
    # the lone request's hour costs $0.12 + storage per 1 token: far above the others
    outlier = float(per[-1])
    assert outlier > 100_000
    assert "above the axis:" in text and f"${outlier:,.2f}/Mtok" in text
    assert "gaps: no tokens" in text


def test_closing_sentences(ledger):
    _day(ledger)
    rep = cost_report(ledger, cfg("rated_output_tokens_per_s = 500\n"), H0, H0 + 180 * MIN,
                      min_tokens=1)
    busy = busy_sentence(rep)
    assert "20.0 % busy" in busy and "720,000 output tokens" in busy and "2.0 h" in busy
    assert "$1.67" in full_load_sentence(rep)  # $3/h ÷ 1.8 Mtok/h
    assert spot_sentence(rep).startswith("What spot saved is unknown")
    compared = add_summary(rep, cfg("rated_output_tokens_per_s = 500\n"))
    assert compared is not None and rep.extras["summary"][-1].startswith("The cheapest API")
    assert len(rep.extras["summary"]) == 5
