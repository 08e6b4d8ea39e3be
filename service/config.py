"""Service settings, read from the environment (prefix ``ONESTEP_``) or passed to ``create_app``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["torch", "onnxruntime", "tensorrt", "null"]


def auto_backend() -> BackendName:
    """What ``backend=auto`` serves with: torch on a CUDA host; on a CPU-only host ONNX Runtime when it and the
    exporter's packages (onnx, onnxscript: the first load exports model.onnx) are importable, else torch."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return "torch"
    if all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript")):
        return "onnxruntime"
    return "torch"


def _str_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string (``ONESTEP_API_KEYS=k1,k2``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every option of the service. Environment variables are the upper-case names with the ``ONESTEP_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="ONESTEP_", extra="ignore", protected_namespaces=())

    models_dir: Path = Field(
        Path("models"),
        description="Folder whose subfolders are model dirs; every one holding a config.json of kind 'generator' "
        "is served (others, such as classifiers, are ignored).",
    )
    default_model: str = Field(
        "fmnist-d2o",
        description="Model used when a request names none; loaded first. Falls back to the first model found.",
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt", "null"] = Field(
        "auto",
        description="Inference backend for every model: auto, torch, onnxruntime or tensorrt. auto: torch when a "
        "CUDA GPU is present, else ONNX Runtime when onnxruntime, onnx and onnxscript are installed (model.onnx is "
        "exported once next to the weights and re-exported when they change), else torch. null is for "
        "benchmarks only (benchmarks.service --null-model): no model compute, the images are the noise itself.",
    )
    model_backends: dict[str, BackendName] = Field(
        default_factory=dict,
        description='Per-model backend overrides as JSON, e.g. {"fmnist-d2o": "onnxruntime"}.',
    )
    device: str = Field(
        "auto", description="Torch device for the torch backend: 'auto' (CUDA when available), 'cpu' or 'cuda:N'."
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="Largest batch the batcher forms, counted in images.")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description="Longest time a batch waits for more work, measured from its first queued request, before it "
        "runs with what it has. A full batch runs at once.",
    )
    idle_dispatch: bool = Field(
        True,
        description="A request that finds its model idle (nothing queued or computing) runs at once instead of "
        "waiting max_wait_ms for company; under load batches still fill as described above.",
    )
    max_queue_images: int = Field(
        256, ge=1, description="Queue bound per model, in images; a request that does not fit gets 503 + Retry-After."
    )
    max_images_per_request: int = Field(64, ge=1, description="Largest num_images a request may ask for (else 413).")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Per-request deadline from arrival to generated images; past it the request gets 504."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After header value (seconds) sent with 503 responses.")
    max_body_bytes: int = Field(64 * 1024, ge=256, description="Largest request body accepted (else 413).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer tokens (comma-separated or a JSON list). Empty: authentication is off.",
    )
    auth_exempt_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/", "/healthz", "/readyz", "/metrics"],
        description="Paths reachable without an API key when keys are set (comma-separated or a JSON list); "
        "'/' is the playground page, whose own API calls send the key typed into it.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for the torch backend; unset keeps torch's default."
    )
    torch_jit: bool = Field(
        True,
        description="Trace the torch backend's generator with TorchScript at load (checked against eager): the "
        "forward then runs in C++ without re-taking the GIL for every op, so request handling and encoding cannot "
        "stall it.",
    )
    torch_channels_last: bool = Field(
        True,
        description="Run the torch backend's convolutions on channels-last (NHWC) tensors; on CPU oneDNN's NHWC "
        "kernels gave 15% more images/s than the trace alone at batch 1 and 40% at batch 32 (docs/benchmarks.md).",
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Precision of the torch backend's U-Net (preconditioning and outputs stay float32). A reduced "
        "precision is served only when, at load, the model's images on 16 fixed seeds stay within max |diff| 0.25 "
        "of float32 on the [-1, 1] scale and within 0.5 uint8 levels on average (bfloat16 on fmnist-d2o: 0.08 and "
        "0.29); else float32, with a log line saying why. auto: bfloat16, else float16, on CUDA; float32 on CPU.",
    )
    torch_cuda_graphs: bool = Field(
        True,
        description="On CUDA, capture one CUDA graph per batch bucket (powers of two up to max_batch_size) at "
        "warm-up and replay it per batch; a batch is padded to its bucket (the padding is never returned). Each "
        "capture is checked against eager; on any failure the backend serves eagerly (logged). Ignored on CPU.",
    )
    torch_compile: bool = Field(
        False,
        description="On CUDA, torch.compile the generator (static shapes, one compile per bucket at warm-up, then "
        "captured in the CUDA graphs); warm-up takes minutes. Ignored on CPU. Measured against the graphs alone "
        "by benchmarks.gpu (docs/benchmarks.md).",
    )
    ort_intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads; unset lets ONNX Runtime choose."
    )
    ort_allow_spinning: bool = Field(
        True,
        description="Let ONNX Runtime's intra-op threads spin between parallel sections (lower latency); turn off "
        "where other busy processes share the cores.",
    )
    ort_spin_duration_us: int | None = Field(
        None,
        ge=0,
        description="With ort_allow_spinning: how long (microseconds) an idle intra-op thread spins before it "
        "sleeps (ONNX Runtime's session.intra_op.spin_duration_us). Shorter leaves more of the cores to the event "
        "loop and the encoder between batches. Unset: ONNX Runtime's default.",
    )
    encode_threads: int = Field(1, ge=1, description="Threads that encode images (PNG/JPEG/WebP) beside inference.")
    encode_overlap: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Encode a batch's images in the encode threads while the next batch computes (on), or on the "
        "inference thread between batches (off). auto: on, except for a CPU backend whose threads fill every core "
        "and do not spin between runs (torch): there an encoder thread only preempts a runtime thread mid-batch "
        "(measured in docs/benchmarks.md). true/false are read as on/off.",
    )
    warmup: bool = Field(
        True, description="Run every batch size the batcher may use once before reporting ready (/readyz)."
    )
    host: str = Field("127.0.0.1", description="Address `python -m service` listens on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="Port `python -m service` listens on.")
    workers: int = Field(
        1, ge=1, description="uvicorn worker processes; each loads every model and keeps its own metrics."
    )
    graceful_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long in-flight requests may take to finish."
    )
    log_level: str = Field("info", description="uvicorn log level.")
    access_log: bool = Field(False, description="uvicorn access log (one line per request; costs CPU under load).")

    # -- operating: key files, admin endpoints, per-key rate limits, logs, CORS, live model reload (docs/operating.md)
    api_keys_file: Path | None = Field(
        None,
        description="File of named API keys (a secret mount, say): lines 'name:key' ('#' starts a comment), or "
        'JSON {"name": "key"} or {"name": {"key": ..., "rps": ..., "ips": ..., "burst": ..., "image_burst": ...}} '
        "with per-key limits. Used together with api_keys, whose keys are named key0, key1, ... Read at start.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens of the admin endpoints (POST /v1/models/reload, POST /v1/models/{name}/reload), "
        "comma-separated or a JSON list; each must differ from every API key. With none here or in "
        "admin_keys_file the admin endpoints answer 404.",
    )
    admin_keys_file: Path | None = Field(
        None, description="File of admin keys, in api_keys_file's formats (limits in it are ignored). Read at start."
    )
    rate_limit_rps: float | None = Field(
        None,
        gt=0,
        description="Requests per second each API key may send to /v1/generate (token bucket; over it: 429 + "
        "Retry-After). Unset: no limit. Keys in api_keys_file may set their own (rps). Per worker process.",
    )
    rate_limit_ips: float | None = Field(
        None,
        gt=0,
        description="Images per second each API key may ask /v1/generate for (token bucket; 429 + Retry-After). "
        "Unset: no limit. Keys in api_keys_file may set their own (ips).",
    )
    rate_limit_burst: int | None = Field(
        None,
        ge=1,
        description="Requests a key may send at once on top of its steady rate (the request bucket's size); "
        "unset: one second's worth, at least 1.",
    )
    rate_limit_image_burst: int | None = Field(
        None,
        ge=1,
        description="Images a key may ask for at once (the image bucket's size; a request for more gets 413); "
        "unset: one second's worth, at least 1.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: uvicorn's log lines. json: one JSON object a line, with the request ID of the request "
        "being served; with access_log on, the access log is the service's own (request ID, method, path, status, "
        "duration, model, key name).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins that browsers may call the API from (CORS), comma-separated or a JSON list; '*' for "
        "any. Empty: CORS is off.",
    )
    models_watch_s: float = Field(
        0.0,
        ge=0,
        description="Check models_dir every this many seconds and reload the model dirs whose config.json or "
        "weights were added, changed or removed (once unchanged for one more check). 0: off; reload through the "
        "admin endpoints instead.",
    )

    @field_validator("admin_keys", "cors_origins", mode="before")
    @classmethod
    def _split_operating_lists(cls, value: object) -> object:
        return _str_list(value)

    @model_validator(mode="after")
    def _check_operating(self) -> Settings:
        if any(not key for key in self.admin_keys):
            raise ValueError("admin_keys: empty key")
        if set(self.admin_keys) & set(self.api_keys):
            raise ValueError("admin_keys: an admin key must differ from every API key")
        return self

    @field_validator("api_keys", "auth_exempt_paths", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _str_list(value)

    @field_validator("encode_overlap", mode="before")
    @classmethod
    def _overlap_words(cls, value: object) -> object:
        """Booleans (true/false, 1/0, yes/no) mean on/off."""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            word = value.strip().lower()
            return {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(word, word)
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys: empty key")
        return self

    def backend_for(self, model: str) -> BackendName:
        name = self.model_backends.get(model, self.backend)
        return auto_backend() if name == "auto" else name
