"""resilient_sync: keep data in sync between business systems when they fail.

Durable queues, safe retries with backoff, idempotency, a clear split between
"retry later" and "a person must act", an operator queue and an audit trail.
See ``docs/`` (start with ``docs/concepts/promises.md``) for the promises.
"""

from __future__ import annotations

from ._circuit import CircuitBreaker
from ._classify import Classifier
from ._clock import SystemClock
from ._dispatcher import AsyncDispatcher, Dispatcher
from ._errors import (
    DataFormatError,
    DeliveryNotFoundError,
    DuplicateError,
    InvalidEventError,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    StoreError,
    SyncError,
)
from ._model import (
    Attempt,
    Delivery,
    DeliveryContext,
    DeliveryStatus,
    DispatchEvent,
    ErrorCategory,
    ErrorInfo,
    Event,
    RunReport,
)
from ._operator import Operator
from ._policy import RetryPolicy
from ._protocols import Destination, IdempotencyStore, QueueStore, Source
from ._submit import Producer, Submitted
from ._version import __version__

__all__ = [
    "AsyncDispatcher",
    "Attempt",
    "CircuitBreaker",
    "Classifier",
    "DataFormatError",
    "Delivery",
    "DeliveryContext",
    "DeliveryNotFoundError",
    "DeliveryStatus",
    "Destination",
    "DispatchEvent",
    "Dispatcher",
    "DuplicateError",
    "ErrorCategory",
    "ErrorInfo",
    "Event",
    "IdempotencyStore",
    "InvalidEventError",
    "MappingError",
    "Operator",
    "PermissionDeniedError",
    "Producer",
    "QueueStore",
    "RateLimitedError",
    "RetryPolicy",
    "RetryableError",
    "RunReport",
    "Source",
    "StoreError",
    "Submitted",
    "SyncError",
    "SystemClock",
    "__version__",
]
