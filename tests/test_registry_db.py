"""Schema, migrations and concurrent writers on the real SQLite registry and a real PostgreSQL server."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from sqlalchemy import inspect

from loramgr.config import Settings
from loramgr.registry import db
from loramgr.registry.api import Registry
from loramgr.registry.models import Model
from loramgr.testing import synth
from tests.conftest import invoke


def _url(registry_db: str, tmp_path: Path) -> str:
    return os.environ["LORAMGR_DB_URL"] if registry_db == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"


def test_upgrade_from_empty_and_models_match_migrations(tmp_path, registry_db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    engine = db.make_engine(_url(registry_db, tmp_path))
    assert db.current_revision(engine) is None
    assert db.upgrade(engine) == ["0001", "0002", "0003", "0004", "0005", "0006"] and db.SCHEMA_HEAD == "0006"
    assert db.upgrade(engine) == []
    script = ScriptDirectory.from_config(db.alembic_config(engine))
    assert script.get_current_head() == db.SCHEMA_HEAD
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Model.metadata)
    assert diff == [], diff
    assert set(inspect(engine).get_table_names()) >= {t for t in Model.metadata.tables}


def test_downgrade_to_base_and_back(tmp_path, registry_db):
    from alembic import command

    engine = db.make_engine(_url(registry_db, tmp_path))
    db.upgrade(engine)
    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert db.current_revision(engine) == db.SCHEMA_HEAD


def test_sqlite_runs_in_wal_mode(home):
    r = Registry(Settings.resolve())
    with r.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_init_and_db_upgrade_list(home):
    r = invoke("init", "--json")
    assert r.exit_code == 0 and r.json["revision"] == db.SCHEMA_HEAD
    r = invoke("db", "upgrade", "--list", "--json")
    assert r.json[-1] == {
        "revision": db.SCHEMA_HEAD,
        "message": "use-case groups: use cases that share quantization parameters (QNN LoRA v3 grouped LoRA)",
        "applied": True,
    }


def _register_many(args: tuple[str, str | None, str, int, int]) -> list[str]:
    home, url, src_root, worker, n = args
    os.environ["LORAMGR_HOME"] = home
    if url:
        os.environ["LORAMGR_DB_URL"] = url
    reg = Registry(Settings.resolve())
    refs = []
    for i in range(n):
        rec, _ = reg.register_adapter(Path(src_root) / f"w{worker}" / f"a{i}")
        refs.append(rec.ref)
    reg.close()
    return refs


@pytest.mark.slow
def test_eight_processes_register_400_adapters(tmp_path, home, registry_db):
    """8 processes x 50 registrations: workers 0-5 register their own bytes under 50 shared names
    (-> versions 1..6 per name); workers 6 and 7 register the same bytes as workers 0 and 1
    (duplicates -> the existing records). Nothing escapes as a lock/serialization error."""
    mps = synth.module_paths()
    n, writers = 50, 6
    for w in range(writers):
        for i in range(n):
            synth.write_adapter(
                tmp_path / "src" / f"w{w}" / f"a{i}",
                synth.adapter_tensors(mps, 2, seed=1000 * w + i),
                synth.peft_config(2, 4, ["q_proj"]),
            )
    for dup, orig in ((6, 0), (7, 1)):
        import shutil

        shutil.copytree(tmp_path / "src" / f"w{orig}", tmp_path / "src" / f"w{dup}")
    url = os.environ.get("LORAMGR_DB_URL")
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(_register_many, [(str(home), url, str(tmp_path / "src"), w, n) for w in range(8)])
    assert results[6] == results[0] and results[7] == results[1]  # duplicates resolved to the same records
    rows = invoke("list", "--json").json
    assert len(rows) == writers * n
    versions: dict[str, list[str]] = {}
    for r in rows:
        versions.setdefault(r["name"], []).append(r["version"])
    assert len(versions) == n and all(
        sorted(v, key=int) == [str(k) for k in range(1, writers + 1)] for v in versions.values()
    )
    assert len({r["sha256"] for r in rows}) == writers * n
    for r in rows:
        p = Path(r["store_path"])
        assert hashlib.sha256(p.read_bytes()).hexdigest() == r["sha256"]
    assert not list((home / "store" / "tmp").iterdir())


def test_base_register_single_and_multi(tiny, tmp_path, registry_db):
    r = invoke("base", "register", tiny.base, "--name", "tiny", "--json")
    assert r.exit_code == 0, r.stderr
    rec = r.json
    assert rec["graphs"] == ["base"] and rec["attachment_points"] == 4 and rec["max_rank"] == 16
    assert rec["precision"] == "fp32" and rec["alpha_tensor"] == "lora_alpha"
    again = invoke("base", "register", tiny.base, "--name", "tiny", "--json").json
    assert again["already_registered"] and again["version"] == "1"
    synth.write_base(tmp_path / "decode.onnx", tiny.mps)
    r = invoke(
        "base",
        "register",
        "--name",
        "ctx",
        "--graph",
        f"prefill={tiny.base}",
        "--graph",
        f"decode={tmp_path / 'decode.onnx'}",
        "--max-rank",
        "16",
        "--sdk-version",
        "2.31.0",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    full = invoke("show", "ctx", "--json").json
    assert [g["name"] for g in full["graph_list"]] == ["prefill", "decode"]
    assert [g["kind"] for g in full["graph_list"]] == ["prefill", "decode"]
    assert all(ap["graphs"] == ["prefill", "decode"] for ap in full["attachment_point_list"])
    assert full["sdk_version"] == "2.31.0"
    ap = full["attachment_point_list"][0]
    assert ap["tensor_a"] == ap["module_path"] + ".lora_A.weight" and ap["in_features"] == 64 and ap["rank"] == 16
    bases = invoke("list", "bases", "--json").json
    assert [b["name"] for b in bases] == ["ctx", "tiny"]


def test_base_register_errors(tiny, tmp_path, home, registry_db):
    r = invoke("base", "register", tiny.base, "--name", "t", "--max-rank", "8")
    assert r.exit_code == 2 and "rank 16" in r.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    r = invoke("base", "register", junk, "--name", "t")
    assert r.exit_code == 4 and str(junk) in r.stderr
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    r = invoke("base", "register", tmp_path / "plain.onnx", "--name", "t")
    assert r.exit_code == 4 and "no LoRA attachment points" in r.stderr
    assert invoke("base", "register", tmp_path / "plain.onnx", "--name", "t", "--allow-empty").exit_code == 0
    r = invoke("base", "register", tiny.base, "--name", "../x")
    assert r.exit_code == 4
    assert len(invoke("list", "bases", "--json").json) == 1


def test_base_with_external_data(tmp_path):
    import onnx

    m = onnx.load(str(synth_base(tmp_path)))
    onnx.save(
        m,
        str(tmp_path / "ext" / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    rec = invoke("show", "x", "--json")
    assert rec.exit_code == 3
    r = invoke("base", "register", tmp_path / "ext" / "m.onnx", "--name", "x", "--json")
    assert r.exit_code == 0, r.stderr
    full = invoke("show", "x", "--json").json
    ext = full["graph_list"][0]["external_data"]
    assert ext[0]["location"] == "m.data" and len(ext[0]["sha256"]) == 64


def synth_base(tmp_path: Path) -> Path:
    (tmp_path / "ext").mkdir()
    p = tmp_path / "plain_base.onnx"
    synth.write_base(p, synth.module_paths())
    return p


def test_every_command_has_help():
    import click

    from loramgr.cli.common import cli

    def walk(cmd: click.Command, path: list[str]):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])

    for path, cmd in walk(cli, []):
        assert (cmd.help or "").strip(), f"loramgr {' '.join(path)} has no help text"
        r = invoke(*path, "--help")
        assert r.exit_code == 0 and "Usage:" in r.stdout


def test_python_m_loramgr(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "loramgr", "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and "loramgr" in p.stdout


def test_upgrade_from_0001_keeps_rows(tmp_path):
    """A registry made by an older loramgr (schema 0001) upgrades in place on first use."""
    from alembic import command

    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO event (at, actor, action, subject, details) VALUES ('2026-01-01', 'old', 'x', 'y', '{}')"
        )
    assert db.current_revision(engine) == "0001"
    assert db.upgrade(engine) == ["0002", "0003", "0004", "0005", "0006"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT actor FROM event").scalar() == "old"
        assert conn.exec_driver_sql("SELECT count(*) FROM encoding").scalar() == 0
