"""What a worker does with one request of a client connection, whichever pool it runs in.

The accept loop owns a connection between requests and reads each request's
head; a worker thread or process then calls :func:`serve_request` with the
socket, the bytes the loop read and the server's :class:`ServerContext`.  It
serves exactly that request (reading an upload's content itself) and gives the
connection back with whatever it read beyond the request.  Everything it shares
with the other workers (the request counters) lives in the context,
in shared memory, so the thread and process servers behave alike.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from . import protocol
from .protocol import (GET_REPLY_SUFFIX, ProtocolError, Request, RequestParser, UploadData, UploadEnd,
                       UploadStart, error_reply, get_reply_prefix, head_complete, ok_reply)
from .state import ServerContext
from .store import FileError, PendingUpload, delete_file, list_names, open_for_get
from .streaming import ReceiveBuffer, iter_encoded, peer_name, read_arrived, receive_size

log = logging.getLogger("fileserver")


# An upload's content must arrive, and a GET's content be taken, at least this many bytes a
# second on average over each --timeout: a client trickling it would otherwise hold a worker for
# as long as it likes.
MIN_BYTES_PER_SECOND = 16 * 1024


# The most read, after a request that breaks the protocol, of what arrived behind it, to count
# the requests in it as failed: a bound, since a client may still be sending.
UNREAD_COUNTED_BYTES = 1024 * 1024


class MinimumRate:
    """Sans-IO pace check: at least ``rate`` bytes a second over each window of ``window`` s.

    Each window is judged when it ends; an upload that ends within its window is never
    judged.  A window whose bytes were all there (however early) starts the next.
    """

    def __init__(self, rate: float, window: float, now: float) -> None:
        self.needed = rate * window
        self.window = window
        self.window_end = now + window
        self.received = 0

    def seconds_left(self, now: float) -> float:
        """How long the next receive may wait before the window must be judged."""
        return max(self.window_end - now, 0.001)

    def transferred(self, count: int, now: float) -> bool:
        """Note ``count`` bytes received or sent at ``now`` (0 when a wait ran out); False once too slow."""
        self.received += count
        if now < self.window_end:
            return True
        if self.received < self.needed:
            return False
        self.window_end, self.received = now + self.window, 0
        return True


# How long a worker keeps a connection after a reply, waiting for its next request, when no other
# connection waits for a worker: long enough for a client's next request sent back to back on a
# busy machine, short beside the wait a fair turn may add (see bench/small_requests.py).
LINGER_SECONDS = 0.005
LINGER_CHECK_SECONDS = 0.001    # how soon a lingering worker sees that another connection waits
LINGER_READ = 64 * 1024
ENCODED_CHUNK = protocol.encoded_size(protocol.RAW_CHUNK)    # a full piece: more may follow


class ConnectionClosed(Exception):
    """The peer closed the connection, or it went quiet for too long."""


class Connection:
    """Serve one request of a connection whose head has arrived."""

    def __init__(self, sock: socket.socket, ctx: ServerContext) -> None:
        self.sock = sock
        self.ctx = ctx
        self.parser = RequestParser()
        self.upload: PendingUpload | _RejectedUpload | None = None
        self.received = ReceiveBuffer()
        self.replying = False             # some of the current request's reply has been sent
        self.upload_pace: MinimumRate | None = None
        self.beyond = b""          # bytes read after this request: the next ones, pipelined
        sock.settimeout(ctx.timeout)
        self.peer = peer_name(sock)       # now: a peer that resets cannot be named afterwards

    def serve(self, head: bytes) -> bytes | None:
        """Serve the request ``head`` begins; return the bytes read beyond it, or None once closed."""
        try:
            done = self._take(head)
            while done is False:
                with receive_size() as size:  # a large receive only while few transfers share the process
                    if isinstance(self.upload, PendingUpload):
                        size = self.upload.decoder.aligned(size)
                    data = self._receive(size)
                    if not data:
                        raise ConnectionClosed
                    done = self._take(data)
            if done:
                return self.beyond
        except ConnectionClosed:
            if self.upload is not None or not self.parser.idle:
                log.info("%s went away in the middle of a request", self.peer)
                self.ctx.counters.failed()
        except (OSError, TimeoutError) as exc:
            log.info("%s: connection dropped: %s", self.peer, exc)
            if self.upload is not None or not self.parser.idle:
                self.ctx.counters.failed()
            # Requests that had arrived behind this one will never be answered either.
            self.ctx.counters.unanswered(self.beyond)
        finally:
            self._discard_upload()
        self.sock.close()
        return None

    def _take(self, data: bytes | bytearray) -> bool | None:
        """Act on received bytes: True once the request is answered, False while it is
        not complete, None when the connection must end."""
        try:
            events, used = self.parser.feed_request(data)
        except ProtocolError as exc:
            # The stream cannot be resynchronised: answer, then hang up.  Whole requests that had
            # arrived behind the bad one are not answered: they count as failed, as the bad one.
            self._discard_upload()
            if exc.after is not None:
                # Those already in the kernel too (a pipelining client's, beyond one read).
                self.ctx.counters.unanswered(exc.after + read_arrived(self.sock, UNREAD_COUNTED_BYTES))
                self.sock.settimeout(self.ctx.timeout)
            self._reply_error(str(exc))
            return None
        if used < len(data):
            self.beyond = bytes(data[used:])    # a copy: ``data`` may be the reused receive buffer
        for event in events:
            if not self._handle(event):
                return None
        return bool(events) and isinstance(events[-1], (Request, UploadEnd))

    # ------------------------------------------------------------------ reading

    def _receive(self, size: int) -> bytearray:
        if self.upload is not None:
            return self._receive_upload(size)
        try:
            return self.received.receive(self.sock, size)
        except socket.timeout:
            raise TimeoutError(f"no data for {self.ctx.timeout:g} s") from None
        except ConnectionResetError:
            raise ConnectionClosed from None

    def _receive_upload(self, size: int) -> bytearray:
        """Receive a piece of an upload's content, which must keep MIN_BYTES_PER_SECOND."""
        pace = self.upload_pace
        if pace is None:
            pace = self.upload_pace = MinimumRate(MIN_BYTES_PER_SECOND, self.ctx.timeout, time.monotonic())
        while True:
            self.sock.settimeout(pace.seconds_left(time.monotonic()))
            try:
                data = self.received.receive(self.sock, size)
            except socket.timeout:
                data = None
            except ConnectionResetError:
                raise ConnectionClosed from None
            finally:
                self.sock.settimeout(self.ctx.timeout)      # for the reply's sends
            if not pace.transferred(len(data) if data else 0, time.monotonic()):
                raise TimeoutError(f"upload slower than {MIN_BYTES_PER_SECOND} bytes/s "
                                   f"over {self.ctx.timeout:g} s")
            if data is not None:
                return data

    def _send_paced(self, data: bytes, pace: MinimumRate) -> None:
        """Send all of ``data`` to a reader that must keep MIN_BYTES_PER_SECOND, as an upload's sender
        must: a send timing out only after --timeout of no progress at all would let a reader
        taking 64 KiB per --timeout hold the worker for the whole file."""
        view = memoryview(data)
        while view:
            self.sock.settimeout(pace.seconds_left(time.monotonic()))
            try:
                sent = self.sock.send(view)
            except socket.timeout:
                sent = 0
            finally:
                self.sock.settimeout(self.ctx.timeout)
            if not pace.transferred(sent, time.monotonic()):
                raise TimeoutError(f"reader slower than {MIN_BYTES_PER_SECOND} bytes/s over {self.ctx.timeout:g} s")
            view = view[sent:]

    # ------------------------------------------------------------------ dispatch

    def _handle(self, event: protocol.RequestEvent) -> bool:
        """Act on one parser event; False ends the connection."""
        if isinstance(event, UploadData):
            return self._upload_data(event.text)
        if isinstance(event, Request):
            self._request(event)
        elif isinstance(event, UploadStart):
            self._upload_start(event.name)
        elif isinstance(event, UploadEnd):
            self._upload_end()
        return True

    def _request(self, request: Request) -> None:
        command, argument = request.command, request.argument
        self.replying = False
        try:
            if command == "LIST":
                self._reply_ok(data=list_names(self.ctx.root))
            elif command == "GET":
                self._get(argument)
            elif command == "DELETE":
                self._delete(argument)
            elif command == "STATS":
                self.replying = True
                self.sock.sendall(ok_reply(data=self.ctx.counters.snapshot()))
            elif command == "UPLOAD":
                raise ProtocolError("UPLOAD needs a file name and the base64 content: UPLOAD NAME CONTENT")
            elif not command:
                raise ProtocolError("empty request; commands are LIST, GET NAME, UPLOAD NAME CONTENT, DELETE NAME")
            else:
                raise ProtocolError(f"unknown command {command!r}; commands are LIST, GET NAME, "
                                    "UPLOAD NAME CONTENT, DELETE NAME")
        except (ProtocolError, FileError) as exc:
            self._reply_error(str(exc))
        except OSError as exc:
            if self.replying:
                raise          # part of the reply is out (and counted): only a hang-up is left
            # A file-system error nobody foresaw still gets its ERROR and its failed count.
            log.warning("%s: %s failed: %r", self.peer, command, exc)
            self._reply_error(f"{command} failed: {exc.strerror or exc}")

    # ------------------------------------------------------------------ commands

    def _get(self, name: str) -> None:
        source = open_for_get(self.ctx.root, name)
        with source:
            pieces = iter_encoded(source)
            first = next(pieces, b"")
            prefix = get_reply_prefix(name, self.ctx.get_key)
            if len(first) < ENCODED_CHUNK:
                # The whole content in one piece: the whole reply in one send, not three (each
                # a packet and a wake-up of the client, which for a small file cost more than it).
                self._reply_counted(b"".join((prefix, first, GET_REPLY_SUFFIX)))
                return
            try:
                self.replying = True
                self.sock.sendall(prefix)
                pace = MinimumRate(MIN_BYTES_PER_SECOND, self.ctx.timeout, time.monotonic())
                self._send_paced(first, pace)
                for piece in pieces:
                    self._send_paced(piece, pace)
            except OSError:
                # Half a reply is out: no ERROR can follow it, only a hang-up.
                self.ctx.counters.failed()
                raise
        self._reply_counted(GET_REPLY_SUFFIX)

    def _delete(self, name: str) -> None:
        delete_file(self.ctx.root, name)
        self._reply_ok(data=f"{name} deleted")

    # ------------------------------------------------------------------ uploads

    def _upload_start(self, name: str) -> None:
        try:
            protocol.validate_name(name)
            self.upload = PendingUpload(self.ctx.root, self.ctx.temp_tag, name)
        except ProtocolError as exc:
            self.upload = _RejectedUpload(str(exc))
        except OSError as exc:
            self.upload = _RejectedUpload(f"cannot store {name!r}: {exc.strerror}")

    def _upload_data(self, text: Any) -> bool:
        upload = self.upload
        if upload is None:
            return True
        if isinstance(upload, _RejectedUpload):
            # Drain a refused upload's content, then answer; but no more than an accepted one could send.
            upload.drained += len(text)
            if upload.drained > protocol.encoded_size(self.ctx.max_upload_bytes):
                self.upload = None
                self._reply_error(upload.error)
                return False
            return True
        try:
            decoded = upload.decoder.feed(text)
        except ProtocolError as exc:
            self._reject_upload(str(exc))
            return True
        if upload.decoder.decoded_bytes > self.ctx.max_upload_bytes:
            self._discard_upload()
            limit_mb = self.ctx.max_upload_bytes / (1024 * 1024)
            self._reply_error(f"upload is larger than the server's limit of {limit_mb:g} MiB")
            return False
        try:
            upload.writer.write(decoded)
        except OSError as exc:         # disk full, file too large...: say so once the content is in
            self._reject_upload(f"cannot store {upload.name!r}: {exc.strerror or exc}")
        return True

    def _reject_upload(self, message: str) -> None:
        self._discard_upload()
        self.upload = _RejectedUpload(message)

    def _upload_end(self) -> None:
        upload, self.upload = self.upload, None
        if upload is None:
            return
        if isinstance(upload, _RejectedUpload):
            self._reply_error(upload.error)
            return
        try:
            upload.decoder.finish()
            digest = upload.publish(os.path.join(self.ctx.root, upload.name))
        except ProtocolError as exc:
            upload.discard()
            self._reply_error(str(exc))
            return
        except OSError as exc:
            upload.discard()
            self._reply_error(f"cannot store {upload.name!r}: {exc.strerror or exc}")
            return
        except BaseException:
            upload.discard()
            raise
        self._reply_ok(data=f"{upload.name} uploaded", size=upload.writer.size, sha256=digest)

    def _discard_upload(self) -> None:
        upload, self.upload = self.upload, None
        if isinstance(upload, PendingUpload):
            upload.discard()

    # ------------------------------------------------------------------ replies

    def _reply_ok(self, **fields: Any) -> None:
        self._reply_counted(ok_reply(**fields))

    def _reply_error(self, message: str) -> None:
        log.info("%s: ERROR %s", self.peer, message)
        self.ctx.counters.failed()
        try:
            self.sock.sendall(error_reply(message))
        except OSError:
            pass               # already counted as failed; the peer is gone

    def _reply_counted(self, reply_tail: bytes) -> None:
        """Count a success, then send the bytes that complete its reply."""
        self.ctx.counters.succeeded()
        self.replying = True
        try:
            self.sock.sendall(reply_tail)
        except BaseException:
            self.ctx.counters.success_became_failure()
            raise


