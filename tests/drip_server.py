"""A server on 127.0.0.1 that answers one byte at a time, for deadline tests.

Each connection's request is read in full, then the answer is dripped: with
``mode="headers"`` the status line and then the headers one byte every
``interval`` seconds (they never end within the test); with ``mode="body"``
the headers at once and then a long body one byte every ``interval``. Every
httpx read gets a byte well within its timeout, so only a total deadline
ends such a request. A connection drips for at most ``limit`` seconds, and
:meth:`DripServer.stop` ends them all::

    with DripServer("headers") as server:
        httpx.post(server.url + "/customers", timeout=2)   # would take ``limit`` s

``requests`` counts the requests read (so a test can tell "never sent").
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Literal

__all__ = ["DripServer"]


class DripServer:
    def __init__(
        self,
        mode: Literal["headers", "body"],
        *,
        interval: float = 0.2,
        limit: float = 30.0,
    ) -> None:
        self.mode = mode
        self.interval = interval
        self.limit = limit
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> DripServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        conn.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        with self._lock:
            self.requests += 1
        return True

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not self._read_request(conn):
                return
            if self.mode == "headers":
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
                conn.sendall(head[:1])
                drip = head[1:] + b"x" * 10_000
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 10000\r\n\r\n"
                )
                drip = b'{"id": "' + b"x" * 9_990
            started = time.monotonic()
            for byte in drip:
                if self._stop.wait(self.interval) or time.monotonic() - started > self.limit:
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return  # the client gave up: expected
        finally:
            conn.close()
