"""The pure UsageTap: SSE bytes in, bytes out, usage at the end, for any framing and any split."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotctl.gateway.usagetap import UsageTap, read_usage

EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def _stream(eol: bytes, tokens: int = 4, usage: object = None, comment: bool = True
            ) -> tuple[list[bytes], bytes | None]:
    events = []
    if comment:
        events.append(b": keep-alive" + eol + eol)
    for i in range(tokens):
        payload = {"id": "c", "choices": [{"index": 0, "delta": {"content": f"t{i} \"usage\""}}]}
        events.append(b"data: " + orjson.dumps(payload) + eol + eol)
    usage_ev = None
    if usage is not None:
        usage_ev = b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": usage}) + eol + eol
        events.append(usage_ev)
    events.append(b"data: [DONE]" + eol + eol)
    return events, usage_ev


def _run(tap: UsageTap, data: bytes, cuts: list[int]) -> bytes:
    out, last = [], 0
    for c in sorted(set(cuts)):
        out.append(tap.feed(data[last:c]))
        last = c
    out.append(tap.feed(data[last:]))
    out.append(tap.flush())
    return b"".join(out)


@settings(max_examples=150, deadline=None)
@given(eol=st.sampled_from(sorted(EOLS)), strip=st.booleans(),
       cuts=st.lists(st.integers(0, 2000), max_size=12), tokens=st.integers(0, 6))
def test_any_framing_any_split_passes_bytes_through_and_finds_usage(eol, strip, cuts, tokens):
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    events, usage_ev = _stream(EOLS[eol], tokens, usage)
    data = b"".join(events)
    tap = UsageTap(strip_usage=strip)
    out = _run(tap, data, [c % (len(data) + 1) for c in cuts])
    assert out == (data.replace(usage_ev, b"") if strip else data)
    assert tap.usage == (7, tokens) and not tap.usage_invalid
    assert tap.events == tokens and tap.done


@pytest.mark.parametrize("bad", ["12x", -1, None, 1.5, True, [3]])
def test_an_unreadable_usage_value_is_flagged_not_fatal(bad):
    events, _ = _stream(b"\n", 3, {"prompt_tokens": 4, "completion_tokens": bad})
    tap = UsageTap(strip_usage=True)
    out = _run(tap, b"".join(events), [17, 40])
    assert tap.usage is None and tap.events == 3 and tap.done
    assert tap.usage_invalid
    assert out.count(b"data: [DONE]") == 1


def test_mixed_line_ends_and_a_crlf_split_across_reads():
    # an event ended by CR LF CR | LF, the split falling between the last CR and LF
    ev1 = b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r'
    ev2 = b'\ndata: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\r\n'
    tap = UsageTap(strip_usage=True)
    assert tap.feed(ev1) == b""  # held: the CR may start a CRLF
    out = tap.feed(ev2) + tap.flush()
    assert out == ev1 + b"\n" and tap.usage == (1, 1) and tap.events == 1


def test_an_incomplete_last_event_is_passed_on_and_counted():
    tap = UsageTap(strip_usage=True)
    out = tap.feed(b'data: {"choices":[{"delta":{}}]}\n\ndata: {"choi') + tap.flush()
    assert out == b'data: {"choices":[{"delta":{}}]}\n\ndata: {"choi' and tap.events == 2
    assert not tap.done and tap.usage is None


def test_usage_null_in_every_chunk_is_not_usage():
    tap = UsageTap()
    tap.feed(b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n')
    assert tap.usage is None and not tap.usage_invalid and tap.events == 1


def test_read_usage():
    assert read_usage({"prompt_tokens": 3, "completion_tokens": 2}) == (3, 2)
    assert read_usage({"prompt_tokens": 3.0, "completion_tokens": 2}) == (3, 2)
    assert read_usage({"prompt_tokens": "3", "completion_tokens": 2}) is None
    assert read_usage({"prompt_tokens": 3}) is None
    assert read_usage("usage") is None