class _RejectedUpload:
    """An upload already refused: its content is read and dropped, then ERROR is sent."""

    def __init__(self, message: str) -> None:
        self.error = message
        self.drained = 0


def serve_while_ready(sock: socket.socket, ctx: ServerContext, head: bytes) -> bytes | None:
    """Serve the request ``head`` begins, then the connection's next ones while each is there at
    once or within LINGER_SECONDS, as long as no other connection waits for a worker.

    Handing a connection back to the loop and over to a worker again costs more than a small
    request itself (for the process server, two descriptor passings and several wake-ups), so a
    busy keep-alive client is served straight on; a quiet one, or one whose turn is over because
    another waits, goes back.  Returns what :func:`serve_request` does, for the last request.
    """
    while True:
        beyond = serve_request(sock, ctx, head)
        if beyond is None or ctx.demand.others_waiting():
            return beyond
        if not head_complete(beyond):
            beyond = _linger(sock, beyond, ctx)
            if not head_complete(beyond) or ctx.demand.others_waiting():
                return beyond
        head = beyond


def _linger(sock: socket.socket, received: bytes, ctx: ServerContext) -> bytes:
    """Read what arrives within LINGER_SECONDS until a whole head is there, or until another
    connection waits for a worker (looked at every LINGER_CHECK_SECONDS); return all read."""
    deadline = time.monotonic() + LINGER_SECONDS
    try:
        while (left := deadline - time.monotonic()) > 0 and not ctx.demand.others_waiting():
            sock.settimeout(min(left, LINGER_CHECK_SECONDS))
            try:
                data = sock.recv(LINGER_READ)
            except socket.timeout:
                continue
            if not data:
                break           # the loop sees the end of input again, and acts on it
            received += data
            if head_complete(received):
                break
    except OSError:             # reset: the loop sees it too, and acts on it
        pass
    return received


def serve_request(sock: socket.socket, ctx: ServerContext, head: bytes) -> bytes | None:
    """Serve the one request whose head ``head`` holds (with any bytes the loop read after it).

    Returns the bytes read beyond that request when the connection stays open for
    more, None once it is closed.  Never raises for the client's mistakes.
    """
    try:
        return Connection(sock, ctx).serve(head)
    except Exception:
        log.exception("unexpected error while serving a connection")
        sock.close()
        return None
