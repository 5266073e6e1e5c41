#!/usr/bin/env python3
"""Command-line client for the course's file server, and the client library's old home.

    python client_worker.py {list,get,upload,delete,stats} ...   (see --help)

The library lives in fileshare/client.py; its names are re-exported here, so
``from client_worker import FileClient, ClientError`` keeps working.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from fileshare.cli import remote_port, timeout_seconds
from fileshare.client import (DEFAULT_HOST, DEFAULT_PORT, ClientError, DiscardingSink, FileClient,  # noqa: F401
                              Progress, TransferResult)

__all__ = ["ClientError", "DiscardingSink", "FileClient", "TransferResult", "main"]


# ---------------------------------------------------------------------- command line

class _ProgressLine:
    """A one-line progress display on a terminal; silent when stderr is not one."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.done = 0
        self.started = time.monotonic()
        self.last = float("-inf")          # the first piece is shown at once
        self.enabled = sys.stderr.isatty()

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9) / 1e6
        share = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {self.done / 1e6:9.1f} MB{share} {rate:7.1f} MB/s")
        sys.stderr.flush()

    def __enter__(self) -> "_ProgressLine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled and self.done:
            self._show(time.monotonic())   # the final figures
            sys.stderr.write("\n")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Command-line client for the course's file server.",
                                     epilog="SERVER_HOST and SERVER_PORT set the default server.")
    parser.add_argument("--host", default=os.environ.get("SERVER_HOST", DEFAULT_HOST),
                        help="server address (default: %(default)s)")
    parser.add_argument("--port", type=remote_port, default=os.environ.get("SERVER_PORT", str(DEFAULT_PORT)),
                        help="server port (default: %(default)s)")
    parser.add_argument("--timeout", type=timeout_seconds, default=60.0,
                        help="seconds to wait on any read or write (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the files on the server")
    get = commands.add_parser("get", help="download a file")
    get.add_argument("name", help="file name on the server")
    get.add_argument("--out", help="where to save it (default: the name, in this folder)")
    upload = commands.add_parser("upload", help="upload a file")
    upload.add_argument("path", help="local file to upload")
    upload.add_argument("--name", help="name on the server (default: the file's base name)")
    delete = commands.add_parser("delete", help="delete a file on the server")
    delete.add_argument("name", help="file name on the server")
    commands.add_parser("stats", help="show the server's request counters")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    client = FileClient(args.host, args.port, timeout=args.timeout)
    try:
        with client:
            if args.command == "list":
                for name in client.list():
                    print(name)
            elif args.command == "get":
                out = args.out or args.name
                if os.path.isdir(out):          # like cp: into the folder, under its own name
                    out = os.path.join(out, args.name)
                with _ProgressLine(f"GET {args.name}", None) as progress:
                    result = client.get(args.name, out, progress)
                print(_describe(f"downloaded {args.name} to {out}", result))
            elif args.command == "upload":
                name = args.name or os.path.basename(args.path)
                try:
                    total = os.path.getsize(args.path)
                except OSError as exc:
                    raise ClientError("other", f"cannot read {args.path}: {exc.strerror}") from None
                with _ProgressLine(f"UPLOAD {name}", total) as progress:
                    result = client.upload(args.path, name, progress)
                print(_describe(f"uploaded {args.path} as {name}", result))
            elif args.command == "delete":
                print(client.delete(args.name))
            elif args.command == "stats":
                print(" ".join(f"{key}={value}" for key, value in client.stats().items()))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:              # the local side: --out in a missing folder, a directory...
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _describe(what: str, result: TransferResult) -> str:
    return (f"{what}: {result.bytes} bytes in {result.seconds:.3f} s "
            f"({result.bytes_per_second / 1e6:.1f} MB/s), sha256 {result.sha256}")


if __name__ == "__main__":
    sys.exit(main())
