"""The run lock: ``_state/LOCK`` keeps two runs off one output.

The lock is a small JSON record (run id, host, boot id, PID namespace, pid, heartbeat time, epoch) changed only
by compare-and-swap:

* taken by an exclusive create: ``O_EXCL`` on local disks, ``If-None-Match: *`` on S3;
* a stale lock (its holder's process is gone on this host, or it missed heartbeats for ``ttl`` seconds) is
  taken over by a *conditional replace* of the exact version that was judged stale (S3 ``If-Match`` on its
  ETag; locally under an ``flock`` on ``_state/.LOCK.guard``), so of two runs taking over at once, one wins;
* the heartbeat is a conditional replace of the holder's own last version: when it fails, the lock was taken
  over, the heartbeat stops and the run is marked as having lost it;
* :meth:`RunLock.check` is the fencing check: the commit calls it right before writing the COMMIT marker, and
  a run that no longer holds the lock (``LockLost``) commits nothing (its staging is discarded later);
* release is a conditional delete of the holder's own version, so it never removes another run's lock;
* fencing: each holder gets an ``epoch`` one above any seen before (the lock it replaced, ``_state/FENCE``
  written by the last holder that recovered the output); the COMMIT markers it writes record it, and
  :meth:`RunLock.fence` (before every publish step) stops a holder whose heartbeat has not been confirmed for
  3/4 of the ttl, so a holder paused past the ttl stops before another run's takeover can be undone;
* "its process is gone" is judged only for a lock taken on this host, in this boot and this PID namespace
  (``/proc/sys/kernel/random/boot_id``, ``/proc/self/ns/pid``): a container's PIDs mean nothing outside it.

Other fsspec stores create with ``pipe_file(mode="create")``, exclusive where the backend implements it (gcsfs:
``ifGenerationMatch=0``, marked experimental there), and replace/delete by read-compare-write, which is not
atomic: on GCS a stale takeover can still race (generation preconditions for replace/delete are not wired:
gcsfs has no public API for them and no GCS emulator was at hand to test them).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from warta.lake.store import Store, fsync_dir

log = logging.getLogger(__name__)
LOCK = "_state/LOCK"
FENCE = "_state/FENCE"  # the epoch of the last holder that finished recovering the output


def _read_id(path: str) -> str | None:
    try:
        if path.startswith("/proc/self/ns/"):
            return os.readlink(path)
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_namespace() -> dict[str, str | None]:
    """Where a PID means this process: host name, boot, PID namespace."""
    return {"host": socket.gethostname(), "boot_id": _read_id("/proc/sys/kernel/random/boot_id"),
            "pid_ns": _read_id("/proc/self/ns/pid")}


class LockedError(RuntimeError):
    """Another live run holds the output's lock."""


