"""Prometheus metrics of one server (its own registry, so several apps in one process do not
collide), exposed at /metrics in the text format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metrics:
    registry: object
    requests: object
    request_seconds: object
    inference_seconds: object
    batch_size: object
    queue_images: object
    model_ready: object

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        reg = CollectorRegistry()
        fast = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
        return cls(
            registry=reg,
            requests=Counter(
                "requests", "HTTP requests by route and status", ["route", "status"], registry=reg
            ),
            request_seconds=Histogram(
                "request_seconds", "request latency by route", ["route"], buckets=fast, registry=reg
            ),
            inference_seconds=Histogram(
                "inference_seconds", "one inference call", buckets=fast, registry=reg
            ),
            batch_size=Histogram(
                "batch_size",
                "images per inference call",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                registry=reg,
            ),
            queue_images=Gauge("queue_images", "images waiting for inference", registry=reg),
            model_ready=Gauge("model_ready", "1 once loaded and warmed up", registry=reg),
        )

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
