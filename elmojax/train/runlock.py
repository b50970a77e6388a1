"""One run per run directory: an exclusive lock on ``SAVE_DIR/.lock`` held while ``train`` runs.

The lock is ``fcntl.flock`` on the file, so the operating system drops it when its holder exits or
is killed (``kill -9``, a crashed node on a local disk): a stale lock never blocks a resume. The
file also holds the owner (host, pid, start time) for the message a second run prints.

Some network filesystems refuse ``flock`` (``ENOLCK``, ``EOPNOTSUPP``). There the owner file alone
is the lock: an owner on this host counts only while its pid is alive; an owner on another host
cannot be checked from here, so it blocks until that run ends (a clean end empties the file) or a
user removes the file. Two runs started within the same instant on such a filesystem can both pass.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from elmojax.errors import ElmoError

try:
    import fcntl
except ImportError:  # Windows: no flock, the owner file alone decides
    fcntl = None  # type: ignore[assignment]

#: name of the lock file inside a run directory
LOCK_NAME = ".lock"

#: errors with which filesystems say they do not support flock
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _owner_text(owner: dict) -> str:
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {owner.get('started', '?')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """The exclusive lock of one run directory; :meth:`release` (or leaving the ``with``) frees it.

    Raises :class:`~elmojax.errors.ElmoError` naming the directory and the running owner when
    another process holds it.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.flock = fcntl is not None
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _acquire(self) -> None:
        if self.flock:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse(self._read_owner())
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
                self.flock = False
                print(
                    f"warning: {self.path}: the filesystem does not support flock ({e.strerror}); "
                    "guarding the run directory by the owner's host and pid instead",
                    file=sys.stderr,
                )
        if not self.flock:
            owner = self._read_owner()
            if owner and not self._owner_gone(owner):
                self._refuse(owner, flock=False)
        self._write_owner()

    def _owner_gone(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell from here
        pid = owner.get("pid")
        return not isinstance(pid, int) or pid == os.getpid() or not _pid_alive(pid)

    def _refuse(self, owner: dict, flock: bool = True) -> None:
        how = (
            "wait for it to end or stop it"
            if flock
            else f"wait for it to end or stop it; if it no longer runs, delete {self.path}"
        )
        raise ElmoError(
            f"{self.directory}: run directory is in use by another training run ({_owner_text(owner)}); "
            f"{how}, or use another --save-dir"
        )

    def _read_owner(self) -> dict:
        os.lseek(self._fd, 0, os.SEEK_SET)
        raw = os.read(self._fd, 4096)
        try:
            owner = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):  # empty (a clean end) or cut by a kill
            return {}
        return owner if isinstance(owner, dict) else {}

    def _write_owner(self) -> None:
        owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(owner).encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Empty the owner file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # the owner file alone is the lock without flock
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
