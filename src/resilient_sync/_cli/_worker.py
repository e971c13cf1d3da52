"""``resilient-sync worker`` and ``resilient-sync pull``: run your own code.

Both take ``module:attribute`` (as uvicorn and celery do): the attribute is
the object itself (a ``Dispatcher``/``AsyncDispatcher``, a ``Source``) or a
function that returns one (a factory), imported with ``--app-dir`` (default:
the working directory) at the front of ``sys.path``.

The worker runs ``run_forever(stop)``. The first SIGTERM or SIGINT sets
``stop``: the dispatcher claims nothing more, finishes the deliveries it has
started and hands back the ones it has not (between deliveries; between
batches with an older core); the worker waits at most ``--shutdown-timeout``
for that, closes the dispatcher and its stores, logs what it did and exits 0.
A second signal exits at once (128 + the signal number); so does a shutdown
that takes longer than the timeout (exit 1), leaving what still runs to its
lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import Any, TextIO

import attrs

from .._dispatcher import LOG_FIELDS, AsyncDispatcher, Dispatcher
from .._errors import InvalidEventError
from .._model import Event, RunReport
from .._redact import redact
from .._submit import Producer
from .._text import clean, for_terminal, get_logger
from ._args import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CliError, parse_duration, usage

__all__ = ["JsonFormatter", "TextFormatter", "cmd_pull", "cmd_worker", "load_target"]

logger = get_logger("resilient_sync.worker")

# -- loading the user's object --------------------------------------------------------


def load_target(target: str, app_dir: str, what: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise usage(f"{what} {target!r}: write it as module:attribute, e.g. myapp.sync:dispatcher")
    folder = os.path.abspath(app_dir)
    if not os.path.isdir(folder):
        raise usage(f"--app-dir {app_dir!r} is not a directory")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CliError(
                f"cannot import {module_name!r} (from {target}): no module named {missing!r} "
                f"in {folder} or the installed packages; run from the project folder or "
                "pass --app-dir"
            ) from exc
        raise _import_failed(module_name, exc) from exc
    except Exception as exc:
        raise _import_failed(module_name, exc) from exc
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:  # noqa: PERF203 - a few parts at most
            raise CliError(
                f"cannot find {attribute!r} in module {module_name!r} (from {target})"
            ) from None
    return found


def _user_code_failed(what: str, exc: BaseException) -> CliError:
    """The one-line error for the user's module or factory failing (its text
    through the gate: redacted, capped, printable); with RESILIENT_SYNC_DEBUG
    the exception itself propagates, traceback and all."""
    if os.environ.get("RESILIENT_SYNC_DEBUG"):
        raise exc
    return CliError(
        f"{what} failed: {type(exc).__name__}: {clean(exc, limit=500, single_line=True)} "
        "(set RESILIENT_SYNC_DEBUG=1 to see the traceback)"
    )


def _import_failed(module_name: str, exc: BaseException) -> CliError:
    return _user_code_failed(f"importing {module_name!r}", exc)


def _call_factory(factory: Callable[[], Any], target: str) -> Any:
    try:
        return factory()
    except Exception as exc:
        raise _user_code_failed(f"{target}()", exc) from exc


# -- logging -------------------------------------------------------------------------

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record (the dispatcher's delivery_id, event_id ...)."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_") and value is not None
    }


class TextFormatter(logging.Formatter):
    """``2026-11-22T18:40:12Z INFO resilient_sync: message key=value ...`` (UTC);
    the key=value pairs are the dispatcher's per-delivery fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        pairs = []
        for key, value in _fields(record).items():
            if key not in LOG_FIELDS:
                continue
            text = for_terminal(value)
            if not text or any(c.isspace() or c in "\"'=" for c in text):
                text = json.dumps(text)
            pairs.append(f"{key}={text}")
        return for_terminal(f"{base} {' '.join(pairs)}".rstrip())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``,
    the record's fields, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value if isinstance(value, (int, float, bool)) else str(value))
        if record.exc_info:
            data["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True, default=str)


def _configure_logging(level: str, fmt: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    if level != "debug":  # one INFO line per HTTP request is for debugging
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


# -- signals -------------------------------------------------------------------------


@attrs.define
class _Stopping:
    """What the signal handlers know: how many signals came, and when the first."""

    count: int = 0
    since: float | None = None
    name: str = ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _second_signal(signum: int) -> None:
    logger.warning(
        "%s again: exiting at once; deliveries that are running are left to their leases "
        "(claimed again when those expire)",
        _signal_name(signum),
    )
    _flush_logs()
    os._exit(128 + signum)


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in saved:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


# -- the worker ---------------------------------------------------------------------


def _describe(dispatcher: Dispatcher | AsyncDispatcher, timeout: float) -> dict[str, Any]:
    return {
        "worker_id": dispatcher.worker_id,
        "dispatcher": type(dispatcher).__name__,
        "queue": redact(repr(dispatcher.queue)),
        "idempotency": redact(repr(dispatcher.idempotency)),
        "destinations": ",".join(dispatcher.destinations),
        "lease": dispatcher.lease.total_seconds(),
        "batch_size": dispatcher.batch_size,
        "concurrency": dispatcher.concurrency,
        "shutdown_timeout": timeout,
        "pid": os.getpid(),
    }


def _report_fields(report: RunReport) -> dict[str, int]:
    return {field.name: getattr(report, field.name) for field in attrs.fields(RunReport)}


def _started(info: dict[str, Any]) -> None:
    logger.info(
        "worker started: %s %s for %s; stores %s and %s; lease %gs, batch size %d, "
        "concurrency %d, shutdown timeout %gs",
        info["dispatcher"],
        info["worker_id"],
        info["destinations"],
        info["queue"],
        info["idempotency"],
        info["lease"],
        info["batch_size"],
        info["concurrency"],
        info["shutdown_timeout"],
        extra={"event": "worker_started", **info},
    )


def _stopped(report: RunReport, seconds: float, worker_id: str) -> None:
    counts = _report_fields(report)
    logger.info(
        "worker stopped after %.1fs: claimed %d, succeeded %d, retry_scheduled %d, "
        "needs_action %d, released %d, lost_lease %d",
        seconds,
        *counts.values(),
        extra={"event": "worker_stopped", "worker_id": worker_id, "seconds": seconds, **counts},
    )


def _close(dispatcher: Dispatcher | AsyncDispatcher) -> None:
    """Close the dispatcher, its destinations (those with a ``close()``, such
    as the HTTP ones) and its stores; each failure is logged, none is fatal."""
    closers: list[tuple[str, Callable[[], object]]] = [("the dispatcher", dispatcher.close)]
    for name, destination in dispatcher.destinations.items():
        close_destination = getattr(destination, "close", None)
        if callable(close_destination):
            closers.append((f"destination {name!r}", close_destination))
    closers += [
        ("the queue store", dispatcher.queue.close),
        ("the idempotency store", dispatcher.idempotency.close),
    ]
    for what, close in closers:
        try:
            close()
        except Exception:  # noqa: PERF203 - three calls
            logger.exception("closing %s failed", what)


def _timed_out(timeout: float) -> None:
    logger.error(
        "the shutdown timeout (%gs) passed with deliveries still running; exiting now, they "
        "are left to their leases (claimed again when those expire)",
        timeout,
    )
    _flush_logs()
    os._exit(EXIT_FAILURE)


def _run_threaded(dispatcher: Dispatcher, timeout: float) -> RunReport | None:
    """``run_forever`` in a thread, the signals in the main thread; the
    report, or None when the loop ended with an error (logged)."""
    stop = threading.Event()
    state = _Stopping()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["report"] = dispatcher.run_forever(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        state.count += 1
        if state.count > 1:
            _second_signal(signum)
        state.since, state.name = time.monotonic(), _signal_name(signum)
        stop.set()

    thread = threading.Thread(target=work, name="resilient-sync-worker", daemon=True)
    with _signals(on_signal):
        thread.start()
        told = False
        while thread.is_alive():
            thread.join(0.1)
            if state.since is None:
                continue
            if not told:
                told = True
                _stopping(state.name, timeout)
            if time.monotonic() - state.since > timeout:
                _timed_out(timeout)
    if "error" in outcome:
        error = outcome["error"]
        logger.error(
            "the worker loop ended with %s: %s", type(error).__name__, error, exc_info=error
        )
        return None
    report: RunReport = outcome["report"]
    return report


def _stopping(name: str, timeout: float) -> None:
    logger.info(
        "%s: stopping; claiming nothing more, finishing the deliveries that have started "
        "and handing back the rest (waiting at most %gs)",
        name,
        timeout,
    )


async def _run_async(dispatcher: AsyncDispatcher, timeout: float) -> RunReport:
    """``run_forever`` with the signals handled by the event loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    state = _Stopping()

    def on_signal(signum: int) -> None:
        state.count += 1
        if state.count > 1:
            _second_signal(signum)
        state.since, state.name = time.monotonic(), _signal_name(signum)
        _stopping(state.name, timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        task = asyncio.ensure_future(dispatcher.run_forever(stop))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                _timed_out(timeout)
        stopping.cancel()
        return task.result()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve_async(
    made: Any, target: str, timeout: float
) -> tuple[AsyncDispatcher, RunReport, float]:
    """Build (an ``async def`` factory runs in this loop) and run an AsyncDispatcher."""
    if inspect.iscoroutinefunction(made):
        try:
            made = await made()
        except Exception as exc:
            raise _user_code_failed(f"{target}()", exc) from exc
    if not isinstance(made, AsyncDispatcher):
        raise _not_a_dispatcher(made, target)
    started = time.monotonic()
    _started(_describe(made, timeout))
    report = await _run_async(made, timeout)
    return made, report, time.monotonic() - started


def _not_a_dispatcher(found: Any, target: str) -> CliError:
    return CliError(
        f"{target} is {type(found).__name__ if found is not None else 'None'}, not a "
        "Dispatcher or an AsyncDispatcher (or a function that returns one)"
    )


def cmd_worker(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """Run the user's dispatcher until SIGTERM/SIGINT; returns the exit code."""
    timeout = parse_duration(args.shutdown_timeout, "--shutdown-timeout").total_seconds()
    _configure_logging(args.log_level, args.log_format)
    found = load_target(args.target, args.app_dir, "worker target")
    made: Any = found
    if not isinstance(found, (Dispatcher, AsyncDispatcher)):
        if not callable(found):
            raise _not_a_dispatcher(found, args.target)
        if not inspect.iscoroutinefunction(found):
            made = _call_factory(found, args.target)
    if isinstance(made, AsyncDispatcher) or inspect.iscoroutinefunction(made):
        dispatcher_async, report_async, seconds = asyncio.run(
            _serve_async(made, args.target, timeout)
        )
        _stopped(report_async, seconds, dispatcher_async.worker_id)
        _close(dispatcher_async)
        return EXIT_OK
    if not isinstance(made, Dispatcher):
        raise _not_a_dispatcher(made, args.target)
    started = time.monotonic()
    _started(_describe(made, timeout))
    report = _run_threaded(made, timeout)
    if report is not None:
        _stopped(report, time.monotonic() - started, made.worker_id)
    _close(made)
    return EXIT_OK if report is not None else EXIT_FAILURE


# -- pull ----------------------------------------------------------------------------


class _Counting:
    """A source as the producer sees it: counts what it read, and reads
    nothing more once ``stop`` is set (so a pull ends between two pages)."""

    def __init__(self, source: Any, stop: threading.Event) -> None:
        self.source = source
        self.name: str = source.name
        self.stop = stop
        self.events = 0
        self.pages = 0

    def read(self, cursor: str | None, limit: int) -> tuple[Sequence[Event], str | None]:
        if self.stop.is_set():
            return [], cursor
        result = self.source.read(cursor, limit)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        events, next_cursor = result
        self.events += len(events)
        self.pages += 1
        return events, next_cursor


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _source(found: Any, target: str) -> Any:
    source = found
    if not (
        isinstance(getattr(found, "name", None), str) and callable(getattr(found, "read", None))
    ):
        if not callable(found):
            raise CliError(
                f"{target} is {type(found).__name__}, not a Source (an object with a name and "
                "read(cursor, limit)) or a function that returns one"
            )
        source = _call_factory(found, target)
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name or not callable(getattr(source, "read", None)):
        raise CliError(
            f"{target} gave {type(source).__name__}, not a Source (it needs a name: str and "
            "read(cursor, limit))"
        )
    return source


def cmd_pull(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """Pull a source once, or every ``--every``; returns the exit code."""
    from . import DEFAULT_DB, open_for  # noqa: PLC0415 - the package imports this module

    every = parse_duration(args.every, "--every").total_seconds() if args.every else None
    if args.limit < 1:
        raise usage(f"--limit must be 1 or more, got {args.limit}")
    source = _source(load_target(args.target, args.app_dir, "pull target"), args.target)
    url = args.db or os.environ.get("RESILIENT_SYNC_DB") or DEFAULT_DB
    queue, idempotency = open_for(url, write=True, create=True)
    idempotency.close()
    stop = threading.Event()
    state = _Stopping()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        state.count += 1
        if state.count > 1:
            _second_signal(signum)
        state.name = _signal_name(signum)
        stop.set()

    try:
        producer = Producer(queue, args.to)
    except ValueError as exc:
        queue.close()
        raise usage(str(exc)) from exc
    runs = 0
    try:
        with _signals(on_signal) if every is not None else contextlib.nullcontext():
            while True:
                runs += 1
                counting = _Counting(source, stop)
                try:
                    enqueued = producer.pull(counting, limit=args.limit)
                except InvalidEventError as exc:
                    raise CliError(
                        f"source {source.name!r} gave an invalid event, so the pull stopped "
                        f"before that page (its cursor was not moved): {exc}"
                    ) from exc
                except KeyboardInterrupt:
                    print(
                        f"resilient-sync: interrupted: {counting.pages} pages of "
                        f"{source.name!r} were saved (each page and its cursor are one "
                        "transaction); pull again to go on from there",
                        file=err,
                    )
                    return EXIT_INTERRUPTED
                _say_pulled(args, out, source.name, counting, enqueued, len(args.to))
                if every is None or stop.wait(every) or stop.is_set():
                    break
    finally:
        queue.close()
    if state.name:
        print(f"resilient-sync: {state.name}: stopped after {runs} pulls", file=err)
    return EXIT_OK


def _say_pulled(
    args: argparse.Namespace, out: TextIO, name: str, counting: _Counting, enqueued: int, per: int
) -> None:
    skipped = max(counting.events * per - enqueued, 0)
    if getattr(args, "json", False):
        print(
            json.dumps(
                {
                    "action": "pull",
                    "source": name,
                    "at": datetime.now(timezone.utc).isoformat(),
                    "events": counting.events,
                    "enqueued": enqueued,
                    "skipped": skipped,
                }
            ),
            file=out,
        )
    else:
        print(
            for_terminal(
                f"Pulled {counting.events} events from {name}: enqueued {enqueued} deliveries, "
                f"skipped {skipped} already known."
            ),
            file=out,
        )
    out.flush()
