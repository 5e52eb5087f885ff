"""The second hardening round: one test per class the second adversarial run found (wrong answers
with exit 0, files overwritten, writes outside the chosen place, exit-1 crashes on bad input). Each
refusal is checked for its exit code, its one line, and that nothing was written."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from loramgr.testing import synth
from tests.conftest import invoke
from tests.test_hardening import _refused

ALL = synth.module_paths(("q_proj", "v_proj"))


def _adapter(tmp: Path, name: str, base: str = "b", r: int = 8, seed: int = 1) -> None:
    t = synth.adapter_tensors(ALL, r, seed=seed)
    synth.write_adapter(tmp / "ads" / name, t, synth.peft_config(r, 16, ["q_proj", "v_proj"]))
    assert invoke("register", tmp / "ads" / name, "--name", name).exit_code == 0
    assert invoke("validate", name, "--base", base).exit_code == 0


def _base(tmp: Path, name: str = "b", dtype=np.float32, slots: int | None = 2) -> Path:
    path = tmp / f"{name}.onnx"
    synth.write_base(path, ALL, dtype=dtype, max_adapters=slots)
    r = invoke("base", "register", path, "--name", name)
    assert r.exit_code == 0, r.stderr
    return path


@pytest.fixture
def planned(tmp_path):
    """Base ``b`` (two alpha slots) with adapters ``a`` and ``c`` and use case ``uc``, built and planned."""
    _base(tmp_path)
    _adapter(tmp_path, "a")
    _adapter(tmp_path, "c", seed=2)
    assert invoke("usecase", "create", "uc", "a", "c", "--base", "b").exit_code == 0
    out = tmp_path / "out"
    assert invoke("build", "--base", "b", "-o", out).exit_code == 0
    assert invoke("plan", "--base", "b").exit_code == 0
    return out / "plan.json"


# -- numbers: finite in the dtype that will hold them ------------------------------------------------
def test_an_alpha_is_checked_in_the_alpha_inputs_dtype_not_as_a_double(planned):
    from loramgr.runtime import Plan, PlanValueError
    from loramgr.runtime.ort import LoraSession

    s = LoraSession(Plan.load(planned))
    feeds = {"x": np.ones((1, 64), np.float32)}
    s.apply("a")
    assert all(np.isfinite(o).all() for o in s.run(feeds, alpha=2.0))
    s.run(feeds, alpha=-3.4e38)  # representable in float32: the input holds it (what it computes is the caller's)
    for bad in (1e39, -1e39, float("nan")):
        with pytest.raises(PlanValueError, match="finite float32"):
            s.run(feeds, alpha=bad)
    with pytest.raises(PlanValueError):
        s.set_alpha(1e39)
        s.run(feeds)


def test_a_use_case_alpha_past_float16_is_refused_on_an_fp16_base(tmp_path):
    _base(tmp_path, "h", dtype=np.float16)
    _adapter(tmp_path, "a", base="h")
    _adapter(tmp_path, "c", base="h", seed=2)
    r = invoke("usecase", "create", "uc", "a", "c", "--base", "h", "--alphas", "70000,1")
    _refused(r, 5, "bad_alpha", "65504")
    assert invoke("usecase", "list", "--json").json == []
    assert invoke("usecase", "create", "uc", "a", "c", "--base", "h", "--alphas", "65504,1").exit_code == 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["adapters"][0].__setitem__("recommended_alpha", 1e39),
        lambda d: d["use_cases"][0].__setitem__("alphas", [1.0, -1e39]),
        lambda d: d["alpha"].__setitem__("default", 3.5e38),
        lambda d: (d["base"].__setitem__("precision", "fp16"), d["use_cases"][0].__setitem__("alphas", [7e4, 1])),
    ],
    ids=["recommended", "use-case", "default", "fp16-use-case"],
)
def test_a_plan_whose_alpha_overflows_its_input_is_refused_at_load(planned, edit):
    doc = json.loads(planned.read_text())
    edit(doc)
    planned.write_text(json.dumps(doc))
    _refused(invoke("plan-show", planned), 4, "alpha")


# -- one set of names for what a plan names --------------------------------------------------------
def test_reserved_and_taken_names_are_refused_for_use_cases_groups_and_adapters(tmp_path):
    _base(tmp_path)
    _adapter(tmp_path, "a")
    _adapter(tmp_path, "c", seed=2)
    for name in ("default", "default_adapter", "Default"):
        _refused(invoke("usecase", "create", name, "a", "c", "--base", "b"), 4, "reserved")
    _refused(invoke("usecase", "create", "a", "a", "c", "--base", "b"), 6, "is the name of an adapter")
    assert invoke("usecase", "list", "--json").json == []
    assert invoke("usecase", "create", "uc", "a", "c", "--base", "b").exit_code == 0
    t = synth.adapter_tensors(ALL, 4, seed=9)
    synth.write_adapter(tmp_path / "ads" / "x", t, synth.peft_config(4, 8, ["q_proj", "v_proj"]))
    _refused(invoke("register", tmp_path / "ads" / "x", "--name", "uc"), 6, "is the name of a use case")
    _refused(invoke("register", tmp_path / "ads" / "x", "--name", "DEFAULT"), 4, "reserved")
    assert [a["name"] for a in invoke("list", "--json").json] == ["a", "c"]
    _refused(invoke("group", "create", "default", "uc", "--base", "b"), 4, "reserved")


@pytest.mark.parametrize("registry_db", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_group_creates_sharing_a_use_case_one_wins(tmp_path, registry_db):
    from loramgr.config import Settings
    from loramgr.errors import ConflictError
    from loramgr.registry.api import Registry

    _base(tmp_path)
    _adapter(tmp_path, "a")
    _adapter(tmp_path, "c", seed=2)
    for name, ads in (("u1", ("a",)), ("u2", ("c",)), ("u3", ("a", "c"))):
        assert invoke("usecase", "create", name, *ads, "--base", "b").exit_code == 0
    for trial in range(6):
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def make(
            group: str, members: tuple[str, ...], barrier: threading.Barrier = barrier, outcomes: list = outcomes
        ) -> None:
            reg = Registry(Settings.resolve())
            try:
                barrier.wait()
                reg.use_cases.create_group(group, "b", members)
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")
            finally:
                reg.close()

        threads = [
            threading.Thread(target=make, args=(f"g{trial}x", ("u1", "u3"))),
            threading.Thread(target=make, args=(f"g{trial}y", ("u2", "u3"))),
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert sorted(outcomes) == ["conflict", "ok"], outcomes
        groups = {g["name"]: g["use_cases"] for g in invoke("group", "list", "--json").json}
        assert len(groups) == 1 and all(len(m) == 2 for m in groups.values()), groups
        (name,) = groups
        assert invoke("group", "remove", name, "--base", "b").exit_code == 0


# -- outputs: never onto the build's own files, never through a link ---------------------------------
def test_plan_outputs_never_land_on_the_builds_own_files(planned):
    before = planned.read_bytes()
    doc = json.loads(before)
    section = planned.parent / doc["adapters"][0]["sections"][0]["path"]
    graph = planned.parent / doc["base"]["graphs"][0]["path"]
    section_bytes = section.read_bytes()
    _refused(invoke("plan", "--base", "b", "--genie-config", planned), 2, "build's own files")
    _refused(invoke("plan", "--base", "b", "--genie-config", section), 2, "build's own files")
    _refused(invoke("plan", "--base", "b", "-o", graph), 2)  # (also outside the plan's directory)
    link = planned.parent / "plan-link.json"
    link.symlink_to(planned)
    _refused(invoke("plan", "--base", "b", "--genie-config", link), 2, "symbolic link")
    assert planned.read_bytes() == before and section.read_bytes() == section_bytes


def test_qnn_ep_configs_are_never_written_through_a_planted_link(planned, tmp_path):
    probe = invoke("plan", "--base", "b", "-o", tmp_path / "out" / "p2.json", "--qnn-ep-configs", tmp_path / "probe")
    assert probe.exit_code == 0, probe.stderr
    names = sorted(p.name for p in (tmp_path / "probe").iterdir())
    assert names
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    ep = tmp_path / "ep"
    ep.mkdir()
    (ep / names[0]).symlink_to(victim)
    r = invoke("plan", "--base", "b", "-o", tmp_path / "out" / "p3.json", "--qnn-ep-configs", ep)
    _refused(r, 2, "symbolic link")
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("odd", ["pct%41", "q?x", "h#y", "sp ace"])
def test_a_home_with_url_characters_is_the_home_used(tmp_path, monkeypatch, odd):
    home = tmp_path / odd
    monkeypatch.setenv("LORAMGR_HOME", str(home))
    t = synth.adapter_tensors(ALL, 4, seed=3)
    synth.write_adapter(tmp_path / "ad", t, synth.peft_config(4, 8, ["q_proj", "v_proj"]))
    assert invoke("register", tmp_path / "ad", "--name", "odd").exit_code == 0
    assert (home / "registry.db").is_file()
    assert set(os.listdir(tmp_path)) <= {"ad", odd, "home"}  # no database next to it under a decoded name
    shown = invoke("show", "odd", "--json")
    assert shown.exit_code == 0 and shown.json["name"] == "odd"
    assert [a["name"] for a in invoke("list", "--json").json] == ["odd"]


# -- encodings and calibration data: bad numbers are invalid input, not crashes ------------------------
def _stored(tmp: Path) -> tuple[dict, dict]:
    """Adapter ``a``'s encodings on base ``b``, as stored: (activation, param)."""
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    reg = Registry(Settings.resolve())
    enc = reg.encodings.get(reg.base("b").id, reg.adapter("a").id)
    return dict(enc.activation), dict(enc.param)


