"""What `import resilient_sync` loads: the CLI starts a fresh interpreter for
every command, so the core must not pull in httpx (with the dependencies of
its own CLI) before something needs it; httpx errors are still recognised, also
while another thread imports httpx for the first time. Each check runs in a
new interpreter, as a command would."""

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


def test_importing_the_core_does_not_load_httpx() -> None:
    out = _fresh(
        """
        import json, sys
        import resilient_sync, resilient_sync.stores
        from resilient_sync._cli import main  # what `python -m resilient_sync` loads
        print(json.dumps("httpx" in sys.modules))
        """
    )
    assert json.loads(out) is False


def test_errors_are_classified_while_another_thread_first_imports_httpx() -> None:
    """A destination that imports httpx on its first call, in one worker
    thread, while another thread classifies a plain ConnectionError: a bare
    look into sys.modules would see httpx half-built there."""
    out = _fresh(
        """
        import json, sys, threading
        from resilient_sync import Classifier

        assert "httpx" not in sys.modules
        classifier, seen, done = Classifier(), set(), threading.Event()

        def importer():
            import httpx  # noqa: F401
            done.set()

        def classify():
            while not done.is_set():
                try:
                    seen.add(classifier.classify(ConnectionError("refused")).category.value)
                except Exception as exc:
                    seen.add(repr(exc))

        worker = threading.Thread(target=classify)
        worker.start()
        threading.Thread(target=importer).start()
        worker.join()
        print(json.dumps(sorted(seen)))
        """
    )
    assert json.loads(out) == ["transient"]


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


def test_type_hints_of_the_public_api_resolve_at_run_time() -> None:
    """Runtime tools (typeguard, beartype, documentation generators) read the
    annotations with ``typing.get_type_hints``: every name they use must be
    importable from the module that uses it, not only under TYPE_CHECKING."""
    out = _fresh(
        """
        import inspect, json, typing
        import resilient_sync, resilient_sync.stores

        failed = []
        for module in (resilient_sync, resilient_sync.stores):
            for name in module.__all__:
                obj = getattr(module, name)
                members = [obj]
                if inspect.isclass(obj):
                    members += [m for k, m in vars(obj).items() if inspect.isfunction(m)]
                for member in members:
                    if not (inspect.isfunction(member) or inspect.isclass(member)):
                        continue
                    try:
                        typing.get_type_hints(member)
                    except Exception as exc:
                        failed.append(f"{name}.{getattr(member, '__name__', '?')}: {exc!r}")
        print(json.dumps(failed))
        """
    )
    assert json.loads(out) == []
