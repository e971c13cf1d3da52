"""PostgreSQL stores: many workers on many machines (psycopg 3 and psycopg_pool).

Install with ``pip install 'resilient-sync[postgres]'``. Importing
``resilient_sync`` never needs psycopg; this module does, and says so.

- Claims are one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)``
  statement: batched, never waiting for rows another worker holds. A delivery
  with an ordering key is claimable only while no older delivery of its
  ``(destination, ordering_key)`` is unfinished and no other one is in flight;
  a partial unique index makes the database itself refuse a second in-flight
  delivery of one key. Enqueues of one key are serialised (advisory lock until
  commit), so submission order per key is also commit order.
- Leases carry a fencing token from a sequence; ``complete`` applies many
  outcomes and their audit records in one statement.
- ``wait_for_work`` sleeps on ``LISTEN`` until an enqueue, a hand-back or an
  operator retry sends a ``NOTIFY`` (the dispatcher polls as a fallback).
- ``enqueue(..., transaction=conn)`` writes in the caller's own psycopg
  connection and transaction: the transactional outbox.
- A connection the server dropped (restart, network blip) is replaced and the
  statement retried when nothing can have been committed; otherwise the error
  surfaces as :class:`~resilient_sync.StoreError`, which the dispatcher logs
  before carrying on.
- The SQL lives in ``sql/postgres/``: numbered migrations applied on open
  under an advisory lock, and the named queries in ``queries.sql``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import attrs
from typing_extensions import Self

try:
    import psycopg
    import psycopg.errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import TupleRow, tuple_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "the PostgreSQL stores need psycopg 3 and psycopg-pool; install them with "
        "pip install 'resilient-sync[postgres]'"
    ) from exc

from .._errors import StoreError
from .._json import canonical_dumps, error_from_json, error_to_json, event_from_json, event_to_json
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
from .._redact import redact
from ._common import (
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

__all__ = ["PostgresIdempotencyStore", "PostgresQueueStore", "open_pair"]

logger = logging.getLogger("resilient_sync.stores.postgres")

T = TypeVar("T")
Connection = psycopg.Connection[Any]

#: a search_path in libpq ``options``: ``-c search_path=x``, ``--search_path=x``
#: and ``--search-path=x`` (the server folds case and dashes)
_SEARCH_PATH = re.compile(r"(?:-c\s*|--)search[_-]path\s*=\s*([^\s]+)", re.IGNORECASE)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: How often a statement is retried on a fresh connection after the server
#: dropped the old one (restart, failover, idle timeout).
_RECONNECT_RETRIES = 3
#: How often a claim is retried when it lost a race for an ordering key.
_CONFLICT_RETRIES = 5
#: how many times a transaction PostgreSQL rolled back to break a deadlock is sent again
_DEADLOCK_RETRIES = 3
IDLE = psycopg.pq.TransactionStatus.IDLE


# -- SQL files ------------------------------------------------------------------


def _sql_dir() -> Any:
    return resources.files("resilient_sync.stores") / "sql" / "postgres"


def _quote_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use 1-63 letters, digits and underscores, "
            "not starting with a digit"
        )
    return f'"{schema}"'


def _render(text: str, schema: str) -> str:
    return text.replace("{schema}", _quote_schema(schema))


def migrations(schema: str) -> list[tuple[int, str, str]]:
    """The migrations as ``(version, name, sql)``, oldest first, for ``schema``."""
    found: list[tuple[int, str, str]] = []
    for entry in _sql_dir().iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            text = entry.read_text(encoding="utf-8")
            found.append((int(match.group(1)), match.group(2), _render(text, schema)))
    found.sort()
    return found


def schema_sql(schema: str) -> str:
    """The current schema as one script (``sql/postgres/schema.sql``), for ``schema``."""
    return _render((_sql_dir() / "schema.sql").read_text(encoding="utf-8"), schema)


def _load_queries(schema: str) -> dict[str, str]:
    """The named queries of ``queries.sql``, as sent: their comments and
    indentation left out (see ``_minify``), a tag naming each in front."""
    text = (_sql_dir() / "queries.sql").read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def add() -> None:
        if name is not None:
            queries[name] = _render(_tagged(name, _minify("\n".join(lines))), schema)

    for line in text.splitlines():
        if line.startswith("-- name: "):
            add()
            name, lines = line[len("-- name: ") :].strip(), []
        elif name is not None:
            lines.append(line)
    add()
    return queries


def _tagged(name: str, sql: str) -> str:
    """``sql`` with the comment in front that names it in the server's views."""
    return f"/* resilient_sync {name} */ {sql}"


def _untagged(sql: str) -> str:
    """``sql`` without the comment ``_tagged`` put in front."""
    return sql.partition(" */ ")[2] if sql.startswith("/* resilient_sync ") else sql


def _escape_string(sql: str, i: int) -> bool:
    """Whether the quote at ``sql[i]`` opens an escape string (``E'...'``)."""
    return (
        i > 0
        and sql[i - 1] in "Ee"
        and (i == 1 or not (sql[i - 2].isalnum() or sql[i - 2] in "_$"))
    )


def _minify(sql: str) -> str:
    """``sql`` without its ``--`` comments, indentation and blank lines.

    The comments in ``queries.sql`` say why each statement is written as it
    is; sent, they cost at every call: psycopg parses a statement's text for
    its placeholders at every execution when the text is longer than 4 KiB
    (it caches shorter ones), which the completion was with its comments
    (the claim still is without them). A ``--`` inside a quoted string or
    identifier is kept. Text with dollar quotes, escape strings (``E'...'``)
    or block comments outside its comments, which this does not read, is
    returned as it is.
    """
    out: list[str] = []
    line: list[str] = []
    quote = ""  # the quote character we are inside, if any
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote:
            line.append(ch)
            if ch == quote:
                if i + 1 < n and sql[i + 1] == quote:  # a doubled quote: still inside
                    line.append(quote)
                    i += 1
                else:
                    quote = ""
        elif ch == "$" or sql.startswith("/*", i) or (ch == "'" and _escape_string(sql, i)):
            return sql.strip()
        elif ch in "'\"":
            quote = ch
            line.append(ch)
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == "\n":
            out.append("".join(line))
            line = []
        else:
            line.append(ch)
        i += 1
    out.append("".join(line))
    if quote:  # an unclosed quote: leave the text to the server, as written
        return sql.strip()
    return "\n".join(kept for kept in (text.strip() for text in out) if kept)


# -- small helpers ---------------------------------------------------------------


def _lock_id(*parts: str) -> int:
    """A stable signed 64-bit advisory lock id for ``parts``."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is timezone.utc:
        return value
    return value.astimezone(timezone.utc)


def _iso(value: datetime) -> str:
    """A time for the JSON rows, in UTC: PostgreSQL parses no offset with a
    fraction of a second, which Python's ``timezone`` allows."""
    if value.tzinfo is timezone.utc or value.utcoffset() is None:
        return value.isoformat()  # naive (also a tzinfo without an offset): as before
    return value.astimezone(timezone.utc).isoformat()


#: a status column's text to its member (a dict lookup, not Enum's call)
_STATUS = {s.value: s for s in DeliveryStatus}


