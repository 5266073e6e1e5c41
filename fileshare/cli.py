"""Value checks for argparse, shared by the command lines: a bad value gets argparse's
usage line and "invalid <name> value", never a traceback."""

from __future__ import annotations

import math

# Values that parse but cannot work are refused here, not found out later: inf or 1e300
# seconds overflow a socket timeout, an infinite upload limit cannot become a byte count.
MAX_SECONDS = 24 * 60 * 60       # a timeout or grace period beyond a day is a typo
MAX_SIZE_MIB = 1024 * 1024       # 1 TiB: more than any file system here holds


def _checked(name: str, convert, valid):
    def check(text: str):
        value = convert(text)
        if not valid(value):
            raise ValueError(text)
        return value
    check.__name__ = name          # what argparse calls the expected kind of value
    return check


positive_int = _checked("positive integer", int, lambda v: v >= 1)
positive_float = _checked("positive number", float, lambda v: 0 < v < math.inf)   # NaN fails every comparison
port_number = _checked("port number (0-65535)", int, lambda v: 0 <= v <= 65535)
remote_port = _checked("port number (1-65535)", int, lambda v: 0 < v <= 65535)
timeout_seconds = _checked(f"timeout (seconds, above 0, at most {MAX_SECONDS})", float,
                           lambda v: 0 < v <= MAX_SECONDS)
grace_seconds = _checked(f"grace period (seconds, 0 to {MAX_SECONDS})", float, lambda v: 0 <= v <= MAX_SECONDS)
size_mib = _checked(f"size (MiB, above 0, at most {MAX_SIZE_MIB})", float, lambda v: 0 < v <= MAX_SIZE_MIB)
