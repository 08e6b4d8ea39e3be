"""CORS: off by default; with ONESTEP_CORS_ORIGINS a browser's preflight for POST /v1/generate succeeds (before
the API key check, since a preflight carries no key) and responses expose the service's headers."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.service.conftest import LiveServer

APP = "https://app.example"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
}


def test_cors_is_off_by_default(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.options("/v1/generate", headers=PREFLIGHT)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = c.post("/v1/generate", json={"seed": 1}, headers={"Origin": APP})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_preflight_and_responses_for_allowed_origins(serve: Callable[..., LiveServer]) -> None:
    live = serve(api_keys=["k"], cors_origins=f"{APP},https://other.example")
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for path in ("/v1/generate", "/generate"):
            r = c.options(path, headers=PREFLIGHT)
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == APP
            assert "POST" in r.headers["access-control-allow-methods"]
            allowed = r.headers["access-control-allow-headers"].lower()
            assert all(h in allowed for h in ("authorization", "content-type", "x-request-id"))
            assert r.headers["x-request-id"]

        r = c.post("/v1/generate", json={"seed": 1}, headers={"Origin": APP, "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
        exposed = r.headers["access-control-expose-headers"].lower()
        assert all(h in exposed for h in ("x-model-version", "x-request-id", "server-timing", "retry-after"))
        # An error from the key check is readable by the page too.
        r = c.post("/v1/generate", json={"seed": 1}, headers={"Origin": APP})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP

        r = c.options("/v1/generate", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = c.post(
            "/v1/generate", json={"seed": 1}, headers={"Origin": "https://evil.example", "Authorization": "Bearer k"}
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_any_origin(serve: Callable[..., LiveServer]) -> None:
    live = serve(cors_origins="*")
    r = httpx.options(live.url + "/v1/generate", headers={**PREFLIGHT, "Origin": "https://anywhere.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