#: JSON rows for the ``complete`` statement. Its text values never hold a
#: raw NUL (ids refuse it, the text gate escapes it), which PostgreSQL's text
#: cannot hold either way; JSON values travel as their own JSON text.
_ROWS_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _dump(value: Any) -> str | None:
    return None if value is None else canonical_dumps(value)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _describe(conninfo: str) -> str:
    """``postgresql://user@host:port/db`` without the password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "PostgreSQL (unparsable conninfo)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    user = params.get("user")
    where = f"{user}@{host}" if user else str(host)
    return f"postgresql://{where}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _password(conninfo: str) -> str | None:
    try:
        value = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return None
    return str(value) if value else None


def _connection_lost(exc: BaseException, conn: Connection | None) -> bool:
    return (
        isinstance(exc, psycopg.OperationalError)
        and conn is not None
        and (conn.broken or conn.closed)
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        seq=row[1],
        event=event_from_json(row[2]),
        destination=row[3],
        status=_STATUS[row[4]],
        idempotency_key=row[5],
        attempts=row[6],
        next_attempt_at=_utc(row[7]),
        last_error=error_from_json(row[8]),
        result=_load(row[9]),
        created_at=_utc(row[10]),  # type: ignore[arg-type]
        updated_at=_utc(row[11]),  # type: ignore[arg-type]
        lease_token=row[12],
        lease_owner=row[13],
        lease_expires_at=_utc(row[14]),
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        id=row[0],
        delivery_id=row[1],
        destination=row[2],
        action=row[3],
        actor=row[4],
        started_at=_utc(row[5]),  # type: ignore[arg-type]
        finished_at=_utc(row[6]),  # type: ignore[arg-type]
        number=row[7],
        outcome=_STATUS[row[8]] if row[8] is not None else None,
        reason=row[9],
        error=error_from_json(row[10]),
        details=_load(row[11]) or {},
    )


def _destination_state(row: Sequence[Any]) -> DestinationState:
    return DestinationState(
        name=row[0],
        paused=row[1],
        paused_reason=row[2],
        hold_until=_utc(row[3]),
        hold_reason=row[4],
        updated_at=_utc(row[5]),
    )


def _audit_row(r: Attempt, ci: int = 0) -> list[Any]:
    """One audit record as a JSON row (``ci``: the 1-based index of its
    outcome in ``complete``; 0 for ``insert_audit``)."""
    check_attempt(r)
    return [
        ci,
        r.delivery_id,
        r.destination,
        r.action,
        r.actor,
        _iso(r.started_at),
        _iso(r.finished_at),
        r.number,
        outcome_value(r.outcome),
        r.reason,
        *_error_columns(r.error),
        canonical_dumps(dict(r.details)) if r.details else "{}",  # mostly none: no encoder
    ]


def _audit_params(records: Iterable[Attempt]) -> dict[str, str]:
    """``insert_audit``'s rows: one JSON array, as ``complete`` sends its own."""
    return {"records": _ROWS_ENCODE([_audit_row(r) for r in records])}


def _error_columns(error: ErrorInfo | None) -> tuple[str | None, str | None]:
    return error_to_json(error), (error.category._value_ if error is not None else None)


# -- connections ------------------------------------------------------------------


