"""The admin panel: a Starlette app of thin handlers over :class:`~resilient_sync.Operator`.

Each handler parses the request, calls the operator (in a worker thread:
the stores block), and renders a Jinja2 template (autoescaped: every text
from the store or from a person is escaped once, by Jinja2). Actions are
POSTs with a CSRF token, taken by operators only, and redirect back with a
message (post/redirect/get); bad input is a message on the page and changes
nothing. Nothing is served without a signed-in user except the sign-in page
and the style sheet.
"""

from __future__ import annotations

import inspect
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import attrs
import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import revision_risk, store_key
from .._errors import DeliveryNotFoundError, StoreError
from .._format import CATEGORY_ORDER, STATUS_ORDER, fmt_ago, fmt_time
from .._model import Delivery, DeliveryStatus, ErrorCategory
from .._operator import DISCARDABLE, EDITABLE, RESOLVABLE, RETRYABLE_BY_OPERATOR, Operator
from .._protocols import Clock, IdempotencyStore, QueueStore
from .._redact import redact
from .._runbook import advice_for
from .._text import MAX_NOTE, clean, get_logger, one_line
from .._waiting import WAITING, waiting_for
from ._auth import Authenticate, Login, Throttle, User, csrf_ok, csrf_token
from ._views import (
    CATEGORY_COLORS,
    CATEGORY_LABELS,
    PAGE_SIZES,
    RANGES,
    BadInput,
    EditForm,
    Filters,
    as_form_value,
    chart_window,
    duplicate_match,
    field_value,
    group_errors,
    json_lines,
    parse_edit_form,
    parse_filters,
    parse_range,
    retry_problem,
    short_id,
    timeline,
    trend_chart,
)

__all__ = ["create_app"]

logger = get_logger("resilient_sync.admin")

_HERE = Path(__file__).resolve().parent
_HOST_SCOPE = "resilient_sync.admin.host_scope"
_UNFINISHED = frozenset(
    {
        DeliveryStatus.PENDING,
        DeliveryStatus.IN_FLIGHT,
        DeliveryStatus.RETRY_SCHEDULED,
        DeliveryStatus.NEEDS_ACTION,
    }
)
_MAX_IDS = 1000
_SESSION_HOURS = 12
_T = TypeVar("_T")

_CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", _CSP),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class _Scope:
    """Gives the panel its own view of the request: URLs are built by its own
    router under its mount path, and its session (CSRF token, sign-in) never
    replaces the host application's ``scope["session"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            inner = dict(scope)
            inner.pop("router", None)
            inner["app_root_path"] = scope.get("root_path", "")
            inner[_HOST_SCOPE] = scope
            scope = inner
        await self.app(scope, receive, send)


class _SecurityHeaders:
    """No framing, no inline scripts or styles, no caching of pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in _HEADERS if n not in names]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


# -- the retry-all jobs --------------------------------------------------------------


@attrs.define(kw_only=True)
class Job:
    """A "Re-sync all matching" run, in batches, in a thread of this process."""

    id: str
    actor: str
    scope: str
    query: str
    started_at: datetime
    total: int | None = None
    done: int = 0
    moved: int = 0
    finished: bool = False
    error: str | None = None

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if self.finished else 0
        return int(100 * self.done / self.total)


class _Jobs:
    def __init__(self, keep: int = 50) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._keep = keep

    def start(self, job: Job, work: Callable[[Job], None]) -> None:
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if not self._jobs[oldest].finished:
                    break
                del self._jobs[oldest]

        def run() -> None:
            try:
                work(job)
            except Exception as exc:
                logger.exception("re-sync all matching (job %s) failed", job.id)
                job.error = clean(exc, limit=500)
            finally:
                if job.total is None:
                    job.total = job.done
                job.finished = True

        threading.Thread(target=run, name=f"admin-retry-all-{job.id}", daemon=True).start()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)


# -- one request -------------------------------------------------------------------------