class LockLost(LockedError):
    """This run's lock was taken over by another run (this one looked dead): it must not commit."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0 or -1, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """Compare-and-swap on one small object; a version is an opaque value returned by each write.
    This base class: any fsspec store, version = the bytes (create exclusive where the backend is)."""

    def __init__(self, store: Store, rel: str):
        self.store, self.rel, self.fs, self.path = store, rel, store.fs, store.path(rel)

    def read(self) -> tuple[bytes, Any] | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> Any | None:
        """Write ``data`` unless the object exists; its version, or None when it existed."""
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return None
        return data

    def replace(self, data: bytes, version: Any) -> Any | None:
        """Write ``data`` if the object is still at ``version``; the new version, or None."""
        current = self.read()
        if current is None or current[1] != version:
            return None
        self.fs.pipe_file(self.path, data)
        return data

    def remove(self, version: Any) -> bool:
        current = self.read()
        if current is None or current[1] != version:
            return False
        self.fs.rm(self.path)
        return True


class LocalLease(Lease):
    """Local (or NFS) disk: every operation under an exclusive ``flock`` of a guard file that is never deleted."""

    @contextmanager
    def _guard(self) -> Iterator[None]:
        folder = posixpath.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        with open(posixpath.join(folder, f".{posixpath.basename(self.path)}.guard"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> tuple[bytes, Any] | None:
        with self._guard():
            return self._read()

    def _read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> Any | None:
        with self._guard():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(posixpath.dirname(self.path))
            return data

    def replace(self, data: bytes, version: Any) -> Any | None:
        with self._guard():
            current = self._read()
            if current is None or current[1] != version:
                return None
            folder, name = posixpath.split(self.path)
            tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")  # swept by Store.remove_temp_files
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            fsync_dir(folder)
            return data

    def remove(self, version: Any) -> bool:
        with self._guard():
            current = self._read()
            if current is None or current[1] != version:
                return False
            os.remove(self.path)
            return True


class S3Lease(Lease):
    """S3 conditional requests: version = ETag; ``If-None-Match: *`` to create, ``If-Match`` to replace/delete.
    A store that answers NotImplemented to a condition (some S3-compatible ones) gets read-compare-write."""

    def __init__(self, store: Store, rel: str):
        super().__init__(store, rel)
        self.bucket, self.key, _ = self.fs.split_path(self.path)
        self.conditions = True

    def _call(self, method: str, **kw) -> dict | None:
        """The response; None when the condition failed (or lost to a concurrent conditional write)."""
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kw)
        except FileNotFoundError:
            return None
        except OSError as e:
            code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code")
            if isinstance(e, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            if code == "NotImplemented" and self.conditions and {"IfMatch", "IfNoneMatch"} & kw.keys():
                log.warning("%s has no conditional writes: its lock falls back to read-compare-write", self.store.url)
                self.conditions = False
                raise _Unsupported from None
            raise

    def _write(self, method: str, condition: dict[str, str], unchanged, **kw) -> dict | None:
        if self.conditions:
            try:
                return self._call(method, **kw, **condition)
            except _Unsupported:
                pass
        return self._call(method, **kw) if unchanged(self.read()) else None

    def read(self) -> tuple[bytes, Any] | None:
        # ETag first, then the body: if the object changes in between, the ETag is the older one and any
        # conditional write made with it fails, so a decision is never applied to a newer lock
        head = self._call("head_object")
        if head is None:
            return None
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, head["ETag"]

    def create(self, data: bytes) -> Any | None:
        resp = self._write("put_object", {"IfNoneMatch": "*"}, lambda held: held is None, Body=data)
        return resp and resp["ETag"]

    def replace(self, data: bytes, version: Any) -> Any | None:
        resp = self._write("put_object", {"IfMatch": version}, lambda held: held and held[1] == version, Body=data)
        return resp and resp["ETag"]

    def remove(self, version: Any) -> bool:
        return self._write("delete_object", {"IfMatch": version}, lambda held: held and held[1] == version) is not None


class _Unsupported(Exception):
    """The store rejected a conditional request as not implemented."""


def lease_for(store: Store, rel: str) -> Lease:
    if store.is_local:
        return LocalLease(store, rel)
    if hasattr(store.fs, "call_s3"):
        return S3Lease(store, rel)
    return Lease(store, rel)


class RunLock:
    """``_state/LOCK`` held by one run; refreshed by a heartbeat thread while held (see the module doc)."""

    def __init__(self, store: Store, run_id: str, ttl: float = 3600.0):
        self.store, self.run_id, self.ttl = store, run_id, ttl
        self.lease = lease_for(store, LOCK)
        self._version: Any = None
        self._mutex = threading.Lock()  # heartbeat vs check/release
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.epoch = 0
        self._confirmed = 0.0  # time.monotonic() of the last write of the lock known to have landed

    def _record(self) -> bytes:
        return json.dumps({"run_id": self.run_id, **process_namespace(), "pid": os.getpid(),
                           "heartbeat": time.time(), "epoch": self.epoch}).encode()

    def _stale(self, held: dict[str, Any]) -> bool:
        here = process_namespace()
        # a record without boot_id/pid_ns was written by an older warta: its host is all it tells
        same_space = held.get("host") == here["host"] and all(
            held.get(k, here[k]) == here[k] for k in ("boot_id", "pid_ns"))
        if same_space and not _pid_alive(_int(held.get("pid"), -1)):
            return True
        return time.time() - _float(held.get("heartbeat")) > self.ttl

    def _next_epoch(self, held: dict[str, Any] | None) -> int:
        try:
            fenced = _int(json.loads(self.store.read_bytes(FENCE)).get("epoch"), 0)
        except (FileNotFoundError, ValueError, AttributeError):
            fenced = 0
        return max(fenced, _int((held or {}).get("epoch"), 0)) + 1

    def acquire(self) -> None:
        for _ in range(5):
            held = self.lease.read()
            record = _parse(held[0]) if held is not None else None
            self.epoch = self._next_epoch(record)
            started = time.monotonic()
            data = self._record()
            if held is None:
                version = self.lease.create(data)
            else:
                if not self._stale(record):
                    raise LockedError(
                        f"output is in use by run {record.get('run_id')} (host {record.get('host')}, pid "
                        f"{record.get('pid')}); wait for it to finish, or remove "
                        f"{self.store.full_url(LOCK)} if you are sure it is dead")
                log.warning("taking over a stale lock from run %s", record.get("run_id"))
                version = self.lease.replace(data, held[1])
            # read back: a store that ignored the condition shows the other writer's record here
            if version is not None and (self.lease.read() or (None,))[0] == data:
                self._version, self._confirmed = version, started
                self._thread = threading.Thread(target=self._beat, name="warta-lock", daemon=True)
                self._thread.start()
                return
        raise LockedError("could not take the output's lock: another run is starting at the same moment")

    def _beat(self) -> None:
        while not self._stop.wait(max(0.1, self.ttl / 4)):
            with self._mutex:
                started = time.monotonic()
                try:
                    version = self.lease.replace(self._record(), self._version)
                except Exception:  # a missed heartbeat only makes the lock look older
                    log.warning("lock heartbeat failed", exc_info=True)
                    continue
                if version is None:
                    self._lost.set()
                    log.error("run %s lost the output's lock to another run: it will not commit", self.run_id)
                    return
                self._version, self._confirmed = version, started

    def fence(self) -> None:
        """Cheap fencing check before each publish step: raises :class:`LockLost` once the heartbeat has lost
        the lock, or has not confirmed it for 3/4 of the ttl (this run may have been paused long enough for
        another to judge it dead). Stopping after the commit point is safe: the next holder replays it."""
        if self._lost.is_set():
            raise LockLost(f"run {self.run_id} lost {self.store.full_url(LOCK)}: it stops publishing")
        unconfirmed = time.monotonic() - self._confirmed
        if unconfirmed > self.ttl * 0.75:
            self._lost.set()
            raise LockLost(f"run {self.run_id} has not confirmed {self.store.full_url(LOCK)} for "
                           f"{unconfirmed:.0f}s (ttl {self.ttl:g}s): it stops publishing; the next run completes it")

    def recovered(self) -> None:
        """Record that this holder (its epoch) settled every earlier run: markers older than it are zombies."""
        self.fence()
        self.store.write_json(FENCE, {"epoch": self.epoch, "run_id": self.run_id})

    def check(self) -> None:
        """Fencing check before the commit point: raises :class:`LockLost` unless this run still holds the lock."""
        with self._mutex:
            held = self.lease.read()
            if self._lost.is_set() or held is None or held[1] != self._version:
                self._lost.set()
                holder = _parse(held[0]).get("run_id") if held else None
                raise LockLost(f"run {self.run_id} no longer holds {self.store.full_url(LOCK)} (now held by "
                               f"{holder or 'nobody'}): nothing committed; its work is redone by the next run")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:  # a heartbeat in flight must not re-create the lock after removal
            self._thread.join(timeout=30)
        with self._mutex:
            if self._version is not None and not self._lost.is_set():
                self.lease.remove(self._version)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _parse(data: bytes) -> dict[str, Any]:
    """The lock record; an unreadable one counts as a lock without heartbeat (stale)."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}
