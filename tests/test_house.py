"""The shape of the project: what ships in the wheel, the generated CLI reference, typed errors
with one exit code each, typed records from the registry, and one transaction per registration."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import invoke, store_files

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_generated_and_fresh():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_docs.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    doc = (ROOT / "docs" / "cli.md").read_text()
    from loramgr.cli import cli
    from scripts.cli_docs import _walk

    for path, text in _walk(cli, ["loramgr"], None):
        assert f"## {' '.join(path)}\n" in doc
        body = text.split("\n\n", 2)[1].strip() if "\n\n" in text else ""
        assert body and not body.startswith("Options:"), f"{' '.join(path)} has no help text"


def test_no_package_folder_named_build_and_one_top_level_package():
    assert not [p for p in (ROOT / "loramgr").rglob("build") if p.is_dir()]
    assert not list((ROOT / "migrations").rglob("*.py"))  # a signpost to the package's migrations, no code
    assert (ROOT / "loramgr" / "registry" / "migrations" / "versions").is_dir()


def test_demo_calibration_set_is_where_the_demo_reads_it():
    from loramgr.testing.demo import CALIBRATION_SET

    assert CALIBRATION_SET.is_file() and CALIBRATION_SET.read_text().strip()


def test_demo_and_synthetic_helpers_are_off_the_core_import_path():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "loramgr").rglob("*.py")
        if "testing" not in p.parts and "loramgr.testing" in p.read_text()
    ]
    assert offenders == []


@pytest.mark.slow
def test_wheel_has_only_loramgr_with_migrations_and_schema_and_init_works(tmp_path):
    wd = tmp_path / "wheel"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wd), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = wd.glob("loramgr-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"loramgr"}
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    if top_level:  # setuptools writes it; its only line must be loramgr
        assert zipfile.ZipFile(whl).read(top_level[0]).decode().split() == ["loramgr"]
    assert any(n.startswith("loramgr/registry/migrations/versions/0001_") for n in names)
    assert "loramgr/registry/migrations/env.py" in names
    assert "loramgr/deploy/schemas/plan.schema.json" in names and "loramgr/py.typed" in names
    assert "loramgr/testing/data/demo_calib.jsonl" in names  # the demo's calibration set
    # a fresh venv with the wheel installed (dependencies come from the test's own environment through a
    # path entry, not from this checkout: the checkout's editable finder is not activated there)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "sqlalchemy").is_dir())
    (site / "zz_deps.pth").write_text(str(deps) + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(whl)],
        check=True,
        timeout=300,
    )
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LORAMGR_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import loramgr; print(loramgr.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert where.stdout.strip().startswith(str(site)), where
    r = subprocess.run(
        [str(venv / "bin" / "loramgr"), "init", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert '"revision"' in r.stdout and (tmp_path / "home" / "registry.db").is_file()


def _built_plan(tmp_path: Path, tiny) -> Path:
    assert invoke("base", "register", tiny.base, "--name", "tiny").exit_code == 0
    d, _ = tiny.adapter("a1")
    assert invoke("register", d).exit_code == 0
    assert invoke("validate", "a1", "--base", "tiny").exit_code == 0
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    assert invoke("plan", "--base", "tiny").exit_code == 0
    return tmp_path / "out" / "plan.json"


def test_not_found_in_a_plan_is_exit_3_everywhere(tmp_path, tiny):
    plan = _built_plan(tmp_path, tiny)
    for args in (
        ["plan-show", plan, "--adapter", "nope"],
        ["run", "--plan", plan, "--adapter", "nope", "--input-ids", "1"],
    ):
        r = invoke(*args)
        assert r.exit_code == 3, (args, r.stderr)
        assert r.stderr.strip() == "loramgr: error: adapter nope: is not in the plan (have: a1, default)"
    from loramgr.errors import NotFoundError
    from loramgr.runtime import Plan

    with pytest.raises(NotFoundError):
        Plan.load(plan).adapter("nope")
    with pytest.raises(KeyError):  # still a KeyError for mapping-style callers
        Plan.load(plan).adapter("nope")


def test_list_status_must_be_a_known_stage():
    r = invoke("list", "--status", "bogus")
    assert r.exit_code == 2 and "bogus" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = invoke("list", "--status", "bogus", "--json")
    assert r.exit_code == 2 and r.json["error"] == "usage"
    from loramgr.errors import UsageError
    from loramgr.registry.api import Registry

    with pytest.raises(UsageError):
        Registry().adapters(status="bogus")


def test_list_filters_by_base(tmp_path, tiny):
    invoke("base", "register", tiny.base, "--name", "tiny")
    a, _ = tiny.adapter("mine")
    b, _ = tiny.adapter("other", seed=2)
    invoke("register", a, "--base", "tiny")
    invoke("register", b)
    assert [r["ref"] for r in invoke("list", "--base", "tiny", "--json").json] == ["mine@1"]
    assert invoke("validate", "other", "--base", "tiny").exit_code == 0
    assert [r["ref"] for r in invoke("list", "--base", "tiny", "--json").json] == ["mine@1", "other@1"]


def test_register_with_bad_encodings_leaves_no_row_and_no_store_file(tmp_path, tiny, home):
    invoke("base", "register", tiny.base, "--name", "tiny")
    before = store_files(home)
    d, _ = tiny.adapter("a1")
    bad = tmp_path / "bad.encodings"
    bad.write_text(
        '{"activation_encodings": {"no_such_tensor": [{"bitwidth": 8, "dtype": "int", '
        '"is_symmetric": "False", "min": 0, "max": 1, "scale": 0.1, "offset": 0}]}, '
        '"param_encodings": {}}'
    )
    r = invoke("register", d, "--base", "tiny", "--encodings", bad)
    assert r.exit_code == 4 and "no_such_tensor" in r.stderr
    assert invoke("list", "--json").json == [] and store_files(home) == before
    garbage = tmp_path / "garbage.encodings"
    garbage.write_text("{not json")
    assert invoke("register", d, "--base", "tiny", "--encodings", garbage).exit_code == 4
    assert invoke("list", "--json").json == [] and store_files(home) == before


def test_register_with_encodings_is_one_transaction(tmp_path, tiny, home, monkeypatch):
    """A failure while the encodings are written rolls the adapter row back with them."""
    invoke("base", "register", tiny.base, "--name", "tiny")
    before = store_files(home)
    d, _ = tiny.adapter("a1")
    good = tmp_path / "good.encodings"
    good.write_text(
        '{"activation_encodings": {"out0": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", '
        '"min": 0, "max": 1, "scale": 0.1, "offset": 0}]}, "param_encodings": {}}'
    )
    from loramgr.registry.encodings import Encodings

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Encodings, "write", boom)
        r = invoke("register", d, "--base", "tiny", "--encodings", good)
    assert r.exit_code == 9, r.stderr
    assert invoke("list", "--json").json == [] and store_files(home) == before
    ok = invoke("register", d, "--base", "tiny", "--encodings", good, "--json")
    assert ok.exit_code == 0 and ok.json["encodings"] == 1
    assert invoke("encodings", "show", "a1", "--base", "tiny", "--json").json["activation_encodings"]["out0"]


def test_foreign_key_violation_is_reported_at_once_not_retried(tiny):
    from loramgr.errors import ConflictError
    from loramgr.registry.api import Registry
    from loramgr.registry.models import ValidationRow

    reg = Registry()
    calls = []

    def write(s):
        calls.append(1)
        s.add(ValidationRow(adapter_id=424242, base_id=424242, ok=True, problems=[]))
        s.flush()

    t0 = time.monotonic()
    with pytest.raises(ConflictError, match="FOREIGN KEY"):
        reg.retrying(write)
    assert len(calls) == 1 and time.monotonic() - t0 < 1.0
    reg.close()


def test_registry_returns_frozen_typed_records(tmp_path, tiny):
    from loramgr.records import Adapter, Base
    from loramgr.registry.api import Registry

    invoke("base", "register", tiny.base, "--name", "tiny")
    d, _ = tiny.adapter("a1")
    reg = Registry()
    rec, created = reg.register_adapter(d)
    assert created and isinstance(rec, Adapter) and rec.ref == "a1@1" and rec.tensors
    base = reg.base("tiny")
    assert isinstance(base, Base) and base.graph_names == ["base"] and base.attachment_points
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "retired"  # type: ignore[misc]
    assert all(isinstance(a, Adapter) and a.tensors is None and a.tensor_count == 8 for a in reg.adapters())
    reg.close()


def test_public_api_is_exported():
    import loramgr

    for name in (
        "Registry",
        "Settings",
        "register",
        "validate",
        "build",
        "write_plan",
        "calibrate",
        "verify",
        "Plan",
        "LoramgrError",
        "Adapter",
        "Base",
    ):
        assert hasattr(loramgr, name), name
    assert (Path(loramgr.__file__).parent / "py.typed").is_file()


def test_validate_codes_table_is_the_source_of_every_code():
    from loramgr.validation import CODES, Problem

    with pytest.raises(ValueError):
        Problem("not_a_code", "x")
    doc = (ROOT / "docs" / "validate.md").read_text()
    for code in CODES:
        assert f"`{code}`" in doc, code
