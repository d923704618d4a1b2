"""Atomic writes: a file appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import BPNNInputError

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a file for writing so that it appears complete or not at all.

    The data go to a temporary file in the same directory as ``path``; when
    the ``with`` block ends without an exception the temporary file is
    flushed, fsync'ed and renamed onto ``path`` with :func:`os.replace`
    (atomic on POSIX and Windows).  If the block raises, the temporary file
    is removed and ``path`` is left untouched.

    Args:
        path: destination file.
        mode: ``"w"`` (text, the default) or ``"wb"`` (binary).
        encoding: text encoding (text mode only).
        newline: passed to :func:`open` (text mode only); use ``""`` for
            the :mod:`csv` module.

    Yields:
        The open file object of the temporary file.

    Raises:
        BPNNInputError: if ``mode`` is not a write mode, the destination
            directory does not exist or the temporary file cannot be created.

    Example:
        >>> with atomic_write("energies.csv", newline="") as fh:  # doctest: +SKIP
        ...     fh.write("file,energy_ev\\n")
    """
    if mode not in ("w", "wt", "wb"):
        raise BPNNInputError(f"atomic_write: mode must be 'w', 'wt' or 'wb', not {mode!r}")
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise BPNNInputError(f"cannot write {path}: directory {parent} does not exist")
    if path.is_dir():
        raise BPNNInputError(f"cannot write {path}: it is a directory")
    tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # 0o666 filtered by the umask: the same permissions as open() gives.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise BPNNInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    binary = "b" in mode
    try:
        if binary:
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
