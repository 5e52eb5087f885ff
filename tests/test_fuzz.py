"""Property-based fuzzing of every parser that reads user files: safetensors header (through
`register`, so rows and store files are checked too), PEFT config, ONNX inspection, AIMET encodings,
plan loader, bundle reader. Each generated or mutated input is either parsed or refused with a
LoramgrError — never another exception, never a hang (hypothesis deadline per case).

Examples per target: LORAMGR_FUZZ_EXAMPLES (default 150; CI runs 1700 x 6 targets = 10,200).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loramgr.errors import LoramgrError
from loramgr.testing import synth

N = int(os.environ.get("LORAMGR_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=N,
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- generic mutators --------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=30,
)
mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "delete", "dup", "zero"]),
    st.floats(0, 1),
    st.binary(min_size=1, max_size=16),
)


def mutate(data: bytes, muts: list[tuple[str, float, bytes]]) -> bytes:
    b = bytearray(data)
    for op, where, blob in muts:
        i = int(where * max(len(b) - 1, 0)) if b else 0
        if op == "flip" and b:
            b[i] ^= blob[0] or 1
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = blob
        elif op == "delete":
            del b[i : i + len(blob)]
        elif op == "dup" and b:
            b[i:i] = b[i : i + 64]
        elif op == "zero":
            b[i : i + len(blob)] = bytes(len(b[i : i + len(blob)]))
    return bytes(b)


def mutate_json(doc, path: list, value):
    """Replace the subtree reached by following ``path`` (indices into keys/items) with ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        k = sorted(doc)[path[0] % len(doc)]
        return {**doc, k: mutate_json(doc[k], path[1:], value)}
    i = path[0] % len(doc)
    return doc[:i] + [mutate_json(doc[i], path[1:], value)] + doc[i + 1 :]


json_mutation = st.tuples(st.lists(st.integers(0, 50), max_size=4), json_values)


def refuse_only_loramgr_errors(fn, *args, names: str | None = None) -> Any:
    """``fn(*args)``'s result, or None when it refused the input as loramgr refuses: a LoramgrError
    whose one-line message names the input (``names``, default the first argument). Anything else
    (a traceback-worthy exception) fails the test."""
    try:
        return fn(*args)
    except LoramgrError as e:
        assert "\n" not in e.message and len(e.message) < 2000, e.message
        assert str(names if names is not None else args[0]) in e.message, (e.message, args[0])
        return None


# -- targets -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    mps = synth.module_paths()
    adapter = synth.write_adapter(
        d / "ad", synth.adapter_tensors(mps, 4, seed=1), synth.peft_config(4, 8, ["q_proj", "v_proj"])
    )
    synth.write_base(d / "base.onnx", mps)
    return {
        "safetensors": (adapter / "adapter_model.safetensors").read_bytes(),
        "config": json.loads((adapter / "adapter_config.json").read_text()),
        "onnx": (d / "base.onnx").read_bytes(),
    }


@pytest.fixture
def registry(home):
    from loramgr.config import Settings
    from loramgr.registry.api import Registry

    reg = Registry(Settings.resolve())
    yield reg
    reg.close()


def _rows(reg) -> int:
    from sqlalchemy import func, select

    from loramgr.registry.models import AdapterRow

    with reg.session() as s:
        return s.scalar(select(func.count()).select_from(AdapterRow))


