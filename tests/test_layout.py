"""The library's imports flow one way: protocol, then store, then connection, then server and pools.

Read from the source with ``ast`` (nothing is imported), so a module that reaches
upward, or into a top-level script, fails here by name.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fileshare"

# Lower layers never import higher ones; a module may import its own layer's modules
# only where listed in SAME_LAYER.
LAYERS = [
    {"cli", "protocol", "stats"},
    {"replies", "streaming", "chart"},
    {"report"},
    {"store", "state"},
    {"connection", "client", "handoff", "idle"},
    {"loadgen"},
    {"server", "thread_pool", "process_pool"},
    {"harness"},
    {"sweep"},
]
SAME_LAYER = {("streaming", "protocol"), ("replies", "protocol"), ("store", "state")}
SCRIPTS = {path.stem for path in REPO.glob("*.py")}


def layer_of(module: str) -> int:
    for index, members in enumerate(LAYERS):
        if module in members:
            return index
    raise LookupError(f"fileshare/{module}.py has no layer in tests/test_layout.py: give it one")


def imports_of(path: Path) -> set[str]:
    """Top-level modules and fileshare modules ``path`` imports (as 'fileshare.x' or 'x')."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # from .x import y / from . import x
                if node.module:
                    found.add(f"fileshare.{node.module}")
                else:
                    found.update(f"fileshare.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


class LayoutTests(unittest.TestCase):
    def test_every_library_module_has_a_layer(self) -> None:
        for path in PACKAGE.glob("*.py"):
            if path.stem != "__init__":
                layer_of(path.stem)

    def test_imports_flow_one_way(self) -> None:
        for path in sorted(PACKAGE.glob("*.py")):
            if path.stem == "__init__":
                continue
            for name in imports_of(path):
                top = name.split(".")[0]
                with self.subTest(module=path.stem, imports=name):
                    self.assertNotIn(top, SCRIPTS - {"fileshare"}, "the library must not import a script")
                    if not name.startswith("fileshare."):
                        continue
                    target = name.split(".")[1]
                    if (path.stem, target) in SAME_LAYER:
                        continue
                    self.assertLess(layer_of(target), layer_of(path.stem),
                                    f"fileshare/{path.stem}.py imports {target}, which is not below it")

    def test_server_scripts_only_pick_a_policy(self) -> None:
        for script in ("file_server_multithreadpool.py", "file_server_multiprocesspool.py"):
            with self.subTest(script=script):
                lines = (REPO / script).read_text(encoding="utf-8").splitlines()
                self.assertLessEqual(len(lines), 20)
                self.assertEqual({m for m in imports_of(REPO / script) if m.startswith("fileshare")},
                                 {"fileshare.server", "fileshare.thread_pool" if "thread" in script
                                  else "fileshare.process_pool"})


if __name__ == "__main__":
    unittest.main()


class PlatformTests(unittest.TestCase):
    def test_every_script_stops_with_one_line_on_another_platform(self) -> None:
        # Also without the Unix-only modules Windows lacks (resource, fcntl): a script that imports
        # one before the package's check stops there with a traceback instead of the one line.
        scripts = sorted(REPO.glob("*.py")) + sorted((REPO / "bench").glob("*.py"))
        for script, missing in itertools.product(scripts, ((), ("resource", "fcntl"))):
            with self.subTest(script=script.name, missing=missing):
                pretend = ("import runpy, sys; sys.platform = 'darwin'; sys.argv = [sys.argv[1], '--help']; "
                           f"sys.modules.update(dict.fromkeys({missing!r})); "
                           "runpy.run_path(sys.argv[0], run_name='__main__')")
                done = subprocess.run([sys.executable, "-c", pretend, str(script)], cwd=REPO,
                                      capture_output=True, text=True, timeout=60)
                self.assertEqual(done.returncode, 1, done.stderr)
                self.assertEqual(done.stdout, "")
                self.assertEqual(done.stderr.splitlines(), [
                    "error: this toolkit runs on Linux only (it relies on SCM_RIGHTS, /proc, fork and sendfile); "
                    "this is darwin"])
