"""The toolkit's shared code.  It runs on Linux only, and says so on any other platform.

The servers pass sockets between processes with SCM_RIGHTS and fork their
workers, the harness reads /proc, and uploads go out with sendfile.  Every
script imports this package first, so this is the one place that stops them
elsewhere with one clear line instead of a traceback from deep inside.
"""

import sys

SUPPORTED_PLATFORM = "linux"

if not sys.platform.startswith(SUPPORTED_PLATFORM):
    sys.exit(f"error: this toolkit runs on Linux only (it relies on SCM_RIGHTS, /proc, fork and sendfile); "
             f"this is {sys.platform}")
