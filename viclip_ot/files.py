"""Writing files so that a reader never sees half of one: results, reports, caches, embeddings."""

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, durable=False):
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on failure it is
    removed, so that readers never see a half-written file. The caller creates the file, so it gets the mode the
    user's umask gives. `durable`: the file and then the folder's entry are flushed to disk ([`fsync`]), so that
    after a power loss `path` is the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        yield temporary
        if durable:
            fsync(temporary)
        os.replace(temporary, path)
        if durable:
            fsync(path.parent)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def fsync(path):
    """Flush the file or folder `path` to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path, text):
    """Write `text` (UTF-8) to `path` through [`atomic_write`]."""
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
