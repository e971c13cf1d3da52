"""SQLite stores: the durable embedded default, on the standard library's ``sqlite3``.

One file may hold both stores (``open_stores("sqlite:///sync.db")`` opens
both on one connection), and the application's own tables too: every table
is prefixed ``resilient_sync_``.

How the promises are kept:

- **Durable.** The file is in WAL mode; every write is one explicit
  transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a call happens entirely
  or not at all. With ``synchronous="FULL"`` (the default) each commit is
  fsynced before the call returns: a submitted event survives ``kill -9``
  *and* a power loss. ``"NORMAL"`` skips that fsync: still safe against a
  crashed or killed process, but a power loss (or OS crash) may undo the
  last commits; the file stays consistent either way. ``"EXTRA"`` is
  accepted and, in WAL mode, gives what ``FULL`` gives (its extra directory
  sync concerns rollback journals).
  Speed comes from batching: a whole claim or completion batch is one
  commit, and when both stores share one file (``open_stores``) the
  dispatcher joins them (:meth:`SQLiteQueueStore.transaction`): a claim and
  its idempotency locks are one commit, a batch's completed keys and its
  outcomes another. Claims and idempotency locks (``claim``, ``begin``,
  ``release``) commit without an fsync: they only matter while the
  processes on this machine live, and a power loss ends every one of them
  (the deliveries are claimed again, under the same idempotency keys). A
  ``finish`` on a shared file is followed, or joined, by the queue's durable
  ``complete``: that fsync makes it durable too (the WAL is replayed in
  order); a power loss before it undoes both, so the delivery is attempted
  again under the same idempotency key, which is the window no client can
  close and the destination's key dedupe covers. A killed process loses
  none of them (the OS still holds the pages).
- **Several threads and processes.** A store object owns one connection,
  guarded by a lock (the dispatcher calls stores from a thread pool and from
  ``asyncio.to_thread``). Processes share the file: a write waits up to
  ``busy_timeout`` seconds for another process's transaction, reads never
  wait (WAL snapshots). A forked child opens its own connection. The file
  must be on a local disk (WAL needs shared memory; not NFS/SMB).
- **Errors.** ``sqlite3`` errors become :class:`~resilient_sync.StoreError`
  naming the file and saying what to do (locked, read-only, disk full,
  corrupted); the failed transaction is rolled back, so what was committed
  before is intact. A file that cannot be read is never modified.
- **Schema.** Versioned migrations (``sql/sqlite/migrations/NNNN_name.sql``)
  run on open, once, under the write lock; the applied versions are kept in
  ``resilient_sync_migrations`` (``PRAGMA user_version`` is left to the
  application). Queries live in ``sql/sqlite/queries.sql``.

Needs SQLite 3.24 or newer with the JSON functions (every supported Python
ships one).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import select
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import cache
from importlib import resources
from typing import Any, overload

import attrs
from typing_extensions import Self

from .._errors import StoreError
from .._json import error_from_json, error_to_json, event_from_json, event_to_json
from .._model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryStatus,
    DestinationState,
    ErrorCategory,
    ErrorInfo,
    Event,
    IdempotencyRecord,
    IdempotencyState,
    Page,
    QueueStats,
)
from ._common import (
    NEXT_DUE_WINDOW,
    check_attempt,
    check_claim_args,
    check_completions,
    check_cursor,
    check_deliveries,
    check_destination_args,
    check_int,
    check_list_args,
    check_new_events,
    check_page_args,
    check_pairs,
    check_results,
    check_text,
    check_texts,
    check_time,
    check_transition_args,
    checked_event_json,
    decode_cursor,
    encode_cursor,
    fill_audit,
    like_pattern,
    outcome_value,
    unencodable,
    unmatchable,
    wrong_type,
)

__all__ = ["SQLiteIdempotencyStore", "SQLiteQueueStore"]

logger = logging.getLogger("resilient_sync")

#: Accepted values of ``synchronous`` (``OFF`` is refused: it can corrupt the file).
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
DEFAULT_BUSY_TIMEOUT = 10.0
_MIN_SQLITE = (3, 24, 0)

# --- SQL files ----------------------------------------------------------------

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def _fold(text: str | None) -> str | None:
    """``rs_fold(x)``: ``x`` in lower case by Unicode's rules (SQLite's LIKE
    and lower() fold ASCII letters only)."""
    return text.lower() if text is not None else None


def _add_functions(conn: sqlite3.Connection) -> None:
    _bind_none_directly()
    conn.create_function("rs_fold", 1, _fold, deterministic=True)


#: An adapter for ``None`` that returns it (a C call: ``{}.get(None)`` is None).
_NONE_AS_IS: Callable[[object], None] = dict[object, None]().get


def _bind_none_directly() -> None:
    """Register ``None -> None`` as the sqlite3 module's adapter for ``None``,
    unless the process already has one.

    The sqlite3 module binds ``int``, ``float`` and ``str`` parameters
    directly, but sends every other value, ``None`` included, through its
    adapter protocol, which without a registered adapter looks up
    ``__adapt__`` and ``__conform__`` and formats (then drops) an
    ``AttributeError`` for each: about 2,000 CPU instructions per ``None``
    bound, and a delivery binds about 19 of them (its row's empty columns,
    its completion, its audit record); ``bench/instructions.py`` counted
    5 % of all the work. With an adapter registered the module finds it in
    one dict look-up. The result is the same NULL; the registry is the
    process's (``sqlite3.adapters``), so an adapter for ``None`` registered
    by the application first is kept, and one it registers later replaces
    this one. Visible to the application: ``sqlite3.adapt(None)`` returns
    None instead of raising ``ProgrammingError`` (docs: choose-a-store)."""
    key = (type(None), sqlite3.PrepareProtocol)
    if key not in sqlite3.adapters:
        sqlite3.register_adapter(type(None), _NONE_AS_IS)


def _sql_dir() -> Any:
    return resources.files("resilient_sync.stores") / "sql" / "sqlite"


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: <name>`` sections into ``{name: sql}``.

    Comment lines inside a section are dropped; the rest is kept verbatim.
    """
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if name is not None:
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice")
            queries[name] = "\n".join(lines).strip()

    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            flush()
            name, lines = match.group(1), []
        elif name is not None and not line.lstrip().startswith("--"):
            lines.append(line)
    flush()
    return queries


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (``sqlite3.complete_statement``)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of the script: {rest[:80]!r}")
    return statements


