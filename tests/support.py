"""Shared helpers for the servers' integration tests (standard library only).

* :class:`RunningServer` starts one of the two server scripts on 127.0.0.1 with
  ``--port 0`` in its own process group, waits (bounded, no sleeps) for its
  ``listening on HOST:PORT`` line and stops it again: SIGTERM by PID, a bounded
  wait, and as a last resort SIGKILL to the process group it started.
* :class:`Client` / :func:`exchange`: raw-socket helpers that send bytes and
  read one reply up to ``\\r\\n\\r\\n`` with a linear receive loop.
* :func:`wait_until`; the /proc readers come from ``fileshare.harness``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fileshare.harness import (SERVER_SCRIPTS as SCRIPTS, ServerProcess, ServerStartError,  # noqa: E402,F401
                               child_pids, open_descriptors, process_alive, process_group_pids, reaped,
                               start_time, status_fields, vm_hwm)
TERMINATOR = b"\r\n\r\n"
HOST = "127.0.0.1"


class RunningServer(ServerProcess):
    """A server script running in its own process group, its stderr kept for messages.

    >>> with RunningServer("thread", root) as server:
    ...     exchange(server, b"LIST\\r\\n\\r\\n")
    """

    def __init__(self, kind: str, root: str | os.PathLike, workers: int = 4,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 start_timeout: float = 15.0, stop_timeout: float = 20.0) -> None:
        env = dict(os.environ if env is None else env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr_file = tempfile.TemporaryFile()
        super().__init__(kind, root, workers, host=HOST, extra_args=extra_args, stderr=self._stderr_file, env=env)
        self.kind, self.root = kind, str(root)
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout

    def start(self, ready_timeout: float | None = None) -> "RunningServer":
        try:
            super().start(self.start_timeout if ready_timeout is None else ready_timeout)
        except ServerStartError as exc:
            raise ServerStartError(f"{exc}; stderr:\n{self.stderr_text()}") from None
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        return super().stop(self.stop_timeout if timeout is None else timeout)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the server process (by PID, not to its group)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit; raise subprocess.TimeoutExpired if it does not."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        if self._stderr_file.closed:
            return ""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode("utf-8", "replace")

    def close(self) -> None:
        self.stop()
        self._stderr_file.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self, timeout: float = 10.0) -> "Client":
        return Client(self.address, timeout)


class ServerPerClass:
    """Mixin for TestCases sharing one server: ``cls.server`` serving ``cls.root``.

    Set ``kind`` ('thread' or 'process'), ``server_workers`` and ``server_args``;
    ``cls._tmp`` is a temporary folder holding ``root`` that the tests may use too.
    """

    kind = "thread"
    server_workers = 2
    server_args: Sequence[str] = ()

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._tmp = tempfile.TemporaryDirectory(prefix=f"{cls.__name__}-")
        cls.root = os.path.join(cls._tmp.name, "root")
        os.mkdir(cls.root)
        cls.server = RunningServer(cls.kind, cls.root, workers=cls.server_workers, extra_args=cls.server_args)
        try:
            cls.server.start()
        except BaseException:
            cls.server.close()
            cls._tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()
        cls._tmp.cleanup()
        super().tearDownClass()


# ---------------------------------------------------------------------- raw sockets

class ConnectionClosedEarly(ConnectionError):
    """The server closed the connection before a whole reply arrived."""


class Client:
    """One raw TCP connection; ``request()`` sends bytes and reads one reply.

    Bytes received after a reply's terminator are kept for the next reply, so
    pipelined requests work.  The receive loop is linear: it appends to a
    bytearray and searches only the new bytes (plus three for a split terminator).
    """

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(address, timeout=timeout)
        self._buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_reply(self, timeout: float | None = None, limit: int = 64 * 1024 * 1024) -> bytes:
        """One reply including its terminator; raise on close, timeout or ``limit``."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        buf = self._buffer
        end = buf.find(TERMINATOR)
        scanned = len(buf)
        while end < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete reply within {timeout} s ({len(buf)} bytes so far)")
            self.sock.settimeout(left)
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                raise ConnectionClosedEarly(f"connection closed after {len(buf)} bytes of a reply: "
                                            f"{bytes(buf[:200])!r}")
            buf += chunk
            end = buf.find(TERMINATOR, max(0, scanned - (len(TERMINATOR) - 1)))
            scanned = len(buf)
            if end < 0 and len(buf) > limit:
                raise ValueError(f"reply longer than {limit} bytes")
        reply = bytes(buf[:end + len(TERMINATOR)])
        del buf[:end + len(TERMINATOR)]
        return reply

    def request(self, data: bytes, timeout: float | None = None) -> dict:
        """Send ``data`` and return the decoded JSON of one reply."""
        self.send(data)
        return decode_reply(self.recv_reply(timeout))

    def command(self, *words: str | bytes, timeout: float | None = None) -> dict:
        return self.request(build(*words), timeout)

    def wait_closed(self, timeout: float) -> bool:
        """True if the server closes (EOF or reset) within ``timeout`` s, with no data first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self._buffer += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sigint_as_at_a_terminal() -> None:
    """preexec_fn for a child a test will interrupt: a suite started as a background job
    (`cmd &` in a script) runs with SIGINT ignored, which every child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trickle_until_closed(client: Client, data: bytes, pause: float) -> bool:
    """Send ``data`` a byte at a time, ``pause`` s apart; True once the server has closed the
    connection (bounded: ``len(data)`` bytes)."""
    for byte in data:
        try:
            client.send(bytes([byte]))
        except OSError:
            return True
        if client.wait_closed(pause):
            return True
    return False


def build(*words: str | bytes) -> bytes:
    """``build("GET", "a")`` -> ``b"GET a\\r\\n\\r\\n"``; bytes pass through untouched."""
    parts = [w if isinstance(w, bytes) else w.encode("utf-8") for w in words]
    return b" ".join(parts) + TERMINATOR


def decode_reply(reply: bytes) -> dict:
    if not reply.endswith(TERMINATOR):
        raise ValueError(f"reply without terminator: {reply[:200]!r}")
    value = json.loads(reply[:-len(TERMINATOR)])
    if not isinstance(value, dict):
        raise ValueError(f"reply is not a JSON object: {reply[:200]!r}")
    return value


def exchange(server_or_address: "RunningServer | tuple[str, int]", data: bytes,
             timeout: float = 10.0) -> bytes:
    """Open a connection, send ``data``, return one raw reply (with its terminator)."""
    address = server_or_address.address if isinstance(server_or_address, RunningServer) else server_or_address
    with Client(address, timeout) as client:
        client.send(data)
        return client.recv_reply(timeout)


def send_command(server: "RunningServer | tuple[str, int]", *words: str | bytes, timeout: float = 10.0) -> dict:
    return decode_reply(exchange(server, build(*words), timeout))


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)
