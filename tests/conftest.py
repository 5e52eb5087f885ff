"""Shared fixtures: every test gets its own LORAMGR_HOME (a real SQLite file and store)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loramgr.testing import synth


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def invoke(*args: Any) -> Result:
    """Run the CLI in-process through ``loramgr.cli.main`` (the same error translation as the
    console script) and capture its output."""
    from loramgr.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LORAMGR_HOME", str(h))
    monkeypatch.delenv("LORAMGR_DB_URL", raising=False)
    monkeypatch.setenv("LORAMGR_ACTOR", "pytest")
    return h


@pytest.fixture
def lm():
    return invoke


def store_files(home: Path) -> list[str]:
    root = home / "store"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def tiny(tmp_path: Path):
    """A synthetic base graph (2 layers x q/v, hidden 64, max rank 16) and an adapter factory."""

    class Tiny:
        mps = synth.module_paths()
        base = tmp_path / "base.onnx"
        W = synth.write_base(base, synth.module_paths())

        @staticmethod
        def adapter(
            name: str,
            r: int = 8,
            alpha: float = 16,
            seed: int = 1,
            mods=("q_proj", "v_proj"),
            config: bool = True,
            **cfg: Any,
        ) -> tuple[Path, dict]:
            mps = synth.module_paths(mods)
            t = synth.adapter_tensors(mps, r, seed=seed)
            d = synth.write_adapter(
                tmp_path / "adapters" / name, t, synth.peft_config(r, alpha, mods, **cfg) if config else None
            )
            return d, t

    return Tiny


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server per test session (per xdist worker)."""
    from tests.pg import PgServer

    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_db(request, monkeypatch):
    """Run a test on the embedded SQLite registry and on a fresh database of a real PostgreSQL server."""
    if request.param == "postgresql":
        monkeypatch.setenv("LORAMGR_DB_URL", request.getfixturevalue("pg_server").create_db())
    return request.param