@attrs.frozen
class Migration:
    """One versioned schema change (``sql/sqlite/migrations/NNNN_name.sql``)."""

    version: int
    name: str
    statements: tuple[str, ...]


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, oldest first."""
    found: list[Migration] = []
    for entry in (_sql_dir() / "migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(Migration(int(match.group(1)), match.group(2), tuple(split_statements(text))))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(
            f"SQLite migrations must be numbered 1, 2, 3 ... without gaps: {versions}"
        )
    return tuple(found)


@cache
def latest_version() -> int:
    """The schema version this package writes (its last migration's)."""
    return migrations()[-1].version


@cache
def _queries() -> dict[str, str]:
    return parse_queries((_sql_dir() / "queries.sql").read_text(encoding="utf-8"))


class _Queries:
    """Attribute access to the named queries (``Q.claim_candidates``), loaded
    on first use and then cached as plain attributes."""

    def __getattr__(self, name: str) -> str:
        try:
            sql = _queries()[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in queries.sql") from None
        setattr(self, name, sql)
        return sql


Q = _Queries()

# --- value mapping ------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_STATUS = {s.value: s for s in DeliveryStatus}
_FINAL = frozenset(s for s in DeliveryStatus if s.is_final)
_WAITING = (DeliveryStatus.PENDING, DeliveryStatus.RETRY_SCHEDULED)
#: At most this many deliveries whose time has come (a retry, a lease's end)
#: a claim makes ready before it claims: a mass of retries falling due
#: together is spread over the next claims, each holding the write lock for
#: a few milliseconds, instead of the first one for all of them.
PROMOTE_PER_CLAIM = 1000


@overload
def _us(value: datetime) -> int: ...
@overload
def _us(value: datetime | None) -> int | None: ...
def _us(value: datetime | None) -> int | None:
    """A timezone-aware datetime as integer microseconds since the epoch
    (the store's methods have refused naive ones with ``check_time``;
    should one get here, it is refused the same way, not with the
    subtraction's message)."""
    if value is None:
        return None
    try:
        return (value - _EPOCH) // _US
    except TypeError:
        check_time(value, "a time")
        raise


def _dt(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _dumps(value: Any) -> str | None:
    return None if value is None else _ENCODE(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _due_at(
    status: DeliveryStatus, next_attempt_at: int | None, lease: int | None, written: int
) -> int | None:
    """When a row in ``status``, written at ``written``, may next be claimed
    (schema 7): > 0, waiting for that time (in the timed index); <= 0, ready
    since minus that time (0: at once; in the ready index); NULL, not by time."""
    if status is DeliveryStatus.PENDING or status is DeliveryStatus.RETRY_SCHEDULED:
        if next_attempt_at is None or next_attempt_at <= 0:  # (a time before 1970: at once)
            return 0
        return -next_attempt_at if next_attempt_at <= written else next_attempt_at
    if status is DeliveryStatus.IN_FLIGHT:
        return None if lease is None else max(lease, 1)  # > 0: waiting for its time
    return None


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        seq=row[0],
        id=row[1],
        event=event_from_json(row[2]),
        destination=row[3],
        status=_STATUS[row[4]],
        idempotency_key=row[5],
        attempts=row[6],
        next_attempt_at=_dt(row[7]),
        last_error=error_from_json(row[8]),
        result=_loads(row[9]),
        created_at=_EPOCH + timedelta(microseconds=row[10]),
        updated_at=_EPOCH + timedelta(microseconds=row[11]),
        lease_token=row[12],
        lease_owner=row[13],
        lease_expires_at=_dt(row[14]),
    )


def _audit_row(record: Attempt) -> tuple[Any, ...]:
    check_attempt(record)
    finished = _us(record.finished_at)
    error = record.error
    return (
        record.delivery_id,
        record.destination,
        record.action,
        record.actor,
        finished if record.started_at is record.finished_at else _us(record.started_at),
        finished,
        record.number,
        outcome_value(record.outcome),
        record.reason,
        error_to_json(error),
        _dumps(dict(record.details)) if record.details else None,
        _category(error),
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        id=row[0],
        delivery_id=row[1],
        destination=row[2],
        action=row[3],
        actor=row[4],
        started_at=_EPOCH + timedelta(microseconds=row[5]),
        finished_at=_EPOCH + timedelta(microseconds=row[6]),
        number=row[7],
        outcome=_STATUS[row[8]] if row[8] is not None else None,
        reason=row[9],
        error=error_from_json(row[10]),
        details=_loads(row[11]) or {},
    )


def _destination_state(row: Sequence[Any]) -> DestinationState:
    return DestinationState(
        name=row[0],
        paused=bool(row[1]),
        paused_reason=row[2],
        hold_until=_dt(row[3]),
        hold_reason=row[4],
        updated_at=_dt(row[5]),
    )


def _category(error: ErrorInfo | None) -> str | None:
    # (``_value_``: the member's value without the ``value`` property's descriptor call)
    return error.category._value_ if error is not None else None


# --- the database file ----------------------------------------------------------

_OPEN_DATABASES: weakref.WeakSet[_Database] = weakref.WeakSet()
#: connections inherited through fork(): kept referenced so that they are never
#: closed in the child (closing one there could disturb the parent's locks)
_INHERITED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for database in list(_OPEN_DATABASES):
        database._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_path(path: str | os.PathLike[str]) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if not text or text == ":memory:" or text.startswith("file:"):
        raise ValueError(
            f"SQLite stores need a file path, got {text!r}; "
            "use MemoryQueueStore/MemoryIdempotencyStore for an in-memory queue"
        )
    # absolute: a later os.chdir() (a daemon detaching) must not point the
    # store, its file check or its wake-up directory somewhere else
    return os.path.abspath(text)


def _check_synchronous(value: str) -> str:
    mode = value.upper() if isinstance(value, str) else value
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {value!r} "
            "(OFF is refused: an OS crash could corrupt the file)"
        )
    return str(mode)


def _check_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"busy_timeout must be a number of seconds >= 0, got {value!r}")
    return float(value)


class _Database:
    """One SQLite file: a lazily (re)opened connection, its lock, error mapping."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str,
        busy_timeout: float,
        read_only: bool = False,
    ) -> None:
        self.path = _check_path(path)
        self.synchronous = _check_synchronous(synchronous)
        self.busy_timeout = _check_timeout(busy_timeout)
        self.read_only = bool(read_only)
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        #: (st_dev, st_ino) of the file opened: a write first checks that the
        #: path still names it (a file deleted or replaced while open would
        #: take commits into an unlinked inode and lose them)
        self._identity: tuple[int, int] | None = None
        self.wakeup = _Wakeup(self)
        #: inside transaction(): its durability (None: not inside one)
        self._joined: bool | None = None
        #: the connection while it runs at synchronous=NORMAL for a claim: a
        #: write finding it still set (an interrupt before the restore)
        #: restores the configured level first
        self._relaxed: sqlite3.Connection | None = None
        #: True when a queue store and an idempotency store share this file
        #: (``open_pair``): the queue's durable commits then cover the
        #: idempotency store's ``finish`` too (one WAL, replayed in order).
        self.shared_with_queue = False
        self._users = 0
        self._closed = False
        with self.lock:
            self._connection()
        _OPEN_DATABASES.add(self)

    @property
    def where(self) -> str:
        """The file, as named in messages."""
        return os.path.abspath(self.path)

    # -- connection --------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"SQLite store {self.where!r} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"SQLite store {self.where!r}: needs SQLite >= 3.24, "
                f"this Python has {sqlite3.sqlite_version}"
            )
        if self.read_only:
            return self._open_read_only()
        self._create_owner_only()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            _add_functions(conn)
            self._identity = self._stat()
        except sqlite3.Error as exc:
            raise self.error("open", exc) from exc
        except OSError as exc:
            raise self.error("open", exc) from exc
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"SQLite store {self.where!r}: could not switch the file to WAL mode "
                    f"(journal_mode is {mode!r}); put it on a local disk"
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("SELECT json('[]')")
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self.error("open", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_owner_only(self) -> None:
        """A new queue file is created readable by its owner only (0600): it
        holds customers' data. SQLite gives its -wal and -shm files the
        same permissions."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        except OSError:
            return  # sqlite3.connect reports the problem with the right words
        os.close(fd)

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino)

    def check_file(self, action: str) -> None:
        """Refuse to write when the path no longer names the file that was
        opened (deleted, or replaced by another): the commit would be lost."""
        if self._identity is None:
            return
        try:
            same = self._stat() == self._identity
        except OSError:
            same = False
        if not same:
            raise StoreError(
                f"SQLite store {self.where!r}: {action} refused: the database file was deleted "
                "or replaced while this process had it open, so nothing written now would "
                "survive; nothing was written. Restart the process (it reopens the file at "
                "that path) and check what removed the file"
            )

    def _open_read_only(self) -> sqlite3.Connection:
        """Open for reading only: never created, never migrated, never written
        (``mode=ro``); a file without the library's tables is refused by name."""
        if not os.path.exists(self.path):
            raise StoreError(f"SQLite store {self.where!r}: no such file (opened read-only)")
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        try:
            conn = self._connect_uri(uri)
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                # A WAL file with no -wal/-shm beside it, in a folder we may not
                # write: SQLite cannot create the -shm it reads through. With no
                # -wal file everything is in the main file, so read it as is.
                if os.path.exists(self.path + "-wal"):
                    raise
                conn.close()
                conn = self._connect_uri(uri + "&immutable=1")
        except sqlite3.Error as exc:
            raise self.error("open (read-only)", exc) from exc
        try:
            (ours,) = conn.execute(Q.has_our_tables).fetchone()
            if ours < 2:
                raise StoreError(
                    f"SQLite store {self.where!r}: this file holds no resilient_sync queue "
                    "(no resilient_sync_ tables); point --db at the queue's file"
                )
            version = self._version(conn)
            latest = latest_version()
            if version != latest:
                raise StoreError(
                    f"SQLite store {self.where!r}: its schema is at version {version}, this "
                    f"resilient_sync reads version {latest}; "
                    + (
                        "open it once read-write (a worker does it) to migrate it"
                        if version < latest
                        else "upgrade resilient_sync"
                    )
                )
        except sqlite3.Error as exc:
            conn.close()
            raise self.error("open (read-only)", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_uri(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        _add_functions(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        known = migrations()
        latest = known[-1].version
        current = self._version(conn)
        if current == latest:
            return
        if current > latest:
            raise StoreError(
                f"SQLite store {self.where!r}: its schema is at version {current}, newer than "
                f"this resilient_sync knows ({latest}); upgrade resilient_sync"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._version(conn)  # another process may have migrated meanwhile
            for migration in known:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    Q.record_migration, {"version": migration.version, "name": migration.name}
                )
                logger.info(
                    "migrated SQLite store %s to schema version %d (%s)",
                    self.where,
                    migration.version,
                    migration.name,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def check_schema(self, conn: sqlite3.Connection, action: str) -> None:
        """Refuse to write if a newer resilient_sync migrated the file while
        this process had it open: rows written by this version could then be
        wrong for the newer schema (schema 4 added a column the claim of
        ordered deliveries reads, which an older writer would leave unset).
        Called inside the write transaction, so the check holds until commit:
        one read of the (small) migrations table per transaction, about 180
        CPU instructions per delivery in batches of 100."""
        (version,) = conn.execute(Q.schema_version).fetchone()
        latest = latest_version()
        if version > latest:
            raise StoreError(
                f"SQLite store {self.where!r}: {action} refused, nothing was written: "
                f"another process migrated the file to schema version {version} while this "
                f"one had it open, and this resilient_sync writes version {latest}; restart "
                "this process with the upgraded resilient_sync"
            )

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        (exists,) = conn.execute(Q.has_migrations_table).fetchone()
        if not exists:
            return 0
        (version,) = conn.execute(Q.schema_version).fetchone()
        return int(version)

    def _forget_after_fork(self) -> None:
        self.lock = threading.RLock()
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None

    def acquire(self) -> None:
        """One more store object uses this file."""
        with self.lock:
            self._users += 1

    def release(self) -> None:
        """A store object is closed; close the connection with the last one."""
        with self.lock:
            self._users -= 1
            if self._users > 0 or self._closed:
                return
            self._closed = True
            self.wakeup.close()
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self.error("close", exc) from exc

    # -- transactions ------------------------------------------------------

    @contextlib.contextmanager
    def write(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (or rollback).

        ``durable=False`` commits without the fsync of ``synchronous=FULL``
        (the ``NORMAL`` level, for this transaction only): for rows that only
        matter while the processes that wrote them live (idempotency locks).
        Such a commit survives a killed process; a power loss may undo it,
        but never a later durable commit (the WAL is replayed in order).
        """
        with self.lock:
            if self.read_only:
                raise StoreError(
                    f"SQLite store {self.where!r}: {action} refused: the store was opened read-only"
                )
            if self._joined is not None:  # inside transaction(): one commit at its end
                if durable and not self._joined:
                    raise RuntimeError(
                        f"{action} needs a durable commit inside a transaction(durable=False)"
                    )
                assert self._conn is not None  # noqa: S101 - opened by transaction()
                yield self._conn
                return
            conn = self._connection()
            self.check_file(action)
            if self._relaxed is conn:  # left relaxed by an interrupt: never commit weaker
                self._restore_synchronous(conn, action)
            relax = not durable and self.synchronous != "NORMAL"
            try:
                if relax:
                    self._relaxed = conn
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if relax:
                    self._restore_synchronous(conn, action)
                raise self.error(action, exc) from exc
            except BaseException:
                # Ctrl-C (or another signal's exception) while BEGIN waited for
                # the lock: the transaction may have begun; end it, restore
                self._rollback(conn, action)
                if relax:
                    self._restore_synchronous(conn, action)
                raise
            try:
                self.check_schema(conn, action)
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn, action)
                raise self.error(action, exc) from exc
            except UnicodeEncodeError as exc:  # binding a value: nothing of it was written
                self._rollback(conn, action)
                raise unencodable(f"SQLite store {self.where!r}", action, exc) from exc
            except BaseException:
                self._rollback(conn, action)
                raise
            finally:
                if relax:
                    self._restore_synchronous(conn, action)

    @contextlib.contextmanager
    def transaction(self, *, durable: bool) -> Iterator[None]:
        """Every write of this thread inside is one transaction, committed at
        the end (with an fsync when ``durable``), or rolled back as a whole.
        The stores sharing this file (``open_pair``) join it: the dispatcher
        takes a claim and its idempotency locks, or records a batch's keys
        and outcomes, in one commit instead of two."""
        with self.lock:
            if self._joined is not None:
                yield  # already inside one: join it
                return
            with self.write("transaction", durable=durable):
                self._joined = durable
                try:
                    yield
                finally:
                    self._joined = None

    def _restore_synchronous(self, conn: sqlite3.Connection, action: str) -> None:
        """Back to the configured level; a connection that refuses is dropped
        (the next call reconnects with the right level), never kept weaker."""
        if self._conn is not conn:
            return  # already dropped by a failed rollback
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._relaxed = None
        except sqlite3.Error as exc:
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            raise self.error(f"{action} (restoring synchronous={self.synchronous})", exc) from exc

    @contextlib.contextmanager
    def read(self, action: str, *, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """Reads; with ``snapshot`` in one read transaction (a consistent view)."""
        with self.lock:
            conn = self._connection()
            try:
                if snapshot:
                    conn.execute("BEGIN")
                yield conn
                if snapshot:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn, action)
                raise self.error(action, exc) from exc
            except BaseException:
                self._rollback(conn, action)
                raise

    def _rollback(self, conn: sqlite3.Connection, action: str) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # the connection is in an unknown state: drop it, the next call reopens
            logger.exception(
                "SQLite store %s: rollback after a failed %s failed; reconnecting",
                self.where,
                action,
            )
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- errors ------------------------------------------------------------

    def error(self, action: str, exc: BaseException) -> StoreError:
        """A :class:`StoreError` naming the file, the action and what to do."""
        return translate_error(self.where, action, exc, busy_timeout=self.busy_timeout)


def translate_error(
    where: str, action: str, exc: BaseException, *, busy_timeout: float | None = None
) -> StoreError:
    """Map a ``sqlite3`` error to a :class:`StoreError` that names the file."""
    code = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc)
    lowered = text.lower()
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        waited = f" for more than busy_timeout={busy_timeout:g}s" if busy_timeout else ""
        hint = (
            f"the database is locked: another connection held it{waited}; "
            "this call wrote nothing, retry later"
        )
    elif code.startswith("SQLITE_READONLY") or "readonly" in lowered:
        hint = (
            "the file is read-only (its directory must also be writable, for the -wal and "
            "-shm files); this call wrote nothing"
        )
    elif code == "SQLITE_FULL" or "is full" in lowered:
        hint = (
            "the disk is full; this call wrote nothing and what was committed before is "
            "intact: free some space and retry"
        )
    elif (
        code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "malformed" in lowered
        or "not a database" in lowered
    ):
        hint = (
            "the file is corrupted or is not a SQLite database; resilient_sync left it "
            "untouched: restore it from a backup (check it with "
            "`sqlite3 FILE 'PRAGMA integrity_check'`)"
        )
    elif code.startswith("SQLITE_CANTOPEN") or "unable to open" in lowered:
        hint = "cannot open the file: does its directory exist, and may this process write there?"
    elif code.startswith("SQLITE_IOERR") or "i/o error" in lowered:
        hint = (
            "disk I/O error: check the disk and the system log; this call's transaction "
            "was rolled back"
        )
    else:
        hint = "SQLite error"
    return StoreError(f"SQLite store {where!r}: {action} failed: {hint} ({text})")


class _Wakeup:
    """Wakes idle workers of one SQLite file, across processes, within
    milliseconds of new work (what LISTEN/NOTIFY does for PostgreSQL).

    Each waiting store keeps a FIFO in the directory ``<file>.wake/`` (owner
    only). A commit that makes work claimable (an enqueue, a hand-back, an
    operator's re-sync, a resumed destination) writes one byte into every
    FIFO there: a reader blocked in ``select`` returns at once. A FIFO whose
    reader is gone refuses the write (``ENXIO``) and is removed. Where FIFOs
    do not exist (Windows), a waiter polls ``PRAGMA data_version`` instead.
    """

    def __init__(self, database: _Database) -> None:
        self._database = database
        self.directory = database.path + ".wake"
        self._fifo: str | None = None
        self._fds: tuple[int, int] | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._cannot_listen = False  # said once; polling since
        self._changes = 0  # this file's writes in this process (seen by _poll)

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "mkfifo") and hasattr(os, "O_NONBLOCK")

    def notify(self) -> None:
        """Wake every waiting worker of this file (cheap when none waits)."""
        self._changes += 1  # a poller sharing this connection sees no data_version change
        if not self.supported():
            return
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # nobody has ever waited on this file
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                # never through a link, and only into a FIFO: whoever could
                # write to the directory must not make us write into a file
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):  # its reader is gone
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                continue
            try:
                if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    continue
                os.write(fd, b"!")
            except OSError:  # full (it will wake anyway) or closing: nothing to do
                pass
            finally:
                os.close(fd)

    def _listen(self) -> bool:
        """Make this process's FIFO (once per process); True if it is new."""
        if self._fds is not None and self._pid == os.getpid():
            return False
        self._fds = None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._check_private()
        path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}")
        os.mkfifo(path, 0o600)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # our own writer end stays open, so the reader never sees end-of-file
        keeper = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self._fifo, self._fds, self._pid = path, (reader, keeper), os.getpid()
        return True

    def _check_private(self) -> None:
        """The directory must be ours and writable by nobody else: another local
        user who made it first could remove our FIFOs (lost wake-ups) or plant
        links; then we poll instead."""
        info = os.lstat(self.directory)
        geteuid = getattr(os, "geteuid", None)
        if (
            not stat.S_ISDIR(info.st_mode)
            or (geteuid is not None and info.st_uid != geteuid())
            or info.st_mode & 0o022
        ):
            raise PermissionError(
                f"{self.directory} is not a directory of this user's that only it can "
                f"write to (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)})"
            )

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds or until a notify; returns at once the
        first time (a notification may have been missed before listening)."""
        with self._lock:
            if self._cannot_listen:
                listening = False
            else:
                try:
                    if self._listen():
                        return
                    listening = True
                except OSError as exc:
                    self._cannot_listen = True
                    listening = False
                    logger.warning(
                        "SQLite store %s: cannot listen for new work (%s); polling "
                        "PRAGMA data_version instead",
                        self._database.where,
                        exc,
                    )
            if not listening:
                self._poll(timeout)
                return
            assert self._fds is not None  # noqa: S101 - made by _listen
            reader = self._fds[0]
        ready, _, _ = select.select([reader], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):
                while os.read(reader, 4096):
                    pass

    def _poll(self, timeout: float) -> None:
        """Wait for another connection's commit by ``PRAGMA data_version``."""
        deadline = time.monotonic() + timeout
        changes = self._changes
        with self._database.read("wait for work") as conn:
            (start,) = conn.execute("PRAGMA data_version").fetchone()
        while time.monotonic() < deadline:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            if self._changes != changes:
                return
            with self._database.read("wait for work") as conn:
                (now,) = conn.execute("PRAGMA data_version").fetchone()
            if now != start:
                return

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, None
            if fds is not None and self._pid == os.getpid():
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                if self._fifo is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self._fifo)


class _SQLiteStore:
    """What both SQLite stores share: the file, ``close()``, ``repr()``."""

    _db: _Database

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        read_only: bool = False,
    ) -> None:
        self._attach(_Database(path, synchronous, busy_timeout, read_only))

    def _attach(self, database: _Database) -> None:
        database.acquire()
        self._db = database
        self._closed = False

    @classmethod
    def _on(cls, database: _Database) -> Self:
        """A store on an already open file (shares its connection)."""
        store = cls.__new__(cls)
        store._attach(database)
        return store

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{type(self).__name__} on {self._db.where!r} is closed")

    def _writing(
        self, action: str, *, durable: bool = True
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self._check_open()
        return self._db.write(action, durable=durable)

    def _reading(
        self, action: str, *, snapshot: bool = False
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self._check_open()
        return self._db.read(action, snapshot=snapshot)

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` level of the commits (idempotency locks aside)."""
        return self._db.synchronous

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only (no writes, no migration)."""
        return self._db.read_only

    def transaction(self, *, durable: bool = True) -> contextlib.AbstractContextManager[None]:
        """One transaction for every write of this thread inside, this store's
        and those of the stores sharing its file (see ``open_stores``);
        committed at the end (with an fsync when ``durable``) or rolled back
        as a whole."""
        self._check_open()
        return self._db.transaction(durable=durable)

    def close(self) -> None:
        """Close the connection (when no other store shares it); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._db.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"{type(self).__name__}({self._db.path!r}, synchronous={self.synchronous!r}{state})"


def open_pair(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "FULL",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    read_only: bool = False,
) -> tuple[SQLiteQueueStore, SQLiteIdempotencyStore]:
    """Both stores on one file, sharing one connection (what ``open_stores`` returns)."""
    database = _Database(path, synchronous, busy_timeout, read_only)
    database.shared_with_queue = True
    return SQLiteQueueStore._on(database), SQLiteIdempotencyStore._on(database)


# --- the queue store -------------------------------------------------------------


def _insert_row(d: Delivery) -> tuple[Any, ...]:
    event = d.event
    # (a new delivery's three times are one object: converted once)
    updated = _us(d.updated_at)
    created = updated if d.created_at is d.updated_at else _us(d.created_at)
    next_at = updated if d.next_attempt_at is d.updated_at else _us(d.next_attempt_at)
    lease = _us(d.lease_expires_at)
    return (
        d.id,
        event.id,
        d.destination,
        event.ordering_key,
        checked_event_json(d),
        d.status._value_,
        d.idempotency_key,
        d.attempts,
        next_at,
        _due_at(d.status, next_at, lease, updated),
        error_to_json(d.last_error),
        _category(d.last_error),
        _dumps(d.result),
        created,
        updated,
        d.lease_token,
        d.lease_owner,
        lease,
    )


def _with_seq(d: Delivery, seq: int) -> Delivery:
    return Delivery(
        id=d.id,
        event=d.event,
        destination=d.destination,
        status=d.status,
        idempotency_key=d.idempotency_key,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        last_error=d.last_error,
        result=d.result,
        created_at=d.created_at,
        updated_at=d.updated_at,
        seq=seq,
        lease_token=d.lease_token,
        lease_owner=d.lease_owner,
        lease_expires_at=d.lease_expires_at,
    )


class _Counts:
    """Changes to the finished-delivery counters, written once per transaction."""

    __slots__ = ("delta",)

    def __init__(self) -> None:
        self.delta: dict[tuple[str, str], int] = {}

    def add(self, destination: str, status: DeliveryStatus, n: int) -> None:
        key = (destination, status.value)
        self.delta[key] = self.delta.get(key, 0) + n

    def write(self, conn: sqlite3.Connection) -> None:
        changes = [(d, s, n) for (d, s), n in self.delta.items() if n]
        if changes:
            conn.executemany(Q.count_finished, changes)


def _enqueue(
    conn: sqlite3.Connection,
    deliveries: Sequence[Delivery],
    rows: list[tuple[Any, ...]],
    cursor: tuple[str, str | None] | None,
) -> list[Delivery]:
    inserted: list[Delivery] = []
    if rows:
        (before,) = conn.execute(Q.max_seq).fetchone()
        conn.executemany(Q.insert_delivery, rows)
        seqs = dict(conn.execute(Q.inserted_since, (before,)).fetchall())
        finished = _Counts()
        for d in deliveries:
            seq = seqs.pop(d.id, None)
            if seq is not None:
                inserted.append(_with_seq(d, seq))
                if d.status in _FINAL:  # enqueued already finished (an import)
                    finished.add(d.destination, d.status, 1)
        finished.write(conn)
    if cursor is not None:
        conn.execute(Q.save_cursor, (cursor[0], cursor[1]))
    return inserted


def _expired_audit(row: Sequence[Any], worker: str, now: datetime) -> tuple[Any, ...]:
    owner, expired_at, attempts = row[13], _dt(row[14]), row[6]
    return _audit_row(
        Attempt(
            delivery_id=row[1],
            destination=row[3],
            action="lease_expired",
            actor=f"worker:{worker}",
            started_at=now,
            finished_at=now,
            number=attempts,
            outcome=DeliveryStatus.IN_FLIGHT,
            reason=(
                f"the lease of {owner} expired at {expired_at}; attempt {attempts} had no "
                "recorded outcome (worker crashed or stalled)"
            ),
        )
    )


def _claimed(
    row: Sequence[Any], token: int, worker: str, now: datetime, until: datetime
) -> Delivery:
    next_at, error, result = row[7], row[8], row[9]  # mostly None: no calls then
    return Delivery(
        seq=row[0],
        id=row[1],
        event=event_from_json(row[2]),
        destination=row[3],
        status=DeliveryStatus.IN_FLIGHT,
        idempotency_key=row[5],
        attempts=row[6] + 1,
        next_attempt_at=None if next_at is None else _dt(next_at),
        last_error=None if error is None else error_from_json(error),
        result=None if result is None else _loads(result),
        created_at=_EPOCH + timedelta(microseconds=row[10]),
        updated_at=now,
        lease_token=token,
        lease_owner=worker,
        lease_expires_at=until,
    )


def _completion_row(c: Completion) -> tuple[Any, ...]:
    finished = _us(c.finished_at)
    next_at = finished if c.next_attempt_at is c.finished_at else _us(c.next_attempt_at)
    event = c.event
    return (
        c.status._value_,
        next_at,
        _due_at(c.status, next_at, None, finished),
        error_to_json(c.error),
        _category(c.error),
        _dumps(c.result) if c.status is DeliveryStatus.SUCCEEDED else None,
        event_to_json(event) if event is not None else None,
        event.ordering_key if event is not None else None,
        c.idempotency_key or None,
        0 if c.count_attempt else 1,
        finished,
        c.delivery_id,
        c.lease_token,
    )


class SQLiteQueueStore(_SQLiteStore):
    """A durable :class:`~resilient_sync.QueueStore` in a SQLite file.

    Args:
        path: the database file (created with its schema when missing).
        synchronous: ``"FULL"`` (default: every commit is fsynced, so a
            submitted event survives a power loss), ``"NORMAL"`` (faster;
            survives a killed process, but a power loss may undo the last
            commits) or ``"EXTRA"`` (as ``FULL`` in WAL mode).
        busy_timeout: seconds a write waits for another process's
            transaction before failing with a :class:`StoreError`.

    ``enqueue(..., transaction=conn)`` joins the caller's own open transaction
    on a ``sqlite3.Connection`` to the same file (the transactional outbox):
    the deliveries commit or roll back with the caller's rows. A connection
    to another file, or without an open transaction, raises ``ValueError``;
    any other handle ``TypeError``.

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     queue = SQLiteQueueStore(os.path.join(tmp, "sync.db"))
    ...     print(queue.stats().total)
    ...     queue.close()
    0
    """

    # -- writing ---------------------------------------------------------

    def enqueue(
        self,
        deliveries: Sequence[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> builtins.list[Delivery]:
        """See :meth:`QueueStore.enqueue`; ``transaction`` may be a
        ``sqlite3.Connection`` on the same file with an open transaction."""
        check_cursor(cursor)
        deliveries = list(deliveries)
        check_deliveries(deliveries)
        rows = [_insert_row(d) for d in deliveries]
        if transaction is not None:
            # the caller commits: idle workers find it at their next poll or
            # wake-up (call wake_workers() after your commit to be quicker)
            return self._enqueue_joined(transaction, deliveries, rows, cursor)
        with self._writing("enqueue") as conn:
            inserted = _enqueue(conn, deliveries, rows, cursor)
        if inserted:
            self._db.wakeup.notify()
        return inserted

    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning within milliseconds when
        another process (or thread) enqueues, hands back or re-syncs work on
        this file (a FIFO per waiting store beside the file; ``PRAGMA
        data_version`` polling where FIFOs do not exist). Returns at once the
        first time it is called."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        self._check_open()
        self._db.wakeup.wait(timeout)

    def wake_workers(self) -> None:
        """Wake idle workers of this file now (after committing a joined enqueue)."""
        self._db.wakeup.notify()

    def _enqueue_joined(
        self,
        conn: Any,
        deliveries: Sequence[Delivery],
        rows: list[tuple[Any, ...]],
        cursor: tuple[str, str | None] | None,
    ) -> builtins.list[Delivery]:
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError(
                f"SQLiteQueueStore cannot join a transaction of type {type(conn).__name__!r}; "
                f"pass a sqlite3.Connection on {self._db.where!r} with an open transaction"
            )
        where = self._db.where
        try:
            files = {row[1]: row[2] for row in conn.execute("PRAGMA database_list")}
            theirs = files.get("main") or ""
            same = bool(theirs) and os.path.samefile(theirs, self._db.path)
        except (sqlite3.Error, OSError) as exc:
            raise translate_error(where, "enqueue (joining a transaction)", exc) from exc
        if not same:
            raise ValueError(
                f"the transaction is on {theirs or 'an in-memory database'!r}, not on the "
                f"queue's file {where!r}; open your connection on the queue's file"
            )
        if not conn.in_transaction:
            raise ValueError(
                "the connection passed as transaction= has no open transaction; begin one "
                "(conn.execute('BEGIN IMMEDIATE'), or write your own rows first inside "
                "`with conn:`) so the deliveries commit with your rows"
            )
        try:
            conn.execute("SAVEPOINT resilient_sync_enqueue")
        except sqlite3.Error as exc:
            raise translate_error(where, "enqueue (joining a transaction)", exc) from exc
        try:
            self._db.check_schema(conn, "enqueue (joining a transaction)")
            inserted = _enqueue(conn, deliveries, rows, cursor)
            conn.execute("RELEASE resilient_sync_enqueue")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK TO resilient_sync_enqueue")
                conn.execute("RELEASE resilient_sync_enqueue")
            except sqlite3.Error:
                logger.exception("SQLite store %s: rolling back a joined enqueue failed", where)
            if isinstance(exc, sqlite3.Error):
                raise translate_error(where, "enqueue (joining a transaction)", exc) from exc
            raise
        return inserted

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker: str,
        destinations: Collection[str] | None = None,
    ) -> builtins.list[Delivery]:
        """See :meth:`QueueStore.claim`: one ``BEGIN IMMEDIATE`` transaction."""
        destinations = check_claim_args(limit, worker, destinations, now, lease_until)
        if limit < 1:
            return []
        now_us = _us(now)
        until_us = _us(lease_until)
        wanted = None if destinations is None else json.dumps(list(destinations))
        # without an fsync: a claim matters only while the processes on this
        # machine live; after a power loss it is claimed again (under the same
        # idempotency key), and no outcome is ever lost (complete is durable)
        with self._writing("claim", durable=False) as conn:
            conn.execute(Q.claim_promote, {"now": now_us, "promote": PROMOTE_PER_CLAIM})
            rows = conn.execute(
                Q.claim_candidates, {"now": now_us, "destinations": wanted, "limit": limit}
            ).fetchall()
            if not rows:
                return []
            conn.execute(Q.take_tokens, (len(rows),))
            (last,) = conn.execute(Q.last_token).fetchone()
            first = last - len(rows) + 1
            expired = [_expired_audit(row, worker, now) for row in rows if row[4] == "in_flight"]
            if expired:
                conn.executemany(Q.insert_audit, expired)
            conn.executemany(
                Q.claim_delivery,
                [(first + i, worker, until_us, now_us, row[0]) for i, row in enumerate(rows)],
            )
        return [_claimed(row, first + i, worker, now, lease_until) for i, row in enumerate(rows)]

    def complete(self, completions: Sequence[Completion]) -> builtins.list[bool]:
        """See :meth:`QueueStore.complete`: one transaction, fenced by lease token."""
        completions = check_completions(completions)
        if not completions:
            return []
        check_new_events(c.event for c in completions)
        rows = [_completion_row(c) for c in completions]
        audits = [[_audit_row(a) for a in c.audit] for c in completions]
        ids = json.dumps([c.delivery_id for c in completions])
        applied: builtins.list[bool] = []
        with self._writing("complete") as conn:
            live = {
                row[0]: (row[1], row[2], row[3]) for row in conn.execute(Q.in_flight_tokens, (ids,))
            }
            keyed: builtins.list[tuple[Any, ...]] = []
            unkeyed: builtins.list[tuple[Any, ...]] = []
            records: builtins.list[tuple[Any, ...]] = []
            finished = _Counts()
            for c, row, audit in zip(completions, rows, audits, strict=True):
                held = live.get(c.delivery_id)
                ok = held is not None and held[0] == c.lease_token
                if ok:
                    del live[c.delivery_id]  # the first outcome wins; a repeat is refused
                    # no ordering key before or after: the statement that leaves the
                    # key columns (and their triggers) alone
                    if held[2] is None and row[7] is None:  # type: ignore[index]
                        unkeyed.append(row)
                    else:
                        keyed.append(row)
                    records.extend(audit)
                    if c.status in _FINAL:
                        finished.add(held[1], c.status, 1)  # type: ignore[index]
                applied.append(ok)
            if unkeyed:
                conn.executemany(Q.complete_delivery_unkeyed, unkeyed)
            if keyed:
                conn.executemany(Q.complete_delivery, keyed)
            if records:
                conn.executemany(Q.insert_audit, records)
            finished.write(conn)
        handed_back = zip(completions, applied, strict=True)
        if any(ok and c.status is DeliveryStatus.PENDING for c, ok in handed_back):
            self._db.wakeup.notify()  # handed back: another worker may take it
        return applied

    def transition(
        self,
        ids: Sequence[str],
        *,
        from_status: Collection[DeliveryStatus],
        to_status: DeliveryStatus,
        audit: Attempt,
        now: datetime,
        reset_attempts: bool = False,
        event: Event | None = None,
        idempotency_key: str | None = None,
        if_unchanged: Delivery | None = None,
    ) -> builtins.list[str]:
        """See :meth:`QueueStore.transition`: one transaction."""
        ids, from_status = check_transition_args(
            ids, from_status, to_status, audit, now, idempotency_key, if_unchanged
        )
        check_new_events([event])
        allowed = frozenset(from_status)
        moved: builtins.list[str] = []
        now_us = _us(now)
        finished = _Counts()
        with self._writing("transition") as conn:
            for delivery_id in dict.fromkeys(ids):
                row = conn.execute(Q.get_delivery, (delivery_id,)).fetchone()
                if row is None:
                    continue
                d = _delivery(row)
                if d.status not in allowed:
                    continue
                if if_unchanged is not None and (
                    d.status is not if_unchanged.status
                    or d.attempts != if_unchanged.attempts
                    or d.lease_token != if_unchanged.lease_token
                    or d.updated_at != if_unchanged.updated_at
                ):
                    continue
                next_at = None  # PENDING: due at once, whatever the claimer's clock
                new = attrs.evolve(
                    d,
                    status=to_status,
                    next_attempt_at=next_at,
                    attempts=0 if reset_attempts else d.attempts,
                    event=event or d.event,
                    idempotency_key=idempotency_key or d.idempotency_key,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
                next_us = _us(next_at)
                conn.execute(
                    Q.transition_delivery,
                    (
                        to_status.value,
                        next_us,
                        _due_at(to_status, next_us, None, now_us),
                        new.attempts,
                        event_to_json(new.event),
                        new.event.ordering_key,
                        new.idempotency_key,
                        now_us,
                        d.seq,
                    ),
                )
                conn.execute(Q.insert_audit, _audit_row(fill_audit(audit, new)))
                moved.append(delivery_id)
                if d.status in _FINAL:
                    finished.add(d.destination, d.status, -1)
                if to_status in _FINAL:
                    finished.add(d.destination, to_status, 1)
            finished.write(conn)
        if moved and to_status is DeliveryStatus.PENDING:
            self._db.wakeup.notify()
        return moved

    def set_destination(
        self,
        name: str,
        *,
        now: datetime,
        paused: bool | None = None,
        paused_reason: str | None = None,
        hold_until: datetime | None = None,
        hold_reason: str | None = None,
        audit: Attempt | None = None,
    ) -> DestinationState:
        """See :meth:`QueueStore.set_destination`: one transaction."""
        check_destination_args(name, now, paused, paused_reason, hold_until, hold_reason)
        with self._writing("set_destination") as conn:
            row = conn.execute(Q.get_destination, (name,)).fetchone()
            state = _destination_state(row) if row else DestinationState(name=name)
            if paused is not None:
                state = attrs.evolve(
                    state, paused=paused, paused_reason=paused_reason if paused else None
                )
            if hold_until is not None and (
                state.hold_until is None or hold_until > state.hold_until
            ):
                state = attrs.evolve(state, hold_until=hold_until, hold_reason=hold_reason)
            state = attrs.evolve(state, updated_at=now)
            conn.execute(
                Q.save_destination,
                (
                    name,
                    int(state.paused),
                    state.paused_reason,
                    _us(state.hold_until),
                    state.hold_reason,
                    _us(now),
                ),
            )
            if audit is not None:
                conn.execute(Q.insert_audit, _audit_row(audit))
        if paused is False:
            self._db.wakeup.notify()
        return state

    def extend_leases(
        self, leases: Sequence[tuple[str, int]], *, until: datetime
    ) -> builtins.list[bool]:
        """Move the lease end of deliveries still held under their token (the
        dispatcher's heartbeat); one transaction without an fsync (a lost
        extension only lets a lease end sooner: the delivery is tried again
        under the same key)."""
        leases = check_pairs(leases, "leases", ("str", "int"))
        check_time(until, "until")
        if not leases:
            return []
        until_us = _us(until)
        out: builtins.list[bool] = []
        with self._writing("extend leases", durable=False) as conn:
            for delivery_id, token in leases:
                cur = conn.execute(Q.extend_lease, (until_us, delivery_id, token))
                out.append(cur.rowcount == 1)
        return out

    def add_audit(self, records: Sequence[Attempt]) -> None:
        """See :meth:`QueueStore.add_audit`: one transaction."""
        if not records:
            return
        with self._writing("add audit records") as conn:
            conn.executemany(Q.insert_audit, [_audit_row(r) for r in records])

    # -- reading ---------------------------------------------------------

    def destinations(self) -> dict[str, DestinationState]:
        """See :meth:`QueueStore.destinations`."""
        with self._reading("destinations") as conn:
            rows = conn.execute(Q.all_destinations).fetchall()
        return {row[0]: _destination_state(row) for row in rows}

    def get(self, delivery_id: str) -> Delivery | None:
        """See :meth:`QueueStore.get`."""
        check_text(delivery_id, "delivery_id")
        if unmatchable(delivery_id):
            return None
        with self._reading("get") as conn:
            row = conn.execute(Q.get_delivery, (delivery_id,)).fetchone()
        return _delivery(row) if row is not None else None

    def ids_with_prefix(self, prefix: str, *, limit: int = 10) -> builtins.list[str]:
        """The ids that start with ``prefix``, sorted, at most ``limit`` (an
        index range scan; the CLI takes unique id prefixes with it)."""
        if not prefix or unmatchable(prefix):
            return []
        high = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
        with self._reading("find ids") as conn:
            rows = conn.execute(Q.ids_with_prefix, (prefix, high, limit)).fetchall()
        return [row[0] for row in rows]

    def list(
        self,
        *,
        status: Collection[DeliveryStatus] | None = None,
        destination: str | None = None,
        category: ErrorCategory | None = None,
        since: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        until: datetime | None = None,
        event_type: str | None = None,
        search: str | None = None,
    ) -> Page:
        """See :meth:`QueueStore.list`."""
        status, category = check_list_args(
            status, category, destination, event_type, search, since, until
        )
        check_page_args(limit)
        if unmatchable(destination, event_type, search):
            return Page(items=[], next_cursor=None)
        params: dict[str, Any] = {"after": decode_cursor(cursor), "limit": limit + 1}
        parts = [Q.list_deliveries]
        if status is not None:
            statuses = sorted({DeliveryStatus(s).value for s in status})
            if statuses == [DeliveryStatus.NEEDS_ACTION.value]:
                parts.append(Q.list_where_needs_action)
            else:
                parts.append(Q.list_where_status)
                params["statuses"] = json.dumps(statuses)
        if destination is not None:
            parts.append(Q.list_where_destination)
            params["destination"] = destination
        if category is not None:
            parts.append(Q.list_where_category)
            params["category"] = ErrorCategory(category).value
        if since is not None:
            parts.append(Q.list_where_since)
            params["since"] = _us(since)
        if until is not None:
            parts.append(Q.list_where_until)
            params["until"] = _us(until)
        if event_type is not None:
            parts.append(Q.list_where_event_type)
            params["event_type"] = event_type
        if search:
            # LIKE folds ASCII letters only; a needle with other letters is
            # compared folded in Python, as the memory and PostgreSQL stores do
            parts.append(Q.list_where_search if search.isascii() else Q.list_where_search_folded)
            params["search"] = like_pattern(search if search.isascii() else search.lower())
        parts.append(Q.list_order)
        with self._reading("list") as conn:
            rows = conn.execute("\n".join(parts), params).fetchall()
        items = [_delivery(row) for row in rows[:limit]]
        if len(rows) > limit:
            return Page(items=items, next_cursor=encode_cursor(items[-1].seq))
        return Page(items=items, next_cursor=None)

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        """See :meth:`QueueStore.attempts`."""
        check_text(delivery_id, "delivery_id")
        if unmatchable(delivery_id):
            return []
        with self._reading("attempts") as conn:
            rows = conn.execute(Q.attempts, (delivery_id,)).fetchall()
        return [_attempt(row) for row in rows]

    def audit(
        self, *, since: datetime | None = None, errors_only: bool = False, limit: int | None = None
    ) -> builtins.list[Attempt]:
        """See :meth:`QueueStore.audit`."""
        if limit is not None:
            check_int(limit, "limit", minimum=0)
        if not isinstance(errors_only, bool):
            raise wrong_type("errors_only", "a bool", errors_only)
        check_time(since, "since", optional=True)
        params = {"since": _us(since), "limit": -1 if limit is None else max(limit, 0)}
        with self._reading("audit") as conn:
            rows = conn.execute(Q.audit_errors if errors_only else Q.audit, params).fetchall()
        return [_attempt(row) for row in rows]

    def get_cursor(self, source: str) -> str | None:
        """See :meth:`QueueStore.get_cursor`."""
        check_text(source, "source")
        if unmatchable(source):
            return None
        with self._reading("get_cursor") as conn:
            row = conn.execute(Q.get_cursor, (source,)).fetchone()
        return row[0] if row is not None else None

    def stats(self) -> QueueStats:
        """See :meth:`QueueStore.stats` (one consistent snapshot). Reads the open
        deliveries through their index and the finished ones from counters
        kept by triggers: the cost follows the queue's depth, not its history."""
        with self._reading("stats", snapshot=True) as conn:
            open_rows = conn.execute(Q.stats_open).fetchall()
            finished = conn.execute(Q.stats_finished).fetchall()
            waiting = [row[4] for row in open_rows if _STATUS[row[1]] in _WAITING]
            oldest = conn.execute(Q.created_at, (min(waiting),)).fetchone() if waiting else None
            states = conn.execute(Q.all_destinations).fetchall()
        by_destination: dict[str, dict[DeliveryStatus, int]] = {}
        needs_action: dict[str, dict[ErrorCategory, int]] = {}
        for destination, status_text, category, count, _oldest in open_rows:
            status = _STATUS[status_text]
            counts = by_destination.setdefault(destination, {})
            counts[status] = counts.get(status, 0) + count
            if status is DeliveryStatus.NEEDS_ACTION and category is not None:
                cats = needs_action.setdefault(destination, {})
                key = ErrorCategory(category)
                cats[key] = cats.get(key, 0) + count
        for destination, status_text, count in finished:
            by_destination.setdefault(destination, {})[_STATUS[status_text]] = count
        return QueueStats(
            by_destination=by_destination,
            needs_action=needs_action,
            oldest_waiting=_dt(oldest[0]) if oldest else None,
            destinations={row[0]: _destination_state(row) for row in states},
        )

    def error_counts(
        self, *, since: datetime, until: datetime, bucket: timedelta
    ) -> builtins.list[tuple[int, ErrorCategory, int]]:
        """See :meth:`QueueStore.error_counts` (grouped by SQLite, through an index)."""
        check_time(since, "since")
        check_time(until, "until")
        if not isinstance(bucket, timedelta):
            raise wrong_type("bucket", "a timedelta", bucket)
        width = bucket // _US
        if width <= 0:
            raise ValueError(f"bucket must be > 0, got {bucket!r}")
        params = {"since": _us(since), "until": _us(until), "width": width}
        with self._reading("error_counts") as conn:
            rows = conn.execute(Q.error_counts, params).fetchall()
        return [(int(index), ErrorCategory(category), count) for index, category, count in rows]

    def purge(self, *, before: datetime, limit: int = 1000, dry_run: bool = False) -> int:
        """See :meth:`QueueStore.purge`. The candidates are found by reading in
        submission order (oldest first, stopping at the first delivery created
        after the cutoff) outside any write lock; the write transaction then
        re-checks and deletes them: workers wait for a few milliseconds at most."""
        check_time(before, "before")
        check_page_args(limit)
        cutoff = _us(before)
        picked: builtins.list[int] = []
        with self._reading("purge (finding old deliveries)") as conn:
            rows = conn.execute(Q.purge_scan, (0,))
            for seq, status, updated_at, created_at, _destination in rows:
                if created_at >= cutoff:
                    break  # created after the cutoff: so is everything after it
                if _STATUS[status] in _FINAL and updated_at < cutoff:
                    picked.append(seq)
                    if not dry_run and len(picked) >= limit:
                        break
            rows.close()
        if dry_run:
            return len(picked)
        params = {"before": cutoff, "limit": limit}
        finished = _Counts()
        with self._writing("purge") as conn:
            gone = conn.execute(Q.purge_recheck, (_ENCODE(picked), cutoff)).fetchall()
            if gone:
                listed = _ENCODE([row[0] for row in gone])
                conn.execute(Q.purge_audit_of, (listed,))
                conn.execute(Q.purge_deliveries, (listed,))
                for _seq, status, destination in gone:
                    finished.add(destination, _STATUS[status], -1)
                finished.write(conn)
            conn.execute(Q.purge_destination_audit, params)
        return len(gone)

    def next_due(self) -> datetime | None:
        """See :meth:`QueueStore.next_due`."""
        with self._reading("next_due") as conn:
            (value,) = conn.execute(Q.next_due, {"window": NEXT_DUE_WINDOW}).fetchone()
        return _dt(value)


# --- the idempotency store ---------------------------------------------------------

# A key's state is two rows at most: its completed record (fingerprint, result,
# expires_at) and its lock (fingerprint, locked_until); see queries.sql.
_Row = tuple[Any, ...]  # (key, c_fingerprint, c_result, c_expires, l_fingerprint, l_until)
_ABSENT: _Row = (None, None, None, None, None, None)


def _state(row: _Row, now_us: int) -> IdempotencyRecord | None:
    """What a stored key means at ``now`` (None: absent, expired or abandoned)."""
    key, c_fp, c_result, c_expires, l_fp, l_until = row
    if l_fp is not None and l_until > now_us:
        return IdempotencyRecord(
            key=key,
            state=IdempotencyState.IN_PROGRESS,
            fingerprint=l_fp,
            locked_until=_dt(l_until),
        )
    if c_fp is not None and (c_expires is None or c_expires > now_us):
        return IdempotencyRecord(
            key=key,
            state=IdempotencyState.COMPLETED,
            fingerprint=c_fp,
            result=_loads(c_result),
            expires_at=_dt(c_expires),
        )
    return None


class SQLiteIdempotencyStore(_SQLiteStore):
    """A durable :class:`~resilient_sync.IdempotencyStore` in a SQLite file.

    Takes the same arguments as :class:`SQLiteQueueStore` and may share its
    file. Each of ``begin``, ``finish`` and ``release`` is one transaction.
    ``begin`` and ``release`` do not wait for an fsync (see the module
    notes): they only take and drop in-progress locks, worthless after a
    power loss. ``finish`` is durable at the store's ``synchronous`` level,
    except when the store shares its file and connection with the queue
    store (``open_stores``/``open_pair``): then the queue's ``complete``,
    which the dispatcher commits right after it, makes it durable too, and
    losing both to a power cut leaves the delivery to be attempted again
    under the same key. A killed process loses nothing either way.
    """

    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> builtins.list[IdempotencyRecord]:
        """See :meth:`IdempotencyStore.begin`."""
        entries = check_pairs(entries, "entries", ("str", "str"))
        check_time(now, "now")
        check_time(lock_until, "lock_until")
        if not entries:
            return []
        now_us = _us(now)
        lock_us = _us(lock_until)
        keys = _ENCODE([key for key, _ in entries])
        out: builtins.list[IdempotencyRecord] = []
        with self._writing("idempotency begin", durable=False) as conn:
            stored = {row[0]: row for row in conn.execute(Q.idempotency_get_many, (keys,))}
            locks: builtins.list[tuple[str, str, int]] = []
            for key, fp in entries:
                row = stored.get(key, _ABSENT)
                record = _state(row, now_us)
                if record is None:
                    stored[key] = (key, row[1], row[2], row[3], fp, lock_us)
                    locks.append((key, fp, lock_us))
                    record = IdempotencyRecord(
                        key=key, state=IdempotencyState.NEW, fingerprint=fp, locked_until=lock_until
                    )
                elif record.state is IdempotencyState.COMPLETED and record.fingerprint != fp:
                    record = attrs.evolve(record, state=IdempotencyState.MISMATCH)
                out.append(record)
            if locks:
                conn.execute(Q.idempotency_purge_locks, (now_us,))
                conn.executemany(Q.idempotency_lock, locks)
        return out

    def finish(
        self, entries: Sequence[tuple[str, str, Any]], *, now: datetime, expires_at: datetime
    ) -> None:
        """See :meth:`IdempotencyStore.finish`: the keys are completed and unlocked."""
        entries = check_pairs(entries, "entries", ("str", "str", "any"))
        check_results(entries)
        check_time(now, "now")
        check_time(expires_at, "expires_at", optional=True)
        if not entries:
            return
        expires = _us(expires_at)
        rows = [(key, fp, _dumps(result), expires) for key, fp, result in entries]
        # Without its own fsync only when the queue shares the file (open_pair):
        # the dispatcher's durable ``complete`` right after it covers it then.
        durable = not self._db.shared_with_queue
        with self._writing("idempotency finish", durable=durable) as conn:
            conn.executemany(Q.idempotency_complete, rows)
            conn.executemany(Q.idempotency_unlock, [(key,) for key, _, _ in entries])

    def extend_locks(
        self, keys: Sequence[str], *, locked_until: datetime, until: datetime
    ) -> builtins.list[bool]:
        """Move the locks still held under ``locked_until`` to ``until`` (the
        lease heartbeat), in one transaction."""
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until")
        check_time(until, "until")
        if not keys:
            return []
        fence, end = _us(locked_until), _us(until)
        with self._writing("idempotency extend locks", durable=False) as conn:
            return [
                conn.execute(Q.idempotency_extend_lock, (key, fence, end)).rowcount > 0
                for key in keys
            ]

    def release(self, keys: Sequence[str], *, locked_until: datetime | None = None) -> None:
        """See :meth:`IdempotencyStore.release`."""
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until", optional=True)
        if not keys:
            return
        until = _us(locked_until)
        with self._writing("idempotency release", durable=False) as conn:
            conn.executemany(Q.idempotency_release, [(key, until) for key in keys])

    def purge(self, *, now: datetime, limit: int = 1000) -> int:
        """See :meth:`IdempotencyStore.purge`: expired keys, one batch."""
        check_time(now, "now")
        check_page_args(limit)
        now_us = _us(now)
        with self._writing("idempotency purge", durable=False) as conn:
            deleted = conn.execute(Q.idempotency_purge, {"now": now_us, "limit": limit}).rowcount
            conn.execute(Q.idempotency_purge_locks, (now_us,))
        return int(deleted)

    def get(self, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """See :meth:`IdempotencyStore.get`."""
        check_text(key, "key")
        check_time(now, "now")
        if unmatchable(key):
            return None  # a key no store can hold (a NUL, a lone surrogate) is not held
        with self._reading("idempotency get") as conn:
            row = conn.execute(Q.idempotency_get, (key,)).fetchone()
        return _state(row, _us(now))