def _enc(tmp: Path, doc: dict) -> Path:
    p = tmp / "e.encodings"
    p.write_text(json.dumps(doc))
    return p


def _v1(**entry: object) -> dict:
    e = {"name": "out0", "bw": 8, "dtype": "INT", "is_sym": False, "scale": [0.1], "offset": [0]}
    return {"version": "1.0.0", "activation_encodings": [e | entry], "param_encodings": []}


def _act(**entry: object) -> dict:
    e = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.0, "max": 1.0, "offset": -128, "scale": 0.01}
    return {"version": "0.6.1", "activation_encodings": {"out0": [e | entry]}, "param_encodings": {}}


@pytest.mark.parametrize(
    "doc,needle",
    [
        (_act(min=int("9" * 400)), "min"),
        (_act(scale=0), "scale > 0"),
        (_act(offset=10**18), "offset"),
        (_act(scale=1e39), "scale"),
        (
            {"version": "1.0.0", "activation_encodings": [{"name": "out0", "bw": 2000, "scale": [0.1], "offset": [0]}]},
            "bitwidth",
        ),
        (
            {
                "version": "1.0.0",
                "activation_encodings": [{"name": "out0", "bw": 8, "scale": [0.1], "offset": [int("9" * 400)]}],
            },
            "offset",
        ),
    ],
    ids=["400-digits", "scale-0", "offset-1e18", "scale-1e39", "bw-2000", "v1-400-digits"],
)
def test_encodings_with_numbers_the_runtime_cannot_hold_are_refused(tmp_path, doc, needle):
    _base(tmp_path)
    _adapter(tmp_path, "a")
    r = invoke("encodings", "import", "a", _enc(tmp_path, doc), "--base", "b")
    _refused(r, 4, needle)
    assert _stored(tmp_path) == ({}, {})