class _Ctx:
    """One request: the user, its form, and how to answer."""

    def __init__(self, admin: _Admin, request: Request) -> None:
        self.admin = admin
        self.request = request
        self.user: User | None = None
        self.form: FormData = FormData()
        self._urls: dict[str, str] = {}

    @property
    def session(self) -> dict[str, Any]:
        session: dict[str, Any] = self.request.session
        return session

    @property
    def actor(self) -> str:
        """The signed-in user's name (the actor in the audit trail)."""
        if self.user is None:
            raise RuntimeError("no signed-in user")
        return self.user.name

    def url(self, name: str, /, **params: Any) -> str:
        """The path of a route of the panel (under its mount path)."""
        if params:
            return self.request.url_for(name, **params).path
        found = self._urls.get(name)
        if found is None:
            found = self._urls[name] = self.request.url_for(name).path
        return found

    def delivery_url(self, delivery_id: str) -> str:
        """The path of a delivery's page (one per row: built without the router)."""
        return f"{self.url('deliveries')}/{quote(delivery_id, safe='')}"

    def text(self, name: str, limit: int = MAX_NOTE) -> str:
        """A form field as text (an uploaded file counts as empty), stripped."""
        value = self.form.get(name)
        return value.strip()[:limit] if isinstance(value, str) else ""

    def texts(self, name: str) -> list[str]:
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]

    def flash(self, kind: str, text: str) -> None:
        flashes = list(self.session.get("flash", []))[-4:]
        flashes.append([kind, clean(text, limit=600)])
        self.session["flash"] = flashes

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def render(self, template: str, *, status: int = 200, **data: Any) -> HTMLResponse:
        admin = self.admin
        now = admin.clock.now()
        session = self.session
        context = {
            "title": admin.title,
            "user": self.user,
            "csrf": csrf_token(session, self.user.name if self.user else ""),
            "flashes": session.pop("flash", []) if "flash" in session else [],
            "url": self.url,
            "delivery_url": self.delivery_url,
            "static": lambda path: self.url("static", path=path),
            "here": self.request.url.path,
            "here_full": self._here(),
            "login_mode": admin.login is not None,
            "now": now,
            "fmt_time": fmt_time,
            "ago": lambda when: fmt_ago(when, now),
            "labels": CATEGORY_LABELS,
            "colors": CATEGORY_COLORS,
            "problems": [],
            **data,
        }
        html = admin.templates.get_template(template).render(context)
        return HTMLResponse(html, status_code=status)

    def _here(self) -> str:
        query = self.request.url.query
        return self.request.url.path + (f"?{query}" if query else "")

    def error(self, status: int, heading: str, message: str) -> HTMLResponse:
        return self.render("error.html", status=status, heading=heading, message=message)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def safe_next(self, value: str | None, default: str) -> str:
        """``value`` if it is a path inside the panel (never another site)."""
        prefix = self.request.scope.get("root_path", "")
        if not value or "\\" in value or value.startswith("//"):
            return default
        parts = urlsplit(value)
        if parts.scheme or parts.netloc or not parts.path.startswith(prefix + "/"):
            return default
        return value

    def back(self, default_name: str, **params: Any) -> RedirectResponse:
        return self.redirect(
            self.safe_next(self.text("next", 2000), self.url(default_name, **params))
        )


# -- the app ---------------------------------------------------------------------------


