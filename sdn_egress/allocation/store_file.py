"""The standalone store: ``allocation.json`` and ``errors.json`` in a status directory.

One file holds the whole document (the per-object stores keep the same
parts, :mod:`.codec`, one object each): the file is local, written
atomically, and read by agents on the same host, so its size costs nothing
on a wire.  Planned moves are ``moves.json`` beside it.
"""
from __future__ import annotations

import json
import os

from sdn_egress.allocation.types import Allocation
from sdn_egress.fileio import write_atomic
from sdn_egress.fileio import write_json_atomic


class FileAllocationStore:
    """Writes are atomic (temporary file + rename) and skipped when the
    content is unchanged, so readers watching the files see only real
    changes.  Both an :class:`~.store.AllocationStore` and an
    :class:`~.store.AllocationReader`."""

    ALLOCATION = "allocation.json"
    ERRORS = "errors.json"

    def __init__(self, path: str):
        self.path = str(path)
        self._seen: tuple | None = None  # (mtime, size, inode) of allocation.json at the last changed()

    @property
    def where(self) -> str:
        return self.path

    @property
    def status_dir(self) -> str:
        return self.path

    @property
    def synced(self) -> bool:
        return True

    @property
    def allocation_file(self) -> str:
        return os.path.join(self.path, self.ALLOCATION)

    @property
    def errors_file(self) -> str:
        return os.path.join(self.path, self.ERRORS)

    def load(self) -> Allocation | None:
        """The saved allocation; None when there is none yet.  Raises
        ValueError naming the file and the field when it cannot be read."""
        try:
            with open(self.allocation_file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Allocation.from_json(data)
        except ValueError as exc:
            raise ValueError(f"{self.allocation_file}: {exc}") from None

    def set_aside(self) -> str:
        """Move an unreadable allocation file aside; returns where it went."""
        bad = self.allocation_file + ".bad"
        os.replace(self.allocation_file, bad)
        return bad

    def save(self, alloc: Allocation) -> bool:
        """Write both files; True when either changed."""
        os.makedirs(self.path, exist_ok=True)
        errors = json.dumps([e.to_dict() for e in alloc.errors], indent=2, sort_keys=True) + "\n"
        changed = write_atomic(self.errors_file, errors.encode(), only_if_changed=True)
        return write_atomic(self.allocation_file, alloc.to_json().encode(), only_if_changed=True) or changed

    def changed(self) -> bool:
        """True once after every change of ``allocation.json`` (and at the first call)."""
        try:
            st = os.stat(self.allocation_file)
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._seen = seen
            return True
        return False

    # -- planned moves (moves.json) --------------------------------------------------------------
    def read_moves(self) -> dict[str, str]:
        return read_moves(self.path)

    def request_move(self, eip: str, node: str) -> None:
        request_move(self.path, eip, node)

    def finish_moves(self, done: set[str]) -> None:
        finish_moves(self.path, done)


# -- planned moves (``sdn-egress move``): STATUS/moves.json, EIP -> node -------------------------

MOVES = "moves.json"


def request_move(status_dir: str, eip: str, node: str) -> None:
    """Ask for a planned move of ``eip`` to ``node`` (``sdn-egress move``)."""
    path = os.path.join(status_dir, MOVES)
    moves = read_moves(status_dir)
    moves[eip] = node
    write_json_atomic(path, moves, sort_keys=True)


def read_moves(status_dir: str) -> dict[str, str]:
    try:
        with open(os.path.join(status_dir, MOVES)) as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def finish_moves(status_dir: str, done: set[str]) -> None:
    moves = {k: v for k, v in read_moves(status_dir).items() if k not in done}
    path = os.path.join(status_dir, MOVES)
    if moves:
        write_json_atomic(path, moves, sort_keys=True)
    elif os.path.exists(path):
        os.unlink(path)
