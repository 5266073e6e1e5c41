"""Value checks for argparse, shared by the command lines: a bad value gets argparse's
usage line and "invalid <name> value", never a traceback."""

from __future__ import annotations


def _checked(name: str, convert, valid):
    def check(text: str):
        value = convert(text)
        if not valid(value):
            raise ValueError(text)
        return value
    check.__name__ = name          # what argparse calls the expected kind of value
    return check


positive_int = _checked("positive integer", int, lambda v: v >= 1)
positive_float = _checked("positive number", float, lambda v: v > 0)
port_number = _checked("port number (0-65535)", int, lambda v: 0 <= v <= 65535)
remote_port = _checked("port number (1-65535)", int, lambda v: 0 < v <= 65535)
