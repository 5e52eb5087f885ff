"""Device bundles: plan + graphs + sections + ``SHA256SUMS`` as a reproducible tar (sorted entries,
fixed mtimes and owners) or a directory. ``check`` refuses members with absolute or ``..`` paths,
links and devices before reading anything, then verifies every checksum."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loramgr.errors import IntegrityError, InvalidInputError, UsageError
from loramgr.infra.files import lands_on, read_bytes, readable_dir, regular_file
from loramgr.infra.store import sha256_file
from loramgr.records import JsonRecord
from loramgr.runtime import Plan, PlanFormatError, parse_plan_json

SUMS = "SHA256SUMS"
MAX_META_BYTES = 256 * 1024 * 1024  # SHA256SUMS and plan.json are read into memory


@dataclass(frozen=True)
class BundleWritten(JsonRecord):
    bundle: str
    files: int
    bytes: int
    sha256: str | None  # of the tar (None for a directory bundle)


@dataclass(frozen=True)
class BundleChecked(JsonRecord):
    bundle: str
    files: int
    ok: bool = True


def _members(plan: Plan, plan_path: Path) -> list[tuple[str, Path]]:
    plan.verify()  # every file must match its recorded checksum before it ships
    items = [(f.path.relative_to(plan.root).as_posix(), f.path) for f in plan.files()]
    items.append(("plan.json", plan_path))
    return sorted(set(items))


def _sums(items: list[tuple[str, Path]]) -> bytes:
    return "".join(f"{sha256_file(p)}  {name}\n" for name, p in items).encode()


def _check_out(out: Path, items: list[tuple[str, Path]], root: Path, as_dir: bool) -> None:
    """Refuse outputs that would destroy an input or land nowhere: one of the bundle's own files (the
    plan included), a missing parent directory, an existing directory for a tar, a non-empty directory
    or one inside the plan's tree for a directory bundle."""
    real = Path(os.path.realpath(out))
    if lands_on(out, (p for _, p in items)):
        raise UsageError(f"-o {out}", "is one of the files the bundle is made of; choose another path")
    if not real.parent.is_dir():
        raise UsageError(f"-o {out}", f"its directory {out.parent} does not exist")
    if as_dir:
        if real.exists() and (not real.is_dir() or any(real.iterdir())):
            raise UsageError(f"-o {out}", "exists and is not an empty directory")
        real_root = Path(os.path.realpath(root))
        if real.is_relative_to(real_root) or real_root.is_relative_to(real):
            raise UsageError(f"-o {out}", f"overlaps the plan's own directory {root}; choose a path outside it")
    elif real.is_dir():
        raise UsageError(f"-o {out}", "is a directory; give a file name for the tar (or use --dir)")


