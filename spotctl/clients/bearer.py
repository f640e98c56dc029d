"""Clients of the providers whose APIs take ``Authorization: Bearer <key>``: RunPod, Vast.ai and
Lambda. Each names, per call, the official source that confirms it (docs/providers.md has the
full table with what remains unverified)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from spotctl.clients.http import Fetched, HttpClient
from spotctl.clock import Clock
from spotctl.errors import GraphQLRejected, ProviderMalformed


def _bearer(base_url: str, api_key: str, clock: Clock, provider: str, timeout_s: float,
            transport: httpx.BaseTransport | None) -> HttpClient:
    """An HTTP client sending ``Authorization: Bearer <api_key>`` (the key kept out of errors)."""
    return HttpClient(base_url, {"Authorization": f"Bearer {api_key}"}, clock, provider=provider,
                      timeout_s=timeout_s, transport=transport, secrets=(api_key,))


# -- RunPod ------------------------------------------------------------------------------------
RUNPOD_GRAPHQL = "https://api.runpod.io"
RUNPOD_REST = "https://rest.runpod.io"
# Only fields RunPod's own code queries: runpodctl internal/api/gpu.go:306-318 (GetUser) and
# runpod-python runpod/api/queries/pods.py:25-63 (QUERY_POD) / runpodctl graphql.go:425-445.
RUNPOD_ACCOUNT = "query { myself { id clientBalance currentSpendPerHr spendLimit } }"
RUNPOD_PODS = "query { myself { pods { id name desiredStatus podType costPerHr } } }"
# Unverified fields (third-party clients only), in their own query: if RunPod removed one,
# GraphQL rejects this whole document and only these extras are lost (defect D5).
RUNPOD_UNVERIFIED = "query { myself { clientLifetimeSpend pods { id adjustedCostPerHr } } }"


class RunPodClient:
    provider = "runpod"

    def __init__(self, base_url: str | None, api_key: str, clock: Clock, *,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        # Cloudflare refuses Python's default User-Agent: HttpClient always sends spotctl's.
        self.gql = _bearer(base_url or RUNPOD_GRAPHQL, api_key, clock, self.provider, timeout_s,
                           transport)
        # a custom base_url (a test server) serves both; otherwise REST has its own host
        self.rest = _bearer(base_url or RUNPOD_REST, api_key, clock, self.provider, timeout_s,
                            transport)

    def close(self) -> None:
        self.gql.close()
        self.rest.close()

    def query(self, document: str) -> tuple[dict, Fetched]:
        """POST /graphql (runpod-python runpod/api/graphql.py:33-39): a read, retried."""
        got = self.gql.read("POST", "/graphql", json_body={"query": document})
        if not isinstance(got.data, dict):
            raise ProviderMalformed("runpod: GraphQL answer is not an object", provider="runpod")
        if got.data.get("errors"):
            raise GraphQLRejected("runpod: GraphQL query rejected", provider="runpod")
        data = got.data.get("data")
        me = data.get("myself") if isinstance(data, dict) else None
        if not isinstance(me, dict):
            raise ProviderMalformed("runpod: no data.myself in the answer", provider="runpod")
        return me, got

    def billing_pods(self, start: str, end: str, bucket: str = "day") -> Fetched:
        """GET /v1/billing/pods?bucketSize&startTime&endTime: a bare array of {time, amount, ...}
        (runpodctl internal/api/billing.go:32-55, client.go:25; docs api-reference/billing)."""
        return self.rest.read("GET", "/v1/billing/pods", params={
            "bucketSize": bucket, "startTime": start, "endTime": end})

    def billing_network_volumes(self, start: str, end: str, bucket: str = "day") -> Fetched:
        """GET /v1/billing/networkvolumes (runpodctl internal/api/billing.go:120)."""
        return self.rest.read("GET", "/v1/billing/networkvolumes", params={
            "bucketSize": bucket, "startTime": start, "endTime": end})


# -- Vast.ai -----------------------------------------------------------------------------------
VAST_BASE = "https://console.vast.ai"
VAST_PAGE = 100  # invoices: limit max 100 (vastai api/billing.py:139); instances: 25 by default


class VastClient:
    provider = "vast"

    def __init__(self, base_url: str | None, api_key: str, clock: Clock, *,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.http = _bearer(base_url or VAST_BASE, api_key, clock, self.provider, timeout_s,
                            transport)

    def close(self) -> None:
        self.http.close()

    def user(self) -> Fetched:
        """GET /api/v0/users/current (vastai api/billing.py:225-240). Its body holds the
        account's own api_key: never stored (only the sha256 of the body is)."""
        return self.http.read("GET", "/api/v0/users/current")

    def _paged(self, path: str, key: str, params: dict[str, Any]) -> tuple[list, list[str]]:
        """``limit`` + ``after_token`` until ``next_token`` is empty (vastai
        cli/commands/billing.py:441-478; api/instances.py:31-74)."""
        items: list = []
        hashes: list[str] = []
        token = None
        for _ in range(10_000):
            q = dict(params)
            if token:
                q["after_token"] = token
            got = self.http.read("GET", path, params=q)
            hashes.append(got.sha256)
            if not isinstance(got.data, dict) or not isinstance(got.data.get(key), list):
                raise ProviderMalformed(f"vast: {path}: no {key!r} list", provider=self.provider)
            items.extend(got.data[key])
            token = got.data.get("next_token")
            if not token:
                return items, hashes
        raise ProviderMalformed(f"vast: {path}: endless paging", provider=self.provider)

    def instances(self) -> tuple[list, list[str]]:
        """GET /api/v1/instances/ paged (the SDK's listing; the v0 list is deprecated:
        vastai/async_/client.py:189-213)."""
        return self._paged("/api/v1/instances/", "instances", {"limit": 25})

    def invoices(self, since_s: int) -> tuple[list, list[str]]:
        """GET /api/v1/invoices/ with select_filters {"when": {"gte": since}} (api/billing.py:
        134-167), every page."""
        return self._paged("/api/v1/invoices/", "results", {
            "select_filters": json.dumps({"when": {"gte": since_s}}), "limit": VAST_PAGE})


# -- Lambda ------------------------------------------------------------------------------------
LAMBDA_BASE = "https://cloud.lambda.ai/api/v1"


class LambdaClient:
    provider = "lambda"

    def __init__(self, base_url: str | None, api_key: str, clock: Clock, *,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.http = _bearer(base_url or LAMBDA_BASE, api_key, clock, self.provider, timeout_s,
                            transport)

    def close(self) -> None:
        self.http.close()

    def instances(self) -> Fetched:
        """GET /instances (lambda_ai_cloud_api_client api/instances/list_instances.py:26)."""
        return self.http.read("GET", "/instances")
