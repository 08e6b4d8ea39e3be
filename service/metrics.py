"""Prometheus metrics of one app, in their own registry (several apps may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Seconds, roughly 1-2-5 spaced from 0.5 ms to 10 s: one-step models answer in milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
REJECT_REASONS = (
    "queue_full",
    "deadline",
    "not_ready",
    "too_large",
    "unauthorized",
    "client_disconnected",
    "rate_limited",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total etc.: server CPU per image in benchmarks
        self.request_duration = Histogram(
            "onestep_request_duration_seconds",
            "POST /v1/generate (and its /generate alias) time in the server, by model and HTTP status.",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "onestep_queue_wait_seconds",
            "Time a request waited in the batch queue before its first batch started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_inference = Histogram(
            "onestep_batch_inference_seconds",
            "Compute time of one batch (noise, forward pass, conversion to uint8).",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "onestep_batch_size", "Images per executed batch.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.encode = Histogram(
            "onestep_encode_seconds",
            "Time to encode one request's images.",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images_generated = Counter("onestep_images_generated", "Images computed.", ["model"], registry=r)
        self.queue_depth = Gauge("onestep_queue_depth", "Images waiting in the batch queue.", ["model"], registry=r)
        self.rejected = Counter(
            "onestep_rejected_requests", "Requests refused or abandoned, by reason.", ["reason"], registry=r
        )
        self.model_ready = Gauge(
            "onestep_model_ready", "1 when the model is loaded and warmed up.", ["model"], registry=r
        )
        self.rate_limited = Counter(
            "onestep_rate_limited_requests",
            "Requests answered 429 by an API key's rate limit, by the key's name and the limit (requests, images).",
            ["key", "limit"],
            registry=r,
        )
        self.reloads = Counter(
            "onestep_model_reloads",
            "Model loads after start (admin endpoints or the models_dir watch), by model and result "
            "(added, reloaded, removed, unchanged, failed).",
            ["model", "result"],
            registry=r,
        )
        self.model_info = Gauge(
            "onestep_model_info",
            "1 for the version each model serves: its weights' hash, after its config's version when it has one.",
            ["model", "version"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self._rejected = {reason: self.rejected.labels(reason) for reason in REJECT_REASONS}

    def reject(self, reason: str) -> None:
        self._rejected[reason].inc()

    def rate_limit(self, key_name: str, limit: str) -> None:
        """A 429 from a key's bucket: counted under its NAME (never the key) and as a rejection."""
        self.rate_limited.labels(key_name, limit).inc()
        self._rejected["rate_limited"].inc()

    def for_model(self, model: str, backend: str) -> ModelMetrics:
        return ModelMetrics(self, model, backend)


class ModelMetrics:
    """Label children bound once per model: label lookups are not free on the hot path."""

    def __init__(self, m: Metrics, model: str, backend: str) -> None:
        self.queue_wait = m.queue_wait.labels(model)
        self.batch_inference = m.batch_inference.labels(model, backend)
        self.batch_size = m.batch_size.labels(model)
        self.images_generated = m.images_generated.labels(model)
        self.queue_depth = m.queue_depth.labels(model)
        self.ready = m.model_ready.labels(model)
