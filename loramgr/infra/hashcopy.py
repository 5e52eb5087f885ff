"""Hash a file while copying it, in one pass: the store's ingest engine.

The kernel copies (``copy_file_range``: no trip through user memory, a reflink on copy-on-write
filesystems) while a second thread hashes the copied bytes read back from the page cache (hashlib
and numpy release the GIL), so the name is the hash of exactly the bytes stored. Where the kernel
cannot copy (a pipe, another filesystem on old kernels, procfs) a read/write loop over a ring of
buffers does, hashing the buffers it writes. On Linux each written range is handed to the disk at
once (``sync_file_range``), so the caller's closing fsync finds little left to write.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 8 * 1024 * 1024
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


class _Digest:
    """sha256 (and ``inspect``) over consecutive chunks on a thread of its own: hashlib and numpy
    release the GIL, so hashing overlaps the copy. ``fetch`` turns a queued item into the chunk's bytes,
    ``done`` hands the item back once they are consumed; an exception is kept for the caller's thread
    and the rest of the queue is drained (so a producer waiting on ``done`` is never stranded)."""

    def __init__(
        self,
        fetch: Callable[[tuple[int, int]], memoryview],
        done: Callable[[tuple[int, int]], None],
        inspect: Callable[[memoryview], None] | None,
    ) -> None:
        self.h = hashlib.sha256()
        self.fetch, self.done, self.inspect = fetch, done, inspect
        self.todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="loramgr-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            try:
                if not self.errors:
                    chunk = self.fetch(item)
                    self.h.update(chunk)
                    if self.inspect is not None:
                        self.inspect(chunk)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self.errors.append(e)
            finally:
                self.done(item)

    def finish(self) -> str:
        self.todo.put(None)
        self.thread.join()
        if self.errors:
            raise self.errors[0]
        return self.h.hexdigest()


def _user_copy(
    src: BinaryIO, dst: BinaryIO | None, buffers: int, inspect: Callable[[memoryview], None] | None
) -> tuple[str, int]:
    """Read ``src`` into a fixed ring of preallocated buffers (``readinto``), write each to ``dst``,
    hash it on the digest thread. The ring bounds memory at ``buffers x CHUNK`` whatever the file size
    or how far the hasher lags, and avoids allocator churn of large ``bytes``."""
    ring = [memoryview(bytearray(CHUNK)) for _ in range(buffers)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(buffers):
        free.put(i)
    digest = _Digest(lambda item: ring[item[0]][: item[1]], lambda item: free.put(item[0]), inspect)
    writeback = _Writeback(_fileno(dst))
    size = 0
    try:
        while not digest.errors:
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
            digest.todo.put((i, n))
    finally:
        writeback.close()
        sha = digest.finish()
    return sha, size


_NO_KERNEL_COPY = {
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.EPERM,
    errno.ETXTBSY,
    errno.ESPIPE,
}


def _kernel_copy(
    src: int, dst: int, inspect: Callable[[memoryview], None] | None, lead: int = 8
) -> tuple[str, int] | None:
    """Copy with ``copy_file_range`` (the bytes never pass through user memory; a reflink on
    copy-on-write filesystems) while the digest thread hashes what landed in ``dst``, read back from
    the page cache: the name is the hash of the stored bytes themselves. None, with ``dst`` left as it
    was, when the kernel cannot copy between these files (another filesystem, a pipe, a procfs file).

    Why not the read/write loop: on this project's VMs, ``write`` from user memory into new page-cache
    pages took 0.2 s or 2.6 s per GiB from one run to the next, ``copy_file_range`` 0.25 s every time.
    ``lead`` bounds how many chunks the copy runs ahead of the hash, so a NaN found early stops it."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return None
    try:
        n = copy(src, dst, CHUNK, 0, 0)
    except OSError as e:
        if e.errno in _NO_KERNEL_COPY:
            return None
        raise
    if n == 0:  # empty, or a file that reports no data to the kernel copy (procfs, sysfs): read it
        return None
    buf = memoryview(bytearray(CHUNK))
    ahead = threading.Semaphore(lead)

    def fetch(item: tuple[int, int]) -> memoryview:
        off, size = item
        got = 0
        while got < size:
            r = os.preadv(dst, [buf[got:size]], off + got)
            if r == 0:
                raise OSError(errno.EIO, f"store copy ended {size - got} bytes short")
            got += r
        return buf[:size]

    digest = _Digest(fetch, lambda _item: ahead.release(), inspect)
    writeback = _Writeback(dst)
    pos = 0
    try:
        while n and not digest.errors:
            ahead.acquire()
            digest.todo.put((pos, n))
            writeback.add(pos, n)
            pos += n
            n = copy(src, dst, CHUNK, pos, pos)
    finally:
        writeback.close()
        sha = digest.finish()
    return sha, pos


def _fileno(f: BinaryIO | None) -> int:
    try:
        return f.fileno() if f is not None else -1
    except (OSError, ValueError):  # not a file (io.UnsupportedOperation is both)
        return -1


def hash_copy(
    src: BinaryIO, dst: BinaryIO | None, buffers: int = 4, inspect: Callable[[memoryview], None] | None = None
) -> tuple[str, int]:
    """Hash ``src`` (and copy it to ``dst``) in one pass, hashing on a second thread. ``inspect`` sees
    every chunk in order on that thread too (register checks tensor values there), and an exception it
    raises stops the copy. Both ends real files, ``dst`` readable and at offset 0: the kernel copies;
    otherwise a read/write loop does."""
    fin, fout = _fileno(src), _fileno(dst)
    if dst is not None and min(fin, fout) >= 0 and dst.readable() and src.seekable():
        if src.tell() == 0 and dst.tell() == 0 and (done := _kernel_copy(fin, fout, inspect)) is not None:
            return done
    return _user_copy(src, dst, buffers, inspect)
