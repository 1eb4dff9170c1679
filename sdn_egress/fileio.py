"""One way to write a file that readers see whole or not at all (status, reports, the allocation)."""

from __future__ import annotations

import json
import os
import tempfile


def write_atomic(path: str, data: bytes | str, *, only_if_changed: bool = False, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync it, rename it
    over ``path``. A reader sees the old content or the new one, never a torn file, also when the
    writer dies half way; a crash right after the rename keeps the new content (fsync before
    rename). With ``only_if_changed`` an identical file is left alone and False is returned.
    The directory is created when missing."""
    if isinstance(data, str):
        data = data.encode()
    if only_if_changed:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
        except FileNotFoundError:
            pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True


def write_json_atomic(path: str, value, *, indent: int | None = 1, sort_keys: bool = False) -> None:
    write_atomic(path, json.dumps(value, indent=indent, sort_keys=sort_keys))
