"""All-or-nothing writes: files and folders are written beside their target and moved into place.

A reader (or a later run) sees the old state or the complete new one, never a half-written entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def staging_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out_dir`` to write into; it is removed on exit, so whatever
    the caller did not move into place (see :func:`replace_folder`) never becomes visible."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_through(folder: str | Path) -> None:
    """Put every file of ``folder`` on disk (``fdatasync``) and out of the page cache (``POSIX_FADV_DONTNEED``):
    for a folder nobody reads back soon, such as a cohort's case folder. Moved into place after this, the folder's
    files are on disk, not only visible to readers; and a run that writes many gigabytes does not fill the page
    cache with them, so the next case's files take the pages this one's gave back (fresh pages cost the kernel
    more: ``benchmarks/README.md``). Where the system has no ``posix_fadvise``, only the first."""
    for path in Path(folder).iterdir():
        fd = os.open(path, os.O_RDWR)  # Windows flushes only a file opened for writing
        try:
            (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def replace_folder(staged: Path, out_dir: str | Path) -> None:
    """Put the finished ``staged`` folder in the place of ``out_dir`` (an older one is removed first)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staged, out_dir)
