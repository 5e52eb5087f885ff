"""One test per class of careless or unlucky use (the hardening issue): every case gives its documented
exit code and one line, leaves no row and no store file, and never blocks."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from loramgr.testing import synth
from tests.conftest import invoke, store_files

ROOT = Path(__file__).resolve().parent.parent
TENSORS = synth.adapter_tensors(synth.module_paths(), 4, seed=1)


def _ad(tmp: Path, name: str, tensors: dict | None = None, **cfg: object) -> Path:
    conf = synth.peft_config(4, 8, ["q_proj", "v_proj"])
    conf.update(cfg)
    d = synth.write_adapter(tmp / name, dict(TENSORS) if tensors is None else tensors, conf)
    return d


def _refused(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loramgr: error: "), r.stderr
    assert "Traceback" not in r.stderr and "unexpected" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def _nothing_left(home: Path) -> None:
    assert invoke("list", "--json").json == []
    assert [f for f in store_files(home) if f.startswith("objects")] == []


# -- numbers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_adapter_weights_are_refused_at_register(tmp_path, home, dtype, bad):
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    t = {k: v.astype(dt) for k, v in TENSORS.items()}
    key = sorted(t)[3]
    t[key] = t[key].copy()
    t[key].flat[17] = bad
    r = invoke("register", _ad(tmp_path, "nan", t))
    _refused(r, 4, key, "non-finite", "element 17")
    _nothing_left(home)


def test_finite_scan_handles_elements_cut_by_chunk_boundaries(tmp_path):
    """The scan sees the file in the store's chunks; feed it odd-sized chunks so every element
    boundary falls inside a chunk somewhere, and the NaN is still found at its exact index."""
    from loramgr.errors import InvalidInputError
    from loramgr.formats.safetensors import FiniteScan, read_header

    rng = np.random.default_rng(0)
    a = rng.standard_normal(1001).astype(np.float32)
    b = rng.standard_normal(333).astype(np.float16)
    b[200] = np.nan
    save_file({"a": a, "b": b, "i": np.arange(5, dtype=np.int32)}, str(tmp_path / "x.safetensors"))
    data = (tmp_path / "x.safetensors").read_bytes()
    for size in (1, 3, 7, 13, 4096):
        scan = FiniteScan(read_header(tmp_path / "x.safetensors"))
        with pytest.raises(InvalidInputError, match="tensor 'b'.* element 200"):
            for i in range(0, len(data), size):
                scan(memoryview(data[i : i + size]))
    b[200] = 1.0
    save_file({"a": a, "b": b}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    scan = FiniteScan(read_header(tmp_path / "ok.safetensors"))
    for i in range(0, len(data), 7):
        scan(memoryview(data[i : i + 7]))


@pytest.mark.parametrize(
    "patch, needle",
    [
        ('"lora_alpha": Infinity', "lora_alpha"),
        ('"lora_alpha": NaN', "lora_alpha"),
        ('"lora_alpha": 1e400', "lora_alpha"),
        ('"lora_alpha": 1' + "0" * 400, "lora_alpha"),
        ('"lora_alpha": 1e308', "lora_alpha"),
        ('"r": 0', "'r'"),
        ('"r": 2147483648', "'r'"),
        ('"rank_pattern": {"q_proj[": 4}', "rank_pattern"),
        ('"alpha_pattern": {"(": 4}', "alpha_pattern"),
        ('"alpha_pattern": {"q_proj": Infinity}', "alpha_pattern"),
        ('"target_modules": "(("', "target_modules"),
    ],
)
def test_configs_must_be_finite_bounded_and_compile(tmp_path, home, patch, needle):
    d = _ad(tmp_path, "cfg")
    cfg = (d / "adapter_config.json").read_text()
    key = patch.split(":")[0].strip('"')
    doc = json.loads(cfg)
    doc.pop(key, None)
    text = json.dumps(doc)[:-1] + ", " + patch + "}"
    (d / "adapter_config.json").write_text(text)
    _refused(invoke("register", d), 4, "adapter_config.json", needle)
    _nothing_left(home)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_lora_alpha_option_must_be_finite(tmp_path, home, value):
    f = tmp_path / "bare.safetensors"
    save_file(dict(TENSORS), str(f))
    _refused(invoke("register", f, "--lora-alpha", value), 2, "--lora-alpha")
    _nothing_left(home)


def test_rank_zero_and_empty_files_are_refused(tmp_path, home):
    t = dict(TENSORS)
    k = sorted(t)[0]
    t[k] = np.zeros((0, t[k].shape[1]), np.float32)
    _refused(invoke("register", _ad(tmp_path, "r0", t)), 4, "rank 0")
    for header in ({}, {"__metadata__": {"format": "pt"}}):
        f = tmp_path / f"empty{len(header)}.safetensors"
        raw = json.dumps(header).encode()
        f.write_bytes(len(raw).to_bytes(8, "little") + raw)
        _refused(invoke("register", f, "--lora-alpha", "8"), 4, "holds no tensors")
    _nothing_left(home)


def test_verify_fails_on_non_finite_output():
    from loramgr.quantsim import cosine as _cos
    from loramgr.verification import _diff

    assert _diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == float("inf")
    assert _diff(np.array([1.0, 2.0]), np.array([np.inf, 2.0])) == float("inf")
    assert _diff(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert _cos(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == 0.0


def test_fp16_validation_catches_nan_from_an_older_registry():
    from loramgr.lora.prepare import fp16_overflow

    assert fp16_overflow(np.array([1.0, np.nan], np.float32)) == float("inf")
    assert fp16_overflow(np.array([1.0, 70000.0], np.float32)) == 70000.0
    assert fp16_overflow(np.array([1.0, -2.0], np.float32)) == 0.0


# -- special files, permissions, storage -----------------------------------------------------------------
def _run(args: list, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loramgr", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ))


def test_fifo_and_devices_are_refused_before_they_are_opened(tmp_path, home):
    d = tmp_path / "fifo"
    d.mkdir()
    shutil.copy(_ad(tmp_path, "good") / "adapter_model.safetensors", d)
    os.mkfifo(d / "adapter_config.json")
    p = _run(["register", d], timeout=30)
    assert p.returncode == 4 and "FIFO" in p.stderr, p.stderr
    os.mkfifo(tmp_path / "w.safetensors")
    p = _run(["register", tmp_path / "w.safetensors", "--lora-alpha", "8"], timeout=30)
    assert p.returncode == 4 and "FIFO" in p.stderr, p.stderr
    p = _run(["bundle", "check", "/dev/zero"], timeout=30)
    assert p.returncode == 4 and "character device" in p.stderr, p.stderr
    os.mkfifo(tmp_path / "calib.npz")
    p = _run(["encodings", "import", "x", tmp_path / "calib.npz"], timeout=30)
    assert p.returncode in (3, 4) and "Traceback" not in p.stderr
    _nothing_left(home)


CAPSH = shutil.which("capsh")
as_unprivileged = pytest.mark.skipif(
    os.geteuid() != 0 or CAPSH is None, reason="needs root with capsh to drop the permission-override capabilities"
)


def _unprivileged(args: list, env: dict) -> subprocess.CompletedProcess:
    """Root without CAP_DAC_OVERRIDE/READ_SEARCH/FOWNER: file permission bits apply, as for a user."""
    import shlex

    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "loramgr", *args])
    return subprocess.run(
        [CAPSH, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


@as_unprivileged
def test_unreadable_inputs_exit_4_and_read_only_home_serves_reads(tmp_path, home):
    env = dict(os.environ, LORAMGR_HOME=str(home))
    d = _ad(tmp_path, "locked")
    os.chmod(d / "adapter_model.safetensors", 0o000)
    p = _unprivileged(["register", d], env)
    assert p.returncode == 4 and "permission denied" in p.stderr, p.stderr
    os.chmod(d / "adapter_model.safetensors", 0o644)
    os.chmod(d, 0o600)  # no execute permission: cannot look inside
    p = _unprivileged(["register", d], env)
    assert p.returncode == 4 and "permission denied" in p.stderr, p.stderr
    os.chmod(d, 0o755)
    assert invoke("register", d).exit_code == 0
    for root, dirs, files in os.walk(home):
        for n in dirs + files:
            os.chmod(Path(root) / n, 0o555 if n in dirs else 0o444)
    os.chmod(home, 0o555)
    try:
        p = _unprivileged(["list", "--json"], env)
        assert p.returncode == 0 and json.loads(p.stdout)[0]["name"] == "locked", p.stderr
        p = _unprivileged(["show", "locked", "--json"], env)
        assert p.returncode == 0, p.stderr
        p = _unprivileged(["register", _ad(tmp_path, "other", seed=2)], env)
        assert p.returncode == 9 and str(home) in p.stderr and "Traceback" not in p.stderr, p.stderr
    finally:
        for root, dirs, files in os.walk(home):
            for n in dirs + files:
                os.chmod(Path(root) / n, 0o755 if n in dirs else 0o644)
        os.chmod(home, 0o755)


def test_full_disk_during_the_database_write_exits_9_and_leaves_no_store_object(tmp_path, home, monkeypatch):
    """SQLite's max_page_count makes the registry database "full" just as a full disk would."""
    from sqlalchemy import event

    from loramgr.registry import db

    invoke("list")  # the registry exists, at its normal size
    real = db.make_engine

    def tiny_db(url: str, busy_ms: int = db.SQLITE_BUSY_MS):
        engine = real(url, busy_ms)

        @event.listens_for(engine, "connect")
        def _cap(dbapi_conn, _rec):
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

        return engine

    monkeypatch.setattr(db, "make_engine", tiny_db)
    big = synth.adapter_tensors(synth.module_paths(layers=40), 4, seed=3)  # many tensor rows
    r = invoke("register", _ad(tmp_path, "big", big))
    _refused(r, 9, "full")
    assert [f for f in store_files(home) if f.startswith("objects")] == []