def test_per_channel_encodings_must_match_the_tensors_channels(tmp_path):
    _base(tmp_path)
    _adapter(tmp_path, "a")
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    ap = Registry(Settings.resolve()).base("b").attachment_points[0]
    e = {
        "bitwidth": 8,
        "dtype": "int",
        "is_symmetric": "True",
        "min": -1.28,
        "max": 1.27,
        "offset": -128,
        "scale": 0.01,
    }
    doc = {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {ap.tensor_a: [e] * 3}}
    _refused(invoke("encodings", "import", "a", _enc(tmp_path, doc), "--base", "b"), 4, "3 entries", str(ap.rank))
    doc["param_encodings"] = {ap.tensor_a: [e] * ap.rank, ap.tensor_b: [e]}
    assert invoke("encodings", "import", "a", _enc(tmp_path, doc), "--base", "b").exit_code == 0


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"x": np.full((2, 1, 64), np.nan, np.float32)}, "NaN"),
        ({"x": np.zeros((0, 1, 64), np.float32)}, "no samples"),
        ({"x": np.zeros((2, 1, 7), np.float32)}, "cannot run a sample"),
        ({"x": np.zeros((3,), np.float32)}, "cannot run a sample"),
        ({"x": np.array([["a"]])}, "not numbers"),
        (b"PK\x03\x04garbage", "not a readable .npz"),
    ],
    ids=["nan", "zero-samples", "wrong-shape", "1-d", "strings", "zip-garbage"],
)
def test_calibration_data_that_cannot_calibrate_is_refused(tmp_path, arrays, needle):
    _base(tmp_path, slots=None)
    _adapter(tmp_path, "a")
    p = tmp_path / "calib.npz"
    if isinstance(arrays, bytes):
        p.write_bytes(arrays)
    else:
        np.savez(p, **arrays)
    _refused(invoke("calibrate", "--base", "b", "--all", "--data", p), 4, needle)
    assert _stored(tmp_path) == ({}, {})


