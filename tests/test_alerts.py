"""Alert rules, deduplication and notifiers, driven by a FakeClock."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from resilient_sync import (
    CircuitBreaker,
    DataFormatError,
    Dispatcher,
    ErrorCategory,
    Event,
    MappingError,
    Operator,
    PermissionDeniedError,
    RetryableError,
    RetryPolicy,
)
from resilient_sync.alerts import (
    Alert,
    Alerter,
    CallbackNotifier,
    DestinationRule,
    ErrorRateRule,
    LogNotifier,
    NeedsActionRule,
    NotificationError,
    Notifier,
    OldestWaitingRule,
    WebhookNotifier,
    default_rules,
)
from resilient_sync.stores import MemoryIdempotencyStore, MemoryQueueStore, open_stores
from resilient_sync.testing import FakeClock, FlakyDestination

SECRET_PATH = "T000/B000/XXXXsecretXXXXwebhookXXXX"


class World:
    """A dispatcher with a scripted POS, an operator and an alerter on one queue."""

    def __init__(
        self,
        failures: dict[str, list[BaseException | None]] | None = None,
        *,
        queue: Any = None,
        max_attempts: int = 1,
        circuit: CircuitBreaker | None = None,
        **alerter: Any,
    ) -> None:
        self.clock = FakeClock()
        self.queue = queue if queue is not None else MemoryQueueStore()
        self.pos = FlakyDestination("pos", per_event=failures or {})
        self.dispatcher = Dispatcher(
            self.queue,
            MemoryIdempotencyStore(),
            [self.pos],
            retry=RetryPolicy(max_attempts=max_attempts, initial_delay=1, jitter=False),
            clock=self.clock,
            circuit=circuit,
        )
        self.operator = Operator(self.queue, clock=self.clock)
        self.sent: list[Alert] = []
        alerter.setdefault("rules", default_rules())
        self.alerter = Alerter(
            self.queue, [CallbackNotifier(self.sent.append)], clock=self.clock, **alerter
        )

    def submit(self, *ids: str) -> None:
        self.dispatcher.submit_many(
            [Event(i, "customer.created", {"email": f"{i}@example.com", "phone": "1"}) for i in ids]
        )

    def run(self) -> None:
        self.dispatcher.run_until_idle()

    def check(self) -> list[Alert]:
        return self.alerter.check()


def bad_phone() -> DataFormatError:
    return DataFormatError("phone is invalid", field="phone")


def test_500_failures_are_one_alert_that_says_what_to_do() -> None:
    ids = [f"c{n:03d}" for n in range(500)]
    w = World({i: [bad_phone()] for i in ids}, rules=[NeedsActionRule()])
    w.submit(*ids)
    w.run()
    (alert,) = w.check()
    assert alert.rule == "needs_action"
    assert alert.key == "needs_action/pos/data_format"
    assert alert.severity == "warning"
    assert alert.title == "500 deliveries to pos need action (data_format)"
    assert (alert.count, alert.new) == (500, 500)
    assert len(alert.delivery_ids) == 3
    assert "... and 497 more" in alert.details
    assert "- customer.created c000 [phone]: phone is invalid (delivery " in alert.details
    assert alert.action.startswith("correct the value")
    first = alert.delivery_ids[0]
    assert alert.commands == (
        "resilient-sync list --status needs_action --destination pos --category data_format",
        f"resilient-sync edit {first} --set phone=VALUE --retry",
    )
    text = alert.text()
    assert text.startswith("[WARNING] 500 deliveries to pos need action (data_format)")
    assert "What to do: correct the value" in text
    assert w.check() == []  # nothing new: no second message
    assert w.sent == [alert]


def test_growth_is_batched_per_interval_and_reminders_repeat() -> None:
    ids = [f"c{n}" for n in range(10)]
    w = World(
        {i: [bad_phone()] for i in ids},
        rules=[NeedsActionRule()],
        min_interval=timedelta(minutes=5),
        repeat_after=timedelta(hours=1),
    )
    w.submit(*ids[:2])
    w.run()
    assert [a.count for a in w.check()] == [2]
    for i in ids[2:6]:  # four more, one a minute: no message yet
        w.clock.advance(60)
        w.submit(i)
        w.run()
        assert w.check() == []
    w.clock.advance(60)
    (update,) = w.check()
    assert (update.count, update.new) == (6, 4)
    assert update.first_seen == w.sent[0].first_seen
    w.clock.advance(timedelta(minutes=30))
    assert w.check() == []  # unchanged: quiet until the reminder
    w.clock.advance(timedelta(minutes=31))
    (reminder,) = w.check()
    assert (reminder.count, reminder.new) == (6, 0)


def test_a_cleared_condition_sends_one_resolved_alert() -> None:
    w = World({"c1": [bad_phone()]}, rules=[NeedsActionRule()])
    w.submit("c1")
    w.run()
    (first,) = w.check()
    w.operator.retry_all(actor="ada")
    w.run()  # the scripted failure is used up: it succeeds now
    (resolved,) = w.check()
    assert resolved.resolved
    assert resolved.key == first.key
    assert resolved.severity == "info"
    assert resolved.title.startswith("resolved: 1 delivery to pos needs action")
    assert resolved.text().startswith("[RESOLVED]")
    assert "What to do" not in resolved.text()
    assert w.check() == []
    assert w.alerter.active == []


def test_mapping_and_permission_are_critical_and_filters_apply() -> None:
    w = World(
        {"c1": [MappingError("unknown SKU", field="lines[0].sku")], "c2": [bad_phone()]},
        rules=[NeedsActionRule(categories=["mapping"])],
    )
    w.submit("c1", "c2")
    w.run()
    (alert,) = w.check()
    assert alert.category is ErrorCategory.MAPPING
    assert alert.severity == "critical"
    assert "--set 'lines[0].sku=VALUE' --retry" in alert.commands[-1]


def test_error_rate_over_a_window() -> None:
    ids = [f"c{n}" for n in range(30)]
    failing = {i: [RetryableError("HTTP 503")] for i in ids[:10]}
    rule = ErrorRateRule(threshold=0.25, window=timedelta(minutes=15), min_attempts=20)
    w = World(failing, rules=[rule], max_attempts=3)
    w.submit(*ids[:10])
    w.run()
    assert w.check() == []  # 10 failed of 10, but fewer than min_attempts
    w.submit(*ids[10:])
    w.run()
    (alert,) = w.check()
    assert alert.rule == "error_rate"
    assert alert.destination == "pos"
    assert alert.title == "pos: 10 of 30 attempts failed in the last 15m (33%, alert at 25%)"
    assert "By category: transient 10." in alert.details
    assert alert.commands[0] == "resilient-sync trend --bucket 1m --since 1h"
    w.clock.advance(timedelta(minutes=16))
    w.run()  # the retries succeed: 10 attempts, none failed
    (resolved,) = w.check()
    assert resolved.resolved
    assert resolved.key == "error_rate/pos/*"


def test_oldest_waiting_delivery() -> None:
    w = World(rules=[OldestWaitingRule(max_age=timedelta(hours=1))])
    w.operator.pause("pos", note="maintenance", actor="ada")
    w.submit("c1", "c2")
    assert w.check() == []
    w.clock.advance(timedelta(hours=1, minutes=1))
    (alert,) = w.check()
    assert alert.title == "the oldest waiting delivery was submitted 61m ago (alert after 60m)"
    assert "2 deliveries are waiting. Paused or held: pos." in alert.details
    w.operator.resume("pos", actor="ada")
    w.run()
    assert [a.resolved for a in w.check()] == [True]


def test_a_paused_destination_and_an_open_circuit() -> None:
    w = World(
        {
            "c1": [PermissionDeniedError("token revoked")],
            **{f"t{n}": [RetryableError("HTTP 503")] for n in range(3)},
        },
        rules=[DestinationRule(window=timedelta(minutes=15))],
        circuit=CircuitBreaker(threshold=3, cool_off=30),
        max_attempts=5,
    )
    w.submit("t0", "t1", "t2")
    w.run()
    (circuit,) = w.check()
    assert circuit.rule == "circuit_open"
    assert circuit.title == "circuit open for pos: it opened 1 time in the last 15m"
    assert "consecutive transient failures" in circuit.details
    w.clock.advance(31)
    w.run()
    w.submit("c1")
    w.run()
    alerts = {a.rule: a for a in w.check()}
    paused = alerts["destination_paused"]
    assert paused.severity == "critical"
    assert paused.title.startswith("pos is paused: permission denied: token revoked")
    assert paused.commands == (
        "resilient-sync resume pos",
        "resilient-sync retry-all --category permission --destination pos",
    )
    w.operator.resume("pos", actor="ada")
    w.clock.advance(timedelta(minutes=16))
    cleared = w.check()
    assert {(a.rule, a.resolved) for a in cleared} == {
        ("destination_paused", True),
        ("circuit_open", True),
    }


def test_a_failing_notifier_is_logged_and_the_alert_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Alert] = []

    def flaky(alert: Alert) -> None:
        calls.append(alert)
        if len(calls) == 1:
            raise NotificationError("webhook to hooks.example.com answered HTTP 500")

    w = World({"c1": [bad_phone()]}, rules=[NeedsActionRule()])
    w.alerter.notifiers = [CallbackNotifier(flaky, name="pager")]
    w.submit("c1")
    w.run()
    with caplog.at_level(logging.ERROR, logger="resilient_sync.alerts"):
        assert w.check() == []
    assert "could not send alert needs_action/pos/data_format" in caplog.text
    assert "HTTP 500" in caplog.text
    assert len(w.check()) == 1  # tried again, delivered
    assert len(calls) == 2


def test_a_failing_rule_keeps_its_alerts(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "needs_action"

        def __init__(self) -> None:
            self.fail = False
            self.inner = NeedsActionRule()

        def evaluate(self, view: Any) -> Any:
            if self.fail:
                raise RuntimeError("boom")
            return self.inner.evaluate(view)

    rule = Broken()
    w = World({"c1": [bad_phone()]}, rules=[rule])
    w.submit("c1")
    w.run()
    assert len(w.check()) == 1
    rule.fail = True
    with caplog.at_level(logging.ERROR, logger="resilient_sync.alerts"):
        assert w.check() == []  # not "resolved": the rule could not tell
    assert "alert rule needs_action failed" in caplog.text
    assert len(w.alerter.active) == 1


def test_commands_carry_the_db_url_without_its_password() -> None:
    w = World(
        {"c1": [bad_phone()]},
        rules=[NeedsActionRule()],
        db="postgresql://sync:hunter22@db.internal/sync",
    )
    w.submit("c1")
    w.run()
    (alert,) = w.check()
    assert all(
        "resilient-sync --db 'postgresql://sync:[REDACTED]@db.internal/sync' " in c
        for c in alert.commands
    )
    assert "hunter22" not in json.dumps(alert.to_json())


def test_alerts_on_a_sqlite_queue(tmp_path: Any) -> None:
    queue, idempotency = open_stores(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        w = World({"c1": [bad_phone()]}, queue=queue, rules=default_rules())
        w.submit("c1", "c2")
        w.run()
        (alert,) = w.check()
        assert alert.title == "1 delivery to pos needs action (data_format)"
    finally:
        queue.close()
        idempotency.close()


# -- notifiers ------------------------------------------------------------------------


def sample_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "rule": "needs_action",
        "severity": "critical",
        "title": "3 deliveries to pos need action (permission)",
        "details": "Authorization: Bearer sk_live_abcdef123456 was refused",
        "action": "renew the credentials",
        "commands": ("resilient-sync resume pos",),
        "destination": "pos",
        "category": ErrorCategory.PERMISSION,
        "count": 3,
        "new": 3,
    }
    fields.update(changes)
    return Alert(**fields)


def recorder() -> tuple[list[httpx.Request], httpx.MockTransport]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if "fail" in request.url.path:
            return httpx.Response(500, text=f"no such hook {request.url.path}")
        return httpx.Response(200, text="ok")

    return requests, httpx.MockTransport(handler)


@pytest.mark.parametrize("style", ["slack", "teams", "json"])
def test_webhook_bodies_are_redacted(style: Any) -> None:
    requests, transport = recorder()
    hook = WebhookNotifier(
        f"https://hooks.example.com/services/{SECRET_PATH}",
        style=style,
        transport=transport,
        secrets=["hunter22"],
    )
    hook.notify(sample_alert(action="use the password hunter22"))
    (request,) = requests
    body = json.loads(request.content)
    text = json.dumps(body)
    assert "sk_live_abcdef123456" not in text
    assert "hunter22" not in text
    assert "[REDACTED]" in text
    if style == "slack":
        assert body["text"].startswith("[CRITICAL] 3 deliveries to pos need action (permission)")
    elif style == "teams":
        assert body["@type"] == "MessageCard"
        assert body["themeColor"] == "D70000"
        assert body["title"] == "[CRITICAL] 3 deliveries to pos need action (permission)"
    else:
        assert body["key"] == "needs_action/pos/permission"
        assert body["count"] == 3
    assert isinstance(hook, Notifier)
    assert SECRET_PATH not in repr(hook)
    hook.close()


def test_webhook_errors_never_show_the_url_secret() -> None:
    _, transport = recorder()
    hook = WebhookNotifier(f"https://hooks.example.com/fail/{SECRET_PATH}", transport=transport)
    with pytest.raises(NotificationError) as info:
        hook.notify(sample_alert())
    assert "webhook to hooks.example.com answered HTTP 500" in str(info.value)
    assert SECRET_PATH not in str(info.value)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    down = WebhookNotifier(
        f"https://hooks.example.com/ok/{SECRET_PATH}", transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(NotificationError) as info:
        down.notify(sample_alert())
    assert "ConnectError" in str(info.value)
    assert SECRET_PATH not in str(info.value)
    assert info.value.__cause__ is None
    with pytest.raises(ValueError, match="needs an http"):
        WebhookNotifier("ftp://x/y")


@pytest.fixture
def chat_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{SECRET_PATH}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_to_a_real_local_server_through_the_alerter(
    chat_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = chat_server
    w = World({"c1": [bad_phone()]}, rules=[NeedsActionRule()])
    hook = WebhookNotifier(url)
    w.alerter.notifiers.append(hook)
    w.submit("c1")
    w.run()
    assert len(w.check()) == 1
    hook.close()
    (body,) = received
    assert body["text"].startswith("[WARNING] 1 delivery to pos needs action (data_format)")
    assert "$ resilient-sync edit" in body["text"]


def test_log_notifier_levels_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="resilient_sync.alerts"):
        LogNotifier().notify(sample_alert())
        LogNotifier().notify(sample_alert(severity="warning", resolved=True))
    critical, resolved = caplog.records
    assert critical.levelno == logging.ERROR
    assert resolved.levelno == logging.INFO
    assert critical.alert_key == "needs_action/pos/permission"  # type: ignore[attr-defined]
    assert critical.destination == "pos"  # type: ignore[attr-defined]
    assert critical.category == "permission"  # type: ignore[attr-defined]
    assert critical.getMessage().startswith("[CRITICAL]")


def test_alert_and_rule_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="severity"):
        sample_alert(severity="meh")
    with pytest.raises(ValueError, match="threshold"):
        ErrorRateRule(threshold=0)
    with pytest.raises(ValueError, match="window"):
        DestinationRule(window=0)
    with pytest.raises(TypeError, match="notify"):
        Alerter(MemoryQueueStore(), [object()])  # type: ignore[list-item]


def test_the_alerts_namespace_is_sorted_and_documented() -> None:
    from resilient_sync import alerts

    names = list(alerts.__all__)
    assert names == sorted(names)
    for name in names:
        assert getattr(alerts, name).__doc__, name


# --- chat injection, the clock -----------------------------------------------------------


def test_slack_text_cannot_ping_everyone_or_hide_links() -> None:
    requests, transport = recorder()
    hook = WebhookNotifier(
        f"https://hooks.slack.com/services/{SECRET_PATH}", style="slack", transport=transport
    )
    remote = (
        "card declined <!channel> <!here> <@U024BE7LH> see <http://evil.example|your bank> "
        "& reset\x1b[2J\x07 now"
    )
    hook.notify(sample_alert(details=f"- customer.created c1: {remote}"))
    hook.close()
    text = json.loads(requests[0].content)["text"]
    for live in ("<!channel>", "<!here>", "<@U024BE7LH>", "<http://"):
        assert live not in text
    assert "&lt;!channel&gt;" in text
    assert "&lt;http://evil.example|your bank&gt;" in text
    assert "&amp; reset" in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\\x1b[2J\\x07" in text  # shown, not acted on
    assert "\n" in text  # lines are kept


@pytest.mark.parametrize("style", ["teams", "json"])
def test_other_webhook_styles_carry_no_control_characters(style: Any) -> None:
    requests, transport = recorder()
    hook = WebhookNotifier(
        f"https://hooks.example.com/services/{SECRET_PATH}", style=style, transport=transport
    )
    hook.notify(sample_alert(details="bad\x1b[31m red\x00"))
    hook.close()
    text = requests[0].content.decode()
    assert "\\u001b" not in text
    assert "\\u0000" not in text
    assert "\\\\x1b[31m" in text


def test_the_alerter_takes_the_dispatchers_or_operators_clock() -> None:
    w = World({"c1": [bad_phone()]}, rules=[OldestWaitingRule(max_age=60)])
    by_dispatcher = Alerter(w.dispatcher, [])
    by_operator = Alerter(w.operator, [])
    assert by_dispatcher.queue is w.queue
    assert by_dispatcher.clock is w.clock
    assert by_operator.clock is w.clock
    mine = FakeClock()
    assert Alerter(w.dispatcher, [], clock=mine).clock is mine
    plain = Alerter(w.queue, [])
    plain.use_clock(w.clock)
    assert plain.clock is w.clock
    fixed = Alerter(w.queue, [], clock=mine)
    fixed.use_clock(w.clock)
    assert fixed.clock is mine
    # the rules see the fake time: a delivery waiting 2 fake minutes is "old"
    w.dispatcher.submit_many([Event("late", "t", {})])
    w.clock.advance(120)
    found = Alerter(w.dispatcher, [], rules=[OldestWaitingRule(max_age=60)]).check()
    assert [a.rule for a in found] == ["oldest_waiting"]