def test_lock_wait_is_bounded_and_explained(tmp_path, home):
    assert invoke("list").exit_code == 0
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        c = sqlite3.connect(home / "registry.db", isolation_level=None, check_same_thread=False)
        c.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(30)
        c.execute("ROLLBACK")
        c.close()

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        t0 = time.monotonic()
        p = _run(["--lock-timeout", "1.5", "register", _ad(tmp_path, "ad")], timeout=60)
        took = time.monotonic() - t0
    finally:
        release.set()
        t.join()
    assert p.returncode == 6 and "write lock" in p.stderr and "--lock-timeout" in p.stderr, p.stderr
    assert took < 20
    _nothing_left(home)


# -- JSON contract ---------------------------------------------------------------------------------------
def test_every_json_error_is_a_json_object_and_json_is_strict():
    from loramgr.cli.common import _finite

    for args in (["list", "--status", "bogus", "--json"], ["show", "nope", "--json"], ["nosuchcommand", "--json"]):
        r = invoke(*args)
        doc = json.loads(r.stdout)
        assert doc["exit_code"] == r.exit_code and doc["error"] and doc["message"], args
    assert _finite({"a": [float("nan"), 1.0, float("inf")]}) == {"a": [None, 1.0, None]}
    text = subprocess.run(
        [sys.executable, "-c", "from loramgr.cli.common import emit_json; emit_json({'x': float('nan')})"],
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite token {c}")) == {"x": None}


# -- bases -----------------------------------------------------------------------------------------------
def _lora_graph(path: Path, a_shape: list, b_shape: list, elem: int = 1) -> None:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    mp = "model.layers.0.self_attn.q_proj"
    ins = [
        h.make_tensor_value_info("x", T.FLOAT, [1, a_shape[0]]),
        h.make_tensor_value_info(f"{mp}.lora_A.weight", elem, a_shape),
        h.make_tensor_value_info(f"{mp}.lora_B.weight", elem, b_shape),
    ]
    nodes = [
        h.make_node("MatMul", ["x", f"{mp}.lora_A.weight"], ["xa"]),
        h.make_node("MatMul", ["xa", f"{mp}.lora_B.weight"], ["y"]),
    ]
    out = [h.make_tensor_value_info("y", elem, [1, b_shape[1]])]
    onnx.save(h.make_model(h.make_graph(nodes, "g", ins, out)), str(path))


def test_bases_with_absurd_lora_inputs_are_refused_before_allocating(tmp_path, home):
    _lora_graph(tmp_path / "huge.onnx", [64, 2**31], [2**31, 64])
    _refused(invoke("base", "register", tmp_path / "huge.onnx", "--name", "huge"), 4, "rank 2147483648")
    _lora_graph(tmp_path / "wide.onnx", [2**20, 60000], [60000, 2**20])
    _refused(invoke("base", "register", tmp_path / "wide.onnx", "--name", "wide"), 4, "limit")
    from onnx import TensorProto as T

    _lora_graph(tmp_path / "ints.onnx", [64, 8], [8, 64], elem=T.INT32)
    _refused(invoke("base", "register", tmp_path / "ints.onnx", "--name", "ints"), 4, "int32")
    assert invoke("list", "bases", "--json").json == [] and store_files(home) in ([], [".gc.lock"])


def test_duplicate_graph_names_are_a_usage_error(tmp_path, home):
    synth.write_base(tmp_path / "a.onnx", synth.module_paths())
    r = invoke(
        "base",
        "register",
        "--name",
        "dup",
        "--graph",
        f"g={tmp_path / 'a.onnx'}",
        "--graph",
        f"g={tmp_path / 'a.onnx'}",
    )
    _refused(r, 2, "given twice")
    assert invoke("list", "bases", "--json").json == []


# -- damaged registries ----------------------------------------------------------------------------------
def _damage(home: Path, how: str) -> None:
    db = home / "registry.db"
    if how == "not a database":
        db.write_text("this is not a database\n" * 200)
    elif how == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    else:
        c = sqlite3.connect(db)
        if how == "future revision":
            c.execute("UPDATE alembic_version SET version_num = '9999'")
        elif how == "missing table":
            c.execute("DROP TABLE event")
        elif how == "corrupt JSON":
            c.execute("UPDATE adapter SET tags = '{not json'")
        c.commit()
        c.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["not a database", "truncated", "future revision", "missing table", "corrupt JSON"])
