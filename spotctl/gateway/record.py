"""The request record: what one request did, turned into its usage row at the end.

Every request that passed authentication ends in exactly one row, whatever happened: the
gateway's handler builds the row in a ``finally`` (a cancelled task, a timeout, an engine cut
mid-stream, an unreadable usage value all still record). Tokens come from the engine's own
``usage``; when the request reached an engine and its usage is missing or unreadable, they are
estimated (completion = data events relayed, prompt = request bytes ÷ 4) and the row is flagged
``tokens_estimated``.
"""

from __future__ import annotations

from spotctl.gateway.usagetap import UsageTap
from spotctl.ledger.records import UsageRecord


class RequestRecord:
    __slots__ = ("body_len", "completion", "http_status", "key", "model", "overhead_s", "prompt",
                 "reached_engine", "rid", "sent_bytes", "started_ms", "status", "stream", "t0",
                 "tap", "tier", "ttft_s", "upstream_s", "usage_invalid", "usage_seen")

    def __init__(self, rid: str, key: str, model: str, started_ms: int, t0: float,
                 stream: bool, body_len: int) -> None:
        self.rid, self.key, self.model, self.started_ms, self.t0 = rid, key, model, started_ms, t0
        self.stream = stream
        self.body_len = body_len
        self.tier: str | None = None
        self.status: str | None = None  # ok, an error code, client_cancelled, upstream_error...
        self.http_status: int | None = None
        self.prompt = self.completion = 0
        self.ttft_s: float | None = None
        self.upstream_s = 0.0  # time spent waiting on the engine (for the overhead figure)
        self.overhead_s: float | None = None  # as sent in x-spotctl-overhead-ms
        self.usage_seen = self.usage_invalid = False
        self.reached_engine = False  # a request was sent to an engine (tokens may have run)
        self.sent_bytes = False  # bytes of the response reached the client: never retry
        self.tap: UsageTap | None = None

    def take_usage(self, usage: tuple[int, int] | None, invalid: bool = False) -> None:
        if usage is not None:
            self.prompt, self.completion = usage
            self.usage_seen = True
        if invalid:
            self.usage_invalid = True

    @property
    def estimated(self) -> bool:
        return self.reached_engine and (not self.usage_seen or self.usage_invalid)

    def to_row(self, completed_ms: int, now_mono: float) -> UsageRecord:
        """The usage row; estimates what the engine did not report (see the module doc)."""
        tap = self.tap
        if tap is not None:
            self.take_usage(tap.usage, tap.usage_invalid)
        prompt, completion, estimated = self.prompt, self.completion, self.estimated
        if estimated:
            events = tap.events if tap is not None else 0
            completion = max(completion, events)
            prompt = prompt or max(1, self.body_len // 4)
        return UsageRecord(
            self.rid, self.started_ms, max(completed_ms, self.started_ms),
            self.status or "error", self.key, self.tier, self.model, prompt, completion,
            self.http_status, int((now_mono - self.t0) * 1000),
            None if self.ttft_s is None else int(self.ttft_s * 1000), self.stream, estimated)
