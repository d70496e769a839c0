"""One writer per output folder: a kernel lock, held for the whole run.

A plain ``rwmaps compute`` takes an exclusive lock on ``rwmaps.lock`` in the output folder;
the parts of a job array (``--num-parts N --part-id I``) each take a shared lock on it and an
exclusive lock on their own ``rwmaps.parts/rwmaps.part-I-of-N.lock``.  So two plain runs, a plain run and
a part, or two copies of one part never write into one folder at once; different parts do.

The locks are POSIX record locks (``fcntl.lockf``): the kernel releases them when the
process ends, however it ends (a SIGKILL leaves nothing that blocks a rerun), and they work
across the nodes of an NFS share (NFSv4, or NFSv3 with its lock manager).  Each lock file
holds its writer's pid, host and start time, to name it in a refusal.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageError

LOCK_NAME = "rwmaps.lock"
# The files of a job array's parts (their locks, manifests and journals) live in their own
# folder, so a reader learns which parts exist by listing it: never the output folder,
# which may hold 100,000 maps.
PARTS_FOLDER = "rwmaps.parts"


def part_file_name(part: int, parts: int, suffix: str) -> str:
    """``rwmaps.parts/rwmaps.part-3-of-12<suffix>``: a file of one part of a job array
    (its lock, manifest or journal), relative to the output folder; the part id is
    zero-padded to the width of the largest, so the names sort in part order."""
    width = len(str(parts - 1))
    return f"{PARTS_FOLDER}/rwmaps.part-{part:0{width}d}-of-{parts}{suffix}"


def part_lock_name(part: int, parts: int) -> str:
    return part_file_name(part, parts, ".lock")


@contextmanager
def folder_lock(folder: Path, part: tuple[int, int] | None = None) -> Iterator[bool]:
    """Hold the output folder's lock for the body; yields whether it is exclusive (a plain run).

    Raises
    ------
    UsageError
        Another run holds a lock that excludes this one; the message names it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    main = open(folder / LOCK_NAME, "a+")
    opened = [main]
    try:
        if part is None:
            if not _try(main, fcntl.LOCK_EX):
                raise UsageError(_refusal(folder, "another rwmaps compute is writing into it"))
            _write_holder(main, None)
        else:
            if not _try(main, fcntl.LOCK_SH):
                raise UsageError(_refusal(folder, "a plain rwmaps compute (not a part) is writing into it"))
            (folder / PARTS_FOLDER).mkdir(exist_ok=True)
            own = open(folder / part_lock_name(*part), "a+")
            opened.append(own)
            if not _try(own, fcntl.LOCK_EX):
                raise UsageError(_refusal(folder, f"part {part[0]} of {part[1]} is already running",
                                          folder / part_lock_name(*part)))
            _write_holder(own, part)
        yield part is None
    finally:
        for file in reversed(opened):  # closing releases the locks
            file.close()


def _try(file, kind: int) -> bool:
    try:
        fcntl.lockf(file, kind | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: someone else holds it
        return False
    except OSError as error:  # ENOLCK: NFS mounted with nolock, or NFSv3 without its lock manager
        raise UsageError(f"{Path(file.name).parent}: the file system refuses locks ({error.strerror}); "
                         "rwmaps needs them to keep writers apart (mount NFS with locking)") from None
    return True


def _write_holder(file, part: tuple[int, int] | None) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "part": list(part) if part else None}
    file.seek(0)
    file.truncate()
    file.write(json.dumps(holder) + "\n")
    file.flush()


def _refusal(folder: Path, what: str, lock_file: Path | None = None) -> str:
    holders = [_holder(lock_file)] if lock_file else _live_holders(folder)
    named = "; ".join(h for h in holders if h) or "its writer could not be named"
    return (f"{folder}: {what} ({named}). Wait for it to finish, or use another `output_dir`; parts of one "
            "job array share a folder with `num_parts` and `part_id`")


def _holder(path: Path) -> str | None:
    try:
        info = json.loads(path.read_text())
        part = f"part {info['part'][0]} of {info['part'][1]}, " if info.get("part") else ""
        return f"{part}pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _live_holders(folder: Path) -> list[str | None]:
    """The writers that hold locks in ``folder`` now: the plain run's, or the running parts'."""
    live = [path for path in sorted((folder / PARTS_FOLDER).glob("rwmaps.part-*-of-*.lock")) if _is_held(path)]
    return [_holder(path) for path in live] or [_holder(folder / LOCK_NAME)]


def _is_held(path: Path) -> bool:
    """Whether another process holds ``path``'s lock (tried on a separate file: this process
    holds no lock on part files, so closing it releases nothing of ours)."""
    try:
        with open(path, "a+") as file:
            if _try(file, fcntl.LOCK_EX):
                fcntl.lockf(file, fcntl.LOCK_UN)
                return False
            return True
    except OSError:
        return False
