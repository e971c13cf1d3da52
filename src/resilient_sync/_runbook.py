"""What each error category means and what an operator does about it.

One source for the CLI (``show``, ``status``), the alerts and the demo, so the
advice a person gets is the same everywhere (``docs/howto/operate-the-queue.md``
explains it at length).
"""

from __future__ import annotations

import shlex

import attrs

from ._model import Delivery, ErrorCategory

__all__ = ["RUNBOOK", "Advice", "advice_for", "commands_for", "next_commands"]


@attrs.frozen(kw_only=True)
class Advice:
    """The runbook entry of one error category.

    ``commands`` are CLI command templates with ``{id}``, ``{destination}``,
    ``{field}`` and ``{assign}`` (``FIELD=VALUE``, shell-quoted) placeholders.
    """

    category: ErrorCategory
    meaning: str
    action: str
    commands: tuple[str, ...]


RUNBOOK: dict[ErrorCategory, Advice] = {
    advice.category: advice
    for advice in (
        Advice(
            category=ErrorCategory.TRANSIENT,
            meaning=(
                "the destination was down, timed out or answered 5xx, and the retry budget is spent"
            ),
            action="check that the destination is up again, then re-sync",
            commands=(
                "resilient-sync retry {id}",
                "resilient-sync retry-all --category transient --destination {destination}",
            ),
        ),
        Advice(
            category=ErrorCategory.RATE_LIMITED,
            meaning=(
                "the destination kept answering 429 (too many requests) until the budget ran out"
            ),
            action=(
                "lower the dispatcher's batch size or concurrency (or raise the API quota), "
                "then re-sync"
            ),
            commands=(
                "resilient-sync retry-all --category rate_limited --destination {destination}",
            ),
        ),
        Advice(
            category=ErrorCategory.DUPLICATE,
            meaning=(
                "the destination already holds this record and nothing could link to it "
                "(a potential duplicate)"
            ),
            action=(
                "look the record up in the destination: the same one -> resolve this delivery; "
                "a different one -> correct the payload and re-sync"
            ),
            commands=(
                "resilient-sync resolve {id} --note 'same record as <remote id>'",
                "resilient-sync edit {id} --set {assign} --retry",
            ),
        ),
        Advice(
            category=ErrorCategory.DATA_FORMAT,
            meaning="the destination rejected the data (the field is named where known)",
            action="correct the value (here, or in the source system) and re-sync",
            commands=("resilient-sync edit {id} --set {assign} --retry",),
        ),
        Advice(
            category=ErrorCategory.MAPPING,
            meaning=(
                "a reference has no counterpart in the destination (an unknown SKU, a missing "
                "mapping)"
            ),
            action=(
                "create the missing item in the destination or fix the mapping, then re-sync "
                "(or correct the reference)"
            ),
            commands=(
                "resilient-sync retry-all --category mapping --destination {destination}",
                "resilient-sync edit {id} --set {assign} --retry",
            ),
        ),
        Advice(
            category=ErrorCategory.PERMISSION,
            meaning=(
                "the destination refused our credentials (a revoked token, a missing "
                "permission); the destination is paused"
            ),
            action="renew the credentials or grant the permission, resume, then re-sync",
            commands=(
                "resilient-sync resume {destination}",
                "resilient-sync retry-all --category permission --destination {destination}",
            ),
        ),
        Advice(
            category=ErrorCategory.UNEXPECTED,
            meaning=(
                "an error nobody classified (an adapter bug or an API change); retried until "
                "the budget ran out"
            ),
            action=(
                "read the exception, fix the adapter or teach the Classifier the error, "
                "then re-sync"
            ),
            commands=("resilient-sync show {id}", "resilient-sync retry {id}"),
        ),
    )
}


def advice_for(category: ErrorCategory | str) -> Advice:
    """The runbook entry of ``category``."""
    return RUNBOOK[ErrorCategory(category)]


def _field(field: str | None) -> str:
    if not field:
        return "FIELD"
    return field[len("payload.") :] if field.startswith("payload.") else field


def next_commands(
    category: ErrorCategory | str,
    *,
    delivery_id: str = "ID",
    destination: str = "DESTINATION",
    field: str | None = None,
    db: str | None = None,
) -> list[str]:
    """The runbook's commands for one case, placeholders filled in.

    ``db`` (a ``--db`` URL) is added to each command when given.
    """
    values = {
        "id": delivery_id,
        "destination": shlex.quote(destination),
        "field": _field(field),
        "assign": shlex.quote(f"{_field(field)}=VALUE"),
    }
    out = []
    for template in advice_for(category).commands:
        command = template.format(**values)
        if db is not None:
            command = command.replace(
                "resilient-sync ", f"resilient-sync --db {shlex.quote(db)} ", 1
            )
        out.append(command)
    return out


def commands_for(delivery: Delivery, db: str | None = None) -> list[str]:
    """The runbook's commands for a delivery that needs action."""
    error = delivery.last_error
    if error is None:
        return [f"resilient-sync show {delivery.id}"]
    return next_commands(
        error.category,
        delivery_id=delivery.id,
        destination=delivery.destination,
        field=error.field,
        db=db,
    )