def test_float64_calibration_data_is_converted_not_refused(tmp_path):
    _base(tmp_path, slots=None)
    _adapter(tmp_path, "a")
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.random.default_rng(0).standard_normal((2, 1, 64)))
    r = invoke("calibrate", "--base", "b", "--all", "--data", p, "--json")
    assert r.exit_code == 0, r.stderr
    assert all(o["activation_tensors"] > 0 for o in r.json["adapters"])


def test_atomic_write_replaces_a_link_instead_of_writing_through_it(tmp_path):
    from loramgr.infra.store import atomic_write

    victim = tmp_path / "victim"
    victim.write_text("keep")
    out = tmp_path / "out.txt"
    out.symlink_to(victim)
    (tmp_path / f".out.txt.{os.getpid()}.tmp").symlink_to(victim)  # a link planted at the temporary name
    atomic_write(out, b"new")
    assert victim.read_text() == "keep" and not out.is_symlink() and out.read_bytes() == b"new"


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "0"])
def test_a_tool_timeout_that_is_not_a_duration_is_refused_before_any_build_row(tmp_path, value):
    from sqlalchemy import func, select

    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.registry.models import BuildRow

    _base(tmp_path)
    _adapter(tmp_path, "a")
    (tmp_path / "sdk").mkdir()
    args = ["build", "--base", "b", "--backend", "qairt", "--sdk-root", tmp_path / "sdk", "-o", tmp_path / "out"]
    _refused(invoke(*args, "--tool-timeout", value), 2, "timeout")
    with Registry(Settings.resolve()).session() as s:
        assert s.scalar(select(func.count()).select_from(BuildRow)) == 0


# -- the registry: damaged values are damage (exit 10), unreachable or failing storage is exit 9 ---------
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE adapter SET tags = '[1, 2]'",
        "UPDATE adapter SET peft_config = '[]'",
        "UPDATE adapter SET created_at = 'xx'",
        'UPDATE encoding SET entries = \'[{"bitwidth": 8, "dtype": "int", "scale": NaN}]\'',
        "UPDATE encoding SET entries = '\"x\"'",
        "INSERT INTO alembic_version VALUES ('0005')",
    ],
    ids=["tags-list", "peft-config-list", "created-at", "encoding-nan", "encoding-string", "two-revisions"],
)
def test_damaged_row_values_are_registry_damage_everywhere(tmp_path, home, sql):
    import sqlite3

    _base(tmp_path, slots=None)
    _adapter(tmp_path, "a")
    e = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.0, "max": 1.0, "offset": -128}
    doc = {"version": "0.6.1", "activation_encodings": {"out0": [e | {"scale": 0.01}]}, "param_encodings": {}}
    assert invoke("encodings", "import", "a", _enc(tmp_path, doc), "--base", "b").exit_code == 0
    con = sqlite3.connect(home / "registry.db")
    con.execute(sql)
    con.commit()
    con.close()
    commands = [("show", "a"), ("show", "a", "--json"), ("list",), ("encodings", "show", "a", "--base", "b")]
    if "encoding" not in sql:
        commands.append(("history", "a"))
    for args in commands:
        r = invoke(*args)
        if "encoding" in sql and args[0] in ("show", "list"):
            assert r.exit_code == 0, (args, r.stderr)  # the damaged row is not read by these
        else:
            _refused(r, 10, "registry database")
    r = invoke("fsck", "--json")  # reported (exit 8, the database's problem named) or refused at open (10)
    assert r.exit_code in (8, 10), r.stdout + r.stderr
    assert r.exit_code == 10 or r.json["details"]["database"], r.stdout


@pytest.mark.parametrize(
    "url,code",
    [("garbage", 2), ("mysql://u@h/db", 2), ("postgresql://nobody@[::1", 2), ("postgresql://u:pw@127.0.0.1:1/x", 9)],
)
def test_a_db_url_loramgr_cannot_use_or_reach_says_so(monkeypatch, url, code):
    monkeypatch.setenv("LORAMGR_DB_URL", url)
    r = invoke("list")
    _refused(r, code)
    assert "pw" not in r.stderr  # the password never printed


