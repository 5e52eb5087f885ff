"""A QAIRT SDK on disk: where it is, which version it is, and how its tools are run.

The version comes from the SDK root's ``sdk.yaml`` (``version`` plus an optional ``build_id``), or
from the root directory's name (``2.28.0.241029``) when there is no ``sdk.yaml``. Tools are run with
an exact argv (never a shell), the environment ``envsetup.sh`` would set, a timeout, and their
output captured into the build log; every failure becomes an :class:`ExternalToolError` (exit 7)
naming the tool and the last lines of its stderr.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loramgr.errors import ExternalToolError, IncompatibleError, InvalidInputError, UsageError
from loramgr.records import Base

HOST = "x86_64-linux-clang"
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:\.\d+)?")
#: how much of a tool's output goes into the build log / error message
LOG_TAIL_CHARS = 20_000
ERROR_TAIL_LINES = 5


def read_sdk_version(root: Path) -> str:
    """``2.28.0.241029``-style version of the SDK at ``root``."""
    meta = root / "sdk.yaml"
    if meta.is_file():
        try:
            doc = yaml.safe_load(meta.read_text(encoding="utf-8", errors="replace"))
        except yaml.YAMLError as e:  # safe_load: tags such as !!python/object are refused, never run
            raise InvalidInputError(str(meta), f"is not plain YAML ({type(e).__name__})") from None
        if isinstance(doc, dict) and doc.get("version") is not None:
            v = str(doc["version"]).strip()
            build = str(doc.get("build_id") or "").strip()
            if build and v.count(".") == 2:
                v = f"{v}.{build}"
            if _VERSION_RE.fullmatch(v):
                return v
        raise InvalidInputError(str(meta), "has no readable `version` field")
    m = _VERSION_RE.search(root.resolve().name)
    if m:
        return m.group(0)
    raise UsageError(str(root), "cannot tell the SDK version (no sdk.yaml and no version in the directory name)")


def versions_match(recorded: str, sdk: str) -> bool:
    """Equal, or equal on every component the shorter one states (``2.28.0`` vs ``2.28.0.241029``)."""
    a, b = recorded.split("."), sdk.split(".")
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]


#: the longest a tool may run (a day): beyond it a timeout is a typo, and 1e300 overflows the OS timer
MAX_TOOL_TIMEOUT = 86400.0


def tool_timeout(given: float | None) -> float:
    """Seconds before an SDK tool is stopped: ``--tool-timeout``, else ``LORAMGR_TOOL_TIMEOUT``, else an
    hour; NaN, infinities and values outside 0.1 s .. a day are refused before any build row exists."""
    env = os.environ.get("LORAMGR_TOOL_TIMEOUT")
    what = "--tool-timeout" if given is not None else "LORAMGR_TOOL_TIMEOUT"
    try:
        t = float(given if given is not None else env or 3600.0)
    except ValueError:
        raise UsageError(f"{what} {env}", "is not a number of seconds") from None
    if not 0.1 <= t <= MAX_TOOL_TIMEOUT:  # NaN fails this too
        raise UsageError(f"{what} {t:g}", f"must be 0.1 to {MAX_TOOL_TIMEOUT:g} seconds")
    return t


@dataclass
class Sdk:
    root: Path
    version: str
    timeout: float = 3600.0
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def locate(cls, root: str | Path | None, *, timeout: float | None = None) -> Sdk:
        t = tool_timeout(timeout)
        if not root:
            raise UsageError("--backend qairt", "needs the SDK root", hint="pass --sdk-root DIR or set QAIRT_SDK_ROOT")
        p = Path(root).expanduser().absolute()
        if not p.is_dir():
            raise UsageError(f"--sdk-root {root}", "is not a directory")
        return cls(p, read_sdk_version(p), t)

    def check_base(self, base: Base) -> None:
        """Base and adapter binaries MUST come from the same SDK version (QNN LoRA v2 tutorial)."""
        want = base.sdk_version
        if not want:
            raise IncompatibleError(
                f"base {base.ref}",
                "has no recorded sdk_version; the qairt backend must "
                "build with the SDK the base context binary came from",
                hint="re-register the base with --sdk-version",
            )
        if not versions_match(str(want), self.version):
            raise IncompatibleError(
                f"base {base.ref}",
                f"was prepared with QAIRT SDK {want} but {self.root} "
                f"is SDK {self.version}; base and adapter binaries must come from the same "
                "SDK version",
            )

    def tool(self, name: str) -> Path:
        p = self.root / "bin" / HOST / name
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ExternalToolError(
                name,
                f"not found or not executable at {p}",
                hint="is --sdk-root / QAIRT_SDK_ROOT a QAIRT SDK for this host?",
            )
        return p

    def lib(self, name: str) -> Path:
        return self.root / "lib" / HOST / name

    def env(self) -> dict[str, str]:
        """What ``bin/envsetup.sh`` sets, without sourcing a shell script."""
        env = dict(os.environ)
        pre = {
            "PATH": str(self.root / "bin" / HOST),
            "LD_LIBRARY_PATH": str(self.root / "lib" / HOST),
            "PYTHONPATH": str(self.root / "lib" / "python"),
        }
        for k, v in pre.items():
            env[k] = v + (os.pathsep + env[k] if env.get(k) else "")
        env["QAIRT_SDK_ROOT"] = env["QNN_SDK_ROOT"] = str(self.root)
        return env

    def invoke(self, name: str, args: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
        argv = [str(self.tool(name))] + [str(a) for a in args]
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=self.env(),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            self._record(argv, cwd, None, "", err)
            raise ExternalToolError(
                name,
                f"timed out after {self.timeout:g} s{_tail(err)}",
                hint="raise it with --tool-timeout or LORAMGR_TOOL_TIMEOUT",
            ) from None
        except OSError as e:
            self._record(argv, cwd, None, "", str(e))
            raise ExternalToolError(name, f"could not be started: {e.strerror or e}") from None
        self._record(argv, cwd, proc.returncode, proc.stdout, proc.stderr)
        if proc.returncode != 0:
            raise ExternalToolError(name, f"exited with status {proc.returncode}{_tail(proc.stderr or proc.stdout)}")
        return proc

    def _record(self, argv: list[str], cwd: Path, rc: int | None, out: str, err: str) -> None:
        lines = [
            f"$ (cd {shlex.quote(str(cwd))} && {shlex.join(argv)})",
            f"  exit status: {'timeout' if rc is None else rc}",
        ]
        for label, text in (("stdout", out), ("stderr", err)):
            if text:
                lines.append(f"  --- {label} ---")
                lines += ["  " + ln for ln in text[-LOG_TAIL_CHARS:].splitlines()]
        with self._lock:
            self.log += lines


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return (": " + " | ".join(lines[-ERROR_TAIL_LINES:])) if lines else ""