class _Admin:
    def __init__(
        self,
        queue: QueueStore,
        *,
        authenticate: Authenticate | None,
        login: Login | None,
        idempotency: IdempotencyStore | None,
        clock: Clock | None,
        secret_key: str,
        login_url: str | None,
        create_anyway_field: str | None,
        title: str,
        page_size: int,
    ) -> None:
        self.queue = queue
        self.operator = Operator(queue, clock)
        self.clock = self.operator.clock
        self.authenticate = authenticate
        self.login = login
        self.idempotency = idempotency
        self.secret_key = secret_key
        self.login_url = login_url
        self.create_anyway_field = create_anyway_field
        self.title = title
        self.page_size = page_size
        self.throttle = Throttle(self.clock)
        # user -> how many times they signed out (in this process): a session
        # signed in before the last sign-out is over (sessions are signed
        # cookies; a copy kept elsewhere would otherwise live on)
        self._generation: dict[str, int] = {}
        self.jobs = _Jobs()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(
            statuses=STATUS_ORDER,
            categories=CATEGORY_ORDER,
            page_sizes=PAGE_SIZES,
            ranges=list(RANGES),
            short=short_id,
        )

    # -- access ----------------------------------------------------------------------

    async def user_of(self, ctx: _Ctx) -> User | None:
        if self.authenticate is not None:
            host = ctx.request.scope.get(_HOST_SCOPE, ctx.request.scope)
            request = Request(host, ctx.request.receive)
            if inspect.iscoroutinefunction(self.authenticate):
                found: Any = await self.authenticate(request)
            else:
                found = await run_in_threadpool(self.authenticate, request)
                if inspect.isawaitable(found):
                    found = await found
            if found is not None and not isinstance(found, User):
                raise TypeError(
                    f"authenticate() must return a resilient_sync.admin.User or None, "
                    f"got {type(found).__name__}"
                )
            return found
        if self.login is None:
            return None
        session = ctx.session
        if "user" not in session:
            return None
        since = session.get("since")
        if not isinstance(since, int) or isinstance(since, bool):
            since = -1
        now = self._now_s()
        name = session.get("user")
        if since < 0 or now - since >= _SESSION_HOURS * 3600:
            why = "Your sign-in has expired; please sign in again."
            user = None
        elif session.get("gen") != self._generation.get(name if isinstance(name, str) else "", 0):
            why = "You signed out; please sign in again."
            user = None
        else:
            why = "Your sign-in is no longer valid (the credentials changed)."
            user = self.login.revalidate(session, key=self.secret_key)
        if user is None:
            for key in ("user", "role", "via", "fp", "since", "gen"):
                session.pop(key, None)
            ctx.flash("error", why)
        return user

    def _now_s(self) -> int:
        """Whole seconds on the panel's clock (session times)."""
        return int(self.clock.now().timestamp())

    def unauthenticated(self, ctx: _Ctx) -> Response:
        request = ctx.request
        here = ctx._here()
        if self.login is not None:
            if request.method == "GET":
                return ctx.redirect(ctx.url("login") + "?" + urlencode({"next": here}))
            return ctx.error(401, "Not signed in", "Sign in first; nothing was changed.")
        if self.login_url is not None and request.method == "GET":
            joiner = "&" if "?" in self.login_url else "?"
            return ctx.redirect(self.login_url + joiner + urlencode({"next": here}))
        return ctx.error(
            401, "Not signed in", "Sign in to the application first; nothing was changed."
        )

    def page(
        self, handler: Callable[[_Ctx], Awaitable[Response]], *, act: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: sign-in, CSRF on POSTs, the operator role for
        actions, and a page (never a traceback) for every failure."""

        async def endpoint(request: Request) -> Response:
            ctx = _Ctx(self, request)
            try:
                ctx.user = await self.user_of(ctx)
                if ctx.user is None:
                    return self.unauthenticated(ctx)
                if request.method == "POST":
                    ctx.form = await request.form(max_files=0, max_fields=2 * _MAX_IDS)
                    if not csrf_ok(ctx.session, ctx.form.get("csrf_token"), ctx.user.name):
                        return ctx.error(
                            403,
                            "The form has expired",
                            "This form was not sent by this page (a missing or outdated "
                            "security token). Reload the page and try again; nothing was "
                            "changed.",
                        )
                if act and not ctx.user.can_act:
                    return ctx.error(
                        403,
                        "Viewers cannot change anything",
                        f"{ctx.actor} signed in as a viewer: ask an operator to do this. "
                        "Nothing was changed.",
                    )
                return await handler(ctx)
            except DeliveryNotFoundError as exc:
                return ctx.error(404, "No such delivery", f"{clean(exc, limit=300)}.")
            except BadInput as exc:
                return ctx.error(400, "That cannot be used", clean(exc, limit=600))
            except HTTPException as exc:
                return ctx.error(exc.status_code, "Bad request", clean(exc.detail, limit=300))
            except StoreError as exc:
                logger.warning("admin: the store failed: %s", exc)
                return ctx.error(
                    503,
                    "The queue store is unavailable",
                    f"{redact(clean(exc, limit=600))} Try again in a moment.",
                )
            except Exception:
                logger.exception("admin: %s %s failed", request.method, request.url.path)
                return ctx.error(
                    500,
                    "Something went wrong",
                    "The page failed (the error is in the server's log). Nothing was changed "
                    "unless a message said so.",
                )

        return endpoint

    # -- overview ----------------------------------------------------------------------

    async def overview(self, ctx: _Ctx) -> Response:
        params = ctx.request.query_params
        range_name, bucket, problems = parse_range(params.get("range"), params.get("bucket"))
        data = await ctx.call(self._overview, range_name, bucket)
        return ctx.render(
            "overview.html",
            status=400 if problems else 200,
            problems=problems,
            range_name=range_name,
            bucket=bucket,
            **data,
        )

    def _overview(self, range_name: str, bucket: str) -> dict[str, Any]:
        op = self.operator
        now = self.clock.now()
        stats = op.stats()
        since, width = chart_window(range_name, bucket, now)
        trend = op.error_trend(bucket=width, since=since, until=now)
        recent = op.recent_errors(limit=30)
        ids = dict.fromkeys(r.delivery_id for r in recent if r.delivery_id)
        found = {i: self.queue.get(i) for i in ids}
        names = sorted(set(stats.by_destination) | set(stats.destinations))
        rows = []
        for name in names:
            counts = stats.by_destination.get(name, {})
            state = stats.destinations.get(name)
            rows.append(
                {
                    "name": name,
                    "counts": [(s, counts.get(s, 0)) for s in STATUS_ORDER],
                    "total": sum(counts.values()),
                    "paused": bool(state and state.paused),
                    "held": bool(state and state.hold_until and state.hold_until > now),
                }
            )
        totals = stats.by_status
        needs = []
        for name in names:
            for category in CATEGORY_ORDER:
                count = stats.needs_action.get(name, {}).get(category, 0)
                if count:
                    advice = advice_for(category)
                    needs.append(
                        {
                            "destination": name,
                            "category": category,
                            "count": count,
                            "meaning": advice.meaning,
                            "action": advice.action,
                        }
                    )
        states = sorted(stats.destinations.values(), key=lambda s: s.name)
        paused = [s for s in states if s.paused]
        held = [s for s in states if not s.paused and s.hold_until and s.hold_until > now]
        return {
            "rows": rows,
            "totals": [(s, totals.get(s, 0)) for s in STATUS_ORDER],
            "total": stats.total,
            "needing": totals.get(DeliveryStatus.NEEDS_ACTION, 0),
            "needs": needs,
            "paused": paused,
            "held": held,
            "oldest": stats.oldest_waiting,
            "chart": trend_chart(trend, width),
            "groups": group_errors(recent, found, today=now),
        }

    # -- deliveries ----------------------------------------------------------------------

    def _known(self) -> tuple[set[str], Any]:
        stats = self.operator.stats()
        return set(stats.by_destination) | set(stats.destinations), stats

    def _filters(self, ctx: _Ctx, *, form: bool = False) -> tuple[Filters, list[str], Any]:
        known, stats = self._known()
        if form:
            get: Callable[[str], str | None] = lambda name: ctx.text(name, 400) or None  # noqa: E731
            getlist: Callable[[str], list[str]] = ctx.texts
        else:
            params = ctx.request.query_params
            get, getlist = params.get, params.getlist
        filters, problems = parse_filters(
            get, getlist, destinations=known, default_limit=self.page_size
        )
        return filters, problems, stats

    def _page_of(self, f: Filters) -> Any:
        return self.operator.list(
            list(f.statuses) or None,
            f.destination,
            f.category,
            limit=f.limit,
            cursor=f.cursor,
            since=f.since,
            until=f.until,
            event_type=f.event_type,
            search=f.search,
        )

    async def deliveries(self, ctx: _Ctx) -> Response:
        filters, problems, stats = await ctx.call(self._filters, ctx)
        page = None
        if not problems:
            try:
                page = await ctx.call(self._page_of, filters)
            except ValueError as exc:
                problems.append(clean(exc, limit=300))
        now = self.clock.now()
        rows = [_row(d, now) for d in page.items] if page is not None else []
        totals = stats.by_status
        return ctx.render(
            "deliveries.html",
            status=400 if problems else 200,
            problems=problems,
            filters=filters,
            rows=rows,
            next_cursor=page.next_cursor if page is not None else None,
            destinations=sorted(set(stats.by_destination) | set(stats.destinations)),
            failed=totals.get(DeliveryStatus.NEEDS_ACTION, 0),
            waiting=totals.get(DeliveryStatus.PENDING, 0)
            + totals.get(DeliveryStatus.RETRY_SCHEDULED, 0),
            total=stats.total,
            retry_problem=retry_problem(filters),
        )

    async def _act(self, ctx: _Ctx, action: str) -> Response:
        one = ctx.text("one", 200)
        ids = list(dict.fromkeys([one] if one else ctx.texts("ids")))
        note = ctx.text("note")
        past = {"retry": "Re-synced", "resolve": "Resolved", "discard": "Discarded"}[action]
        if not ids:
            ctx.flash("error", "Select at least one delivery first; nothing was changed.")
        elif len(ids) > _MAX_IDS:
            ctx.flash("error", f"At most {_MAX_IDS} deliveries at once; nothing was changed.")
        elif action != "retry" and not note:
            ctx.flash(
                "error",
                f"A note is required to {action} (say why; it goes into the audit trail). "
                "Nothing was changed.",
            )
        else:
            fn = {
                "retry": self.operator.retry,
                "resolve": self.operator.resolve,
                "discard": self.operator.discard,
            }[action]
            try:
                moved = await ctx.call(fn, ids, actor=ctx.actor, note=note or None)
            except DeliveryNotFoundError as exc:
                ctx.flash("error", f"{clean(exc, limit=200)}; nothing was changed.")
                return ctx.back("deliveries")
            noun = "delivery" if len(moved) == 1 else "deliveries"
            message = f"{past} {len(moved)} {noun}."
            skipped = [i for i in ids if i not in set(moved)]
            if skipped:
                allowed = {"retry": RETRYABLE_BY_OPERATOR, "resolve": RESOLVABLE}.get(
                    action, DISCARDABLE
                )
                found = await ctx.call(lambda: [self.queue.get(i) for i in skipped[:5]])
                states = ", ".join(
                    f"{short_id(d.id)} is {d.status.value}" for d in found if d is not None
                )
                names = ", ".join(sorted(s.value for s in allowed))
                message += (
                    f" {len(skipped)} left as they were ({states}); {action} applies to "
                    f"{names} deliveries."
                )
            ctx.flash("ok" if moved else "error", message)
        return ctx.back("deliveries")

    async def retry(self, ctx: _Ctx) -> Response:
        return await self._act(ctx, "retry")

    async def resolve(self, ctx: _Ctx) -> Response:
        return await self._act(ctx, "resolve")

    async def discard(self, ctx: _Ctx) -> Response:
        return await self._act(ctx, "discard")

    # -- re-sync all matching -------------------------------------------------------------

    def _matching(self, f: Filters) -> list[str]:
        return self.operator.retry_all(
            list(f.retry_statuses),
            f.destination,
            f.category,
            since=f.since,
            until=f.until,
            event_type=f.event_type,
            search=f.search,
            dry_run=True,
        )

    async def retry_all_confirm(self, ctx: _Ctx) -> Response:
        filters, problems, _ = await ctx.call(self._filters, ctx)
        problem = retry_problem(filters)
        if problem:
            problems.append(problem)
        count = None if problems else len(await ctx.call(self._matching, filters))
        return ctx.render(
            "retry_all.html",
            status=400 if problems else 200,
            problems=problems,
            filters=filters,
            count=count,
        )

    async def retry_all(self, ctx: _Ctx) -> Response:
        filters, problems, _ = await ctx.call(self._filters, ctx, form=True)
        problem = retry_problem(filters)
        if problem:
            problems.append(problem)
        if problems:
            ctx.flash("error", " ".join(problems) + " Nothing was changed.")
            return ctx.redirect(ctx.url("deliveries") + "?" + filters.query(cursor=""))
        actor, note = ctx.actor, ctx.text("note") or None
        job = Job(
            id=secrets.token_urlsafe(12),
            actor=actor,
            scope=filters.retry_scope,
            query=filters.query(cursor="", status=[s.value for s in filters.retry_statuses]),
            started_at=self.clock.now(),
        )

        def work(job: Job) -> None:
            moved = self.operator.retry_all(
                list(filters.retry_statuses),
                filters.destination,
                filters.category,
                since=filters.since,
                until=filters.until,
                event_type=filters.event_type,
                search=filters.search,
                actor=actor,
                note=note,
                progress=job.progress,
            )
            job.moved = len(moved)

        self.jobs.start(job, work)
        return ctx.redirect(ctx.url("job", job_id=job.id))

    async def job(self, ctx: _Ctx) -> Response:
        job = self.jobs.get(ctx.request.path_params["job_id"])
        if job is None:
            return ctx.error(
                404,
                "No such job",
                "This re-sync job is unknown (the server may have restarted); the deliveries "
                "list shows what happened.",
            )
        return ctx.render("job.html", job=job)

    # -- one delivery -------------------------------------------------------------------

    def _blocker(self, d: Delivery) -> Delivery | None:
        """The oldest unfinished delivery of ``d``'s destination and ordering key
        submitted before it (what a claim would wait for), if any."""
        cursor = None
        for _ in range(20):
            page = self.queue.list(
                status=_UNFINISHED,
                destination=d.destination,
                search=d.ordering_key,
                limit=200,
                cursor=cursor,
            )
            for other in page.items:
                if other.seq >= d.seq:
                    return None
                if other.ordering_key == d.ordering_key:
                    return other
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor
        return None

    def _detail(self, delivery_id: str) -> dict[str, Any]:
        d = self.operator.get(delivery_id)
        records = self.queue.attempts(d.id)
        now = self.clock.now()
        state = self.operator.destinations().get(d.destination)
        blocker = self._blocker(d) if d.status in WAITING and d.ordering_key else None
        key_record = None
        if self.idempotency is not None and d.status in WAITING:
            key_record = self.idempotency.get(store_key(d.destination, d.idempotency_key), now=now)
        error = d.last_error
        field = error.field if error else None
        lines, found = json_lines(d.event.payload, field)
        match = (
            duplicate_match(records)
            if error is not None and error.category is ErrorCategory.DUPLICATE
            else None
        )
        return {
            "d": d,
            "records": timeline(records),
            "waiting": waiting_for(
                d, now=now, destination=state, blocker=blocker, key_record=key_record
            ),
            "blocker": blocker,
            "state": state,
            "risk": revision_risk(records) if d.status in EDITABLE else None,
            "lines": lines,
            "field": field,
            "field_found": found,
            "advice": advice_for(error.category)
            if error is not None and d.status is DeliveryStatus.NEEDS_ACTION
            else None,
            "match": match,
            "match_lines": json_lines(match.value, field)[0] if match else [],
            "metadata": json_lines(dict(d.event.metadata))[0] if d.event.metadata else [],
            "result": json_lines(d.result)[0] if d.result is not None else [],
        }

    def _default_edit(self, data: dict[str, Any]) -> EditForm:
        d: Delivery = data["d"]
        field = data["field"]
        form = EditForm()
        if field:
            found, value = field_value(d.event.payload, field)
            if found:
                text, is_json = as_form_value(value)
                form = attrs.evolve(form, set_rows=[(field, text, is_json), *form.set_rows[1:]])
            else:
                form = attrs.evolve(form, add_rows=[(field, "", False), *form.add_rows[1:]])
        return form

    async def _show(
        self,
        ctx: _Ctx,
        delivery_id: str,
        *,
        edit: EditForm | None = None,
        problems: list[str] | None = None,
        status: int = 200,
    ) -> Response:
        data = await ctx.call(self._detail, delivery_id)
        d: Delivery = data["d"]
        return ctx.render(
            "delivery.html",
            status=status,
            problems=problems or [],
            edit=edit or self._default_edit(data),
            editable=d.status in EDITABLE,
            retryable=d.status in RETRYABLE_BY_OPERATOR,
            resolvable=d.status in RESOLVABLE,
            discardable=d.status in DISCARDABLE,
            create_anyway=self.create_anyway_field,
            **data,
        )

    async def delivery(self, ctx: _Ctx) -> Response:
        return await self._show(ctx, ctx.request.path_params["delivery_id"])

    async def edit(self, ctx: _Ctx) -> Response:
        delivery_id = ctx.request.path_params["delivery_id"]
        form, problems = parse_edit_form(ctx.text)
        if problems:
            return await self._show(ctx, delivery_id, edit=form, problems=problems, status=400)
        try:
            edited = await ctx.call(
                self.operator.edit,
                delivery_id,
                form.changes,
                add=form.additions,
                remove=form.removals,
                actor=ctx.actor,
                note=form.note or None,
                retry=form.retry,
                force=form.force,
            )
        except DeliveryNotFoundError:
            raise
        except ValueError as exc:
            return await self._show(
                ctx,
                delivery_id,
                edit=form,
                problems=[f"The edit was refused: {clean(exc, limit=800)}. Nothing was changed."],
                status=400,
            )
        paths = ", ".join([*form.changes, *form.additions, *form.removals])
        if form.retry:
            ctx.flash(
                "ok",
                f"Edited {paths} and re-synced: the next worker run delivers the corrected "
                "payload under a new idempotency key.",
            )
        else:
            ctx.flash("ok", f"Edited {paths}; it stays {edited.status.value} until re-synced.")
        return ctx.redirect(ctx.url("delivery", delivery_id=edited.id))

    # -- potential duplicates -----------------------------------------------------------

    def _duplicates(self, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        page = self.operator.list(
            DeliveryStatus.NEEDS_ACTION, None, ErrorCategory.DUPLICATE, limit=20, cursor=cursor
        )
        cards = []
        for d in page.items:
            records = self.queue.attempts(d.id)
            match = duplicate_match(records)
            field = d.last_error.field if d.last_error else None
            cards.append(
                {
                    "d": d,
                    "lines": json_lines(d.event.payload, field)[0],
                    "match": match,
                    "match_lines": json_lines(match.value, field)[0] if match else [],
                }
            )
        return cards, page.next_cursor

    async def duplicates(self, ctx: _Ctx) -> Response:
        cursor = ctx.request.query_params.get("cursor") or None
        problems = []
        cards: list[dict[str, Any]] = []
        next_cursor = None
        try:
            cards, next_cursor = await ctx.call(self._duplicates, cursor)
        except ValueError as exc:
            problems.append(clean(exc, limit=300))
        return ctx.render(
            "duplicates.html",
            status=400 if problems else 200,
            problems=problems,
            cards=cards,
            next_cursor=next_cursor,
            request_cursor=cursor,
            create_anyway=self.create_anyway_field,
        )

    async def link_duplicate(self, ctx: _Ctx) -> Response:
        delivery_id, note = ctx.text("id", 200), ctx.text("note")
        if not note:
            ctx.flash(
                "error",
                "Say which record it is in the note (e.g. 'same record as cus_123'); "
                "nothing was changed.",
            )
            return ctx.back("duplicates")
        moved = await ctx.call(
            self.operator.resolve,
            [delivery_id],
            actor=ctx.actor,
            note=f"linked to the existing record: {note}",
        )
        if moved:
            ctx.flash("ok", f"Linked {short_id(delivery_id)} to the existing record (resolved).")
        else:
            current = await ctx.call(self.operator.get, delivery_id)
            ctx.flash(
                "error",
                f"{short_id(delivery_id)} is now {current.status.value}; nothing was changed.",
            )
        return ctx.back("duplicates")

    async def create_anyway(self, ctx: _Ctx) -> Response:
        delivery_id, note = ctx.text("id", 200), ctx.text("note")
        field = self.create_anyway_field
        if field is None:
            ctx.flash(
                "error",
                "'Create anyway' is not set up for this panel (create_app(create_anyway_field="
                "...)); correct the conflicting field and re-sync instead. Nothing was changed.",
            )
            return ctx.back("duplicates")
        if not note:
            ctx.flash(
                "error",
                "Say why a second record is right in the note (e.g. 'a different person with "
                "the same e-mail'); nothing was changed.",
            )
            return ctx.back("duplicates")
        d = await ctx.call(self.operator.get, delivery_id)
        exists, _ = field_value(d.event.payload, field)
        try:
            await ctx.call(
                self.operator.edit,
                delivery_id,
                {field: True} if exists else None,
                add=None if exists else {field: True},
                actor=ctx.actor,
                note=f"create anyway: {note}",
                retry=True,
            )
        except ValueError as exc:
            ctx.flash("error", f"Create anyway was refused: {clean(exc, limit=500)}.")
            return ctx.back("duplicates")
        ctx.flash(
            "ok",
            f"Re-synced {short_id(delivery_id)} with {field}=true: {d.destination} is asked to "
            "create the record even though it looks like a duplicate.",
        )
        return ctx.back("duplicates")

    # -- destinations ---------------------------------------------------------------------

    async def resume(self, ctx: _Ctx) -> Response:
        name = ctx.text("name", 300)
        state = (await ctx.call(self.operator.destinations)).get(name)
        if state is None or not state.paused:
            ctx.flash("error", f"{one_line(name, limit=80)!r} is not paused; nothing to do.")
            return ctx.back("overview")
        await ctx.call(self.operator.resume, name, actor=ctx.actor, note=ctx.text("note") or None)
        stats = await ctx.call(self.operator.stats)
        waiting = stats.needs_action.get(name, {}).get(ErrorCategory.PERMISSION, 0)
        message = f"Resumed {name} (it was paused: {state.paused_reason or 'no reason given'})."
        if waiting:
            message += (
                f" {waiting} deliveries failed with the permission error: re-sync them from "
                "Deliveries (category permission)."
            )
        ctx.flash("ok", message)
        return ctx.back("overview")

    # -- signing in and out -------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        ctx = _Ctx(self, request)
        if self.login is None:
            return ctx.error(404, "Not here", "This panel uses the application's own sign-in.")
        try:
            return await self._login(ctx, self.login)
        except HTTPException as exc:
            return ctx.error(exc.status_code, "Bad request", clean(exc.detail, limit=300))

    async def _login(self, ctx: _Ctx, login: Login) -> Response:
        request = ctx.request
        default = ctx.url("overview")
        next_url = ctx.safe_next(request.query_params.get("next"), default)
        if request.method == "GET":
            if await self.user_of(ctx) is not None:
                return ctx.redirect(next_url)
            return ctx.render(
                "login.html", next_url=next_url, name="", uses_tokens=login.uses_tokens
            )
        ctx.form = await request.form(max_files=0, max_fields=10)
        next_url = ctx.safe_next(ctx.text("next", 2000), default)
        name = ctx.text("name", 200)
        secret = ctx.form.get("secret")
        secret = secret if isinstance(secret, str) else ""

        def again(status: int, problem: str) -> Response:
            return ctx.render(
                "login.html",
                status=status,
                problems=[problem],
                next_url=next_url,
                name=name,
                uses_tokens=login.uses_tokens,
            )

        if not csrf_ok(ctx.session, ctx.form.get("csrf_token"), ""):
            return again(403, "The sign-in form expired; please try again.")
        client = request.client.host if request.client else "?"
        keys = (("ip", client), ("name", client, name.lower()))
        wait = self.throttle.wait(*keys, limits=(20, 5))
        if wait > 0:
            minutes = max(1, round(wait / 60))
            return again(429, f"Too many failed sign-ins; try again in {minutes} minute(s).")
        found = login.check(name, secret, key=self.secret_key)
        if found is None:
            self.throttle.failed(*keys)
            logger.info("admin: failed sign-in for %r from %s", one_line(name, limit=60), client)
            return again(401, "Wrong name, password or token.")
        self.throttle.succeeded(keys[1])
        user, via, fingerprint = found
        session = ctx.session
        session.clear()
        session.update(
            user=user.name,
            role=user.role,
            via=via,
            fp=fingerprint,
            since=self._now_s(),
            gen=self._generation.get(user.name, 0),
        )
        session["csrf"] = secrets.token_urlsafe(32)  # a new token after signing in
        session["csrf_for"] = user.name
        logger.info("admin: %s signed in (%s) from %s", user.name, user.role, client)
        return ctx.redirect(next_url)

    async def logout(self, request: Request) -> Response:
        ctx = _Ctx(self, request)
        if self.login is None:
            return ctx.error(404, "Not here", "Sign out of the application itself.")
        try:
            ctx.form = await request.form(max_files=0, max_fields=10)
        except HTTPException as exc:
            return ctx.error(exc.status_code, "Bad request", clean(exc.detail, limit=300))
        owner = ctx.session.get("user")
        if not csrf_ok(ctx.session, ctx.form.get("csrf_token"), owner or ""):
            return ctx.error(403, "The form has expired", "Reload the page and try again.")
        if isinstance(owner, str):  # every earlier session of this user ends too
            self._generation[owner] = self._generation.get(owner, 0) + 1
        ctx.session.clear()
        ctx.flash("ok", "Signed out.")
        return ctx.redirect(ctx.url("login"))

    async def not_found(self, request: Request, exc: Exception) -> Response:
        ctx = _Ctx(self, request)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if status == 405:
            return ctx.error(405, "Not allowed", "This address does not take that kind of request.")
        return ctx.error(status, "Not found", "There is no page at this address.")


def _row(d: Delivery, now: datetime) -> dict[str, Any]:
    error = d.last_error
    reason = ""
    if error is not None and d.status is not DeliveryStatus.SUCCEEDED:
        reason = (f"[{error.field}] " if error.field else "") + one_line(error.message, limit=160)
    return {
        "d": d,
        "category": error.category if error is not None else None,
        "reason": reason,
        "updated": fmt_ago(d.updated_at, now),
        "retryable": d.status in RETRYABLE_BY_OPERATOR,
    }


def create_app(
    queue: QueueStore,
    *,
    authenticate: Authenticate | None = None,
    login: Login | None = None,
    idempotency: IdempotencyStore | None = None,
    clock: Clock | None = None,
    secret_key: str | None = None,
    https_only: bool = False,
    login_url: str | None = None,
    create_anyway_field: str | None = None,
    title: str = "resilient_sync admin",
    page_size: int = 50,
) -> Starlette:
    """The admin panel as an ASGI app, to mount under any path or serve alone.

    Who may use it comes from exactly one of:

    - ``authenticate(request) -> User | None``: the host application's login
      (a plain function runs in a worker thread, an ``async def`` on the
      loop). ``None`` answers 401, or redirects to ``login_url?next=...``.
    - ``login``: the built-in sign-in page (:class:`Login`, e.g.
      ``Login.from_env()``).

    ``secret_key`` signs the panel's own session cookie (its CSRF token and,
    with ``login``, who signed in); without one a random key is made, so
    sign-ins end when the process stops. ``https_only`` marks the cookie
    Secure. ``idempotency`` (optional) lets a delivery's page say when
    another attempt holds its key. ``create_anyway_field`` is the payload
    path "Create anyway" sets to ``true`` on a potential duplicate before
    re-syncing it (the destination's adapter turns it into the API's
    "allow duplicates" switch); without it that action is not offered.
    ``clock`` defaults to the store's database clock where it has one.
    """
    if (authenticate is None) == (login is None):
        raise ValueError(
            "pass exactly one of authenticate= (the application's own login) or login= "
            "(the built-in sign-in page); nothing is served without a signed-in user"
        )
    if authenticate is not None and not callable(authenticate):
        raise TypeError(f"authenticate must be callable, got {authenticate!r}")
    if login is not None and not login.configured:
        raise ValueError(
            "the login has no users and no tokens, so nobody could sign in: set "
            "RESILIENT_SYNC_ADMIN_USERS or RESILIENT_SYNC_ADMIN_TOKEN"
        )
    if secret_key is None:
        secret_key = secrets.token_urlsafe(32)
        if login is not None:
            logger.warning(
                "admin: no secret key given, so a random one is used: sign-ins end when "
                "this process stops (set RESILIENT_SYNC_ADMIN_SECRET to keep them)"
            )
    elif not isinstance(secret_key, str) or len(secret_key) < 16:
        raise ValueError("secret_key must be text of at least 16 characters")
    if isinstance(page_size, bool) or page_size not in PAGE_SIZES:
        raise ValueError(f"page_size must be one of {PAGE_SIZES}, got {page_size!r}")
    admin = _Admin(
        queue,
        authenticate=authenticate,
        login=login,
        idempotency=idempotency,
        clock=clock,
        secret_key=secret_key,
        login_url=login_url,
        create_anyway_field=create_anyway_field,
        title=one_line(title, limit=80),
        page_size=page_size,
    )
    page = admin.page
    routes = [
        Route("/", page(admin.overview), name="overview"),
        Route("/deliveries", page(admin.deliveries), name="deliveries"),
        Route("/deliveries/retry", page(admin.retry, act=True), methods=["POST"], name="retry"),
        Route(
            "/deliveries/resolve", page(admin.resolve, act=True), methods=["POST"], name="resolve"
        ),
        Route(
            "/deliveries/discard", page(admin.discard, act=True), methods=["POST"], name="discard"
        ),
        Route(
            "/deliveries/retry-all",
            page(admin.retry_all_confirm, act=True),
            methods=["GET"],
            name="retry_all_confirm",
        ),
        Route(
            "/deliveries/retry-all",
            page(admin.retry_all, act=True),
            methods=["POST"],
            name="retry_all",
        ),
        Route("/deliveries/{delivery_id}", page(admin.delivery), name="delivery"),
        Route(
            "/deliveries/{delivery_id}/edit",
            page(admin.edit, act=True),
            methods=["POST"],
            name="edit",
        ),
        Route("/jobs/{job_id}", page(admin.job), name="job"),
        Route("/duplicates", page(admin.duplicates), name="duplicates"),
        Route(
            "/duplicates/link",
            page(admin.link_duplicate, act=True),
            methods=["POST"],
            name="link_duplicate",
        ),
        Route(
            "/duplicates/create-anyway",
            page(admin.create_anyway, act=True),
            methods=["POST"],
            name="create_anyway",
        ),
        Route(
            "/destinations/resume", page(admin.resume, act=True), methods=["POST"], name="resume"
        ),
        Route("/login", admin.login_page, methods=["GET", "POST"], name="login"),
        Route("/logout", admin.logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(_Scope),
        Middleware(
            SessionMiddleware,
            secret_key=secret_key,
            session_cookie="resilient_sync_admin",
            max_age=_SESSION_HOURS * 3600,
            same_site="lax",
            https_only=https_only,
        ),
        Middleware(_SecurityHeaders),
    ]
    handlers: Mapping[Any, Any] = {404: admin.not_found, 405: admin.not_found}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=dict(handlers))
    app.state.admin = admin
    return app
