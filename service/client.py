"""HTTP client for the onestep service (sync and async, httpx) and a small CLI.

python -m service.client --url http://127.0.0.1:8000 generate --class 3 --seed 7 -o out.png
python -m service.client --url http://127.0.0.1:8000 generate -n 4 -o out.npy      # raw uint8 pixels
python -m service.client --url http://127.0.0.1:8000 models

For machines, ``generate_array`` asks for ``application/octet-stream``: every image's uint8 pixels in one body,
no image encoding on either side; ``generate(format="raw")`` returns them base64 in JSON (``GeneratedImage.array``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"
FORMATS = ("png", "jpeg", "webp", "raw")
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".npy": "raw"}
OCTET_STREAM = "application/octet-stream"


class OnestepError(Exception):
    """A non-2xx answer, carrying the service's JSON error body (type, message, field)."""

    def __init__(
        self, status: int, type: str, message: str, field: str | None = None, retry_after: float | None = None
    ):
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {type}: {message}{where}")
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.retry_after = retry_after


@dataclass(frozen=True)
class Timing:
    queue_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float
    batch_size: int


@dataclass(frozen=True)
class GeneratedImage:
    seed: int
    class_label: int | None
    class_name: str | None
    media_type: str
    data: bytes  # the encoded image (PNG/JPEG/WebP bytes) or, for format raw, its pixels; base64-decoded
    shape: tuple[int, int, int] | None = None  # raw only: height, width, channels
    dtype: str | None = None  # raw only: uint8

    def array(self) -> np.ndarray:
        """The image as an H x W x C uint8 array (raw pixels as they are, other formats decoded with Pillow)."""
        if self.shape is not None:
            return np.frombuffer(self.data, dtype=self.dtype or "uint8").reshape(self.shape)
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(self.data)))
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    def save(self, path: str | Path) -> Path:
        """Write the image: its encoded bytes, or for raw pixels a .npy file."""
        path = Path(path)
        if self.shape is not None:
            np.save(path, self.array(), allow_pickle=False)
        else:
            path.write_bytes(self.data)
        return path


@dataclass(frozen=True)
class Generation:
    """One ``POST /v1/generate`` answer: the images and the server's timing for the request."""

    model: str
    images: list[GeneratedImage]
    timing: Timing


@dataclass(frozen=True)
class PixelBatch:
    """One ``application/octet-stream`` answer: every image's pixels as one N x H x W x C uint8 array."""

    pixels: np.ndarray
    seeds: list[int]
    class_labels: list[int] | None
    timing: Timing


# ---------------------------------------------------------------- request/response mapping (shared by both clients)


def generate_body(
    num_images: int = 1,
    class_labels: int | list[int] | None = None,
    seed: int | None = None,
    format: str = "png",
    quality: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"num_images": num_images, "class_labels": class_labels, "seed": seed, "format": format}
    if model is not None:
        body["model"] = model
    if quality is not None:
        body["quality"] = quality
    return body


def raise_for_error(response: httpx.Response) -> None:
    """Turn a non-2xx response into ``OnestepError`` (falls back to the raw text when the body is not ours)."""
    if response.is_success:
        return
    retry = response.headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    try:
        err = response.json()["error"]
        raise OnestepError(response.status_code, str(err["type"]), str(err["message"]), err.get("field"), retry_after)
    except (ValueError, KeyError, TypeError):
        raise OnestepError(response.status_code, "http_error", response.text[:500], None, retry_after) from None


def parse_generation(payload: dict[str, Any]) -> Generation:
    t = payload["timing"]
    timing = Timing(
        queue_ms=float(t["queue_ms"]),
        inference_ms=float(t["inference_ms"]),
        encode_ms=float(t["encode_ms"]),
        total_ms=float(t.get("total_ms", 0.0)),
        batch_size=int(t["batch_size"]),
    )
    images = [
        GeneratedImage(
            seed=int(img["seed"]),
            class_label=img.get("class_label"),
            class_name=img.get("class_name"),
            media_type=str(img["media_type"]),
            data=base64.b64decode(img["data"], validate=True),
            shape=tuple(img["shape"]) if img.get("shape") is not None else None,
            dtype=img.get("dtype"),
        )
        for img in payload["images"]
    ]
    return Generation(model=str(payload["model"]), images=images, timing=timing)


def parse_pixels(response: httpx.Response) -> PixelBatch:
    """An ``application/octet-stream`` answer: the body reshaped by X-Shape, seeds from X-Seed (image i has
    seed + i), classes from X-Class-Labels, timing from Server-Timing and X-Batch-Size."""
    h = response.headers
    shape = tuple(int(x) for x in h["x-shape"].split(","))
    pixels = np.frombuffer(response.content, dtype=h.get("x-dtype", "uint8")).reshape(shape)
    first = int(h["x-seed"])
    labels = h.get("x-class-labels")
    durations = {}
    for part in h.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            durations[name] = float(dur)
    timing = Timing(
        queue_ms=durations.get("queue", 0.0),
        inference_ms=durations.get("inference", 0.0),
        encode_ms=durations.get("encode", 0.0),
        total_ms=durations.get("total", 0.0),
        batch_size=int(h.get("x-batch-size", "0")),
    )
    return PixelBatch(
        pixels=pixels,
        seeds=[(first + i) & ((1 << 63) - 1) for i in range(shape[0])],
        class_labels=[int(x) for x in labels.split(",")] if labels else None,
        timing=timing,
    )


