"""Dynamic batching of inference requests, one worker per model variant."""

from __future__ import annotations

from app.batching.batcher import (
    DEFAULT_SERVICE_RATE,
    Batcher,
    BatchObserver,
    BatchStats,
    Completed,
    PredictFn,
)

__all__ = [
    "DEFAULT_SERVICE_RATE",
    "BatchObserver",
    "BatchStats",
    "Batcher",
    "Completed",
    "PredictFn",
]
