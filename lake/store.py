"""The lake's storage: any fsspec URL, with writes that readers never see half-done.

Object stores make each PUT visible atomically; on a local (or other POSIX-like) filesystem we write
to a hidden temporary name in the same directory and rename it into place. Durable writes (JSON: COMMIT
markers and state; copies: what a commit publishes; compacted files) also fsync the file before the rename and
the directory after it, so a power loss leaves the old file or the whole new one, never an empty marker.
Staged worker output is not fsynced: it is redone when lost, as the marker that would name it was not written.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Store:
    """A root URL plus fsspec storage options; paths below are relative to the root, '/'-separated."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") or "/"
        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self._fs = fs
        self.root = root.rstrip("/") or "/"

    def __getstate__(self) -> dict[str, Any]:  # picklable for Beam: the filesystem is rebuilt on load
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.storage_options = state["url"], state["storage_options"]
        self.__post_init__()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def full_url(self, rel: str) -> str:
        return self.url + "/" + rel if rel else self.url

    # -- reading ------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            return default

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of files below ``rel`` (recursive), sorted; [] when absent."""
        base = self.path(rel)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root.rstrip("/") + "/" if self.root != "/" else "/"
        out = []
        for p in found:
            p = p if p.startswith("/") or not prefix.startswith("/") else "/" + p.lstrip("/")
            rel_path = p[len(prefix):] if p.startswith(prefix) else p
            name = posixpath.basename(rel_path)
            if name.endswith(suffix) and not name.startswith("."):
                out.append(rel_path)
        return sorted(out)

    def read_table(self, rel: str) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.read_table(fh)

    # -- writing ------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, durable: bool = False) -> None:
        """Write so that readers see the old file or the whole new one, never a part; ``durable``: and so
        that it survives a power loss once this returns (local disks; object stores are durable per PUT)."""
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.is_local:
            made = not os.path.isdir(parent)
            self.fs.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            if durable:
                fsync_dir(parent)
                if made:  # the new folder's own entry
                    fsync_dir(posixpath.dirname(parent))
        else:
            self.fs.pipe_file(target, data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode("utf-8"), durable=True)

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def copy(self, src_rel: str, dst_rel: str) -> None:
        """Idempotent, atomic-for-readers copy (used by commits; reruns overwrite with the same bytes)."""
        self.write_bytes(dst_rel, self.read_bytes(src_rel), durable=True)

    def remove(self, rel: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass

    def remove_temp_files(self) -> int:
        """Delete temporary files a killed writer left behind (local filesystems only)."""
        if not self.is_local:
            return 0
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return 0
        stale = [p for p in found if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
        for p in stale:
            self.fs.rm(p)
        return len(stale)

    def check_writable(self) -> None:
        """Raise OSError (or the backend's error) when the root cannot be written."""
        probe = f"_state/.probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"ok")
        self.remove(probe)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename, a new file) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
