"""API keys from files (lines or JSON, as a secret mount holds them), named keys, constant-time matching, and
per-key rate limits (requests and images per second, with bursts) answered 429 + Retry-After and counted by the
key's name, under bursts against a real server."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth import KeyFileError, KeyLimits, TokenBucket, load_api_keys, match_key, parse_key_file
from service.config import Settings
from tests.service.conftest import LiveServer
from tests.service.helpers import metric_value
from tests.service.test_openapi_contract import conforms


def test_line_file_names_keys_and_skips_comments() -> None:
    keys = parse_key_file("# team keys\n\nalice: s3cret-a\nbob:s3cret:b\n", "keys.txt")
    assert [(k.name, k.secret) for k in keys] == [("alice", b"s3cret-a"), ("bob", b"s3cret:b")]
    assert keys[0].requests is None and keys[0].images is None  # no limits unless set


def test_json_file_sets_limits_per_key_over_the_defaults() -> None:
    text = json.dumps(
        {
            "alice": {"key": "a-key", "rps": 2, "burst": 5},
            "bob": {"key": "b-key", "ips": 8.5, "image_burst": 16, "rps": None},
            "carol": "c-key",
        }
    )
    alice, bob, carol = parse_key_file(text, "keys.json", KeyLimits(rps=10, ips=100))
    assert alice.limits == KeyLimits(rps=2, ips=100, burst=5) and alice.requests.capacity == 5
    assert bob.limits == KeyLimits(rps=None, ips=8.5, image_burst=16) and bob.requests is None
    assert bob.images.capacity == 16 and carol.limits == KeyLimits(rps=10, ips=100)
    assert carol.requests.capacity == 10 and carol.images.capacity == 100  # one second's worth by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice secret-1\n", "keys: line 1: expected name:key"),
        ("# x\nbad name:secret-1\n", "keys: line 2: a key name must be"),
        ("alice:\n", "key 'alice' is empty"),
        ("alice:with space\n", "key 'alice' is empty or holds spaces"),
        ('{"alice": {"key": "secret-1", "rps": 0}}', "'rps' must be a positive number"),
        ('{"alice": {"key": "secret-1", "burst": 1.5}}', "'burst' must be a positive integer"),
        ('{"alice": {"key": "secret-1", "colour": 1}}', "unknown fields ['colour']"),
        ('{"alice": ["secret-1"]}', "expected a string key or an object"),
        ('{"alice": "secret-1",', "not valid JSON"),
    ],
)
def test_bad_key_files_name_the_place_never_the_key(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=re.escape(message)) as err:
        parse_key_file(text, "keys")
    assert "secret-1" not in str(err.value)


def test_settings_keys_and_file_keys_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    path.write_text("alice:a-key\n")
    monkeypatch.setenv("ONESTEP_API_KEYS", "env-1,env-2")
    monkeypatch.setenv("ONESTEP_API_KEYS_FILE", str(path))
    monkeypatch.setenv("ONESTEP_RATE_LIMIT_RPS", "3")
    keys = load_api_keys(Settings())
    assert [k.name for k in keys] == ["key0", "key1", "alice"]
    assert all(k.limits.rps == 3 for k in keys)
    path.write_text("alice:env-2\n")
    with pytest.raises(KeyFileError, match="key 'alice' has the same value as another key"):
        load_api_keys(Settings())
    path.write_text("key0:other\n")
    with pytest.raises(KeyFileError, match="key name 'key0' is used twice"):
        load_api_keys(Settings())
    monkeypatch.setenv("ONESTEP_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="cannot be read"):
        load_api_keys(Settings())


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = parse_key_file("a:first-key\nb:second-key\nc:third-key\n", "keys")
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append(y)
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert match_key(b"first-key", keys).name == "a"  # found first, and still compared with the others
    assert match_key(b"nope", keys) is None
    assert len(calls) == 6


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3)
    t0 = bucket.stamp
    assert [bucket.take(1, t0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, t0) == pytest.approx(0.5)  # refused: nothing taken
    assert bucket.take(1, t0 + 0.5) == 0.0
    assert bucket.take(2, t0 + 10) == 0.0 and bucket.tokens == 1  # refills to the capacity, no further


@pytest.fixture
def limited(serve: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    """Keys from a JSON file (as a secret mount): alice 0.2 requests/s with a burst of 2, bob 0.2 images/s with
    an image burst of 4, carol unlimited; and one key from ONESTEP_API_KEYS (key0)."""
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "alice": {"key": "alice-secret", "rps": 0.2, "burst": 2},
                "bob": {"key": "bob-secret", "ips": 0.2, "image_burst": 4},
                "carol": "carol-secret",
            }
        )
    )
    return serve(api_keys=["env-secret"], api_keys_file=keys)


def post(live: LiveServer, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        live.url + "/v1/generate", json={"seed": 1, **body}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_request_rate_limit_under_a_burst(limited: LiveServer) -> None:
    openapi = httpx.get(limited.url + "/openapi.json", headers={"Authorization": "Bearer carol-secret"}).json()
    answers = [post(limited, "alice-secret") for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429, 429]
    for r in answers[2:]:
        conforms(openapi, "/v1/generate", r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 5 and "alice" in r.json()["error"]["message"]
        assert r.headers["x-request-id"]
    # Other keys have their own buckets (or none).
    assert all(post(limited, "carol-secret").status_code == 200 for _ in range(5))
    assert post(limited, "env-secret").status_code == 200
    # Only POSTs to the generate endpoint pay.
    assert httpx.get(limited.url + "/v1/models", headers={"Authorization": "Bearer alice-secret"}).status_code == 200
    text = httpx.get(limited.url + "/metrics", timeout=30).text
    assert metric_value(text, 'onestep_rate_limited_requests_total{key="alice",limit="requests"}') == 3
    assert metric_value(text, 'onestep_rejected_requests_total{reason="rate_limited"}') == 3
    assert "secret" not in text  # names label the metric, never keys


def test_image_rate_limit_under_a_burst(limited: LiveServer) -> None:
    openapi = httpx.get(limited.url + "/openapi.json", headers={"Authorization": "Bearer carol-secret"}).json()
    assert post(limited, "bob-secret", num_images=3).status_code == 200
    r = post(limited, "bob-secret", num_images=2)  # one image left in the bucket
    conforms(openapi, "/v1/generate", r, 429, "rate_limited")
    assert "images/s" in r.json()["error"]["message"]
    assert post(limited, "bob-secret", num_images=1).status_code == 200
    r = post(limited, "bob-secret", num_images=5)  # more than the bucket ever holds: waiting would not help
    conforms(openapi, "/v1/generate", r, 413, "too_large")
    assert r.json()["error"]["field"] == "num_images"
    text = httpx.get(limited.url + "/metrics", timeout=30).text
    assert metric_value(text, 'onestep_rate_limited_requests_total{key="bob",limit="images"}') == 1
