"""Writing files so that a reader never sees half of one: results, reports, caches, embeddings."""

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on failure it is
    removed, so that readers never see a half-written file. The caller creates the file, so it gets the mode the
    user's umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(path, text):
    """Write `text` (UTF-8) to `path` through [`atomic_write`]."""
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
