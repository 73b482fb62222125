"""Atomic file writes: a reader sees the old file or the whole new one, never a torn write.

One helper with two switches, because the callers differ in what they must survive:
- ``durable=True`` fsyncs the data and the directory, so the new content survives a power cut
  (node credentials, CA key material). It costs milliseconds per write.
- ``durable=False`` only survives a process crash (task records, status files, peers files),
  which is what agents and the dev cluster need on their hot paths.
``mode`` is applied when the temporary file is created, so a private file is never readable by
others, not even for an instant.
"""

from __future__ import annotations

import os

# Only `os` is imported (no pathlib, no contextlib): the task shim writes its records with this
# on its start path, where every import is milliseconds before the task runs.


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o644,
    durable: bool = False,
    mkdir: bool = False,
) -> None:
    """Replace ``path`` with ``data`` in one rename.

    The temporary file sits beside ``path`` (same filesystem, so the rename is atomic) and is
    named after this process, so two writers never share one. On any error it is removed.
    """
    p = os.fspath(path)
    parent, name = os.path.split(p)
    if mkdir:
        os.makedirs(parent or ".", exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp{os.getpid()}")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask narrowed the mode given to open()
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:  # noqa: SIM105 - see the imports
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(parent or ".")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the renames done in ``directory`` durable (its entries, not the files' data)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
