"""Each error category reaches the state DESIGN.md's taxonomy table says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from core_support import POLICY, Scripted, event, fail_times, harness
from resilient_sync import (
    DataFormatError,
    DeliveryStatus,
    DuplicateError,
    ErrorCategory,
    Event,
    MappingError,
    PermissionDeniedError,
    RateLimitedError,
    RetryableError,
    RetryPolicy,
)

Factory = Callable[[], Exception]


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (lambda: RetryableError("POS down"), ErrorCategory.TRANSIENT),
        (lambda: RateLimitedError("slow down", retry_after=5), ErrorCategory.RATE_LIMITED),
        (lambda: TimeoutError("timed out"), ErrorCategory.TRANSIENT),
        (lambda: ConnectionResetError("reset by peer"), ErrorCategory.TRANSIENT),
        (lambda: httpx.ReadTimeout("read timed out"), ErrorCategory.TRANSIENT),
        (lambda: httpx.ConnectError("refused"), ErrorCategory.TRANSIENT),
        (lambda: httpx.RemoteProtocolError("server disconnected"), ErrorCategory.TRANSIENT),
        (lambda: KeyError("surprise"), ErrorCategory.UNEXPECTED),
    ],
)
def test_retryable_categories_are_retried_with_the_same_key_then_succeed(
    error: Factory, category: ErrorCategory
) -> None:
    pos = Scripted("pos", fail_times(2, error))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.dispatcher.run_until_idle()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.RETRY_SCHEDULED
    assert d.last_error is not None
    assert d.last_error.category is category
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.SUCCEEDED
    assert d.attempts == 3
    keys = pos.keys("e1")
    assert len(keys) == 3
    assert set(keys) == {d.idempotency_key}
    failed = [a for a in h.audit("e1") if a.error is not None]
    assert [a.category for a in failed] == [category, category]
    assert [a.number for a in h.audit("e1") if a.action == "deliver"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (lambda: RetryableError("POS down"), ErrorCategory.TRANSIENT),
        (lambda: httpx.ReadTimeout("read timed out"), ErrorCategory.TRANSIENT),
        (lambda: RateLimitedError("slow down"), ErrorCategory.RATE_LIMITED),
        (lambda: ZeroDivisionError("division by zero"), ErrorCategory.UNEXPECTED),
    ],
)
def test_retryable_categories_end_in_needs_action_when_the_budget_is_spent(
    error: Factory, category: ErrorCategory
) -> None:
    pos = Scripted("pos", fail_times(99, error))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == POLICY.max_attempts
    assert len(pos.ids()) == POLICY.max_attempts
    assert d.last_error is not None
    assert d.last_error.category is category
    assert d.last_error.message.startswith("retries exhausted")


def test_unexpected_errors_name_the_exception_type() -> None:
    pos = Scripted("pos", fail_times(99, lambda: ZeroDivisionError("division by zero")))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.last_error is not None
    assert "ZeroDivisionError: division by zero" in d.last_error.message
    assert d.last_error.exception_type == "ZeroDivisionError"


def test_unexpected_is_needs_action_at_once_when_not_retried() -> None:
    pos = Scripted("pos", fail_times(99, lambda: KeyError("customer_id")))
    policy = RetryPolicy(retry_unexpected=False, jitter=False)
    h = harness(pos, retry=policy)
    h.dispatcher.submit(event("e1"))
    report = h.dispatcher.run_until_idle()
    assert report.needs_action == 1
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 1
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.UNEXPECTED
    assert "KeyError" in d.last_error.message
    assert "customer_id" in d.last_error.message
    h.drain()
    assert len(pos.ids()) == 1


def test_duplicate_without_a_hook_needs_action_as_a_potential_duplicate() -> None:
    pos = Scripted("pos", fail_times(99, lambda: DuplicateError("email already taken")))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 1
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.DUPLICATE
    assert "potential duplicate" in d.last_error.message
    assert "email already taken" in d.last_error.message


def test_data_format_without_a_hook_needs_action_with_the_field() -> None:
    pos = Scripted(
        "pos", fail_times(99, lambda: DataFormatError("phone is not E.164", field="phone"))
    )
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 1
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.DATA_FORMAT
    assert d.last_error.field == "phone"
    assert "phone is not E.164" in d.last_error.message
    # the audit record of the attempt carries the field too
    (attempt,) = [a for a in h.audit("e1") if a.action == "deliver"]
    assert attempt.error is not None
    assert attempt.error.field == "phone"
    assert attempt.outcome is DeliveryStatus.NEEDS_ACTION


def test_mapping_needs_action_and_is_escalated() -> None:
    escalated: list[str] = []
    pos = Scripted("pos", fail_times(99, lambda: MappingError("unknown SKU 'X-1'")))
    h = harness(pos, on_needs_action=lambda d: escalated.append(d.event.id))
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.status is DeliveryStatus.NEEDS_ACTION
    assert d.attempts == 1
    assert d.last_error is not None
    assert d.last_error.category is ErrorCategory.MAPPING
    assert d.last_error.category.escalates
    assert "unknown SKU 'X-1'" in d.last_error.message
    assert escalated == ["e1"]


def test_permission_pauses_the_destination_until_an_operator_resumes_it() -> None:
    revoked = {"yes": True}

    def behave(e: Event, n: int) -> Any:
        if revoked["yes"]:
            raise PermissionDeniedError("token revoked")
        return None

    pos = Scripted("pos", behave)
    crm = Scripted("crm")
    h = harness(pos, crm)
    h.dispatcher.submit_many([event("e1"), event("e2"), event("e3")])
    report = h.dispatcher.run_until_idle()
    assert report.needs_action == 1
    d1 = h.delivery("e1", "pos")
    assert d1.status is DeliveryStatus.NEEDS_ACTION
    assert d1.last_error is not None
    assert d1.last_error.category is ErrorCategory.PERMISSION
    assert d1.last_error.category.escalates
    state = h.operator.destinations()["pos"]
    assert state.paused
    assert state.paused_reason is not None
    assert "token revoked" in state.paused_reason
    assert any(a.action == "pause" and a.destination == "pos" for a in h.queue.audit())
    # other deliveries to pos are not attempted, however long we wait ...
    for _ in range(3):
        h.clock.advance(3600)
        h.dispatcher.run_until_idle()
    assert pos.ids() == ["e1"]
    assert h.status("e2", "pos") is DeliveryStatus.PENDING
    assert h.status("e3", "pos") is DeliveryStatus.PENDING
    # ... and they used up no attempt; the other destination was not affected
    assert h.delivery("e2", "pos").attempts == 0
    assert sorted(crm.ids("ok")) == ["e1", "e2", "e3"]
    assert h.operator.stats().destinations["pos"].paused

    revoked["yes"] = False  # a new token
    resumed = h.operator.resume("pos", actor="alice")
    assert not resumed.paused
    h.drain()
    assert pos.ids("ok") == ["e2", "e3"]
    # the delivery that hit the error waits for a person
    assert h.status("e1", "pos") is DeliveryStatus.NEEDS_ACTION
    h.operator.retry(d1.id, actor="alice")
    h.drain()
    assert h.status("e1", "pos") is DeliveryStatus.SUCCEEDED
    assert pos.keys("e1")[0] == pos.keys("e1")[-1]


def test_a_user_supplied_classifier_decides_the_category() -> None:
    from resilient_sync import Classifier

    class PosOutOfStock(Exception):
        pass

    classifier = Classifier().register(PosOutOfStock, ErrorCategory.MAPPING)
    classifier.add_rule(lambda exc: ErrorCategory.TRANSIENT if "try later" in str(exc) else None)

    def behave(e: Event, n: int) -> Any:
        if e.id == "e1":
            raise PosOutOfStock("no stock")
        if n == 1:
            raise RuntimeError("POS busy, try later")
        return None

    pos = Scripted("pos", behave)
    h = harness(pos, classifier=classifier)
    h.dispatcher.submit_many([event("e1"), event("e2")])
    h.drain()
    d1, d2 = h.delivery("e1"), h.delivery("e2")
    assert d1.status is DeliveryStatus.NEEDS_ACTION
    assert d1.last_error is not None
    assert d1.last_error.category is ErrorCategory.MAPPING
    assert d2.status is DeliveryStatus.SUCCEEDED
    assert [a.category for a in h.audit("e2") if a.error] == [ErrorCategory.TRANSIENT]


def test_secrets_never_reach_the_error_or_the_audit_trail() -> None:
    secret = "sk_live_4f9a8b7c6d5e"
    pos = Scripted(
        "pos",
        fail_times(
            99,
            lambda: RetryableError(f"POST /customers failed; Authorization: Bearer {secret}"),
        ),
    )
    h = harness(pos, retry=RetryPolicy(max_attempts=2, jitter=False))
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.last_error is not None
    assert "POST /customers failed" in d.last_error.message
    texts = [d.last_error.message] + [repr(a) for a in h.queue.audit()]
    assert all(secret not in text for text in texts)


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("401 from POS; Authorization: Bearer sk_live_4f9a8b7c6d5e", "sk_live_4f9a8b7c6d5e"),
        ("Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "9944b09199c62bcf"),
        ("GET https://shop:hunter2pass@pos.example/api failed", "hunter2pass"),
        ('{"api_key": "AKIA1234567890", "ok": false}', "AKIA1234567890"),
        ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a rejected", "ghp_16C7e42F292c6912E"),
    ],
)
def test_permission_reasons_are_redacted(message: str, secret: str) -> None:
    pos = Scripted("pos", fail_times(99, lambda: PermissionDeniedError(message)))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.last_error is not None
    reason = h.operator.destinations()["pos"].paused_reason
    assert reason is not None
    for text in [d.last_error.message, reason, *(repr(a) for a in h.queue.audit())]:
        assert secret not in text


@pytest.mark.parametrize("message", ["token revoked", "token expired", "access token has expired"])
def test_a_plain_reason_about_a_token_stays_readable(message: str) -> None:
    pos = Scripted("pos", fail_times(99, lambda: PermissionDeniedError(message)))
    h = harness(pos)
    h.dispatcher.submit(event("e1"))
    h.drain()
    d = h.delivery("e1")
    assert d.last_error is not None
    assert message in d.last_error.message
    assert message in (h.operator.destinations()["pos"].paused_reason or "")