def test_damaged_registry_is_detected_with_a_hint_and_fsck_reports_it(tmp_path, home, how):
    assert invoke("register", _ad(tmp_path, "ad")).exit_code == 0
    invoke("list")
    from loramgr.registry.api import Registry

    Registry().close()
    _damage(home, how)
    for args in (["list"], ["show", "ad"]):
        r = invoke(*args)
        _refused(r, 10, "fsck")
    r = invoke("fsck", "--json")
    assert r.exit_code in (8, 10) and "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == r.exit_code


# -- import-registry --------------------------------------------------------------------------------------
def _dump(tmp_path: Path) -> dict:
    assert invoke("register", _ad(tmp_path, "ad")).exit_code == 0
    synth.write_base(tmp_path / "b.onnx", synth.module_paths())
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "tiny").exit_code == 0
    assert invoke("export-registry", "-o", tmp_path / "dump.json").exit_code == 0
    return json.loads((tmp_path / "dump.json").read_text())


@pytest.mark.parametrize(
    "table, column, value, needle",
    [
        ("adapter", "name", "../../evil", "name"),
        ("adapter", "sha256", "../../../../etc/passwd", "sha256"),
        ("adapter", "status", "bogus", "status"),
        ("adapter", "alpha", 1e308 * 10, "alpha"),
        ("adapter", "rank", -3, "rank"),
        ("graph", "file_name", "../x.onnx", "file_name"),
        ("graph", "external_data", [{"location": "/etc/passwd", "sha256": "0" * 64, "size": 1}], "external_data"),
        ("adapter_tensor", "offset_end", "many", "offset_end"),
        ("adapter", "created_at", "yesterday", "timestamp"),
        ("adapter_tensor", "adapter_id", 999999, "adapter_tensor"),
    ],
)
def test_import_registry_checks_rows_like_register(tmp_path, home, table, column, value, needle):
    doc = _dump(tmp_path)
    doc["tables"][table][0][column] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    fresh = tmp_path / "fresh"
    r = invoke("--home", fresh, "import-registry", bad)
    _refused(r, 4, str(bad), needle)
    counts = invoke("--home", fresh, "export-registry", "-o", tmp_path / "after.json", "--json").json["rows"]
    assert sum(counts.values()) == 0  # refused whole: not one row