@SETTINGS
@given(muts=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_safetensors_register(seeds, tmp_path, home, registry, muts):
    """Through the registry: a refused file leaves no row and no store file; an accepted one exactly one."""
    reg = registry
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(mutate(seeds["safetensors"], muts))
    before_rows = _rows(reg)
    before_objs = sum(1 for _ in reg.store.iter_objects())
    try:
        rec, created = reg.register_adapter(f, name="fuzz")
    except LoramgrError:
        assert _rows(reg) == before_rows and sum(1 for _ in reg.store.iter_objects()) == before_objs
    else:
        assert _rows(reg) == before_rows + created and reg.store.has(rec.sha256)
    assert not list((home / "store" / "tmp").glob("*"))


@SETTINGS
@given(m=json_mutation)
def test_fuzz_peft_config(seeds, m):
    from loramgr.formats.peft import parse_config

    cfg = refuse_only_loramgr_errors(
        parse_config, mutate_json(seeds["config"], *m), "adapter_config.json", names="adapter_config.json"
    )
    if cfg is not None:  # accepted: a config whose own JSON form parses back to the same record
        assert parse_config({**cfg.extra, **{k: v for k, v in cfg.to_json().items() if k != "extra"}}, "x") == cfg


@SETTINGS
@given(doc=json_values)
def test_fuzz_peft_config_arbitrary(doc):
    from loramgr.formats.peft import parse_config

    cfg = refuse_only_loramgr_errors(parse_config, doc, "adapter_config.json", names="adapter_config.json")
    assert cfg is None or (cfg.r is None or 0 < cfg.r) and isinstance(cfg.use_rslora, bool)


@SETTINGS
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_onnx_inspection(seeds, tmp_path, muts):
    from loramgr.formats.onnx_graph import inspect_graph

    f = tmp_path / "fuzz.onnx"
    f.write_bytes(mutate(seeds["onnx"], muts))
    refuse_only_loramgr_errors(inspect_graph, f)  # accepted or refused naming the file, never a traceback


ENC = {
    "version": "0.6.1",
    "activation_encodings": {
        "out0": [
            {
                "bitwidth": 8,
                "dtype": "int",
                "is_symmetric": "False",
                "min": -1.0,
                "max": 1.0,
                "scale": 2 / 255,
                "offset": -128,
            }
        ]
    },
    "param_encodings": {
        "w": [
            {
                "bitwidth": 8,
                "dtype": "int",
                "is_symmetric": "True",
                "min": -1.0,
                "max": 1.0,
                "scale": 1 / 127,
                "offset": -128,
            }
        ]
        * 2
    },
}


@SETTINGS
@given(m=json_mutation, raw=st.lists(mutation, max_size=2))
def test_fuzz_aimet_encodings(tmp_path, m, raw):
    from loramgr.formats.encodings import load

    f = tmp_path / "enc.json"
    f.write_bytes(mutate(json.dumps(mutate_json(ENC, *m)).encode(), raw))
    doc = refuse_only_loramgr_errors(load, f)
    if doc is not None:  # accepted: every scale it holds is a finite, positive number
        scales = [e["scale"] for kind in ("activation_encodings", "param_encodings")
                  for entries in (doc.get(kind) or {}).values() for e in entries if "scale" in e]  # fmt: skip
        assert all(isinstance(x, (int, float)) and 0 < float(x) < float("inf") for x in scales), scales


@pytest.fixture(scope="module")
def built_plan(tmp_path_factory):
    """A real plan and bundle made once (module scope keeps their own LORAMGR_HOME)."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("plan")
    env = dict(os.environ, LORAMGR_HOME=str(d / "home"))
    env.pop("LORAMGR_DB_URL", None)
    mps = synth.module_paths()
    synth.write_base(d / "b.onnx", mps)
    ad = synth.write_adapter(
        d / "ad", synth.adapter_tensors(mps, 4, seed=2), synth.peft_config(4, 8, ["q_proj", "v_proj"])
    )

    def lm(*a):
        subprocess.run([sys.executable, "-m", "loramgr", *map(str, a)], env=env, check=True, capture_output=True)

    lm("base", "register", d / "b.onnx", "--name", "b")
    lm("register", ad)
    lm("validate", "ad", "--base", "b")
    lm("build", "--base", "b", "-o", d / "out")
    lm("plan", "--base", "b")
    lm("bundle", "--plan", d / "out" / "plan.json", "-o", d / "bundle.tar")
    return d / "out" / "plan.json", d / "bundle.tar"


@SETTINGS
@given(m=json_mutation, raw=st.lists(mutation, max_size=2))
def test_fuzz_plan_loader(built_plan, m, raw):
    from loramgr.runtime import Plan

    plan_path, _ = built_plan
    doc = json.loads(plan_path.read_text())
    f = plan_path.parent / "fuzz-plan.json"  # next to the real files, so paths can resolve
    f.write_bytes(mutate(json.dumps(mutate_json(doc, *m)).encode(), raw))

    def load_and_query():
        p = Plan.load(f)
        for name in [*p.adapters, "default"]:
            e = p.adapter(name)
            for g in p.graphs:
                for s in e.sections(g):
                    p.verified(s)
            e.io_encodings()
        p.verify()

    try:
        load_and_query()
    except LoramgrError:
        pass
    except KeyError as e:  # the documented "no such adapter/graph" answer of the query API
        assert "adapter" in str(e) or "graph" in str(e)


@SETTINGS
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_bundle_reader(built_plan, tmp_path, muts):
    from loramgr.deploy.bundle import check_bundle

    _, bundle = built_plan
    f = tmp_path / "fuzz.tar"
    data = mutate(bundle.read_bytes(), muts)
    f.write_bytes(data)
    res = refuse_only_loramgr_errors(check_bundle, f)
    if data == bundle.read_bytes():
        assert res is not None  # a mutation that changed nothing leaves a valid bundle


def test_fuzz_counts_documented():
    """CI's count (.ci/run) and docs/robustness.md agree, and CI fuzzes at least 10,000 inputs."""
    root = Path(__file__).parent.parent
    assert "LORAMGR_FUZZ_EXAMPLES=1700" in (root / "docs" / "robustness.md").read_text()
    assert 'LORAMGR_FUZZ_EXAMPLES="${LORAMGR_FUZZ_EXAMPLES:-1700}"' in (root / ".ci" / "run").read_text()
    targets = [n for n in globals() if n.startswith("test_fuzz_") and n != "test_fuzz_counts_documented"]
    assert len(targets) * 1700 >= 10_000, targets
