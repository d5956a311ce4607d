"""One training run per folder: a lock file holding the owner's host and process id; a stale lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".modalsynth.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(out):` holds OUT/.modalsynth.lock for this process; a second live run into OUT is a `UserError`."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                half_written = owner is None and time.time() - self._mtime() > 10  # its writer died while writing it
                dead = owner is not None and owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1)))
                if half_written or dead:
                    self.path.unlink(missing_ok=True)  # stale: its process is gone (killed); take it over
                    continue
                who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
                raise UserError(
                    f"{self.path.parent}: another training run ({who}) is writing this folder; wait for it, choose "
                    f"another --out, or delete {self.path} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            # the folder is ours now: a temporary file left in it was a killed run's half-written checkpoint
            # (io.atomic_write's `.tmp-*`; SIGKILL gives no chance to clean up), never a file anyone will finish
            for stale in self.path.parent.glob(".tmp-*"):
                stale.unlink(missing_ok=True)
            return
        raise UserError(f"{self.path}: could not take over the stale lock; delete it and run again")

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
