"""Prometheus metrics (one registry per app) and the JSON-lines audit log (rotated by size)."""

from __future__ import annotations

import itertools
import json
import logging
import logging.handlers
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_audit_ids = itertools.count()


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "glmflash_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "glmflash_request_latency_seconds", "Chat request latency", buckets=_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "glmflash_time_to_first_token_seconds", "Time to first token", buckets=_BUCKETS, registry=r
        )
        self.tokens_in = Counter("glmflash_prompt_tokens", "Prompt tokens (images included)", registry=r)
        self.tokens_out = Counter("glmflash_completion_tokens", "Generated tokens", registry=r)
        self.tokens_cached = Counter(
            "glmflash_cached_prompt_tokens", "Prompt tokens whose KV a recent request made", registry=r
        )
        self.hit_rate = Gauge(
            "glmflash_prefix_cache_hit_rate", "Share of prompt tokens reused (prefix cache)", registry=r
        )
        self.hit_rate.set_function(self._hit_rate)
        self.images = Counter("glmflash_images", "Images received", registry=r)
        self.queue_depth = Gauge(
            "glmflash_queue_depth", "Chat requests admitted and not finished", registry=r
        )
        self.gpu_memory = Gauge("glmflash_gpu_memory_bytes", "GPU memory allocated by torch", registry=r)
        self.gpu_memory.set_function(lambda: _allocated(engine))

    def _hit_rate(self) -> float:
        prompt = self.tokens_in._value.get()
        return self.tokens_cached._value.get() / prompt if prompt else 0.0

    def observe(self, usage, timings, images: int) -> None:
        self.tokens_in.inc(usage.prompt_tokens)
        self.tokens_cached.inc(getattr(usage, "cached_tokens", 0))
        self.tokens_out.inc(usage.completion_tokens)
        self.images.inc(images)
        self.ttft.observe(timings.ttft_s)


def _allocated(engine) -> float:
    memory = engine.memory()
    return float(memory.allocated_bytes) if memory is not None else 0.0


class AuditLog:
    """One JSON object per request: never image data; prompt text only when enabled."""

    def __init__(self, path: str, max_bytes: int, with_prompts: bool):
        self.with_prompts = with_prompts
        self.logger = None
        if path:
            self.logger = logging.getLogger(f"glmflash.audit.{next(_audit_ids)}")
            self.logger.propagate = False
            self.logger.setLevel(logging.INFO)
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=5)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)

    def write(self, **record) -> None:
        if self.logger is None:
            return
        if not self.with_prompts:
            record.pop("prompt", None)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        self.logger.info(json.dumps(record, ensure_ascii=False))

    def close(self) -> None:
        if self.logger is not None:
            for handler in list(self.logger.handlers):
                handler.close()
                self.logger.removeHandler(handler)
