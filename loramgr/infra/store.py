"""Content-addressed artifact store: ``store/objects/<aa>/<sha256>``.

Ingesting makes one pass (``hashcopy``: the kernel copies while a second thread hashes the stored
bytes), so register costs about one ``cp`` rather than ``sha256sum + cp``, and an object's name is
the hash of exactly the bytes it holds. Writes go to ``store/tmp/`` (fsync, then an atomic rename), so
a crash never leaves a partial object under ``objects/`` and ``gc`` never collects a file that is
still being written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loramgr.errors import IntegrityError, InvalidInputError
from loramgr.infra import hashcopy
from loramgr.infra.hashcopy import CHUNK

_HEX = set("0123456789abcdef")


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
                    sha, size = hashcopy.hash_copy(f, None, inspect=inspect)
            else:
                with open(src, "rb", buffering=0) as fin, open(tmp, "w+b", buffering=0) as fout:
                    sha, size = hashcopy.hash_copy(fin, fout, inspect=inspect)
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
    tmp.unlink(missing_ok=True)  # a stale one of this pid, or a link planted at the name
    try:
        # O_EXCL | O_NOFOLLOW: never written through a link; os.replace then swaps the name itself
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
