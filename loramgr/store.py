"""Content-addressed artifact store: ``store/objects/<aa>/<sha256>``.

Ingesting reads the source once: the main thread copies while a second thread hashes the same
buffers (hashlib releases the GIL), so register costs about one ``cp`` rather than ``sha256sum + cp``.
Writes go to ``store/tmp/`` (fsync, then an atomic rename), so a crash never leaves a partial object
under ``objects/`` and ``gc`` never collects a file that is still being written. On Linux each written
chunk is handed to the disk at once (``sync_file_range``), so the closing fsync finds little left to
write: the disk works while the source is still being read and hashed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from loramgr.errors import IntegrityError, InvalidInputError

CHUNK = 8 * 1024 * 1024
_HEX = set("0123456789abcdef")
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start write-out of dirty pages in the range, do not wait


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)`` (glibc; not in the ``os`` module), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class _Writeback:
    """Asks the kernel to start writing each range of ``fd`` to disk as soon as it is written (a hint:
    the fsync that follows is what makes the bytes durable; failures are ignored). The calls run on a
    thread of their own, as ``sync_file_range`` blocks while the device's queue is full and the copy
    must not wait for the disk (the fsync does); ranges that queued up meanwhile go in one call."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fn = _sync_file_range() if fd >= 0 else None
        self.todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        if self.fn is not None:
            self.thread = threading.Thread(target=self._run, name="loramgr-writeback", daemon=True)
            self.thread.start()

    def add(self, offset: int, length: int) -> None:
        if self.thread is not None:
            self.todo.put((offset, length))

    def close(self) -> None:
        if self.thread is not None:
            self.todo.put(None)
            self.thread.join()

    def _run(self) -> None:
        assert self.fn is not None
        done = False
        while not done and (item := self.todo.get()) is not None:
            begin, end = item[0], item[0] + item[1]
            while not self.todo.empty():  # coalesce what arrived while the last call blocked
                nxt = self.todo.get()
                if nxt is None:
                    done = True
                    break
                end = max(end, nxt[0] + nxt[1])
            self.fn(self.fd, begin, end - begin, _SYNC_FILE_RANGE_WRITE)  # ctypes releases the GIL


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    size: int
    path: Path
    created: bool  # False when identical bytes were already in the store


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _hash_copy(
    src: BinaryIO, dst: BinaryIO | None, buffers: int = 4, inspect: Callable[[memoryview], None] | None = None
) -> tuple[str, int]:
    """Hash ``src`` (and copy it to ``dst``) in one pass, hashing on a second thread. ``inspect`` sees
    every chunk in order on that thread too (register checks tensor values there), and an exception it
    raises stops the copy.

    A fixed ring of preallocated buffers (``readinto``) bounds memory at ``buffers x CHUNK`` whatever
    the file size or how far the hasher lags, and avoids allocator churn of large ``bytes``."""
    h = hashlib.sha256()
    ring = [memoryview(bytearray(CHUNK)) for _ in range(buffers)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(buffers):
        free.put(i)
    full: queue.Queue[tuple[int, int] | None] = queue.Queue()
    errors: list[BaseException] = []

    def hasher() -> None:
        try:
            while (item := full.get()) is not None:
                i, n = item
                h.update(ring[i][:n])  # releases the GIL: hashing overlaps reading and writing
                if inspect is not None:
                    inspect(ring[i][:n])
                free.put(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    try:
        fd = dst.fileno() if dst is not None else -1
    except (OSError, ValueError):  # not a file (io.UnsupportedOperation is both)
        fd = -1
    t = threading.Thread(target=hasher, name="loramgr-sha256", daemon=True)
    t.start()
    writeback = _Writeback(fd)
    size = 0
    try:
        while not errors:
            i = free.get()
            n = src.readinto(ring[i])  # type: ignore[attr-defined]
            if not n:
                free.put(i)
                break
            if dst is not None:
                out = ring[i][:n]
                while out:  # raw (unbuffered) writes may be partial
                    out = out[dst.write(out) :]
                writeback.add(size, n)
            size += n
            full.put((i, n))
    finally:
        full.put(None)
        t.join()
        writeback.close()
    if errors:
        raise errors[0]
    return h.hexdigest(), size


class Store:
    """The object store below ``root``; every public method is safe against concurrent processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"

    def ensure(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise IntegrityError(f"sha256 {sha256!r}", "is not a lowercase hex digest")
        return self.objects / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def _tmp_path(self, tag: str) -> Path:
        self.ensure()
        return self.tmp / f"{tag}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"

    def _publish(self, tmp: Path, sha: str, size: int) -> StoredObject:
        dest = self.path_for(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
            return StoredObject(sha, size, dest, created=False)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return StoredObject(sha, size, dest, created=True)

    def ingest(
        self, src: str | os.PathLike[str], *, link: bool = False, inspect: Callable[[memoryview], None] | None = None
    ) -> StoredObject:
        """Copy (or hard-link) ``src`` into the store under its sha256, showing every chunk to
        ``inspect`` in the same single read; nothing is left in the store when it raises.

        With ``link`` the store shares the source's inode: no bytes are copied, but editing the
        source later corrupts the store copy (``loramgr fsck`` detects it).
        """
        src = Path(src)
        tmp = self._tmp_path("ingest")
        try:
            if link:
                try:
                    os.link(src, tmp)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise InvalidInputError(
                            str(src),
                            f"cannot hard-link into the store ({e.strerror})",
                            hint="the store must be on the same filesystem; drop --link",
                        ) from None
                    raise
                with open(tmp, "rb", buffering=0) as f:
                    sha, size = _hash_copy(f, None, inspect=inspect)
            else:
                with open(src, "rb", buffering=0) as fin, open(tmp, "wb", buffering=0) as fout:
                    sha, size = _hash_copy(fin, fout, inspect=inspect)
                    os.fsync(fout.fileno())
            return self._publish(tmp, sha, size)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> StoredObject:
        """Store a small in-memory blob (configs, encodings) the same atomic way."""
        sha = hashlib.sha256(data).hexdigest()
        if self.has(sha):
            return StoredObject(sha, len(data), self.path_for(sha), created=False)
        tmp = self._tmp_path("put")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(tmp, sha, len(data))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def guard(self, shared: bool = True) -> Iterator[None]:
        """Writers (register) hold this shared from copy to committed row; ``gc`` holds it exclusive,
        so it never collects an object whose row is about to be written."""
        self.ensure()
        with open(self.root / ".gc.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def remove(self, sha256: str) -> int:
        p = self.path_for(sha256)
        try:
            n = p.stat().st_size
            p.unlink()
            return n
        except FileNotFoundError:
            return 0

    def verify(self, sha256: str) -> None:
        p = self.path_for(sha256)
        if not p.is_file():
            raise IntegrityError(str(p), "store object is missing")
        got = sha256_file(p)
        if got != sha256:
            raise IntegrityError(str(p), f"content hash is {got[:12]}…, expected {sha256[:12]}…")

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    yield f.name, f


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a small file so that readers see either the old or the new content, never a part."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