# -- bundles ---------------------------------------------------------------------------------------------
@pytest.fixture
def plan(tmp_path: Path) -> Path:
    synth.write_base(tmp_path / "b.onnx", synth.module_paths())
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "tiny").exit_code == 0
    assert invoke("register", _ad(tmp_path, "ad")).exit_code == 0
    assert invoke("validate", "ad", "--base", "tiny").exit_code == 0
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    return tmp_path / "out" / "plan.json"


def test_bundle_output_never_replaces_an_input_or_lands_nowhere(tmp_path, plan):
    before = plan.read_bytes()
    _refused(invoke("bundle", "--plan", plan, "-o", plan), 2, "one of the files")
    section = next((plan.parent / "sections").rglob("*.onnx_adapter"))
    _refused(invoke("bundle", "--plan", plan, "-o", section), 2, "one of the files")
    _refused(invoke("bundle", "--plan", plan, "-o", tmp_path / "no" / "such" / "b.tar"), 2, "does not exist")
    (tmp_path / "adir").mkdir()
    _refused(invoke("bundle", "--plan", plan, "-o", tmp_path / "adir"), 2, "is a directory")
    _refused(invoke("bundle", "--plan", plan, "-o", plan.parent / "inside", "--dir"), 2, "overlaps")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _refused(invoke("bundle", "--plan", plan, "-o", tmp_path / "full", "--dir"), 2, "not an empty directory")
    assert plan.read_bytes() == before and not (plan.parent / "inside").exists()
    assert invoke("bundle", "--plan", plan, "-o", plan.parent / "device.tar").exit_code == 0  # beside the plan: fine


