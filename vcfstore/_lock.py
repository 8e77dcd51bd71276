"""One writer at a time: an exclusive lock file beside (or inside) what is being written.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS
v3+, unlike ``flock``/``fcntl`` locks, which Lustre and many NFS set-ups ignore or fake). It
records who holds it (host, pid, start time, what). A lock whose holder is a dead process on
this host is stale and taken over; a lock held from another host is never broken
automatically: the error says which file to remove if that process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from vcfstore.errors import VcfstoreError


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """An exclusive lock file, as a context manager.

    Parameters
    ----------
    path : path
        The lock file.
    what : str
        What the holder is doing (shown to a second writer).
    error : type of VcfstoreError
        Raised when another live writer holds the lock (after ``wait`` seconds).
    wait : float
        How long to wait for a live holder to release the lock: for locks held a moment (a
        manifest update), so that processes updating together take turns instead of failing.
    """

    def __init__(self, path: Path, what: str, error: type[VcfstoreError], *, wait: float = 0.0) -> None:
        self.path, self.what, self.error, self.wait = Path(path), what, error, wait
        self._held = False

    def acquire(self) -> None:
        record = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "what": self.what}
        ).encode()
        deadline, takeovers = time.monotonic() + self.wait, 0
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if takeovers < 3 and self._take_over_stale():
                    takeovers += 1
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise self.error(self._held_message()) from None
            with os.fdopen(fd, "wb") as f:
                f.write(record)
            self._held = True
            return

    def _holder(self) -> dict[str, object] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _take_over_stale(self) -> bool:
        """Remove the lock if its holder is a dead process on this host (or it is unreadable and old)."""
        holder = self._holder()
        if holder is None:
            try:  # being written right now, or damaged: only an old one is taken over
                if time.time() - self.path.stat().st_mtime < 60:
                    return False
            except FileNotFoundError:
                return True
        elif holder.get("host") != socket.gethostname() or process_alive(int(holder.get("pid", 0))):  # type: ignore[call-overload]
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def _held_message(self) -> str:
        holder = self._holder() or {}
        since = holder.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if isinstance(since, float) else "?"
        return (
            f"{self.path.parent / self.path.name.removesuffix('.lock').lstrip('.')} is being written by another "
            f"process (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('what', '?')}, "
            f"since {when}); wait for it, or remove {self.path} if that process is gone"
        )

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