def test_fsck_calls_a_directory_in_an_objects_place_corruption(tmp_path, home):
    _base(tmp_path, slots=None)
    _adapter(tmp_path, "a")
    obj = next(p for p in (home / "store" / "objects").rglob("*") if p.is_file() and p.suffix != ".onnx")
    obj.unlink()
    obj.mkdir()
    r = invoke("fsck", "--json")
    assert r.exit_code == 8 and [c["path"] for c in r.json["details"]["corrupt"]] == [str(obj)], r.stdout


def test_verify_after_gc_collected_an_adapter_is_not_found(planned):
    assert invoke("verify", "--plan", planned, "--adapter", "a", "--mode", "sections").exit_code == 0
    assert invoke("retire", "a", "--force").exit_code == 0
    assert invoke("gc", "--retired", "--grace", "0").exit_code == 0
    _refused(invoke("verify", "--plan", planned, "--adapter", "a", "--mode", "sections"), 3, "gone")


def test_verify_sections_reads_a_bf16_adapter(tmp_path):
    import ml_dtypes

    _base(tmp_path, slots=None)
    t = {k: v.astype(ml_dtypes.bfloat16) for k, v in synth.adapter_tensors(ALL, 8, seed=4).items()}
    synth.write_adapter(tmp_path / "bf", t, synth.peft_config(8, 16, ["q_proj", "v_proj"]))
    assert invoke("register", tmp_path / "bf", "--name", "bf").exit_code == 0
    assert invoke("validate", "bf", "--base", "b").exit_code == 0
    assert invoke("build", "--base", "b", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "b").exit_code == 0
    r = invoke("verify", "--plan", tmp_path / "out" / "plan.json", "--mode", "sections", "--json")
    assert r.exit_code == 0 and r.json["ok"], r.stdout + r.stderr


def test_negative_integers_in_calibration_data_are_refused(tmp_path):
    _base(tmp_path, slots=None)
    _adapter(tmp_path, "a")
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.zeros((2, 1, 64), np.float32), ids=np.full((2, 3), -1, np.int64))
    _refused(invoke("calibrate", "--base", "b", "--all", "--data", p), 4, "negative")


def test_a_full_disk_is_exit_9_and_leaves_nothing(tmp_path, monkeypatch):
    """On a 2 MiB tmpfs filled to 24 KiB and to 0: `list` and `register` say the disk is full or failing
    (exit 9; `list` said the healthy database was damaged, exit 10), no store object or row is left."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        home = small / "home"
        monkeypatch.setenv("LORAMGR_HOME", str(home))
        t = synth.adapter_tensors(ALL, 8, seed=6)
        synth.write_adapter(tmp_path / "ad", t, synth.peft_config(8, 16, ["q_proj", "v_proj"]))
        assert invoke("init").exit_code == 0
        for leave_kib in (24, 0):
            st = os.statvfs(small)
            filler = small / "filler"
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_kib * 1024))
            _refused(invoke("register", tmp_path / "ad", "--name", "a"), 9)
            r = invoke("list")  # reads may still succeed; a failing one names the disk, never "damaged"
            assert r.exit_code == 0 or (r.exit_code == 9 and "disk" in r.stderr), r.stderr
            assert [p for p in (home / "store").rglob("*") if p.is_file() and "objects" in p.parts] == []
            filler.unlink()
            assert invoke("list", "--json").json == []
            assert invoke("fsck", "--grace", "0").exit_code == 0
    finally:
        subprocess.run(["umount", "--lazy", small], capture_output=True)  # a pooled handle may still be open


def test_no_registry_file_stays_open_after_a_command(tmp_path, home):
    """A library caller's process goes on after a command: `init` and `db upgrade` left their engine's
    SQLite handles open (which also kept a full tmpfs from being unmounted)."""

    def open_under_home() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(home)):
                out.append(target)
        return out

    t = synth.adapter_tensors(ALL, 4, seed=8)
    synth.write_adapter(tmp_path / "ad", t, synth.peft_config(4, 8, ["q_proj", "v_proj"]))
    for args in (("init",), ("db", "upgrade"), ("db", "upgrade", "--list"), ("register", tmp_path / "ad"), ("list",)):
        assert invoke(*args).exit_code == 0, args
        assert open_under_home() == [], args
    assert invoke("fsck", "--grace", "0").exit_code == 0 and open_under_home() == []