def test_bundle_check_applies_the_plan_loaders_path_rules(tmp_path, plan):
    import hashlib
    import tarfile

    assert invoke("bundle", "--plan", plan, "-o", tmp_path / "b", "--dir").exit_code == 0
    b = tmp_path / "b"
    doc = json.loads((b / "plan.json").read_text())
    doc["adapters"][0]["sections"][0]["path"] = "../../../etc/passwd"
    (b / "plan.json").write_text(json.dumps(doc))
    lines = [ln for ln in (b / "SHA256SUMS").read_text().splitlines() if not ln.endswith("  plan.json")]
    lines.append(f"{hashlib.sha256((b / 'plan.json').read_bytes()).hexdigest()}  plan.json")
    (b / "SHA256SUMS").write_text("\n".join(sorted(lines, key=lambda s: s.split("  ")[1])) + "\n")
    _refused(invoke("bundle", "check", b), 4, "escapes")
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for p in sorted(b.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(b).as_posix())
    _refused(invoke("bundle", "check", tmp_path / "b.tar"), 4, "escapes")


# -- hand-edited plans -----------------------------------------------------------------------------------
def _edited(plan: Path, name: str, edit) -> Path:
    doc = json.loads(plan.read_text())
    edit(doc)
    p = plan.with_name(name)
    p.write_text(json.dumps(doc))
    return p


def _first_section(doc: dict) -> dict:
    return doc["adapters"][0]["sections"][0]


EDITS = {
    "no graphs": lambda d: d["base"].update(graphs=[]),
    "duplicate adapters": lambda d: d["adapters"].append(dict(d["adapters"][0])),
    "section for an unknown graph": lambda d: _first_section(d).update(graphs=["nope"]),
    "adapter named ../../x": lambda d: d["adapters"][0].update(name="../../x", ref="../../x"),
    "size not a number": lambda d: _first_section(d).update(size="big"),
    "graph path escapes": lambda d: d["base"]["graphs"][0].update(path="../../etc/passwd"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_hand_edited_plans_are_format_errors(tmp_path, plan, edit):
    p = _edited(plan, "edited.json", EDITS[edit])
    for args in (
        ["plan-show", p],
        ["plan-show", p, "--adapter", "ad"],
        ["bundle", "--plan", p, "-o", tmp_path / "x.tar"],
    ):
        r = invoke(*args)
        _refused(r, 4, str(p.parent))


def test_garbage_section_and_a_section_used_as_a_graph_name_the_file(tmp_path, plan):
    import hashlib

    from loramgr.runtime.ort import LoraSession

    doc = json.loads(plan.read_text())
    sec = plan.parent / _first_section(doc)["path"]
    sec.write_bytes(b"\x00garbage" * 100)
    _first_section(doc).update(sha256=hashlib.sha256(sec.read_bytes()).hexdigest(), size=sec.stat().st_size)
    garbage = plan.with_name("garbage.json")
    garbage.write_text(json.dumps(doc))
    from loramgr.errors import InvalidInputError
    from loramgr.runtime import Plan

    s = LoraSession(Plan.load(garbage))
    with pytest.raises(InvalidInputError, match="ONNX Runtime cannot load this section"):
        s.apply("ad")
    doc = json.loads(plan.read_text())
    g = doc["base"]["graphs"][0]
    other = next((plan.parent / "sections").rglob("*.onnx_adapter"))
    g.update(
        path=other.relative_to(plan.parent).as_posix(),
        sha256=hashlib.sha256(other.read_bytes()).hexdigest(),
        size=other.stat().st_size,
        external_data=[],
    )
    swapped = plan.with_name("swapped.json")
    swapped.write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="ONNX Runtime cannot load this graph"):
        LoraSession(Plan.load(swapped))