class _PoolRef:
    """A pool created by the stores, closed when the last store using it closes."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool
        self._refs = 1
        self._lock = threading.Lock()

    def acquire(self) -> _PoolRef:
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self.pool.close()


class _PostgresBase:
    """Pool ownership, migrations, the transaction helper and error translation."""

    _kind = "store"

    def __init__(
        self,
        conninfo_or_pool: str | ConnectionPool[Any],
        *,
        schema: str,
        migrate: bool,
        pool_min_size: int,
        pool_max_size: int,
        pool_timeout: float,
        read_only: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        _quote_schema(schema)
        self.schema = schema
        self.read_only = bool(read_only)
        self._queries = _load_queries(schema)
        self._closed = False
        if isinstance(conninfo_or_pool, ConnectionPool):
            self._pool: ConnectionPool[Any] = conninfo_or_pool
            self._pool_ref: _PoolRef | None = None  # the caller closes its pool
            source = conninfo_or_pool.conninfo
            conninfo = source() if callable(source) else source
        elif isinstance(conninfo_or_pool, str):
            conninfo = conninfo_or_pool
            try:
                conninfo_to_dict(conninfo)
            except psycopg.Error as exc:
                secret = _password(conninfo)
                raise ValueError(
                    f"invalid PostgreSQL conninfo for {type(self).__name__}: "
                    f"{redact(str(exc), [secret] if secret else [])}"
                ) from None
            self._pool = ConnectionPool(
                conninfo,
                min_size=pool_min_size,
                max_size=pool_max_size,
                timeout=pool_timeout,
                name=f"resilient_sync:{schema}",
                kwargs=self._connection_kwargs(connect_timeout, conninfo),
                open=True,
            )
            self._pool_ref = _PoolRef(self._pool)
        else:
            raise TypeError(
                f"{type(self).__name__} needs a conninfo string or a psycopg_pool.ConnectionPool, "
                f"got {type(conninfo_or_pool).__name__}"
            )
        self._conninfo = conninfo
        self._where = _describe(conninfo)
        self._secret = _password(conninfo)
        try:
            if migrate and not self.read_only:
                self._migrate()
            else:
                self._check_version()
        except BaseException:
            self.close()
            raise

    def _connection_kwargs(self, connect_timeout: float | None, conninfo: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if connect_timeout is not None:
            kwargs["connect_timeout"] = max(1, round(connect_timeout))
        if self.read_only:
            # the server itself refuses any write of this pool's sessions; the
            # URL's own options (a statement_timeout ...) are kept beside it
            own = str(conninfo_to_dict(conninfo).get("options") or "").strip()
            kwargs["options"] = f"{own} -c default_transaction_read_only=on".strip()
        return kwargs

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r}, schema={self.schema!r})"

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The connection pool (shared when one was passed in)."""
        return self._pool

    # -- errors and transactions -------------------------------------------

    def _error(self, action: str, exc: BaseException, *, why: str | None = None) -> StoreError:
        secrets = [self._secret] if self._secret else []
        detail = str(exc).strip() or type(exc).__name__
        if why:
            detail = f"{detail}; {why}"
        detail = redact(detail, secrets)
        return StoreError(
            f"PostgreSQL {self._kind} at {self._where} (schema {self.schema!r}) failed to "
            f"{action}: {type(exc).__name__}: {detail}"
        )

    def _run(
        self,
        action: str,
        fn: Callable[[Connection], T],
        *,
        atomic: bool = True,
        retry_conflicts: bool = False,
    ) -> T:
        """Run ``fn`` on a pooled connection and translate psycopg's errors.

        ``atomic``: ``fn`` runs several statements, in a transaction of its
        own. A connection the server dropped is replaced and ``fn`` retried
        if the commit was not reached (nothing can have been committed); a
        failure of the commit itself is never retried (its outcome is
        unknown) and surfaces as :class:`StoreError`.

        Not ``atomic``: ``fn`` sends one statement (or one pipelined
        transaction) on the autocommit connection: one round trip. It is
        retried on a new connection when the old one was dropped, even though
        it may have been applied: every such call is harmless to repeat (a
        claim repeated leaves the first claim's leases to expire, a completion
        repeated is refused by its fencing token, an enqueue repeated inserts
        nothing new, the idempotency calls and reads are idempotent).
        """
        lost = conflicts = deadlocks = 0
        while True:
            if self._closed:
                raise StoreError(f"{self!r} is closed; cannot {action}")
            stage = "connect"
            conn: Connection | None = None
            try:
                with self._pool.connection() as conn:
                    stage = "query"
                    if atomic or not conn.autocommit:
                        with conn.transaction():
                            result = fn(conn)
                            stage = "commit" if atomic else "query"
                    else:
                        result = fn(conn)
                    return result
            except UnicodeEncodeError as exc:  # raised before the statement is sent
                raise unencodable(f"PostgreSQL {self._kind} at {self._where}", action, exc) from exc
            except psycopg.Error as exc:
                if stage == "query" and _connection_lost(exc, conn) and lost < _RECONNECT_RETRIES:
                    lost += 1
                    logger.warning(
                        "connection to %s lost while trying to %s (%s); retrying on a new one",
                        self._where,
                        action,
                        type(exc).__name__,
                    )
                    self._pool.check()
                    continue
                if (
                    retry_conflicts
                    and isinstance(exc, psycopg.errors.UniqueViolation)
                    and conflicts < _CONFLICT_RETRIES
                ):
                    conflicts += 1
                    continue
                if (
                    isinstance(exc, psycopg.errors.DeadlockDetected)
                    and deadlocks < _DEADLOCK_RETRIES
                ):
                    # PostgreSQL broke a wait in a circle (the ordering-key locks of
                    # an application's transaction taken in another order) by
                    # rolling this transaction back: nothing of it was written
                    deadlocks += 1
                    logger.warning(
                        "%s: deadlock on %s, rolled back; trying again (%d of %d)",
                        action,
                        self._where,
                        deadlocks,
                        _DEADLOCK_RETRIES,
                    )
                    continue
                if isinstance(exc, PoolTimeout):
                    raise self._error(action, exc, why=self._why_no_connection()) from exc
                raise self._error(action, exc) from exc

    def _why_no_connection(self) -> str:
        """After a pool timeout: what the pool saw, and the server's answer to
        one direct connection attempt."""
        stats = self._pool.get_stats()
        failed = stats.get("connections_errors", 0) + stats.get("connections_lost", 0)
        source = self._pool.kwargs
        kwargs = dict((source() if callable(source) else source) or {})
        kwargs.setdefault("connect_timeout", max(1, min(5, int(self._pool.timeout))))
        try:
            psycopg.Connection.connect(self._conninfo, **kwargs).close()
        except psycopg.Error as exc:
            return f"connecting fails: {str(exc).strip()}"
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        if failed:
            return (
                f"the pool got no connection within {self._pool.timeout:g}s after {failed} "
                "failed or lost connections (the server was unreachable or restarting; it "
                "accepts connections again now, and the pool reconnects in the background)"
            )
        if in_use >= self._pool.max_size:
            return (
                f"the server accepts connections, but all {self._pool.max_size} of the pool "
                "were in use: raise pool_max_size or lower the dispatcher's concurrency"
            )
        return (
            f"the pool got no connection within {self._pool.timeout:g}s "
            f"({in_use} of {self._pool.max_size} in use); the server accepts connections now"
        )

    def _cursor(self, conn: Connection) -> psycopg.Cursor[TupleRow]:
        return conn.cursor(row_factory=tuple_row)

    @contextlib.contextmanager
    def _one_trip(self, conn: Connection) -> Iterator[None]:
        """The statements sent inside run as one transaction, in one round trip.

        On an autocommit connection outside a transaction block, ``BEGIN``
        and ``COMMIT`` go in the pipeline as statements, around the block's:
        one round trip, where psycopg's ``conn.transaction()`` in a pipeline
        cost three more (0.4 ms against 0.1). The transaction runs at READ
        COMMITTED whatever the server's default: at REPEATABLE READ (a
        database or role may default to it), claims that met each other's
        updates failed with a serialization error. When a statement fails, the
        server skips the rest, ``COMMIT`` included, and the transaction is
        rolled back here with ``conn.rollback()``, which also resets
        psycopg's record of the statements it prepared (a statement it
        prepares in a pipeline counts as prepared before the server has
        answered, and the server skips it after a failure: without the reset,
        every later use on that connection failed with "prepared statement
        does not exist"). Inside a transaction (the caller's, or ``_run``'s
        on a connection without autocommit) the statements join it, and its
        owner ends it.
        """
        own = conn.autocommit and conn.info.transaction_status == IDLE
        try:
            with conn.pipeline():
                if own:
                    begin = b"BEGIN ISOLATION LEVEL READ COMMITTED"
                    self._cursor(conn).execute(begin, prepare=False)
                yield
                if own:
                    self._cursor(conn).execute(b"COMMIT", prepare=False)
        except BaseException:
            if own and not conn.closed and conn.info.transaction_status != IDLE:
                try:
                    conn.rollback()
                except psycopg.Error as lost:
                    # through _error, as every store error: the password redacted
                    failed = self._error("roll back a failed transaction", lost)
                    logger.warning("%s (the connection is likely lost)", failed)
            raise

    @contextlib.contextmanager
    def _relaxed(self, conn: Connection) -> Iterator[None]:
        """One transaction in one round trip (``_one_trip``) whose commit does
        not wait for the WAL to reach the disk: for the steps a crash may undo
        (see ``relaxed_commit`` in queries.sql). Inside a caller's transaction
        the setting holds until that one ends."""
        with self._one_trip(conn):
            self._cursor(conn).execute(self._queries["relaxed_commit"])
            yield

    # -- migrations -------------------------------------------------------------

    def _migrate(self) -> None:
        known = migrations(self.schema)
        newest = known[-1][0]

        def apply(conn: Connection) -> None:
            cur = self._cursor(conn)
            # a backfill must see every commit before the migration's lock
            cur.execute(self._queries["read_committed"])
            cur.execute(
                self._queries["migration_lock"],
                {"lock": _lock_id("resilient_sync", "migrate", self.schema)},
            )
            cur.execute(self._queries["bootstrap"])
            applied = {row[0] for row in cur.execute(self._queries["applied_migrations"])}
            if applied and max(applied) > newest:
                raise StoreError(
                    f"schema {self.schema!r} at {self._where} is at version {max(applied)}, "
                    f"newer than this resilient_sync knows ({newest}); upgrade resilient_sync"
                )
            for version, name, text in known:
                if version not in applied:
                    logger.info("applying migration %04d_%s to %s", version, name, self.schema)
                    cur.execute(text)
                    cur.execute(
                        self._queries["record_migration"], {"version": version, "name": name}
                    )

        self._run("apply migrations", apply)

    def _check_version(self) -> None:
        newest = migrations(self.schema)[-1][0]

        def read(conn: Connection) -> int:
            cur = self._cursor(conn)
            table = f"{_quote_schema(self.schema)}.schema_migrations"
            exists = cur.execute(self._queries["has_migrations_table"], {"table": table}).fetchone()
            if not exists or not exists[0]:
                return 0
            return max(
                (row[0] for row in cur.execute(self._queries["applied_migrations"])), default=0
            )

        version = self._run("read the schema version", read)
        if version == 0 and self.read_only:
            raise StoreError(
                f"schema {self.schema!r} at {self._where} holds no resilient_sync queue "
                "(no resilient_sync tables there); check the schema name (?schema=...) "
                "and the database"
            )
        if version != newest:
            raise StoreError(
                f"schema {self.schema!r} at {self._where} is at version {version}, "
                f"this resilient_sync needs {newest}; open the store with migrate=True "
                "(or apply the files in resilient_sync/stores/sql/postgres/ in order)"
            )

    def close(self) -> None:
        """Close the pool if this store created it; idempotent."""
        if self._closed:
            return
        self._closed = True
        ref, self._pool_ref = self._pool_ref, None
        if ref is not None:
            ref.release()


# -- the queue store -----------------------------------------------------------------


