"""What `import resilient_sync` loads: the CLI starts a fresh interpreter for
every command, so the core must not pull in httpx (with its own CLI's
dependencies), asyncio or backoff before something needs them. Each check runs
in a new interpreter, as a command would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _fresh(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_core_loads_neither_httpx_nor_asyncio_nor_backoff() -> None:
    out = _fresh(
        """
        import json, sys
        import resilient_sync, resilient_sync.stores
        from resilient_sync._cli import main  # what `python -m resilient_sync` loads
        print(json.dumps([m for m in ("httpx", "asyncio", "backoff") if m in sys.modules]))
        """
    )
    assert json.loads(out) == []


def test_httpx_errors_are_classified_when_httpx_is_imported_after_the_core() -> None:
    out = _fresh(
        """
        import json
        from resilient_sync import Classifier
        import httpx

        request = httpx.Request("POST", "https://pos.example/customers")
        response = httpx.Response(429, headers={"Retry-After": "7"}, request=request)
        status = httpx.HTTPStatusError("429", request=request, response=response)
        info = Classifier().classify(status)
        timeout = Classifier().classify(httpx.ReadTimeout("slow", request=request))
        print(json.dumps([info.category.value, info.retry_after, timeout.category.value]))
        """
    )
    assert json.loads(out) == ["rate_limited", 7.0, "transient"]


def test_the_default_retry_policy_still_uses_backoffs_full_jitter() -> None:
    out = _fresh(
        """
        import json
        import backoff
        from resilient_sync import RetryPolicy

        policy = RetryPolicy()
        delays = [RetryPolicy(jitter=False).delay(n) for n in (1, 2, 3)]
        print(json.dumps([policy.jitter is backoff.full_jitter,
                          RetryPolicy(jitter=True).jitter is backoff.full_jitter,
                          RetryPolicy(jitter=None).jitter, delays,
                          0 <= policy.delay(3) <= 4.0]))
        """
    )
    assert json.loads(out) == [True, True, None, [1.0, 2.0, 4.0], True]
