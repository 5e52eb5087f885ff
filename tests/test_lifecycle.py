"""Stages, retire/plan protection, audit history, gc, fsck and export/import — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from loramgr.testing import synth
from tests.conftest import invoke

pytestmark = pytest.mark.usefixtures("registry_db")


def _setup(tmp: Path, names=("a1", "a2")) -> None:
    synth.write_base(tmp / "base.onnx", synth.module_paths())
    assert invoke("base", "register", tmp / "base.onnx", "--name", "tiny").exit_code == 0
    for i, n in enumerate(names):
        d = synth.write_adapter(
            tmp / n,
            synth.adapter_tensors(synth.module_paths(), 4, seed=40 + i),
            synth.peft_config(4, 8, ["q_proj", "v_proj"]),
        )
        assert invoke("register", d).exit_code == 0


def status(ref: str) -> str:
    return invoke("show", ref, "--json").json["status"]


def test_stages_retire_protection_and_history(tmp_path):
    _setup(tmp_path)
    assert status("a1") == "registered"
    r = invoke("promote", "a1", "--to", "deployed")
    assert r.exit_code == 6 and "only built" in r.stderr
    for n in ("a1", "a2"):
        assert invoke("validate", n, "--base", "tiny").exit_code == 0
    assert status("a1") == "validated"
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    assert status("a1") == "built"
    assert invoke("promote", "a1", "--to", "deployed", "--json").json["changed"] is True
    assert status("a1") == "deployed"
    assert invoke("plan", "--base", "tiny").exit_code == 0
    r = invoke("retire", "a1")
    assert r.exit_code == 6 and "active plan" in r.stderr and status("a1") == "deployed"
    # a new plan at the same path without a2 supersedes the old one: a2 can be retired, a1 still not
    assert invoke("build", "--base", "tiny", "a1", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    assert invoke("retire", "a2", "--json").json["status"] == "retired"
    assert invoke("retire", "a1").exit_code == 6
    assert invoke("retire", "a1", "--force", "--json").json["forced"] is True
    assert invoke("promote", "a1", "--to", "deployed").exit_code == 6  # retired is final
    h = invoke("history", "a1", "--json").json
    steps = [(e["action"], e["details"].get("new")) for e in h]
    assert steps[0] == ("register", None)
    assert [n for a, n in steps if a == "status"] == ["validated", "built", "deployed", "retired"]
    assert all(e["actor"] == "pytest" for e in h) and all(e["at"].endswith("Z") for e in h)
    assert h[-1]["details"]["forced"] is True and h[-1]["details"]["plans"]
    # retired adapters are not built again
    r = invoke("build", "--base", "tiny", "a1", "-o", tmp_path / "o2")
    assert r.exit_code == 6 and "retired" in r.stderr
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "o2").exit_code == 3  # nothing left to build


def test_gc_collects_only_unreferenced(tmp_path, home):
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    _setup(tmp_path)
    reg = Registry(Settings.resolve())
    orphan = reg.store.put_bytes(b"nobody refers to me" * 100)
    a1, a2 = (invoke("show", n, "--json").json for n in ("a1", "a2"))
    young = invoke("gc", "--json").json  # default grace: the fresh orphan is too young
    assert young["deleted"] == [] and young["kept_young"] == 1
    dry = invoke("gc", "--dry-run", "--grace", "0", "--json").json
    assert [d["sha256"] for d in dry["deleted"]] == [orphan.sha256] and reg.store.has(orphan.sha256)
    res = invoke("gc", "--grace", "0", "--json").json
    assert [d["sha256"] for d in res["deleted"]] == [orphan.sha256] and res["bytes_freed"] == 1900
    assert not reg.store.has(orphan.sha256) and reg.store.has(a1["sha256"]) and reg.store.has(a2["sha256"])
    assert invoke("retire", "a2").exit_code == 0
    assert invoke("gc", "--grace", "0", "--json").json["deleted"] == []  # retired files kept without --retired
    res = invoke("gc", "--grace", "0", "--retired", "--json").json
    assert [d["sha256"] for d in res["deleted"]] == [a2["sha256"]]
    assert invoke("fsck", "--grace", "0").exit_code == 0  # a collected retired adapter is not "missing"


def _register_loop(args: tuple[str, str | None, str, int]) -> int:
    home, url, src, n = args
    os.environ["LORAMGR_HOME"] = home
    if url:
        os.environ["LORAMGR_DB_URL"] = url
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    reg = Registry(Settings.resolve())
    for i in range(n):
        reg.register_adapter(Path(src) / f"c{i}")
    reg.close()
    return n


@pytest.mark.slow
def test_gc_during_concurrent_register_never_removes_a_referenced_file(tmp_path, home):
    _setup(tmp_path, names=())
    n = 30
    for i in range(n):
        synth.write_adapter(
            tmp_path / "src" / f"c{i}",
            synth.adapter_tensors(synth.module_paths(), 2, seed=500 + i),
            synth.peft_config(2, 4, ["q_proj"]),
        )
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        job = pool.map_async(_register_loop, [(str(home), os.environ.get("LORAMGR_DB_URL"), str(tmp_path / "src"), n)])
        runs = 0
        while not job.ready() or runs < 3:
            r = invoke("gc", "--grace", "0", "--json")
            assert r.exit_code == 0, r.stderr
            assert r.json["deleted"] == [], r.json  # nothing is ever unreferenced here
            runs += 1
            time.sleep(0.02)
        assert job.get() == [n]
    rows = invoke("list", "--json").json
    assert len(rows) == n
    assert invoke("fsck", "--grace", "0").exit_code == 0


def test_fsck_finds_corruption_missing_and_bad_artifacts(tmp_path, home):
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    _setup(tmp_path)
    for n in ("a1", "a2"):
        invoke("validate", n, "--base", "tiny")
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    ok = invoke("fsck", "--json")
    assert ok.exit_code == 0 and ok.json["ok"] and ok.json["checked"] >= 3
    reg = Registry(Settings.resolve())
    a1, a2 = (invoke("show", n, "--json").json for n in ("a1", "a2"))
    p = reg.store.path_for(a1["sha256"])
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    reg.store.path_for(a2["sha256"]).unlink()
    section = next(
        Path(a["path"])
        for a in invoke("build", "--base", "tiny", "-o", tmp_path / "out", "--json").json["artifacts"]
        if a["kind"] == "section" and a["adapter"] == "a1"
    )
    section.unlink()
    r = invoke("fsck", "--json")
    assert r.exit_code == 8 and r.json["exit_code"] == 8
    res = r.json["details"]
    assert [c["sha256"] for c in res["corrupt"]] == [a1["sha256"]]
    assert [m["sha256"] for m in res["missing"]] == [a2["sha256"]]
    assert any(a["path"] == str(section) and a["problem"] == "missing" for a in res["artifacts"])
    orphan = reg.store.put_bytes(b"an object no row refers to")
    assert invoke("fsck", "--json").exit_code == 8  # (young orphans are in-flight writes: not reported)
    res0 = invoke("fsck", "--grace", "0", "--json").json["details"]
    assert [o["sha256"] for o in res0["orphaned"]] == [orphan.sha256]
    rep = invoke("fsck", "--repair", "--grace", "0", "--json")
    assert rep.exit_code == 8  # a missing adapter file cannot be repaired
    assert (home / "store" / "quarantine" / a1["sha256"]).is_file() and not reg.store.has(orphan.sha256)
    assert any("marked build" in x for x in rep.json["details"]["repaired"])


def test_export_import_round_trip(tmp_path, home, pg_server, monkeypatch):
    """Dump the registry (on this test's database) and load it into an empty database of the other kind."""
    _setup(tmp_path)
    invoke("validate", "a1", "--base", "tiny")
    assert invoke("export-registry", "-o", tmp_path / "dump.json").exit_code == 0
    before = {r: invoke("show", r, "--json").json for r in ("a1", "a2", "tiny")}
    hist = invoke("history", "a1", "--json").json
    other = f"sqlite:///{tmp_path / 'other.db'}" if os.environ.get("LORAMGR_DB_URL") else pg_server.create_db()
    monkeypatch.setenv("LORAMGR_DB_URL", other)
    r = invoke("import-registry", tmp_path / "dump.json", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json["adapter"] == 2 and r.json["base_model"] == 1
    after = {k: invoke("show", k, "--json").json for k in before}
    assert after == before and invoke("history", "a1", "--json").json == hist
    assert invoke("export-registry", "-o", tmp_path / "dump2.json").exit_code == 0
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("dump.json", "dump2.json"))
    assert first["tables"] == second["tables"]  # every row of every table, ids included
    assert invoke("import-registry", tmp_path / "dump.json").exit_code == 6  # not empty any more
    # new rows get fresh ids after an import (sequences advanced on PostgreSQL)
    d = synth.write_adapter(
        tmp_path / "a3",
        synth.adapter_tensors(synth.module_paths(), 4, seed=99),
        synth.peft_config(4, 8, ["q_proj", "v_proj"]),
    )
    assert invoke("register", d).exit_code == 0 and len(invoke("list", "--json").json) == 3
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    assert invoke("import-registry", tmp_path / "junk.json").exit_code == 4


def test_concurrent_builds_of_one_base_build_each_section_once(tmp_path, home):
    """Two build processes at once: the base's build lock serializes them; the second reuses all."""
    import json
    import subprocess
    import sys

    _setup(tmp_path)
    for n in ("a1", "a2"):
        invoke("validate", n, "--base", "tiny")
    env = dict(os.environ)
    slow = [sys.executable, str(Path(__file__).with_name("slowbuild.py")), "0.3"]  # each section job + 0.3 s
    cmd = [*slow, "build", "--base", "tiny", "-o", str(tmp_path / "out"), "--json"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    res = [json.loads(o[0]) for o in outs]
    assert sorted(len(r["rebuilt"]) for r in res) == [0, 3]  # 2 adapters + default, built exactly once
    assert invoke("fsck").exit_code == 0


@pytest.mark.postgres
def test_postgres_advisory_lock_serializes_builds_across_homes(tmp_path, home, registry_db, monkeypatch):
    """Two homes (two machines: separate file locks) share one PostgreSQL registry and one store:
    only the advisory lock stands between their builds. With it, one builds and the other reuses
    (without it both build: checked once by hand with the lock disabled)."""
    import json
    import subprocess
    import sys

    if registry_db != "postgresql":
        pytest.skip("the advisory lock is PostgreSQL's")
    url = os.environ["LORAMGR_DB_URL"]
    _setup(tmp_path)
    for n in ("a1", "a2"):
        invoke("validate", n, "--base", "tiny")
    other = tmp_path / "home2"
    other.mkdir()
    (other / "store").symlink_to(home / "store")  # the shared store; locks/ stays per machine
    slow = [sys.executable, str(Path(__file__).with_name("slowbuild.py")), "0.4"]
    cmd = [*slow, "build", "--base", "tiny", "-o", str(tmp_path / "out"), "--json"]
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(os.environ, LORAMGR_HOME=str(h), LORAMGR_DB_URL=url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in (home, other)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sorted(len(json.loads(o[0])["rebuilt"]) for o in outs) == [0, 3]
    assert (home / "locks").is_dir() and (other / "locks").is_dir()  # two different file locks were taken