def write_bundle(plan_path: str | Path, out: str | Path, *, as_dir: bool = False) -> BundleWritten:
    plan_path = Path(plan_path).absolute()
    plan = Plan.load(plan_path)
    items = _members(plan, plan_path)
    out = Path(out).absolute()
    _check_out(out, items, plan.root, as_dir)
    sums = _sums(items)
    if as_dir:
        for name, p in items:
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
        (out / SUMS).write_bytes(sums)
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.unlink(missing_ok=True)  # never written through a link planted at the temporary name
        try:
            with tarfile.open(tmp, "x", format=tarfile.PAX_FORMAT) as tar:
                entries: list[tuple[str, Path | None]] = sorted([*items, (SUMS, None)], key=lambda e: e[0])
                for name, data_path in entries:
                    ti = tarfile.TarInfo(name)
                    ti.size = len(sums) if data_path is None else data_path.stat().st_size
                    ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0o644, 0, 0, "", ""
                    if data_path is None:
                        tar.addfile(ti, io.BytesIO(sums))
                    else:
                        with open(data_path, "rb") as f:
                            tar.addfile(ti, f)
            tmp.replace(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return BundleWritten(
        str(out),
        len(items),
        sum(p.stat().st_size for _, p in items),
        None if as_dir else hashlib.sha256(out.read_bytes()).hexdigest(),
    )


def _safe_name(name: str, where: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not name or "\\" in name:
        raise InvalidInputError(where, f"member {name!r} has an absolute or '..' path; refusing the bundle")
    return name


def _read_members(tar: tarfile.TarFile, path: Path, digests: dict[str, str], keep: dict[str, bytes]) -> None:
    """Hash every member; keep the bytes of SHA256SUMS and plan.json (bounded)."""
    for m in tar.getmembers():
        _safe_name(m.name, str(path))
        if m.name in digests:  # extracting would keep the last copy; this check read another
            raise InvalidInputError(str(path), f"member {m.name!r} is in the bundle twice; refusing the bundle")
        if not m.isfile():
            raise InvalidInputError(str(path), f"member {m.name!r} is not a regular file; refusing the bundle")
        if m.name in (SUMS, "plan.json") and m.size > MAX_META_BYTES:
            raise InvalidInputError(str(path), f"member {m.name} is implausibly large")
        f = tar.extractfile(m)
        h = hashlib.sha256()
        data = b""
        while f is not None and (chunk := f.read(1 << 20)):
            h.update(chunk)
            if m.name in (SUMS, "plan.json"):
                data += chunk
        digests[m.name] = h.hexdigest()
        if m.name in (SUMS, "plan.json"):
            keep[m.name] = data


def _check_plan_paths(data: bytes | None, listed: set[str], where: str) -> None:
    """The bundle's plan obeys the plan loader's rules (no absolute, ``..`` or escaping path, valid
    structure) and every file it names is in the bundle."""
    if data is None:
        raise IntegrityError(where, "bundle has no plan.json")
    try:
        doc = parse_plan_json(data.decode("utf-8"))
        plan = Plan.from_doc(doc, Path("/loramgr-bundle-root"), where=f"{where}: plan.json")
        files = plan.files()
    except (ValueError, RecursionError) as e:
        raise PlanFormatError(f"{where}: plan.json", f"not a JSON plan ({type(e).__name__})") from None
    for f in files:
        rel = f.path.relative_to(plan.root).as_posix()
        if rel not in listed:
            raise IntegrityError(f"{where}: {rel}", "is named by plan.json but is not in the bundle")


def check_bundle(path: str | Path) -> BundleChecked:
    """Verify a bundle tar or directory: safe member names, regular files only, every checksum."""
    path = Path(path)
    digests: dict[str, str] = {}
    keep: dict[str, bytes] = {}
    if path.is_dir():
        readable_dir(path, "bundle directory")
        for p in sorted(path.rglob("*")):
            if p.is_symlink():
                raise InvalidInputError(str(p), "bundle contains a symlink; refusing it")
            if p.is_dir():
                continue
            regular_file(p, "bundle member")  # a FIFO or device in the tree is refused, not read
            digests[p.relative_to(path).as_posix()] = sha256_file(p)
        for name in (SUMS, "plan.json"):
            if (path / name).is_file():
                keep[name] = read_bytes(path / name, MAX_META_BYTES, name)
    else:
        regular_file(path, "bundle")
        try:
            tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise InvalidInputError(str(path), f"not a readable tar bundle ({e})") from None
        with tar:
            try:
                _read_members(tar, path, digests, keep)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise InvalidInputError(str(path), f"damaged tar bundle ({type(e).__name__}: {e})") from None
    if SUMS not in keep:
        raise IntegrityError(str(path), f"bundle has no {SUMS}")
    sums = keep[SUMS].decode("utf-8", "replace")
    listed = {}
    for line in sums.splitlines():
        digest, _, name = line.partition("  ")
        listed[_safe_name(name, str(path))] = digest
    for name, digest in sorted(listed.items()):
        if digests.get(name) is None:
            raise IntegrityError(f"{path}: {name}", "listed in SHA256SUMS but missing from the bundle")
        if digests[name] != digest:
            raise IntegrityError(f"{path}: {name}", "does not match its SHA256SUMS entry")
    extra = sorted(set(digests) - set(listed) - {SUMS})
    if extra:
        raise IntegrityError(f"{path}: {extra[0]}", "is in the bundle but not in SHA256SUMS")
    if "plan.json" not in listed:
        raise IntegrityError(str(path), "bundle has no plan.json")
    _check_plan_paths(keep.get("plan.json"), set(listed), str(path))
    return BundleChecked(str(path), len(listed))
