"""The Locust users' pieces that need no Locust (contrib/locust/fileserver_load.py).

Imported by path, as the locustfile imports it: the toolkit never imports contrib/,
and this suite needs nothing installed.  Settings, names and the error mapping are
pure; the session runs against a real thread server (and a fake one that answers
uploads with a bare OK), with a small content in a temporary cache, and its
samples must account for every request the server counted.

Run: ``python -m unittest tests.test_locust_pieces -v``
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import socket
import sys
import tempfile
import unittest
from pathlib import Path

try:
    from .support import HOST, REPO, ServerPerClass
    from .test_client import FakeServer, free_port, read_request
except ImportError:          # run from inside tests/
    from support import HOST, REPO, ServerPerClass
    from test_client import FakeServer, free_port, read_request
from fileshare.client import ClientError, FileClient  # noqa: E402  (support put the repository on the path)
from fileshare.protocol import TERMINATOR, validate_name  # noqa: E402

PIECES = REPO / "contrib" / "locust" / "fileserver_load.py"
SIZE = 3000       # bytes: not a multiple of 3, so the base64 ends in padding


def _load_pieces():
    spec = importlib.util.spec_from_file_location("fileserver_load", PIECES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


load = _load_pieces()


class SettingsTests(unittest.TestCase):
    def test_host_as_locust_names_a_target(self) -> None:
        for text, expected in [("127.0.0.1:6667", ("127.0.0.1", 6667)), ("tcp://10.0.0.5:7000", ("10.0.0.5", 7000)),
                               ("TCP://server.lab:7000/", ("server.lab", 7000)), ("server.lab", ("server.lab", 6667)),
                               ("[::1]:6668", ("::1", 6668)), (" 127.0.0.1:1 ", ("127.0.0.1", 1))]:
            with self.subTest(text=text):
                self.assertEqual(load.parse_host(text), expected)

    def test_hosts_that_cannot_work_are_refused_with_a_reason(self) -> None:
        for text, said in [("", "--host"), ("http://127.0.0.1:6667", "tcp://"), ("127.0.0.1:0", "port"),
                           ("127.0.0.1:70000", "port"), ("127.0.0.1:x", "port"), (":6667", "no host"),
                           ("::1:6667", "brackets"), ("[::1", "brackets")]:
            with self.subTest(text=text), self.assertRaises(load.SettingError) as caught:
                load.parse_host(text)
            self.assertIn(said, str(caught.exception))

    def test_op_mix_gives_left_out_operations_no_weight(self) -> None:
        self.assertEqual(load.parse_mix(load.DEFAULT_MIX), {"list": 1, "get": 4, "upload": 1, "delete": 1})
        self.assertEqual(load.parse_mix("GET"), {"list": 0, "get": 1, "upload": 0, "delete": 0})
        self.assertEqual(load.parse_mix("get=3 upload=0, delete=2"), {"list": 0, "get": 3, "upload": 0, "delete": 2})

    def test_op_mix_that_cannot_work_is_refused(self) -> None:
        for text in ["", "get=0", "put=1", "get=-1", "get=x", f"get={load.MAX_WEIGHT + 1}"]:
            with self.subTest(text=text), self.assertRaises(load.SettingError):
                load.parse_mix(text)

    def test_task_list_repeats_each_task_by_its_weight(self) -> None:
        tasks = {op: op.upper() for op in load.OPS}
        self.assertEqual(load.task_list({"list": 1, "get": 3, "upload": 0, "delete": 2}, tasks),
                         ["LIST", "GET", "GET", "GET", "DELETE", "DELETE"])

    def test_size_is_read_as_stress_test_reads_file_size_mb(self) -> None:
        self.assertEqual(load.parse_size("10"), 10 * 1024 * 1024)
        self.assertEqual(load.parse_size("0.5"), 512 * 1024)
        for text in ["0", "-1", "nan", "inf", "x", "1e-9"]:
            with self.subTest(text=text), self.assertRaises(load.SettingError):
                load.parse_size(text)

    def test_settings_name_the_first_that_cannot_work(self) -> None:
        made = load.settings("tcp://127.0.0.1:6000", "get", "1", "5")
        self.assertEqual((made.host, made.port, made.size, made.timeout), ("127.0.0.1", 6000, 1024 * 1024, 5.0))
        with self.assertRaisesRegex(load.SettingError, "timeout"):
            load.settings("127.0.0.1:6000", "get", "1", "0")


class NamesTests(unittest.TestCase):
    def test_upload_names_differ_by_worker_and_user_and_are_valid(self) -> None:
        names = {load.upload_name(load.node_label(host, pid), user)
                 for host in ("lab-pc-1", "lab-pc-2") for pid in (100, 101) for user in (0, 1)}
        self.assertEqual(len(names), 8)
        for name in names:
            self.assertEqual(validate_name(name), name)
            self.assertNotIn(" ", name)        # an UPLOAD name ends at the first space

    def test_a_strange_host_name_still_makes_a_valid_short_name(self) -> None:
        for host in ("", "a b/c\\d\x01", "é" * 300, ".upload-x", "-"):
            with self.subTest(host=host):
                name = load.upload_name(load.node_label(host, 7), 3)
                self.assertEqual(validate_name(name), name)
                self.assertLess(len(name), 80)
                self.assertTrue(name.startswith(load.UPLOAD_PREFIX) and name.endswith("-7-3.bin"))


class ErrorMappingTests(unittest.TestCase):
    def test_the_failure_locust_sees_is_the_client_error_kind(self) -> None:
        for kind in ClientError.KINDS:
            failure = load.RequestFailure(ClientError(kind, f"what happened at offset {len(kind)}"))
            self.assertEqual((repr(failure), str(failure)), (kind, kind))
            self.assertIn("offset", failure.detail)

    def test_an_unexpected_exception_is_kind_other(self) -> None:
        error = load.as_client_error(ZeroDivisionError("division by zero"))
        self.assertEqual((error.kind, str(error)), ("other", "ZeroDivisionError: division by zero"))
        original = ClientError("timeout", "timed out")
        self.assertIs(load.as_client_error(original), original)


class _WorkloadMixin:
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._cache = tempfile.TemporaryDirectory(prefix="locust-pieces-cache-")
        cls.workload = load.make_workload(SIZE, Path(cls._cache.name))

    @classmethod
    def tearDownClass(cls) -> None:
        cls._cache.cleanup()
        super().tearDownClass()


class SessionAgainstServerTests(_WorkloadMixin, ServerPerClass, unittest.TestCase):
    """Every sample is one request the server counted: the count of samples equals STATS."""

    def setUp(self) -> None:
        for path in Path(self.root).iterdir():
            path.unlink()
        self.before = self.counts()

    def counts(self) -> dict:
        with FileClient(*self.server.address, timeout=10) as client:
            return client.stats()

    def assert_counted(self, samples: list) -> None:
        """One sample per request the server counted (a reply the server sent whole and the
        client found corrupt is a success to the server and a failure to Locust)."""
        after = self.counts()
        counted = sum(after[key] - self.before[key] for key in ("succeeded", "failed"))
        self.assertEqual(counted, len(samples))

    def session(self, user: int = 0):
        session = load.FileServerSession(*self.server.address, self.workload, load.upload_name("test-1", user), 10)
        self.addCleanup(session.close)
        return session

    def test_prepare_uploads_the_test_file_once_then_only_checks_it(self) -> None:
        first = load.prepare_server(*self.server.address, self.workload, 10)
        self.assertEqual([(s.op, s.ok) for s in first], [("LIST", True), ("UPLOAD", True)])
        self.assertEqual((Path(self.root) / self.workload.served_name).read_bytes(),
                         Path(self.workload.content.path).read_bytes())
        again = load.prepare_server(*self.server.address, self.workload, 10)
        self.assertEqual([(s.op, s.ok, s.length) for s in again], [("LIST", True, 0), ("GET", True, SIZE)])
        self.assertTrue(all(s.name.startswith(load.PREPARE) for s in first + again))
        self.assert_counted(first + again)

    def test_prepare_replaces_a_test_file_that_differs(self) -> None:
        (Path(self.root) / self.workload.served_name).write_bytes(b"x" * SIZE)
        samples = load.prepare_server(*self.server.address, self.workload, 10)
        self.assertEqual([(s.op, s.error.kind if s.error else None) for s in samples],
                         [("LIST", None), ("GET", "corrupt"), ("UPLOAD", None)])
        self.assertEqual((Path(self.root) / self.workload.served_name).read_bytes(),
                         Path(self.workload.content.path).read_bytes())
        self.assert_counted(samples)

    def test_every_operation_verified_and_counted(self) -> None:
        samples = load.prepare_server(*self.server.address, self.workload, 10)
        session = self.session()
        for op in ("list", "get", "upload", "upload", "delete", "delete", "get", "upload"):
            samples += getattr(session, op)()
        samples += session.clean_up()
        self.assertTrue(all(s.ok for s in samples), [s for s in samples if not s.ok])
        # The second delete had nothing to delete, so it uploaded first; the clean-up removed the last upload.
        self.assertEqual([(s.op, s.length) for s in samples[2:]],
                         [("LIST", 0), ("GET", SIZE), ("UPLOAD", SIZE), ("UPLOAD", SIZE), ("DELETE", 0),
                          ("UPLOAD", SIZE), ("DELETE", 0), ("GET", SIZE), ("UPLOAD", SIZE), ("DELETE", 0)])
        self.assertEqual([p.name for p in Path(self.root).iterdir()], [self.workload.served_name])
        self.assert_counted(samples)

    def test_a_wrong_byte_fails_the_get_as_corrupt_without_raising(self) -> None:
        load.prepare_server(*self.server.address, self.workload, 10)
        self.before = self.counts()
        content = bytearray(Path(self.workload.content.path).read_bytes())
        content[SIZE // 2] ^= 1
        (Path(self.root) / self.workload.served_name).write_bytes(content)
        samples = self.session().get()
        self.assertEqual([(s.op, s.error.kind if s.error else None, s.length) for s in samples],
                         [("GET", "corrupt", 0)])
        self.assertIn("offset", str(samples[0].error))
        self.assert_counted(samples)

    def test_list_without_the_test_file_fails(self) -> None:
        samples = self.session().list()
        self.assertEqual(samples[0].error.kind if samples[0].error else None, "corrupt")
        self.assertIn(self.workload.served_name, str(samples[0].error))

    def test_users_upload_under_names_of_their_own(self) -> None:
        one, two = self.session(1), self.session(2)
        samples = one.upload() + two.upload()
        self.assertTrue(all(s.ok for s in samples))
        self.assertEqual(len(list(Path(self.root).iterdir())), 2)
        samples += one.clean_up() + two.clean_up()
        self.assertEqual(list(Path(self.root).iterdir()), [])
        self.assert_counted(samples)


class SessionWithoutServerTests(_WorkloadMixin, unittest.TestCase):
    def test_a_refused_connection_is_a_failed_sample_not_an_exception(self) -> None:
        session = load.FileServerSession(HOST, free_port(), self.workload, "locust-x-0.bin", 5)
        self.addCleanup(session.close)
        for op in ("list", "get", "upload", "delete"):
            with self.subTest(op=op):
                samples = getattr(session, op)()
                self.assertEqual([s.error.kind if s.error else None for s in samples], ["refused"])
        self.assertEqual(session.clean_up(), [])       # nothing surely stored: nothing to delete

    def test_an_upload_the_server_does_not_confirm_is_read_back(self) -> None:
        """A server of another making answers UPLOAD with a bare OK: what it stored is downloaded and compared."""
        for stored_right in (True, False):
            with self.subTest(stored_right=stored_right):
                stored: dict = {}

                def handler(conn: socket.socket, fake: FakeServer) -> None:
                    buffer = bytearray()
                    while (request := read_request(conn, buffer)) is not None:
                        command, _, rest = request.partition(b" ")
                        if command == b"UPLOAD":
                            name, _, text = rest.partition(b" ")
                            stored[name] = text if stored_right else text[:-8] + b"AAAAAAAA"
                            conn.sendall(b'{"status": "OK", "data": "stored"}' + TERMINATOR)
                        else:
                            conn.sendall(b'{"status": "OK", "data_file": "' + stored[rest] + b'"}' + TERMINATOR)

                fake = FakeServer(handler)
                self.addCleanup(fake.stop)
                session = load.FileServerSession(HOST, fake.port, self.workload, "locust-x-0.bin", 5)
                self.addCleanup(session.close)
                samples = session.upload()
                self.assertEqual([(s.op, s.name) for s in samples],
                                 [("UPLOAD", load.UPLOAD_ROW), ("GET", load.READ_BACK + load.UPLOAD_ROW)])
                self.assertEqual(samples[1].error.kind if samples[1].error else None,
                                 None if stored_right else "corrupt")
                self.assertEqual(base64.b64decode(stored[b"locust-x-0.bin"]) == Path(
                    self.workload.content.path).read_bytes(), stored_right)


class ToolkitNeverImportsContribTests(unittest.TestCase):
    def test_no_library_module_or_script_imports_contrib(self) -> None:
        for path in [*REPO.glob("*.py"), *(REPO / "fileshare").glob("*.py")]:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    self.assertFalse(name.split(".")[0] in ("contrib", "fileserver_load", "locustfile", "locust"),
                                     f"{path.name} imports {name}: the toolkit must run with nothing installed")


if __name__ == "__main__":
    unittest.main()