def _image_format(fmt: str) -> None:
    if fmt not in FORMATS or fmt == "raw":
        raise ValueError(f"generate_raw returns an encoded image (png, jpeg, webp), not {fmt!r}: see generate_array")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# ---------------------------------------------------------------- clients


class OnestepClient:
    """Blocking client. Use as a context manager or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 60.0):
        self._http = httpx.Client(base_url=url, headers=_auth_headers(api_key), timeout=timeout)

    def __enter__(self) -> OnestepClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def generate_full(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> Generation:
        response = self._http.post(
            "/v1/generate", json=generate_body(num_images, class_labels, seed, format, quality, model)
        )
        raise_for_error(response)
        return parse_generation(response.json())

    def generate(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> list[GeneratedImage]:
        """The images only; ``generate_full`` also returns the server's timing."""
        return self.generate_full(num_images, class_labels, seed, format, quality, model).images

    def generate_raw(
        self,
        class_label: int | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> bytes:
        """One image as raw bytes (``Accept: image/<format>``), skipping the JSON/base64 wrapping."""
        _image_format(format)
        body = generate_body(1, class_label, seed, format, quality, model)
        response = self._http.post("/v1/generate", json=body, headers={"Accept": f"image/{format}"})
        raise_for_error(response)
        return response.content

    def generate_array(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> PixelBatch:
        """Every image's uint8 pixels as one N x H x W x C array (``Accept: application/octet-stream``)."""
        body = generate_body(num_images, class_labels, seed, "raw", None, model)
        response = self._http.post("/v1/generate", json=body, headers={"Accept": OCTET_STREAM})
        raise_for_error(response)
        return parse_pixels(response)

    def models(self) -> list[dict[str, Any]]:
        response = self._http.get("/v1/models")
        raise_for_error(response)
        return list(response.json()["data"])

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        raise_for_error(response)
        return response.text


class AsyncOnestepClient:
    """Asyncio client with the same methods as ``OnestepClient``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        limits: httpx.Limits | None = None,
    ):
        self._http = httpx.AsyncClient(
            base_url=url, headers=_auth_headers(api_key), timeout=timeout, limits=limits or httpx.Limits()
        )

    async def __aenter__(self) -> AsyncOnestepClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def generate_full(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> Generation:
        response = await self._http.post(
            "/v1/generate", json=generate_body(num_images, class_labels, seed, format, quality, model)
        )
        raise_for_error(response)
        return parse_generation(response.json())

    async def generate(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> list[GeneratedImage]:
        return (await self.generate_full(num_images, class_labels, seed, format, quality, model)).images

    async def generate_raw(
        self,
        class_label: int | None = None,
        seed: int | None = None,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> bytes:
        _image_format(format)
        body = generate_body(1, class_label, seed, format, quality, model)
        response = await self._http.post("/v1/generate", json=body, headers={"Accept": f"image/{format}"})
        raise_for_error(response)
        return response.content

    async def generate_array(
        self,
        num_images: int = 1,
        class_labels: int | list[int] | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> PixelBatch:
        body = generate_body(num_images, class_labels, seed, "raw", None, model)
        response = await self._http.post("/v1/generate", json=body, headers={"Accept": OCTET_STREAM})
        raise_for_error(response)
        return parse_pixels(response)

    async def models(self) -> list[dict[str, Any]]:
        response = await self._http.get("/v1/models")
        raise_for_error(response)
        return list(response.json()["data"])

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics(self) -> str:
        response = await self._http.get("/metrics")
        raise_for_error(response)
        return response.text


# ---------------------------------------------------------------- CLI


def _output_paths(out: Path, n: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``... for several."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def _parse_labels(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    parts = [int(p) for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="bearer token, when the service requires one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images and write them to files")
    g.add_argument("--model", default=None, help="model name (default: the server's default model)")
    g.add_argument(
        "--class",
        dest="class_labels",
        default=None,
        help="class index, or comma-separated indices one per image (default: random)",
    )
    g.add_argument("--seed", type=int, default=None, help="seed of the first image; image i uses seed+i")
    g.add_argument("-n", "--num-images", type=int, default=1, help="images to generate (default 1)")
    g.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the output suffix (.npy: raw pixels), else png",
    )
    g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1..100")
    g.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="output file; with several images -0, -1, ... is added before the suffix; raw pixels go to .npy files",
    )
    sub.add_parser("models", help="list the served models as JSON")
    sub.add_parser("ready", help="exit 0 when the service is ready, 1 otherwise")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with OnestepClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        try:
            if args.command == "models":
                print(json.dumps(client.models(), indent=2))
                return 0
            if args.command == "ready":
                ok = client.ready()
                print("ready" if ok else "not ready")
                return 0 if ok else 1
            fmt = args.format or SUFFIX_FORMATS.get(args.output.suffix.lower(), "png")
            result = client.generate_full(
                args.num_images, _parse_labels(args.class_labels), args.seed, fmt, args.quality, args.model
            )
        except OnestepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except httpx.TransportError as e:
            print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
            return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    t = result.timing
    out = args.output.with_suffix(".npy") if fmt == "raw" and args.output.suffix != ".npy" else args.output
    for path, img in zip(_output_paths(out, len(result.images)), result.images, strict=True):
        img.save(path)
        label = f"class {img.class_label}" + (f" ({img.class_name})" if img.class_name else "")
        print(f"{path}  seed {img.seed}  {label}  {len(img.data)} bytes")
    print(
        f"timing: queue {t.queue_ms:.1f} ms, inference {t.inference_ms:.1f} ms, encode {t.encode_ms:.1f} ms, "
        f"batch {t.batch_size}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
