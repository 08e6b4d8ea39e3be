"""API keys and admin keys: named, loaded from the settings and from key files (secret mounts), each API key with
optional token buckets (requests and images per second).

A key's NAME labels metrics and logs; the key itself is never logged, never put in a metric and never echoed in an
error message. Tokens are compared with ``hmac.compare_digest`` against every configured key (no early exit).
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LIMIT_FIELDS = ("rps", "ips", "burst", "image_burst")


class KeyFileError(ValueError):
    """A key file or key setting that cannot be used; the message names the file and line, never a key."""


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def take(self, n: float, now: float | None = None) -> float:
        """Take ``n`` tokens: 0.0 when they were there, else the seconds until they will be (nothing is taken)."""
        now = time.monotonic() if now is None else now
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= n:
            self.tokens = tokens - n
            return 0.0
        self.tokens = tokens
        return (n - tokens) / self.rate


@dataclass(frozen=True)
class KeyLimits:
    rps: float | None = None
    ips: float | None = None
    burst: int | None = None  # requests a key may send at once (request bucket size)
    image_burst: int | None = None  # images a key may ask for at once (image bucket size)

    @property
    def request_capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.rps or 1))

    @property
    def image_capacity(self) -> int:
        return self.image_burst if self.image_burst is not None else max(1, math.ceil(self.ips or 1))


@dataclass
class ApiKey:
    name: str
    secret: bytes = field(repr=False)
    limits: KeyLimits = field(default_factory=KeyLimits)
    requests: TokenBucket | None = field(default=None, repr=False)
    images: TokenBucket | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        lim = self.limits
        if lim.rps is not None:
            self.requests = TokenBucket(lim.rps, lim.request_capacity)
        if lim.ips is not None:
            self.images = TokenBucket(lim.ips, lim.image_capacity)


def match_key(token: bytes, keys: Sequence[ApiKey]) -> ApiKey | None:
    """The key equal to ``token``, compared in constant time with every key (which one matched does not show)."""
    found = None
    for key in keys:
        if hmac.compare_digest(token, key.secret) and found is None:
            found = key
    return found


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The token of ``Authorization: Bearer <token>`` in raw ASGI headers (b"" when absent)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            return rest.strip() if scheme.lower() == b"bearer" else b""
    return b""


# ---------------------------------------------------------------- loading


def _number(value: Any, where: str, key: str, integer: bool) -> float | int | None:
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        raise KeyFileError(f"{where}: {key!r} must be a positive {'integer' if integer else 'number'} or null")
    return value


def _entry_limits(spec: dict[str, Any], where: str, defaults: KeyLimits) -> KeyLimits:
    unknown = set(spec) - {"key", *LIMIT_FIELDS}
    if unknown:
        raise KeyFileError(f"{where}: unknown fields {sorted(unknown)} (expected key, {', '.join(LIMIT_FIELDS)})")
    values = {}
    for name in LIMIT_FIELDS:
        values[name] = (
            _number(spec[name], where, name, integer=name.endswith("burst"))
            if name in spec
            else getattr(defaults, name)
        )
    return KeyLimits(**values)


def parse_key_file(text: str, source: str, defaults: KeyLimits = KeyLimits()) -> list[ApiKey]:
    """Keys from a file's text: JSON ``{name: key}`` / ``{name: {key, rps, ips, burst, image_burst}}``, or lines
    ``name:key`` (blank lines and ``#`` comments skipped). Limits a key does not set come from ``defaults``."""
    keys: list[ApiKey] = []
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise KeyFileError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno})") from None
        for name, spec in obj.items():
            where = f"{source}: key {name!r}" if NAME_RE.match(name) else f"{source}: a key name"
            if isinstance(spec, str):
                spec = {"key": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
                raise KeyFileError(f"{where}: expected a string key or an object with a string 'key'")
            keys.append(_make(name, spec["key"], _entry_limits(spec, where, defaults), where))
        return keys
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            raise KeyFileError(f"{source}: line {number}: expected name:key")
        keys.append(_make(name.strip(), secret.strip(), defaults, f"{source}: line {number}"))
    return keys


def _make(name: str, secret: str, limits: KeyLimits, where: str) -> ApiKey:
    if not NAME_RE.match(name):
        raise KeyFileError(f"{where}: a key name must be 1-64 letters, digits, '_', '.' or '-'")
    if not secret or not secret.isascii() or not secret.isprintable() or " " in secret:
        raise KeyFileError(f"{where}: key {name!r} is empty or holds spaces or characters outside printable ASCII")
    return ApiKey(name, secret.encode(), limits)


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise KeyFileError(f"{what} {path}: cannot be read ({e.strerror or e})") from None


def _unique(keys: list[ApiKey], what: str) -> list[ApiKey]:
    names, secrets = set(), set()
    for key in keys:
        if key.name in names:
            raise KeyFileError(f"{what}: key name {key.name!r} is used twice")
        if key.secret in secrets:
            raise KeyFileError(f"{what}: key {key.name!r} has the same value as another key")
        names.add(key.name)
        secrets.add(key.secret)
    return keys


def default_limits(settings: Settings) -> KeyLimits:
    s = settings
    return KeyLimits(s.rate_limit_rps, s.rate_limit_ips, s.rate_limit_burst, s.rate_limit_image_burst)


def load_api_keys(settings: Settings) -> list[ApiKey]:
    """``api_keys`` (named key0, key1, ...) and the keys of ``api_keys_file``."""
    defaults = default_limits(settings)
    keys = [_make(f"key{i}", k, defaults, f"ONESTEP_API_KEYS item {i}") for i, k in enumerate(settings.api_keys)]
    if settings.api_keys_file is not None:
        path = settings.api_keys_file
        keys += parse_key_file(_read(path, "api_keys_file"), str(path), defaults)
    return _unique(keys, "API keys")


def load_admin_keys(settings: Settings, api_keys: Sequence[ApiKey] = ()) -> list[ApiKey]:
    """``admin_keys`` (named admin0, ...) and the keys of ``admin_keys_file``; none may equal an API key."""
    keys = [
        _make(f"admin{i}", k, KeyLimits(), f"ONESTEP_ADMIN_KEYS item {i}") for i, k in enumerate(settings.admin_keys)
    ]
    if settings.admin_keys_file is not None:
        path = settings.admin_keys_file
        keys += [ApiKey(k.name, k.secret) for k in parse_key_file(_read(path, "admin_keys_file"), str(path))]
    keys = _unique(keys, "admin keys")
    clients = {k.secret for k in api_keys}
    for key in keys:
        if key.secret in clients:
            raise KeyFileError(f"admin key {key.name!r} is also an API key: admin keys must differ from client keys")
    return keys
