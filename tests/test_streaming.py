"""Tests for fileshare.streaming's helpers, on real loopback sockets and files.

Run with:  python -m unittest tests.test_streaming -v
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import unittest
from unittest import mock

from fileshare import streaming
from fileshare.streaming import RECV_CHUNK, HashingWriter, ReceiveBuffer


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname(), timeout=10)
        receiver, _ = listener.accept()
    receiver.settimeout(10)
    return sender, receiver


class ReceiveBufferTests(unittest.TestCase):

    def setUp(self) -> None:
        self.sender, self.receiver = loopback_pair()
        self.addCleanup(self.sender.close)
        self.addCleanup(self.receiver.close)

    def receive_exactly(self, buffer: ReceiveBuffer, total: int, size: int) -> bytes:
        got = bytearray()
        for _ in range(10_000):
            if len(got) >= total:
                break
            piece = buffer.receive(self.receiver, min(size, total - len(got)))
            self.assertTrue(piece, "stream ended early")
            self.assertLessEqual(len(piece), size)
            got += piece
        return bytes(got)

    def test_pieces_of_changing_sizes_arrive_intact(self):
        payload = random.Random(1).randbytes(3 * RECV_CHUNK + 12345)
        self.sender.sendall(payload)
        buffer = ReceiveBuffer()
        got = bytearray()
        sizes = [RECV_CHUNK, 7, RECV_CHUNK - 3, 64 * 1024, 1, RECV_CHUNK]
        for i in range(10_000):
            if len(got) == len(payload):
                break
            got += buffer.receive(self.receiver, sizes[i % len(sizes)])
        self.assertEqual(bytes(got), payload)

    def test_one_buffer_is_reused(self):
        self.sender.sendall(b"x" * 300)
        buffer = ReceiveBuffer()
        first = buffer.receive(self.receiver, 100)
        second = buffer.receive(self.receiver, 100)
        self.assertIs(first, second, "a new buffer per receive is what this class exists to avoid")

    def test_a_piece_still_viewed_is_not_overwritten(self):
        self.sender.sendall(b"a" * 100 + b"b" * 50 + b"d" * 50)
        buffer = ReceiveBuffer()
        first = self.receive_exactly(buffer, 100, 100)
        self.assertEqual(first, b"a" * 100)
        held = memoryview(buffer.receive(self.receiver, 50))      # a caller keeps a view
        self.sender.sendall(b"c" * 100)
        buffer.receive(self.receiver, 80)                          # another size: a resize
        self.assertEqual(bytes(held), b"b" * 50)
        held.release()

    def test_a_piece_still_viewed_is_not_overwritten_by_a_same_size_receive(self):
        self.sender.sendall(b"a" * 64)
        buffer = ReceiveBuffer()
        self.assertEqual(self.receive_exactly(buffer, 64, 64), b"a" * 64)
        self.sender.sendall(b"b" * 64)
        held = memoryview(self.receive_exactly_one(buffer, 64))   # kept, e.g. by a traceback
        self.sender.sendall(b"c" * 64)
        again = self.receive_exactly(buffer, 64, 64)
        self.assertEqual(again, b"c" * 64)
        self.assertEqual(bytes(held), b"b" * len(held))
        held.release()

    def receive_exactly_one(self, buffer: ReceiveBuffer, size: int) -> bytearray:
        piece = buffer.receive(self.receiver, size)
        self.assertTrue(piece)
        return piece

    def test_release_gives_the_memory_back_and_receiving_goes_on(self):
        self.sender.sendall(b"x" * RECV_CHUNK)
        buffer = ReceiveBuffer()
        first = buffer.receive(self.receiver, RECV_CHUNK)
        self.assertGreater(len(first), 0)
        buffer.release()
        self.assertEqual(len(buffer._buffer), 0)
        rest = self.receive_exactly(buffer, RECV_CHUNK - len(first), RECV_CHUNK)
        self.assertEqual(len(first) + len(rest), RECV_CHUNK)

    def test_end_of_stream_is_empty(self):
        self.sender.sendall(b"last")
        self.sender.shutdown(socket.SHUT_WR)
        buffer = ReceiveBuffer()
        self.assertEqual(self.receive_exactly(buffer, 4, 64), b"last")
        self.assertEqual(buffer.receive(self.receiver, 64), b"")


class HashingWriterTests(unittest.TestCase):

    def check(self, helper_thread: bool) -> None:
        data = random.Random(2).randbytes(3 * HashingWriter.BATCH + 777)
        sink = io.BytesIO()
        with mock.patch.object(streaming, "core_to_spare", return_value=helper_thread):
            writer = HashingWriter(sink)
            self.assertEqual(writer._thread is not None, helper_thread)
            for start in range(0, len(data), 48 * 1024):
                writer.write(data[start:start + 48 * 1024])
            digest = writer.close()
        self.assertEqual(sink.getvalue(), data)
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        self.assertEqual(writer.size, len(data))

    def test_inline(self):
        self.check(helper_thread=False)

    def test_on_a_helper_thread(self):
        self.check(helper_thread=True)

    def test_a_write_error_on_the_helper_thread_reaches_the_caller(self):
        class FullDisk(io.BytesIO):
            def write(self, data):
                raise OSError(28, "No space left on device")
        with mock.patch.object(streaming, "core_to_spare", return_value=True):
            writer = HashingWriter(FullDisk())
            with self.assertRaises(OSError):
                for _ in range(8):
                    writer.write(b"x" * HashingWriter.BATCH)
                writer.close()
            writer.abort()


if __name__ == "__main__":
    unittest.main()
