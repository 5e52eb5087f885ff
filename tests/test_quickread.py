"""`loramgr show` reads one adapter through the standard library's sqlite3 when it can (no SQLAlchemy
import): its answer equals the full registry's for every kind of ref, and it steps aside for what it
cannot answer exactly (sha prefixes, bases, unknown names, an older schema, PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from loramgr.testing import synth
from tests.conftest import invoke


@pytest.fixture
def reg3(tmp_path):
    mps = synth.module_paths()
    synth.write_base(tmp_path / "b.onnx", mps)
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "b").exit_code == 0
    for seed in (1, 2):
        d = synth.write_adapter(
            tmp_path / f"a{seed}",
            synth.adapter_tensors(mps, 4, seed=seed),
            synth.peft_config(4, 8, ["q_proj", "v_proj"]),
        )
        assert invoke("register", d, "--name", "ad", "--tag", f"seed={seed}").exit_code == 0
    return tmp_path


def test_fast_path_equals_the_registry(reg3):
    from loramgr.config import Settings
    from loramgr.registry import quickread
    from loramgr.registry.api import Registry

    settings = Settings.resolve()
    full = Registry(settings)
    sha = full.adapter("ad@1").sha256
    for ref in ("ad", "ad@1", "ad@2"):
        fast = quickread.show_adapter(settings, ref)
        assert fast is not None and fast == full.adapter(ref), ref
        assert invoke("show", ref, "--json").json == full.adapter(ref).to_json(full=True) | {"kind": "adapter"}
    for ref in (sha[:12], "b", "nope", "ad@9", "a@b@c"):
        assert quickread.show_adapter(settings, ref) is None, ref  # the full path answers (or words the error)
    assert invoke("show", sha[:12], "--json").json["ref"] == "ad@1"
    assert invoke("show", "b", "--json").json["kind"] == "base"
    assert invoke("show", "nope").exit_code == 3
    other = dataclasses.replace(settings, db_url="postgresql://nowhere/x")  # another database: the full path
    assert quickread.show_adapter(other, "ad") is None
    con = sqlite3.connect(settings.home / "registry.db")
    con.execute("UPDATE alembic_version SET version_num = '0005'")
    con.commit()
    con.close()
    assert quickread.show_adapter(settings, "ad") is None  # not at the head: the full path migrates it
    full.close()


def test_schema_tables_are_the_models_tables():
    from loramgr.registry import SCHEMA_TABLES
    from loramgr.registry.db import expected_tables

    assert expected_tables() | {"alembic_version"} == SCHEMA_TABLES


def test_show_imports_no_sqlalchemy(reg3):
    code = (
        "import sys\nfrom loramgr.cli import main\n"
        "try:\n    main(['show', 'ad', '--json'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic'))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )
    assert p.returncode == 0, p.stderr
    *doc, mods = p.stdout.strip().splitlines()
    assert json.loads("\n".join(doc))["ref"] == "ad@2" and json.loads(mods) == []
