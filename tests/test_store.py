"""The content-addressed store's copy: the kernel path (copy_file_range, hash read back from the
stored file), its fallbacks, and that both name an object by the hash of exactly its bytes."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

import loramgr.infra.hashcopy as hashcopy
from loramgr.infra.store import Store


def _source(path: Path, size: int, seed: int = 0) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]  # not one repeated block
    path.write_bytes(data)
    return data


class _Counting:
    """os.copy_file_range, counting calls and bytes; optionally failing at call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None, err: int = errno.EXDEV) -> None:
        self.real = os.copy_file_range
        self.calls = 0
        self.bytes = 0
        self.fail_at, self.err = fail_at, err

    def __call__(self, *a: object, **k: object) -> int:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise OSError(self.err, os.strerror(self.err))
        n = self.real(*a, **k)  # type: ignore[arg-type]
        self.bytes += n
        return n


def _leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "tmp").iterdir()] if (root / "tmp").is_dir() else []


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 3 * 4096 + 17])
def test_kernel_copy_stores_exact_bytes_and_shows_inspect_every_chunk(tmp_path, monkeypatch, size):
    monkeypatch.setattr(hashcopy, "CHUNK", 4096)
    cfr = _Counting()
    monkeypatch.setattr(os, "copy_file_range", cfr)
    data = _source(tmp_path / "src.bin", size)
    seen: list[bytes] = []
    obj = Store(tmp_path / "st").ingest(tmp_path / "src.bin", inspect=lambda c: seen.append(bytes(c)))
    assert obj.sha256 == hashlib.sha256(data).hexdigest() and obj.size == size
    assert obj.path.read_bytes() == data and b"".join(seen) == data
    assert all(len(c) <= 4096 for c in seen)
    assert cfr.bytes == size and cfr.calls >= 1  # the kernel did the copying (an empty file falls back)
    assert not _leftovers(tmp_path / "st")


@pytest.mark.parametrize("err", [errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_kernel_copy_refused_falls_back_to_the_read_write_loop(tmp_path, monkeypatch, err):
    monkeypatch.setattr(hashcopy, "CHUNK", 4096)
    cfr = _Counting(fail_at=1, err=err)
    monkeypatch.setattr(os, "copy_file_range", cfr)
    data = _source(tmp_path / "src.bin", 5 * 4096 + 3)
    seen: list[bytes] = []
    obj = Store(tmp_path / "st").ingest(tmp_path / "src.bin", inspect=lambda c: seen.append(bytes(c)))
    assert cfr.calls == 1 and obj.path.read_bytes() == data and b"".join(seen) == data
    assert obj.sha256 == hashlib.sha256(data).hexdigest()


def test_without_copy_file_range_the_loop_copies(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range")
    data = _source(tmp_path / "src.bin", 70_000)
    obj = Store(tmp_path / "st").ingest(tmp_path / "src.bin")
    assert obj.path.read_bytes() == data and obj.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs procfs")
def test_procfs_source_the_kernel_copies_nothing_of_is_read_instead(tmp_path):
    """procfs files report size 0 and copy_file_range copies 0 bytes of them: the loop must run."""
    data = Path("/proc/version").read_bytes()
    obj = Store(tmp_path / "st").ingest("/proc/version")
    assert data and obj.path.read_bytes() == data and obj.sha256 == hashlib.sha256(data).hexdigest()


def test_pipe_source_uses_the_loop(tmp_path):
    r, w = os.pipe()
    data = os.urandom(200_000)
    t = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    t.start()
    with open(r, "rb", buffering=0) as src, open(tmp_path / "out", "w+b", buffering=0) as dst:
        sha, size = hashcopy.hash_copy(src, dst)
    t.join()
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (tmp_path / "out").read_bytes() == data


def test_hash_only_and_non_file_destinations(tmp_path):
    data = _source(tmp_path / "src.bin", 50_000)
    with open(tmp_path / "src.bin", "rb", buffering=0) as src:
        assert hashcopy.hash_copy(src, None) == (hashlib.sha256(data).hexdigest(), len(data))
    out = io.BytesIO()
    with open(tmp_path / "src.bin", "rb", buffering=0) as src:
        assert hashcopy.hash_copy(src, out)[1] == len(data)
    assert out.getvalue() == data


def test_inspect_error_stops_the_kernel_copy_early_and_leaves_nothing(tmp_path, monkeypatch):
    """A NaN in the first chunk must not cost a copy of the whole file: the copy runs at most a few
    chunks ahead of the hash."""
    monkeypatch.setattr(hashcopy, "CHUNK", 4096)
    cfr = _Counting()
    monkeypatch.setattr(os, "copy_file_range", cfr)
    _source(tmp_path / "src.bin", 400 * 4096)

    def inspect(chunk: memoryview) -> None:
        raise ValueError("bad tensor")

    st = Store(tmp_path / "st")
    with pytest.raises(ValueError, match="bad tensor"):
        st.ingest(tmp_path / "src.bin", inspect=inspect)
    assert cfr.bytes <= 12 * 4096, cfr.bytes
    assert not _leftovers(tmp_path / "st") and not list((tmp_path / "st" / "objects").rglob("*"))


def test_disk_error_mid_copy_propagates_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcopy, "CHUNK", 4096)
    monkeypatch.setattr(os, "copy_file_range", _Counting(fail_at=3, err=errno.ENOSPC))
    _source(tmp_path / "src.bin", 20 * 4096)
    st = Store(tmp_path / "st")
    with pytest.raises(OSError) as e:
        st.ingest(tmp_path / "src.bin")
    assert e.value.errno == errno.ENOSPC
    assert not _leftovers(tmp_path / "st") and not list((tmp_path / "st" / "objects").rglob("*"))


def test_a_source_edited_during_the_copy_still_gives_an_object_named_by_its_own_bytes(tmp_path, monkeypatch):
    """The hash is taken of the stored bytes read back, not of a second read of the source: an edit
    racing the copy can change what is stored, never make the name lie about it."""
    monkeypatch.setattr(hashcopy, "CHUNK", 4096)
    real = os.copy_file_range
    src = tmp_path / "src.bin"
    data = _source(src, 8 * 4096)
    calls = [0]

    def racing(*a: object) -> int:
        calls[0] += 1
        if calls[0] == 2:  # after the first chunk went in, the source changes under the copy
            with open(src, "r+b") as f:
                for off in (0, 5 * 4096):  # one chunk already copied, one still to come
                    f.seek(off)
                    f.write(b"\xff" * 4096)
        return real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "copy_file_range", racing)
    obj = Store(tmp_path / "st").ingest(src)
    stored = obj.path.read_bytes()
    assert obj.sha256 == hashlib.sha256(stored).hexdigest()
    assert stored[:4096] == data[:4096] and stored[5 * 4096 : 6 * 4096] == b"\xff" * 4096
