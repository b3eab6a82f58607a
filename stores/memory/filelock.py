"""Advisory file locks between processes (flock), shared or exclusive."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold `path` locked while the block runs; released when it ends or the process dies.

    flock locks belong to an open file description, so two threads of one process that each
    take the lock also exclude each other. Where the lock file cannot be created (a read-only
    directory), a shared lock is skipped: nothing can write there anyway.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: writes stay atomic, but concurrent writers are unguarded
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
