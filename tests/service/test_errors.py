"""Every error answers with the one JSON schema {"error": {"type", "message", "field"}}."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.service.conftest import LiveServer


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "field"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": "3"}, "num_images"),
        ({"num_images": 1.5}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"seed": 1 << 63}, "seed"),
        ({"format": "gif"}, "format"),
        ({"quality": 101}, "quality"),
        ({"class_labels": "cat"}, "class_labels"),
        ({"class_labels": 10}, "class_labels"),
        ({"class_labels": -1}, "class_labels"),
        ({"class_labels": [1, 2], "num_images": 3}, "class_labels"),
        ({"model": ""}, "model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_422_names_the_field(client: httpx.Client, payload: dict, field: str) -> None:
    err = error_of(client.post("/generate", json=payload), 422)
    assert err["type"] == "validation_error" and err["field"] == field


def test_422_for_bodies_that_are_not_json_objects(client: httpx.Client) -> None:
    for content, ctype in [(b"{broken", "application/json"), (b"[1, 2]", "application/json"), (b"x=1", "text/plain")]:
        err = error_of(client.post("/generate", content=content, headers={"content-type": ctype}), 422)
        assert err["type"] == "validation_error"


def test_404_405_406(client: httpx.Client) -> None:
    err = error_of(client.post("/generate", json={"model": "no-such-model"}), 404)
    assert err["type"] == "model_not_found" and err["field"] == "model"
    assert error_of(client.get("/no/such/route"), 404)["type"] == "not_found"
    assert error_of(client.get("/generate"), 405)["type"] == "method_not_allowed"
    assert error_of(client.delete("/v1/models"), 405)["type"] == "method_not_allowed"
    err = error_of(client.post("/generate", json={"num_images": 2}, headers={"Accept": "image/png"}), 406)
    assert err["field"] == "num_images"


def test_413_too_many_images_and_too_large_body(client: httpx.Client, server: LiveServer) -> None:
    limit = server.settings.max_images_per_request
    err = error_of(client.post("/generate", json={"num_images": limit + 1}), 413)
    assert err["type"] == "too_large" and err["field"] == "num_images"
    big = b'{"model": "' + b"x" * server.settings.max_body_bytes + b'"}'
    assert error_of(client.post("/generate", content=big), 413)["type"] == "too_large"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(r, 413)["type"] == "too_large"


def test_401_when_keys_are_set(serve: Callable[..., LiveServer]) -> None:
    live = serve(api_keys=["k1", "secret-2"])
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic secret-2"}):
            r = c.post("/generate", json={"seed": 1}, headers=headers)
            assert error_of(r, 401)["type"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert error_of(c.get("/v1/models"), 401)["type"] == "unauthorized"
        assert c.post("/generate", json={"seed": 1}, headers={"Authorization": "Bearer secret-2"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "bearer k1"}).status_code == 200
        # Exempt by default: probes and scrapes.
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the playground page; its API calls carry the key
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert 'onestep_rejected_requests_total{reason="unauthorized"} 4.0' in metrics.text
