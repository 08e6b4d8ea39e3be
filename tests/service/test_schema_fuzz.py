"""Schemathesis fuzzes the app's own OpenAPI schema against the running server: no 5xx, documented responses."""

from __future__ import annotations

import pytest

from service.middleware import GENERATE_PATHS
from tests.service.conftest import LiveServer

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")


def test_openapi_fuzz(server: LiveServer) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/generate", "POST /generate", "GET /v1/models", "GET /healthz", "GET /readyz", "GET /metrics"
    }  # fmt: skip
    checks = [not_a_server_error, response_schema_conformance]
    # Valid and invalid bodies for POST /v1/generate and /generate; the GET routes take no input, so only valid
    # calls exist.
    runs = [(op, mode) for op in operations for mode in schemathesis.GenerationMode if op.method.upper() == "POST"]
    runs += [(op, schemathesis.GenerationMode.POSITIVE) for op in operations if op.method.upper() != "POST"]
    for op, mode in runs:
        examples = 40 if op.path in GENERATE_PATHS else 3

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            case.call_and_validate(base_url=server.url, checks=checks)

        run()
