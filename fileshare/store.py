"""The served folder: what LIST, GET, UPLOAD and DELETE do to files, and nothing of sockets.

Uploads are written to hidden temporary files named after the server's PID
(``protocol.TEMP_PREFIX`` + PID + ``-``...), published with ``os.replace`` only
when complete, so a reader sees a whole old file or a whole new one.  The PID
in a temporary name tells a later server whether its owner is still running;
:func:`stale_leftovers` is that one test, for uploads and handoff folders alike.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import stat
import tempfile
from typing import BinaryIO, Iterator

from . import protocol
from .protocol import StrictBase64Decoder
from .streaming import HashingWriter

log = logging.getLogger("fileserver")


class FileError(Exception):
    """A file-system problem to report to the client."""

    @classmethod
    def from_os(cls, name: str, exc: OSError) -> "FileError":
        if exc.errno == errno.ENOENT:
            return cls(f"file {name!r} not found")
        if exc.errno == errno.ELOOP:
            return cls(f"{name!r} is a symbolic link; only regular files are served")
        if exc.errno == errno.EISDIR:
            return cls(f"{name!r} is a directory")
        return cls(f"cannot access {name!r}: {exc.strerror or exc}")


# ---------------------------------------------------------------------- publishing files

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def publishable_mode(fd: int) -> None:
    """Give a temporary file (mkstemp makes it 0600) the mode a new file would have had."""
    os.fchmod(fd, 0o666 & ~_UMASK)


class AtomicFile:
    """A temporary file beside its destination, renamed onto it only once complete.

    Until :meth:`publish`, the destination keeps its old content (or stays absent);
    :meth:`discard` leaves no trace.
    """

    def __init__(self, folder: str, prefix: str, suffix: str, mode: str = "wb") -> None:
        fd, self.temp_path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        self.file: BinaryIO = os.fdopen(fd, mode)

    def publish(self, final_path: str) -> None:
        publishable_mode(self.file.fileno())
        self.file.close()
        os.replace(self.temp_path, final_path)

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` when the block ends, and only if it ends
    without an error."""
    folder, name = os.path.split(os.path.abspath(path))
    pending = AtomicFile(folder, f".{name}.", ".part")
    try:
        yield pending.file
        pending.publish(os.fspath(path))
    except BaseException:
        pending.discard()
        raise


class PendingUpload:
    """One upload in progress: decoded, hashed and written to a hidden temporary file."""

    def __init__(self, root: str, temp_tag: str, name: str) -> None:
        self.name = name
        self.decoder = StrictBase64Decoder()
        self._file = AtomicFile(root, f"{protocol.TEMP_PREFIX}{temp_tag}-", protocol.TEMP_SUFFIX)
        self.writer = HashingWriter(self._file.file)

    def discard(self) -> None:
        self.writer.abort()
        self._file.discard()

    def publish(self, final_path: str) -> str:
        """Make the upload visible under ``final_path``; return its SHA-256 hex digest."""
        digest = self.writer.close()
        self._file.publish(final_path)
        return digest


# ---------------------------------------------------------------------- LIST, GET, DELETE

def path_of(root: str, name: str) -> str:
    """The path of ``name`` in ``root``; ProtocolError for a name nobody may ask for."""
    protocol.validate_name(name)
    return os.path.join(root, name)


def list_names(root: str) -> list[str]:
    """The regular files a client may ask for, sorted."""
    names = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    protocol.validate_name(entry.name)
                except protocol.ProtocolError:
                    continue       # temporary uploads and names nobody could ask for
                names.append(entry.name)
    except OSError as exc:         # the folder was removed, replaced by a file, made unreadable...
        raise FileError(f"cannot list the served folder: {exc.strerror or exc}") from None
    return sorted(names)


def open_for_get(root: str, name: str) -> BinaryIO:
    """Open a regular file of the folder for reading; FileError says why not."""
    path = path_of(root, name)
    try:
        # O_NOFOLLOW: a symlink planted in the folder must not lead outside it.
        # O_NONBLOCK: opening a FIFO must not hang the worker.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise FileError.from_os(name, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileError(f"{name!r} is not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def delete_file(root: str, name: str) -> None:
    path = path_of(root, name)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise FileError(f"{name!r} is not a regular file")
        os.unlink(path)
    except OSError as exc:
        raise FileError.from_os(name, exc) from None


# ---------------------------------------------------------------------- leftovers

def pid_running(pid: int) -> bool:
    """True while a process ``pid`` exists (signal 0: no /proc needed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_leftovers(folder: str, prefix: str, suffix: str = "") -> Iterator[str]:
    """Paths in ``folder`` named ``prefix`` + OWNER + ``-`` ... + ``suffix`` whose OWNER is not a
    running process's PID (a name without a PID there has no owner to wait for)."""
    pattern = os.path.join(glob.escape(folder), f"{glob.escape(prefix)}*-*{glob.escape(suffix)}")
    for path in glob.glob(pattern, include_hidden=True):
        owner = os.path.basename(path)[len(prefix):].split("-", 1)[0]
        if not (owner.isdigit() and pid_running(int(owner))):
            yield path


def remove_temp_files(root: str, tag: str | None = None) -> int:
    """Remove upload leftovers: this server's (``tag``), or those of servers no longer running."""
    if tag is None:
        paths = list(stale_leftovers(root, protocol.TEMP_PREFIX, protocol.TEMP_SUFFIX))
    else:
        pattern = f"{glob.escape(protocol.TEMP_PREFIX + tag)}-*{glob.escape(protocol.TEMP_SUFFIX)}"
        paths = glob.glob(os.path.join(glob.escape(root), pattern), include_hidden=True)
    removed = 0
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:     # a directory of that name, a read-only folder: serve anyway
            log.warning("cannot remove upload leftover %s: %s; left in place", path, exc.strerror or exc)
    return removed
