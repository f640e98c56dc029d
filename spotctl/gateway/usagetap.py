"""A pure tap on an engine's response: bytes in, bytes to forward out, usage at the end.

Streams pass through byte for byte. The tap finds event boundaries as the SSE specification
defines them (an empty line; lines end with CRLF, LF or CR, so ``\\n\\n``, ``\\r\\n\\r\\n``,
``\\r\\r`` and their mixes all end an event), counts the events that carry data (the fallback
estimate of output tokens), notes ``data: [DONE]``, and parses JSON only for events that can
carry usage (``"usage": {`` appears in them). When the gateway itself asked the engine for usage
(``strip_usage``), the usage-only chunk the client did not ask for is dropped; only then is the
incomplete tail of a read held back until its event is complete.

No I/O and no clock: :func:`read_usage` and :class:`UsageTap` are tested on bytes alone.
"""

from __future__ import annotations

import re

import orjson

_BOUNDARY = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")  # atomic: CRLF is one line end


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def read_usage(usage: object) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from an OpenAI ``usage`` object, or ``None`` when
    it is missing or holds anything but non-negative integers (``"12x"``, ``-1``, ``null``)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return prompt, completion


def _data(event: bytes) -> bytes:
    """The event's data (its ``data:`` lines joined by LF), per the SSE field rules."""
    out = []
    for line in event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            out.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(out)


class UsageTap:
    """Watches one response stream. ``feed(bytes) -> bytes to forward``; ``flush()`` at the
    end; then ``usage``, ``usage_invalid``, ``events`` and ``done`` describe what passed."""

    __slots__ = ("_buf", "done", "events", "strip", "usage", "usage_invalid")

    def __init__(self, strip_usage: bool = False) -> None:
        self.strip = strip_usage
        self._buf = b""
        self.events = 0  # events carrying data, except [DONE] and a usage-only chunk
        self.done = False  # saw data: [DONE]
        self.usage: tuple[int, int] | None = None  # the last valid usage seen
        self.usage_invalid = False  # a usage object was there but unreadable

    def feed(self, data: bytes) -> bytes:
        # find() < 0 rather than `not in`: on Python 3.11 `bytes in bytes` first tries the
        # needle as an integer and formats a TypeError it then discards (per check, per read)
        buf = self._buf + data if self._buf else data
        if buf.find(b"\r") < 0:
            cut = buf.rfind(b"\n\n")
            if cut < 0:  # no complete event yet
                self._buf = buf
                return b"" if self.strip else data
            complete = buf[:cut + 2]
            if (complete.find(b'"usage"') < 0 and complete.find(b"[DONE]") < 0
                    and complete.find(b"\n\n\n") < 0 and not complete.startswith((b":", b"\n"))
                    and complete.find(b"\n:") < 0):
                # the common read: data events only, nothing to parse or drop
                self.events += complete.count(b"\n\n")
                self._buf = buf[cut + 2:]
                return complete if self.strip else data
            parts = buf.split(b"\n\n")
            self._buf = parts.pop()
            if not self.strip:
                for ev in parts:
                    self._event(ev)
                return data
            return b"".join(ev + b"\n\n" for ev in parts if self._event(ev))
        out, start = [], 0
        for m in _BOUNDARY.finditer(buf):
            end = m.end()
            if end == len(buf) and buf.endswith(b"\r"):
                break  # the CR may be the first half of a CRLF: wait for the next byte
            if self._event(buf[start:m.start()]) or not self.strip:
                out.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return data if not self.strip else b"".join(out)

    def flush(self) -> bytes:
        """The end of the stream: an incomplete last event is passed on as it is."""
        tail, self._buf = self._buf, b""
        if tail.strip(b"\r\n"):
            self._event(tail)
        return tail if self.strip else b""

    def _event(self, ev: bytes) -> bool:
        """Account for one complete event; False when it is to be dropped."""
        if b"data" not in ev:
            return True  # a comment, an id or retry line, or a blank line
        if b"[DONE]" in ev and _data(ev).strip() == b"[DONE]":
            self.done = True
            return True
        i = ev.find(b'"usage"')
        if i >= 0:
            j = i + 7
            n = len(ev)
            while j < n and ev[j] in b" \t\r\n:":
                j += 1
            if j < n and ev[j:j + 1] == b"{":
                try:
                    obj = orjson.loads(_data(ev))
                except orjson.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict) and "usage" in obj:
                    got = read_usage(obj["usage"])
                    if got is None:
                        self.usage_invalid = True
                    else:
                        self.usage = got
                    if not obj.get("choices"):
                        return not self.strip  # a usage-only chunk carries no token
        self.events += 1
        return True