class PostgresQueueStore(_PostgresBase):
    """A :class:`~resilient_sync.QueueStore` in PostgreSQL, for many workers on many machines.

    Args:
        conninfo_or_pool: a libpq connection string or URL
            (``"postgresql://user@host:5432/db"``), or a
            ``psycopg_pool.ConnectionPool`` to share (then the caller closes
            it; create it with ``kwargs={"autocommit": True}`` so that most
            calls take one round trip).
        schema: the schema holding the tables, created on open; give each
            application (or test run) its own.
        migrate: apply pending migrations on open (under an advisory lock, so
            workers starting together do not race); when False, refuse to
            open a schema that is not at the current version.
        pool_min_size: connections the pool this store creates keeps open.
        pool_max_size: the most connections of that pool (one more, for
            ``LISTEN``, is opened by :meth:`wait_for_work`).
        pool_timeout: seconds to wait for a connection before a
            :class:`~resilient_sync.StoreError`.
        read_only: open for reading only (the operator's read commands):
            never migrates or creates anything, refuses a schema without the
            library's tables by name, and the server refuses any write of
            the pool the store makes (with a pool you pass in, make its
            sessions read-only yourself: ``options="-c
            default_transaction_read_only=on"``).
        connect_timeout: seconds for one connection attempt (libpq's
            ``connect_timeout``; default: libpq's, i.e. none).

    ``enqueue(..., transaction=conn)`` joins the caller's own
    ``psycopg.Connection`` (the transactional outbox): the rows are written in
    its transaction and commit or roll back with it.
    """

    _kind = "queue store"

    def __init__(
        self,
        conninfo_or_pool: str | ConnectionPool[Any],
        *,
        schema: str = "resilient_sync",
        migrate: bool = True,
        pool_min_size: int = 1,
        pool_max_size: int = 4,
        pool_timeout: float = 10.0,
        read_only: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        self._listener: Connection | None = None
        self._listen_lock = threading.Lock()
        self._stopped = threading.Event()
        super().__init__(
            conninfo_or_pool,
            schema=schema,
            migrate=migrate,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            pool_timeout=pool_timeout,
            read_only=read_only,
            connect_timeout=connect_timeout,
        )
        last = "SELECT id, seq FROM inserted;"
        enqueue = self._queries["enqueue"]
        if not enqueue.endswith(last):  # the two texts are joined: keep them in step
            raise RuntimeError(f"queries.sql: the enqueue statement must end with {last!r}")
        self._queries["enqueue_and_notify"] = _tagged(
            "enqueue_and_notify",
            _untagged(enqueue).removesuffix(last) + _untagged(self._queries["enqueue_and_notify"]),
        )
        prefix = "resilient_sync_"
        channel = prefix + schema
        if len(channel) > 63:
            channel = prefix + hashlib.blake2b(schema.encode(), digest_size=16).hexdigest()
        self.channel = channel

    # -- writing -------------------------------------------------------------------

    def enqueue(
        self,
        deliveries: Sequence[Delivery],
        *,
        cursor: tuple[str, str | None] | None = None,
        transaction: Any = None,
    ) -> builtins.list[Delivery]:
        """See :meth:`resilient_sync.QueueStore.enqueue`.

        ``transaction`` is the caller's ``psycopg.Connection``: the rows are
        written in its current transaction (one is begun if none is open,
        as psycopg does for any statement) and the caller commits or rolls
        back. On a connection in autocommit mode outside a transaction block,
        the rows are written in a transaction of their own. Enqueues of one
        ``(destination, ordering_key)`` wait for each other's commit, so keep
        the caller's transaction short.
        """
        check_cursor(cursor)
        deliveries = list(deliveries)
        if not deliveries and cursor is None:
            return []
        check_deliveries(deliveries)

        if transaction is None:
            tries = 0

            def insert(conn: Connection) -> builtins.list[Delivery]:
                nonlocal tries
                tries += 1
                return self._enqueue(conn, deliveries, cursor, own_transaction=True)

            inserted = self._run("enqueue deliveries", insert, atomic=False)
            if tries > 1 and len(inserted) < len(deliveries):
                inserted = self._inserted_before(deliveries, inserted)
            return inserted
        conn = self._joinable(transaction, "enqueue deliveries")
        alone = conn.autocommit and conn.info.transaction_status == IDLE
        action = "enqueue deliveries in the caller's transaction"
        try:
            return self._enqueue(conn, deliveries, cursor, own_transaction=alone)
        except UnicodeEncodeError as exc:  # raised before the statement is sent
            raise unencodable(f"PostgreSQL {self._kind} at {self._where}", action, exc) from exc
        except psycopg.Error as exc:
            raise self._error(action, exc) from exc

    def _inserted_before(
        self, deliveries: Sequence[Delivery], inserted: builtins.list[Delivery]
    ) -> builtins.list[Delivery]:
        """After a lost reply and a repeat: the rows our first (committed) run
        inserted are found by their delivery ids (fresh for every submit), so
        they count as inserted, not as already known. A row under the same id
        whose event, destination or creation time differ is an older one (a
        caller reusing an id): already known."""
        have = {d.id for d in inserted}
        ours = {d.id: d for d in deliveries}
        rows = self._fetch(
            "re-read deliveries after a lost reply",
            "existing_ids",
            {"ids": [d.id for d in deliveries if d.id not in have]},
        )
        seqs: dict[str, int] = {}
        for delivery_id, seq, event_id, destination, created_at in rows:
            d = ours[delivery_id]
            same_time = d.created_at.tzinfo is None or _utc(created_at) == d.created_at
            if (event_id, destination) == (d.event.id, d.destination) and same_time:
                seqs[delivery_id] = seq
        out: builtins.list[Delivery] = []
        for d in deliveries:
            if d.id in have:
                out.extend(x for x in inserted if x.id == d.id)
            elif d.id in seqs:
                out.append(attrs.evolve(d, seq=seqs.pop(d.id)))
        return out

    def _joinable(self, conn: Any, action: str) -> Connection:
        if not isinstance(conn, psycopg.Connection):
            raise TypeError(
                f"{type(self).__name__} can join only a psycopg.Connection (sync) transaction, "
                f"got {type(conn).__module__}.{type(conn).__qualname__}"
            )
        status = conn.info.transaction_status
        if status == psycopg.pq.TransactionStatus.INERROR:
            raise StoreError(
                f"cannot {action}: the transaction passed to {type(self).__name__} is aborted "
                "by an earlier error; roll it back first"
            )
        if status not in (IDLE, psycopg.pq.TransactionStatus.INTRANS):
            raise StoreError(
                f"cannot {action}: the connection passed to {type(self).__name__} is busy "
                f"({status.name}); pass a connection between statements"
            )
        return conn

    def _enqueue(
        self,
        conn: Connection,
        deliveries: builtins.list[Delivery],
        cursor: tuple[str, str | None] | None,
        *,
        own_transaction: bool,
    ) -> builtins.list[Delivery]:
        """Lock the ordering keys, insert, save the cursor and notify: one round
        trip (one statement when the enqueue is its own transaction, with no
        key to lock and no cursor; else one pipelined transaction)."""
        keyed = sorted(
            {
                (d.destination, d.event.ordering_key)
                for d in deliveries
                if d.event.ordering_key is not None
            }
        )
        insert = self._cursor(conn)
        if own_transaction and not keyed and cursor is None and conn.autocommit:
            params: dict[str, Any] = {**self._enqueue_params(deliveries), "channel": self.channel}
            insert.execute(self._queries["enqueue_and_notify"], params)
        else:
            # a transaction of its own (own_transaction), or the caller's
            with self._one_trip(conn):
                if keyed:
                    self._cursor(conn).execute(
                        self._queries["lock_ordering_keys"],
                        {"destinations": [d for d, _ in keyed], "keys": [k for _, k in keyed]},
                    )
                if deliveries:
                    insert.execute(self._queries["enqueue"], self._enqueue_params(deliveries))
                if cursor is not None:
                    self._cursor(conn).execute(
                        self._queries["save_cursor"], {"source": cursor[0], "value": cursor[1]}
                    )
                if deliveries:
                    self._cursor(conn).execute(self._queries["notify"], {"channel": self.channel})
        if not deliveries:
            return []
        seqs = {row[0]: row[1] for row in insert.fetchall()}
        inserted: builtins.list[Delivery] = []
        for d in deliveries:
            seq = seqs.pop(d.id, None)  # pop: a repeated id is inserted once
            if seq is not None:
                inserted.append(attrs.evolve(d, seq=seq))
        return inserted

    @staticmethod
    def _enqueue_params(deliveries: Sequence[Delivery]) -> dict[str, list[Any]]:
        p: dict[str, list[Any]] = {
            name: []
            for name in (
                "ids",
                "event_ids",
                "destinations",
                "ordering_keys",
                "events",
                "statuses",
                "idempotency_keys",
                "attempts",
                "next_attempt_at",
                "last_errors",
                "error_categories",
                "results",
                "created_at",
                "updated_at",
                "lease_tokens",
                "lease_owners",
                "lease_expires_at",
            )
        }
        for d in deliveries:
            error, category = _error_columns(d.last_error)
            p["ids"].append(d.id)
            p["event_ids"].append(d.event.id)
            p["destinations"].append(d.destination)
            p["ordering_keys"].append(d.event.ordering_key)
            p["events"].append(checked_event_json(d))
            p["statuses"].append(d.status._value_)
            p["idempotency_keys"].append(d.idempotency_key)
            p["attempts"].append(d.attempts)
            p["next_attempt_at"].append(d.next_attempt_at)
            p["last_errors"].append(error)
            p["error_categories"].append(category)
            p["results"].append(_dump(d.result))
            p["created_at"].append(d.created_at)
            p["updated_at"].append(d.updated_at)
            p["lease_tokens"].append(d.lease_token)
            p["lease_owners"].append(d.lease_owner)
            p["lease_expires_at"].append(d.lease_expires_at)
        return p

    def claim(
        self,
        *,
        now: datetime,
        limit: int,
        lease_until: datetime,
        worker: str,
        destinations: Collection[str] | None = None,
    ) -> builtins.list[Delivery]:
        """See :meth:`resilient_sync.QueueStore.claim` (one statement, ``SKIP LOCKED``)."""
        destinations = check_claim_args(limit, worker, destinations, now, lease_until)
        if limit < 1:
            return []
        params = {
            "now": now,
            "limit": limit,
            "lease_until": lease_until,
            "worker": worker,
            "all_destinations": destinations is None,
            # a name no destination can hold (a NUL, a lone surrogate) matches
            # none, as on the other stores; the driver would refuse to send it
            "destinations": (
                sorted(d for d in destinations if not unmatchable(d))
                if destinations is not None
                else []
            ),
        }

        def lease(conn: Connection) -> builtins.list[Delivery]:
            # one transaction in one round trip: the claim's settings, then the
            # claim, prepared but planned for these values every time (the
            # settings force a custom plan; see queries.sql)
            cur = self._cursor(conn)
            with self._one_trip(conn):
                self._cursor(conn).execute(self._queries["claim_settings"])
                cur.execute(self._queries["claim"], params, prepare=True)
            return [_delivery(row) for row in cur.fetchall()]

        return self._run("claim deliveries", lease, atomic=False, retry_conflicts=True)

    def complete(self, completions: Sequence[Completion]) -> builtins.list[bool]:
        """See :meth:`resilient_sync.QueueStore.complete` (one statement for the batch)."""
        completions = check_completions(completions)
        completions = list(completions)
        if not completions:
            return []
        check_new_events(c.event for c in completions)
        sent: builtins.list[Completion] = []
        index: builtins.list[int | None] = []  # per completion: its 1-based row in `sent`
        seen: set[tuple[str, int]] = set()
        for c in completions:
            ident = (c.delivery_id, c.lease_token)
            if ident in seen:  # a repeat can only find the delivery no longer in flight
                index.append(None)
                continue
            seen.add(ident)
            sent.append(c)
            index.append(len(sent))
        params = {**self._complete_params(sent), "channel": self.channel}
        ids = {
            "ids": [c.delivery_id for c in sent],
            "keys": [None if c.event is None else c.event.ordering_key for c in sent],
        }

        tries = 0

        def apply(conn: Connection) -> set[int]:
            nonlocal tries
            tries += 1
            done = self._cursor(conn)
            with self._one_trip(conn):
                self._lock_keys(conn, ids)
                self._cursor(conn).execute(self._queries["keys_handled"])
                self._cursor(conn).execute(self._queries["by_id_settings"])
                done.execute(self._queries["complete"], params)
            return {row[0] for row in done.fetchall() if row[0] is not None}

        applied = self._run("complete deliveries", apply, atomic=False)
        if tries > 1 and len(applied) < len(sent):
            # the statement was sent again after a lost connection: its first run
            # may have committed, and this repeat is then refused by its own
            # fencing. A delivery that now reads exactly as our outcome wrote it
            # was applied by us.
            applied |= self._applied_before(sent, applied)
        return [i is not None and i in applied for i in index]

    def _applied_before(self, sent: Sequence[Completion], applied: set[int]) -> set[int]:
        missing = {c.delivery_id: ci for ci, c in enumerate(sent, start=1) if ci not in applied}
        rows = self._fetch(
            "re-read deliveries after a lost reply", "delivery_states", {"ids": list(missing)}
        )
        found: set[int] = set()
        for delivery_id, status, token, updated_at in rows:
            ci = missing[delivery_id]
            c = sent[ci - 1]
            if (
                status == c.status.value
                and token == c.lease_token
                and _utc(updated_at) == c.finished_at
            ):
                found.add(ci)
        if found:
            logger.warning(
                "%d outcomes were committed before the connection was lost; counted as applied",
                len(found),
            )
        return found

    @staticmethod
    def _complete_params(sent: Sequence[Completion]) -> dict[str, str]:
        """The ``complete`` statement's JSON arrays: one row per outcome, its
        result and its corrected event apart (the values that may be large),
        and one row per audit record with the 1-based index of its outcome."""
        outcomes: builtins.list[builtins.list[Any]] = []
        results: builtins.list[str | None] = []
        events: builtins.list[str | None] = []
        records: builtins.list[builtins.list[Any]] = []
        for ci, c in enumerate(sent, start=1):
            error, event, next_at = c.error, c.event, c.next_attempt_at
            outcomes.append(
                [
                    c.delivery_id,
                    c.lease_token,
                    c.status._value_,
                    _iso(c.finished_at),
                    None if next_at is None else _iso(next_at),
                    *_error_columns(error),
                    None if event is None else event.ordering_key,
                    c.idempotency_key,
                    c.count_attempt,
                ]
            )
            results.append(_dump(c.result))
            events.append(None if event is None else event_to_json(event))
            records.extend(_audit_row(r, ci) for r in c.audit)
        return {
            "outcomes": _ROWS_ENCODE(outcomes),
            "results": _ROWS_ENCODE(results),
            "events": _ROWS_ENCODE(events),
            "records": _ROWS_ENCODE(records),
        }

    def _lock_keys(self, conn: Connection, ids: dict[str, Any]) -> None:
        """Set the current transaction to READ COMMITTED and take the
        ordering-key locks of the listed deliveries, which a statement that
        may let a key's next delivery go needs (see migration 0003). Send as
        the first statements of the transaction ``_run`` has just begun, or
        of a ``_one_trip``."""
        cur = self._cursor(conn)
        cur.execute(self._queries["read_committed"])
        cur.execute(self._queries["lock_keys_of"], ids)

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
        """See :meth:`resilient_sync.QueueStore.transition`."""
        ids, from_status = check_transition_args(
            ids, from_status, to_status, audit, now, idempotency_key, if_unchanged
        )
        check_new_events([event])
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        params = {
            "ids": wanted,
            "from_status": [DeliveryStatus(s).value for s in from_status],
            "to_status": to_status.value,
            "now": now,
            "reset_attempts": reset_attempts,
            "event": event_to_json(event) if event is not None else None,
            "ordering_key": event.ordering_key if event is not None else None,
            "idempotency_key": idempotency_key,
            "guarded": if_unchanged is not None,
            "g_status": if_unchanged.status.value if if_unchanged is not None else None,
            "g_attempts": if_unchanged.attempts if if_unchanged is not None else None,
            "g_token": if_unchanged.lease_token if if_unchanged is not None else None,
            "g_updated_at": if_unchanged.updated_at if if_unchanged is not None else None,
        }

        def move(conn: Connection) -> builtins.list[str]:
            cur = self._cursor(conn)
            moved_to = None if event is None else event.ordering_key
            self._lock_keys(conn, {"ids": wanted, "keys": [moved_to] * len(wanted)})
            rows = cur.execute(self._queries["transition"], params).fetchall()
            moved = {row[0]: _delivery(row) for row in rows}
            order = [i for i in wanted if i in moved]
            if order:
                records = [fill_audit(audit, moved[i]) for i in order]
                cur.execute(self._queries["insert_audit"], _audit_params(records))
                if to_status is DeliveryStatus.PENDING:
                    cur.execute(self._queries["notify"], {"channel": self.channel})
            return order

        return self._run("move deliveries", move)

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
        """See :meth:`resilient_sync.QueueStore.set_destination`."""
        check_destination_args(name, now, paused, paused_reason, hold_until, hold_reason)
        params = {
            "name": name,
            "now": now,
            "paused": paused,
            "paused_reason": paused_reason,
            "hold_until": hold_until,
            "hold_reason": hold_reason,
        }

        def update(conn: Connection) -> DestinationState:
            cur = self._cursor(conn)
            row = cur.execute(self._queries["set_destination"], params).fetchone()
            assert row is not None  # noqa: S101 - an upsert always returns its row
            if audit is not None:
                cur.execute(self._queries["insert_audit"], _audit_params([audit]))
            if paused is False:
                cur.execute(self._queries["notify"], {"channel": self.channel})
            return _destination_state(row)

        return self._run(f"update destination {name!r}", update)

    def extend_leases(
        self, leases: Sequence[tuple[str, int]], *, until: datetime
    ) -> builtins.list[bool]:
        """Move the lease end of deliveries still held under their token (the
        dispatcher's heartbeat), in one statement."""
        leases = check_pairs(leases, "leases", ("str", "int"))
        check_time(until, "until")
        if not leases:
            return []
        params = {"ids": [i for i, _ in leases], "tokens": [t for _, t in leases], "until": until}

        def extend(conn: Connection) -> builtins.list[TupleRow]:
            cur = self._cursor(conn)
            with self._one_trip(conn):  # found by their ids (by_id_settings)
                self._cursor(conn).execute(self._queries["by_id_settings"])
                cur.execute(self._queries["extend_leases"], params)
            return cur.fetchall()

        moved = {(row[0], row[1]) for row in self._run("extend leases", extend, atomic=False)}
        return [(i, t) in moved for i, t in leases]

    def add_audit(self, records: Sequence[Attempt]) -> None:
        """See :meth:`resilient_sync.QueueStore.add_audit`."""
        if not records:
            return
        params = _audit_params(records)

        def write(conn: Connection) -> None:
            self._cursor(conn).execute(self._queries["insert_audit"], params)

        self._run("add audit records", write, atomic=False)

    # -- reading ----------------------------------------------------------------------

    def _fetch(self, action: str, query: str, params: dict[str, Any]) -> builtins.list[TupleRow]:
        def read(conn: Connection) -> builtins.list[TupleRow]:
            return self._cursor(conn).execute(self._queries[query], params).fetchall()

        return self._run(action, read, atomic=False)

    def get(self, delivery_id: str) -> Delivery | None:
        """See :meth:`resilient_sync.QueueStore.get`."""
        check_text(delivery_id, "delivery_id")
        if unmatchable(delivery_id):
            return None
        rows = self._fetch(f"read delivery {delivery_id!r}", "get", {"id": delivery_id})
        return _delivery(rows[0]) if rows else None

    def ids_with_prefix(self, prefix: str, *, limit: int = 10) -> builtins.list[str]:
        """The ids that start with ``prefix``, sorted, at most ``limit`` (a
        primary key range scan; the CLI takes unique id prefixes with it)."""
        if not prefix or unmatchable(prefix):
            return []
        params = {
            "prefix": prefix,
            "low": prefix,
            "high": prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF)),
            "length": len(prefix),
            "limit": limit,
        }
        rows = self._fetch(f"find ids starting {prefix!r}", "ids_with_prefix", params)
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
        """See :meth:`resilient_sync.QueueStore.list`."""
        status, category = check_list_args(
            status, category, destination, event_type, search, since, until
        )
        check_page_args(limit)
        if unmatchable(destination, event_type, search):
            return Page(items=[], next_cursor=None)
        q = self._queries
        params: dict[str, Any] = {"after": decode_cursor(cursor), "limit": limit + 1}
        parts = [q["list"]]
        if status is not None:
            statuses = sorted({DeliveryStatus(s).value for s in status})
            if statuses == [DeliveryStatus.NEEDS_ACTION.value]:
                parts.append(q["list_where_needs_action"])
            else:
                parts.append(q["list_where_status"])
                params["statuses"] = statuses
        for name, value in (
            ("destination", destination),
            ("category", ErrorCategory(category).value if category is not None else None),
            ("since", since),
            ("until", until),
            ("event_type", event_type),
            ("search", like_pattern(search) if search else None),
        ):
            if value is not None:
                parts.append(q[f"list_where_{name}"])
                params[name] = value
        parts.append(q["list_order"])
        sql = "\n".join(parts)

        def read(conn: Connection) -> builtins.list[TupleRow]:
            return self._cursor(conn).execute(sql, params).fetchall()

        items = [_delivery(row) for row in self._run("list deliveries", read, atomic=False)]
        if len(items) > limit:
            return Page(items=items[:limit], next_cursor=encode_cursor(items[limit - 1].seq))
        return Page(items=items, next_cursor=None)

    def attempts(self, delivery_id: str) -> builtins.list[Attempt]:
        """See :meth:`resilient_sync.QueueStore.attempts`."""
        check_text(delivery_id, "delivery_id")
        if unmatchable(delivery_id):
            return []
        rows = self._fetch("read the audit trail", "attempts", {"id": delivery_id})
        return [_attempt(row) for row in rows]

    def audit(
        self, *, since: datetime | None = None, errors_only: bool = False, limit: int | None = None
    ) -> builtins.list[Attempt]:
        """See :meth:`resilient_sync.QueueStore.audit`."""
        if limit is not None:
            check_int(limit, "limit", minimum=0)
        if not isinstance(errors_only, bool):
            raise wrong_type("errors_only", "a bool", errors_only)
        check_time(since, "since", optional=True)
        params = {"since": since, "errors_only": errors_only, "limit": limit}
        return [_attempt(row) for row in self._fetch("read the audit trail", "audit", params)]

    def destinations(self) -> dict[str, DestinationState]:
        """See :meth:`resilient_sync.QueueStore.destinations`."""
        rows = self._fetch("read destinations", "destinations", {})
        return {row[0]: _destination_state(row) for row in rows}

    def get_cursor(self, source: str) -> str | None:
        """See :meth:`resilient_sync.QueueStore.get_cursor`."""
        check_text(source, "source")
        if unmatchable(source):
            return None
        rows = self._fetch(f"read the cursor of {source!r}", "get_cursor", {"source": source})
        return rows[0][0] if rows else None

    def stats(self) -> QueueStats:
        """See :meth:`resilient_sync.QueueStore.stats`: the open deliveries
        through their index, the finished ones from counters kept by triggers
        (the cost follows the queue's depth, not its history)."""

        def read(conn: Connection) -> QueueStats:
            cur = self._cursor(conn)
            q = self._queries
            by_destination: dict[str, dict[DeliveryStatus, int]] = {}
            needs_action: dict[str, dict[ErrorCategory, int]] = {}
            for dest, status_text, category, n in cur.execute(q["stats_open"]).fetchall():
                status = DeliveryStatus(status_text)
                counts = by_destination.setdefault(dest, {})
                counts[status] = counts.get(status, 0) + n
                if status is DeliveryStatus.NEEDS_ACTION and category is not None:
                    cats = needs_action.setdefault(dest, {})
                    cats[ErrorCategory(category)] = cats.get(ErrorCategory(category), 0) + n
            for dest, status_text, n in cur.execute(q["stats_finished"]).fetchall():
                by_destination.setdefault(dest, {})[DeliveryStatus(status_text)] = int(n)
            oldest = cur.execute(q["stats_oldest_waiting"]).fetchone()
            states = {
                row[0]: _destination_state(row) for row in cur.execute(q["destinations"]).fetchall()
            }
            return QueueStats(
                by_destination=by_destination,
                needs_action=needs_action,
                oldest_waiting=_utc(oldest[0]) if oldest else None,
                destinations=states,
            )

        return self._run("read queue statistics", read)

    def error_counts(
        self, *, since: datetime, until: datetime, bucket: timedelta
    ) -> builtins.list[tuple[int, ErrorCategory, int]]:
        """See :meth:`resilient_sync.QueueStore.error_counts` (``GROUP BY`` in SQL)."""
        check_time(since, "since")
        check_time(until, "until")
        if not isinstance(bucket, timedelta):
            raise wrong_type("bucket", "a timedelta", bucket)
        width = bucket.total_seconds()
        if width <= 0:
            raise ValueError(f"bucket must be > 0, got {bucket!r}")
        params = {"since": since, "until": until, "width": width}
        rows = self._fetch("count errors", "error_counts", params)
        return [(int(index), ErrorCategory(category), n) for index, category, n in rows]

    def purge(self, *, before: datetime, limit: int = 1000, dry_run: bool = False) -> int:
        """See :meth:`resilient_sync.QueueStore.purge`: one short transaction."""
        check_time(before, "before")
        check_page_args(limit)
        params = {"before": before, "limit": limit}
        if dry_run:
            return int(self._fetch("count purgeable deliveries", "purge_count", params)[0][0])
        return int(self._fetch("purge finished deliveries", "purge", params)[0][0])

    def database_time(self) -> datetime:
        """The database server's clock (``clock_timestamp()``): workers on
        several machines judge leases by this one clock."""
        value = self._fetch("read the database clock", "database_time", {})[0][0]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]

    def next_due(self) -> datetime | None:
        """See :meth:`resilient_sync.QueueStore.next_due`.

        Deliveries waiting for something other than time (a paused
        destination, an older delivery of their ordering key) are left out,
        so an idle worker sleeps instead of spinning on them. Exact: each
        destination's first due time is read from the claim's indexes (see
        queries.sql), so the cost of an idle poll grows with the number of
        destinations, not with the queue.
        """

        def read(conn: Connection) -> builtins.list[TupleRow]:
            cur = self._cursor(conn)
            # prepared: without parameters its plan is the same every time
            # (see next_due_settings)
            with self._one_trip(conn):
                self._cursor(conn).execute(self._queries["next_due_settings"])
                cur.execute(self._queries["next_due"], prepare=True)
            return cur.fetchall()

        rows = self._run("read the next due time", read, atomic=False)
        return _utc(rows[0][0]) if rows else None

    # -- waking up -----------------------------------------------------------------

    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when work may have arrived.

        Listens on a dedicated connection for the ``NOTIFY`` sent by enqueues,
        hand-backs, retries and resumed destinations. Returns at once after
        (re)connecting the listener, since a notification may have been missed
        meanwhile. Never raises for a database problem: it logs it and waits
        out the timeout, and the dispatcher's next claim reports the error.
        """
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        if self._closed:
            return
        with self._listen_lock:
            if self._stopped.is_set():
                return
            listener = self._listener
            if listener is None or listener.closed:
                try:
                    self._listener = self._listen()
                except psycopg.Error as exc:
                    logger.warning(
                        "cannot listen for new work at %s (%s); polling every %.1fs",
                        self._where,
                        self._error("listen", exc),
                        timeout,
                    )
                    self._stopped.wait(timeout)
                    return
                if self._stopped.is_set():  # close() ran while we connected
                    self._drop_listener()
                return
            try:
                for _ in listener.notifies(timeout=timeout, stop_after=1):
                    pass
                for _ in listener.notifies(timeout=0):  # drain what else is queued
                    pass
            except psycopg.Error as exc:
                if self._stopped.is_set():
                    return  # close() was called from another thread
                logger.warning(
                    "lost the listening connection to %s (%s); reconnecting",
                    self._where,
                    type(exc).__name__,
                )
                self._drop_listener()

    def _listen(self) -> Connection:
        source = self._pool.kwargs
        kwargs = dict((source() if callable(source) else source) or {})
        kwargs["autocommit"] = True
        conninfo = self._pool.conninfo
        if callable(conninfo):
            conninfo = conninfo()
        conn: Connection = psycopg.Connection.connect(conninfo, **kwargs)
        try:
            conn.execute(f'LISTEN "{self.channel}"')
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except psycopg.Error as exc:
                logger.debug("closing the listening connection failed: %s", exc)

    def close(self) -> None:
        """Close the listening connection and (if this store created it) the pool."""
        self._stopped.set()
        self._drop_listener()
        super().close()


# -- the idempotency store -----------------------------------------------------------


class PostgresIdempotencyStore(_PostgresBase):
    """An :class:`~resilient_sync.IdempotencyStore` in PostgreSQL.

    Takes the same arguments as :class:`PostgresQueueStore` and uses the same
    schema (and migrations). Keys of one batch are locked in sorted order, so
    concurrent batches never deadlock.
    """

    _kind = "idempotency store"

    def __init__(
        self,
        conninfo_or_pool: str | ConnectionPool[Any],
        *,
        schema: str = "resilient_sync",
        migrate: bool = True,
        pool_min_size: int = 1,
        pool_max_size: int = 4,
        pool_timeout: float = 10.0,
        read_only: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        super().__init__(
            conninfo_or_pool,
            schema=schema,
            migrate=migrate,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            pool_timeout=pool_timeout,
            read_only=read_only,
            connect_timeout=connect_timeout,
        )

    def begin(
        self, entries: Sequence[tuple[str, str]], *, now: datetime, lock_until: datetime
    ) -> builtins.list[IdempotencyRecord]:
        """See :meth:`resilient_sync.IdempotencyStore.begin`."""
        entries = check_pairs(entries, "entries", ("str", "str"))
        check_time(now, "now")
        check_time(lock_until, "lock_until")
        entries = list(entries)
        if not entries:
            return []
        first: dict[str, str] = {}
        for key, fp in entries:
            first.setdefault(key, fp)
        keys = sorted(first)
        params = {
            "entries": _ROWS_ENCODE([[k, first[k]] for k in keys]),
            "now": now,
            "lock_until": lock_until,
            "holder": uuid.uuid4(),
        }

        def take(conn: Connection) -> builtins.list[TupleRow]:
            # one pipelined transaction whose commit waits for no fsync (relaxed_commit)
            cur = self._cursor(conn)
            with self._relaxed(conn):
                cur.execute(self._queries["idempotency_begin"], params)
            return cur.fetchall()

        rows = {row[0]: row for row in self._run("begin idempotency keys", take, atomic=False)}
        out: builtins.list[IdempotencyRecord] = []
        answered: set[str] = set()
        for key, fp in entries:
            _, state, stored_fp, result, locked_until, expires_at, taken = rows[key]
            if taken and key not in answered:
                record = IdempotencyRecord(
                    key=key, state=IdempotencyState.NEW, fingerprint=fp, locked_until=lock_until
                )
            elif state == "in_progress":
                record = IdempotencyRecord(
                    key=key,
                    state=IdempotencyState.IN_PROGRESS,
                    fingerprint=stored_fp,
                    locked_until=_utc(locked_until),
                )
            else:
                record = IdempotencyRecord(
                    key=key,
                    state=IdempotencyState.COMPLETED
                    if stored_fp == fp
                    else IdempotencyState.MISMATCH,
                    fingerprint=stored_fp,
                    result=_load(result),
                    expires_at=_utc(expires_at),
                )
            answered.add(key)
            out.append(record)
        return out

    def finish(
        self, entries: Sequence[tuple[str, str, Any]], *, now: datetime, expires_at: datetime
    ) -> None:
        """See :meth:`resilient_sync.IdempotencyStore.finish`."""
        entries = check_pairs(entries, "entries", ("str", "str", "any"))
        check_results(entries)
        check_time(now, "now")
        check_time(expires_at, "expires_at", optional=True)
        last: dict[str, tuple[str, Any]] = {}
        for key, fp, result in entries:
            last[key] = (fp, result)
        if not last:
            return
        keys = sorted(last)
        params = {
            "entries": _ROWS_ENCODE([[k, last[k][0]] for k in keys]),
            # apart from the rows, as complete's results (may be large)
            "results": _ROWS_ENCODE([_dump(last[k][1]) for k in keys]),
            "expires_at": expires_at,
        }

        def write(conn: Connection) -> None:
            with self._one_trip(conn):  # at READ COMMITTED, as a completion
                self._cursor(conn).execute(self._queries["idempotency_finish"], params)

        self._run("finish idempotency keys", write, atomic=False)

    def extend_locks(
        self, keys: Sequence[str], *, locked_until: datetime, until: datetime
    ) -> builtins.list[bool]:
        """Move the locks still held under ``locked_until`` to ``until`` (the
        lease heartbeat), in one statement."""
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until")
        check_time(until, "until")
        unique = sorted(set(keys))
        if not unique:
            return [False] * len(keys)

        def move(conn: Connection) -> set[str]:
            cur = self._cursor(conn).execute(
                self._queries["idempotency_extend_locks"],
                {"keys": unique, "locked_until": locked_until, "until": until},
            )
            return {row[0] for row in cur.fetchall()}

        moved = self._run("extend idempotency locks", move, atomic=False)
        return [key in moved for key in keys]

    def release(self, keys: Sequence[str], *, locked_until: datetime | None = None) -> None:
        """See :meth:`resilient_sync.IdempotencyStore.release`."""
        keys = check_texts(keys, "keys")
        check_time(locked_until, "locked_until", optional=True)
        unique = sorted(set(keys))
        if not unique:
            return

        def forget(conn: Connection) -> None:
            with self._relaxed(conn):
                self._cursor(conn).execute(
                    self._queries["idempotency_release"],
                    {"keys": unique, "locked_until": locked_until},
                )

        self._run("release idempotency keys", forget, atomic=False)

    def purge(self, *, now: datetime, limit: int = 1000) -> int:
        """See :meth:`resilient_sync.IdempotencyStore.purge`."""
        check_time(now, "now")
        check_page_args(limit)
        rows = self._fetch_idempotency("purge expired idempotency keys", now, limit)
        return sum(1 for (state,) in rows if state == "completed")

    def _fetch_idempotency(self, action: str, now: datetime, limit: int) -> builtins.list[Any]:
        def run(conn: Connection) -> builtins.list[Any]:
            cur = self._cursor(conn)
            return cur.execute(
                self._queries["idempotency_purge"], {"now": now, "limit": limit}
            ).fetchall()

        return self._run(action, run, atomic=False)

    def get(self, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """See :meth:`resilient_sync.IdempotencyStore.get`."""
        check_text(key, "key")
        check_time(now, "now")
        if unmatchable(key):
            return None  # a key no store can hold (a NUL, a lone surrogate) is not held

        def read(conn: Connection) -> TupleRow | None:
            return (
                self._cursor(conn)
                .execute(self._queries["idempotency_get"], {"key": key})
                .fetchone()
            )

        row = self._run(f"read idempotency key {key!r}", read, atomic=False)
        if row is None:
            return None
        _, state, fp, result, locked_until, expires_at = row
        if state == "completed":
            if expires_at is not None and expires_at <= now:
                return None
            return IdempotencyRecord(
                key=key,
                state=IdempotencyState.COMPLETED,
                fingerprint=fp,
                result=_load(result),
                expires_at=_utc(expires_at),
            )
        if locked_until is not None and locked_until <= now:
            return None
        return IdempotencyRecord(
            key=key,
            state=IdempotencyState.IN_PROGRESS,
            fingerprint=fp,
            locked_until=_utc(locked_until),
        )


# -- open_stores("postgresql://...") -------------------------------------------------


def open_pair(url: str, **options: Any) -> tuple[PostgresQueueStore, PostgresIdempotencyStore]:
    """Both stores on one pool, for ``open_stores("postgresql://...")``.

    A ``schema`` query parameter of the URL (``postgresql://host/db?schema=sync``)
    selects the schema, as does the ``schema`` option; a ``search_path`` naming
    one schema (``?search_path=sync`` or ``?options=-c search_path=sync``)
    selects it too, and one naming several is refused (the stores live in
    one schema). Other options are passed to both stores. The pool closes
    when both stores are closed.
    """
    parts = urlsplit(url)
    # the query as libpq reads it: "&"-separated pairs with %XX escapes, and
    # nothing else ("+" is a plus sign, not a space as in a form)
    query = [
        (unquote(key), unquote(value), raw)
        for raw in parts.query.split("&")
        if raw
        for key, _, value in [raw.partition("=")]
    ]
    from_url = [value for key, value, _ in query if key == "schema"]
    path = [value for key, value, _ in query if key == "search_path"]
    path += [
        m.group(1)
        for key, value, _ in query
        if key == "options"
        for m in _SEARCH_PATH.finditer(value)
    ]
    if path:
        names = [n.strip().strip('"') for n in path[-1].split(",") if n.strip()]
        if len(names) != 1 or (from_url and from_url[-1] != names[0]):
            raise ValueError(
                f"search_path={path[-1]!r} in the store URL: the stores live in one schema; "
                "name it with ?schema=NAME (and keep your application's search_path apart)"
            )
        from_url = from_url or names
    if from_url:
        if "schema" in options and options["schema"] != from_url[-1]:
            raise ValueError(
                f"two schemas given: {from_url[-1]!r} in the URL and {options['schema']!r}"
            )
        options["schema"] = from_url[-1]
    if from_url or path:
        # the other parameters go on as the caller wrote them (decoding and
        # re-encoding them as a form turned "-c%20x%3D1" into "-c+x%3D1",
        # which the server refused as the setting "+x")
        kept: builtins.list[str] = []
        for key, value, raw in query:
            if key in ("schema", "search_path"):
                continue
            if key == "options" and _SEARCH_PATH.search(value):
                rest = _SEARCH_PATH.sub("", value).strip()
                kept.append(f"{raw.partition('=')[0]}={quote(rest, safe='')}")
            else:
                kept.append(raw)
        # everything before the "?" as written: urlunsplit drops the "//" of an
        # empty host ("postgresql:///db?host=/run/postgresql"), which libpq refuses
        url = url.partition("?")[0] + ("?" + "&".join(kept) if kept else "")
    queue = PostgresQueueStore(url, **options)
    try:
        idempotency = PostgresIdempotencyStore(
            queue.pool,
            schema=queue.schema,
            migrate=options.get("migrate", True),
            read_only=options.get("read_only", False),
        )
    except BaseException:
        queue.close()
        raise
    assert queue._pool_ref is not None  # noqa: S101 - created from a URL, so it owns its pool
    idempotency._pool_ref = queue._pool_ref.acquire()
    return queue, idempotency
