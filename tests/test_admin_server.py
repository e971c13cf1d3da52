"""The standalone panel: ``resilient-sync admin`` serving over real HTTP
(uvicorn in a subprocess), its sign-in from the environment, and the
refusals before it listens."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin_support import OPERATOR, populate
from cli_support import cli
from resilient_sync.admin import Login
from resilient_sync.stores import open_stores

USERS = f"{OPERATOR[0]}:operator:{OPERATOR[1]},vic:viewer:viewer-pass:with:colons"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    queue, idempotency = open_stores(url)
    try:
        populate(queue, idempotency)
    finally:
        queue.close()
        idempotency.close()
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_SYNC_")}
    env.update(extra)
    return env


@pytest.fixture
def served(db: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = environ(
        RESILIENT_SYNC_ADMIN_USERS=USERS,
        RESILIENT_SYNC_ADMIN_SECRET="a-secret-of-at-least-16",
        PYTHONIOENCODING="utf-8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "resilient_sync", "admin", "--db", db, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/login", timeout=2)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate()
                pytest.fail(f"the admin server did not start: {err}")
            time.sleep(0.1)
    try:
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.communicate()


def test_the_admin_command_serves_the_panel_over_http(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    base, process = served
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/").headers["location"] == "/login?next=%2F"
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = client.post(
            "/login", data={"csrf_token": token.group(1), "name": "vic", "secret": "wrong"}
        )
        assert signed.status_code == 401
        signed = client.post(
            "/login",
            data={"csrf_token": token.group(1), "name": "vic", "secret": "viewer-pass:with:colons"},
        )
        assert signed.status_code == 303
        page = client.get("/deliveries?status=needs_action")
        assert page.status_code == 200
        assert 'vic</span> <span class="role role-viewer">viewer' in page.text
        assert client.get("/static/admin.css").status_code == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(15) in (0, 130)
    _, err = process.communicate()
    assert f"resilient-sync admin: http://127.0.0.1:{base.rsplit(':', 1)[1]}/ over sqlite" in err


def test_the_admin_command_refuses_to_start_without_a_way_to_sign_in(db: str) -> None:
    done = cli("admin", "--db", db, "--port", "1", env=environ())
    assert done.returncode == 2
    assert "nobody could sign in: set RESILIENT_SYNC_ADMIN_USERS" in done.stderr
    bad = cli("admin", "--db", db, env=environ(RESILIENT_SYNC_ADMIN_USERS="ann:boss:pw"))
    assert bad.returncode == 2
    assert "user 'ann' has role 'boss'; use viewer or operator" in bad.stderr


def test_the_admin_command_needs_an_existing_store(tmp_path: Path) -> None:
    done = cli(
        "admin",
        "--db",
        f"sqlite:///{tmp_path / 'missing.db'}",
        env=environ(RESILIENT_SYNC_ADMIN_TOKEN="x" * 20),
    )
    assert done.returncode == 1
    assert "no queue database at" in done.stderr
    assert not (tmp_path / "missing.db").exists()


def test_login_from_the_environment() -> None:
    login = Login.from_env(
        {
            "RESILIENT_SYNC_ADMIN_USERS": " ann:operator:pw:1 ,\nbob:viewer:pw2,, ",
            "RESILIENT_SYNC_ADMIN_TOKEN": "t" * 16,
            "RESILIENT_SYNC_ADMIN_VIEWER_TOKEN": "v" * 16,
        }
    )
    assert login.users == {"ann": ("pw:1", "operator"), "bob": ("pw2", "viewer")}
    assert login.operator_token == "t" * 16
    assert login.viewer_token == "v" * 16
    assert not Login.from_env({}).configured
    for text, message in [
        ("ann", "entry 1 is not name:role:password"),
        ("ann:operator:", "entry 1 is not name:role:password"),
        ("ok:viewer:pw,ann:root:pw", "user 'ann' has role 'root'"),
        ("ann:viewer:a,ann:viewer:b", "user 'ann' appears twice"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Login.from_env({"RESILIENT_SYNC_ADMIN_USERS": text})
    with pytest.raises(ValueError, match="the operator token is too short"):
        Login.from_env({"RESILIENT_SYNC_ADMIN_TOKEN": "short"})
    with pytest.raises(ValueError, match="role 'boss'") as caught:
        Login.from_env({"RESILIENT_SYNC_ADMIN_USERS": "ann:boss:secret-password"})
    assert "secret-password" not in str(caught.value)
