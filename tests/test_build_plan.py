"""build (ort backend), plan, runtime LoraSession, bundle — end to end on real ORT sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from loramgr.sections.backends.ort import read_section
from loramgr.testing import synth
from tests.conftest import invoke

ADAPTERS = [("a4", 4, 8, 11), ("a8", 8, 16, 12), ("a16", 16, 16, 13)]


@pytest.fixture
def ctx2(tmp_path):
    """A 2-graph base (prefill/decode share attachment points) and 3 validated adapters."""
    W = synth.write_base(tmp_path / "prefill.onnx", synth.module_paths())
    synth.write_base(tmp_path / "decode.onnx", synth.module_paths())
    r = invoke(
        "base",
        "register",
        "--name",
        "tiny",
        "--graph",
        f"prefill={tmp_path / 'prefill.onnx'}",
        "--graph",
        f"decode={tmp_path / 'decode.onnx'}",
    )
    assert r.exit_code == 0, r.stderr
    ads = {}
    for name, rank, alpha, seed in ADAPTERS:
        t = synth.adapter_tensors(synth.module_paths(), rank, seed=seed)
        d = synth.write_adapter(tmp_path / name, t, synth.peft_config(rank, alpha, ["q_proj", "v_proj"]))
        assert invoke("register", d).exit_code == 0
        assert invoke("validate", name, "--base", "tiny").exit_code == 0
        ads[name] = (t, alpha / rank)
    return tmp_path, W, ads


def run_section(model: Path, section: str | None, x: np.ndarray, alpha: float = 1.0):
    sess = ort.InferenceSession(str(model))
    ro = ort.RunOptions()
    if section:
        a = ort.LoraAdapter()
        a.Load(section)
        ro.add_active_adapter(a)
    return sess.run(None, {"x": x, "lora_alpha": np.array([alpha], np.float32)}, ro)


def maxdiff(got, want) -> float:
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))


def test_build_sections_match_reference_and_default_is_base(ctx2):
    tmp, W, ads = ctx2
    res = invoke("build", "--base", "tiny", "--all", "-o", tmp / "out", "--json").json
    assert res["status"] == "done" and res["backend"] == "ort" and res["share_adapters"] is False
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp / "prefill.onnx"))  # created once, adapters switched per run
    seen = set()
    for a in res["artifacts"]:
        assert Path(a["path"]).is_absolute() and Path(a["path"]).stat().st_size == a["size"]
        if a["kind"] not in ("section", "default_section"):
            continue
        ad = ort.LoraAdapter()
        ad.Load(a["path"])
        ro = ort.RunOptions()
        ro.add_active_adapter(ad)
        got = sess.run(None, {"x": x}, ro)
        name = a["adapter"] or "default"
        t, scale = ads.get(name, ({}, 1.0))
        assert maxdiff(got, synth.reference(x, W, t, scale)) < 1e-4, name
        seen.add((name, tuple(a["graphs"])))
    assert seen == {(n, (g,)) for n in [*ads, "default"] for g in ("prefill", "decode")}
    av, mv, params = read_section(next(a["path"] for a in res["artifacts"] if a["adapter"] == "a8"))
    base_fp = invoke("show", "tiny", "--json").json["fingerprint"]
    # the documented rule restated (the section's model version is the fingerprint's first 28 bits), not
    # loramgr's own model_version(): a section built for another base must carry another number
    assert av == 1 and mv == int(base_fp[:7], 16) and 0 <= mv < 2**31
    assert invoke("show", "a8", "--json").json["status"] == "built"


def test_share_adapters_halves_bytes(ctx2):
    tmp, W, ads = ctx2
    plain = invoke("build", "--base", "tiny", "--all", "-o", tmp / "o1", "--json").json
    shared = invoke("build", "--base", "tiny", "--all", "--share-adapters", "-o", tmp / "o2", "--json").json

    def size(res, kinds):
        return sum(a["size"] for a in res["artifacts"] if a["kind"] in kinds and a["adapter"])

    secs = [a for a in shared["artifacts"] if a["kind"] == "super_section"]
    assert len(secs) == len(ads) and all(a["graphs"] == ["prefill", "decode"] for a in secs)
    assert size(shared, {"super_section"}) <= 0.55 * size(plain, {"section"})
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    for a in secs:
        t, scale = ads[a["adapter"]]
        for g in ("prefill", "decode"):
            assert maxdiff(run_section(tmp / f"{g}.onnx", a["path"], x), synth.reference(x, W, t, scale)) < 1e-4


def test_incremental_rebuild_one_of_ten(tmp_path):
    synth.write_base(tmp_path / "b.onnx", synth.module_paths())
    invoke("base", "register", tmp_path / "b.onnx", "--name", "tiny")
    for i in range(10):
        d = synth.write_adapter(
            tmp_path / f"ad{i}",
            synth.adapter_tensors(synth.module_paths(), 4, seed=i),
            synth.peft_config(4, 8, ["q_proj", "v_proj"]),
        )
        invoke("register", d)
        invoke("validate", f"ad{i}", "--base", "tiny")
    first = invoke("build", "--base", "tiny", "-o", tmp_path / "out", "--json").json
    assert len(first["rebuilt"]) == 11  # 10 adapters + default
    again = invoke("build", "--base", "tiny", "-o", tmp_path / "out", "--json").json
    assert again["rebuilt"] == [] and len(again["reused"]) == 11
    d = synth.write_adapter(
        tmp_path / "v2" / "ad3",
        synth.adapter_tensors(synth.module_paths(), 4, seed=99),
        synth.peft_config(4, 8, ["q_proj", "v_proj"]),
    )
    assert invoke("register", d, "--json").json["version"] == "2"
    invoke("validate", "ad3@2", "--base", "tiny")
    refs = [f"ad{i}" for i in range(10)]  # ad3 now resolves to ad3@2
    third = invoke("build", "--base", "tiny", *refs, "-o", tmp_path / "out", "--json").json
    assert third["rebuilt"] == ["ad3@2"]
    forced = invoke("build", "--base", "tiny", *refs, "-o", tmp_path / "out", "--force", "--json").json
    assert len(forced["rebuilt"]) == 11


def test_build_takes_new_adapters_that_fit_and_leaves_out_the_rest(tmp_path):
    """Without names, a build covers the base's validated adapters and the ones registered since that
    fit it (register, then build); one that does not fit is left out with a warning, never built."""
    mps = synth.module_paths()
    synth.write_base(tmp_path / "b.onnx", mps)
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "tiny").exit_code == 0
    for name, r in (("fits", 4), ("wide", 32)):  # rank 32 > the base's max rank 16
        d = synth.write_adapter(tmp_path / name, synth.adapter_tensors(mps, r), synth.peft_config(r, 8, ["q_proj"]))
        assert invoke("register", d, "--name", name).exit_code == 0
    res = invoke("build", "--base", "tiny", "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0 and sorted(res.json["rebuilt"]) == ["default", "fits@1"], res.stderr
    assert "wide@1 is not built" in res.stderr
    assert invoke("show", "fits", "--json").json["status"] == "built"
    assert invoke("show", "wide", "--json").json["status"] == "registered"
    # named, an adapter that does not fit is still an error
    assert invoke("build", "--base", "tiny", "wide", "-o", tmp_path / "out").exit_code == 5


def test_build_refuses_incompatible_group(ctx2):
    tmp, _, _ = ctx2
    t = synth.adapter_tensors(synth.module_paths(), 32, seed=3)
    invoke("register", synth.write_adapter(tmp / "big", t, synth.peft_config(32, 32, ["q_proj"])))
    r = invoke("build", "--base", "tiny", "a4", "big", "-o", tmp / "out")
    assert r.exit_code == 5 and "rank_exceeds_max" in r.stderr
    assert not (tmp / "out" / "sections").exists()
    import gc

    assert gc.isenabled()  # a build pauses the cyclic collector and gives it back, even when it fails
    gc.disable()
    try:
        assert invoke("build", "--base", "tiny", "a4", "-o", tmp / "out").exit_code == 0
        assert not gc.isenabled()  # and does not turn on what its caller turned off
    finally:
        gc.enable()


def test_kill_9_mid_build_then_rebuild(ctx2):
    tmp, W, ads = ctx2
    env = dict(os.environ)
    slow = [sys.executable, str(Path(__file__).with_name("slowbuild.py")), "0.5"]  # each section job + 0.5 s
    for attempt in range(3):
        p = subprocess.Popen(
            [*slow, "build", "--base", "tiny", "--all", "--force", "-o", str(tmp / "out")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.2 + 0.3 * attempt)
        p.send_signal(signal.SIGKILL)
        p.wait()
    res = invoke("build", "--base", "tiny", "--all", "-o", tmp / "out", "--json").json
    assert res["status"] == "done"
    from loramgr.infra.store import sha256_file

    for a in res["artifacts"]:
        assert sha256_file(a["path"]) == a["sha256"]
    assert not list((tmp / "out").glob(".loramgr-tmp-*"))
    from loramgr.config import Settings
    from loramgr.registry.api import Registry
    from loramgr.registry.models import BuildRow

    reg = Registry(Settings.resolve())
    with reg.session() as s:
        statuses = [b.status for b in s.query(BuildRow).order_by(BuildRow.id)]
    assert statuses[-1] == "done" and "running" not in statuses


@pytest.fixture
def planned(ctx2):
    tmp, W, ads = ctx2
    assert invoke("build", "--base", "tiny", "--all", "--share-adapters", "-o", tmp / "out").exit_code == 0
    r = invoke("plan", "--base", "tiny", "--json")
    assert r.exit_code == 0, r.stderr
    return tmp, W, ads, Path(r.json["plan"])


def test_plan_schema_and_queries(planned):
    import json

    import jsonschema

    from loramgr.deploy.plan import schema
    from loramgr.runtime import Plan

    tmp, W, ads, plan_path = planned
    doc = json.loads(plan_path.read_text())
    jsonschema.validate(doc, schema())
    assert invoke("plan", "--schema").json["title"] == "loramgr runtime plan"
    plan = Plan.load(plan_path)
    assert set(plan.adapters) == set(ads)
    secs = plan.adapter("a8").sections("decode")
    assert len(secs) == 1 and secs[0].graphs == ("prefill", "decode") and secs[0].shared
    assert plan.rules["apply_before_first_execute"] is True
    assert [s["op"] for s in plan.steps("a8")] == [
        "create_context",
        "apply_section",
        "update_io_encodings",
        "set_alpha",
        "execute",
    ]
    assert plan.reset_steps("alpha_zero")[0] == {"op": "set_alpha", "tensor": "lora_alpha", "value": 0.0}
    assert all(not Path(s["path"]).is_absolute() for s in doc["adapters"][0]["sections"])
    assert plan.default_adapter.sections("prefill")


def test_runtime_import_is_light():
    code = (
        "import sys, loramgr.runtime; "
        "print(sorted(m for m in ('sqlalchemy','torch','onnx','onnxruntime') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr


def test_lora_session_switching(planned):
    from loramgr.runtime.ort import LoraSession

    tmp, W, ads, plan_path = planned
    s = LoraSession(str(plan_path), graph="prefill")
    sess_id = id(s.session)
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    base = synth.reference(x, W, {}, 1.0)
    for name in ["a4", "a8", "a4", "default", "a16", "a4"]:
        if name == "default":
            s.reset()
            want = base
        else:
            s.apply(name)
            t, scale = ads[name]
            want = synth.reference(x, W, t, scale)
        assert maxdiff(s.run({"x": x}), want) < 1e-4, name
        fresh = run_section(tmp / "prefill.onnx", str(s.active.section_for("prefill").path), x)
        assert maxdiff(fresh, want) < 1e-4
    s.apply("a8")
    s.set_alpha(0.0)
    assert maxdiff(s.run({"x": x}), base) < 1e-5
    s.set_alpha(0.5)
    t, scale = ads["a8"]
    assert maxdiff(s.run({"x": x}), synth.reference(x, W, t, scale, strength=0.5)) < 1e-4
    assert id(s.session) == sess_id and s.cached_sections == 4


def test_lora_session_concurrent_runs(planned):
    from loramgr.runtime.ort import LoraSession

    tmp, W, ads, plan_path = planned
    s = LoraSession(str(plan_path), graph="decode")
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    want = {n: synth.reference(x, W, *ads[n]) for n in ("a4", "a16")}
    errors: list[str] = []

    def worker(i: int) -> None:
        for k in range(20):
            name = ("a4", "a16")[(i + k) % 2]
            got = s.run({"x": x}, adapter=name, alpha=1.0)
            if maxdiff(got, want[name]) > 1e-4:
                errors.append(f"thread {i} run {k} {name}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_tampered_section_refused(planned):
    from loramgr.runtime import Plan, PlanIntegrityError
    from loramgr.runtime.ort import LoraSession

    tmp, W, ads, plan_path = planned
    sec = Plan.load(plan_path).adapter("a4").sections()[0].path
    b = bytearray(sec.read_bytes())
    b[-1] ^= 1
    sec.write_bytes(bytes(b))
    r = invoke("bundle", "--plan", plan_path, "-o", tmp / "b.tar")
    assert r.exit_code == 8 and str(sec) in r.stderr
    assert not (tmp / "b.tar").exists()
    s = LoraSession(str(plan_path), graph="prefill")
    s.apply("a8")
    with pytest.raises(PlanIntegrityError):
        s.apply("a4")


def test_files_are_verified_once_per_identity(planned, monkeypatch):
    """A section evicted and applied again is not hashed again while its file is unchanged; a file
    rewritten after its first check (same size, same path) is hashed again and refused."""
    import os

    import loramgr.runtime as rt
    from loramgr.runtime import Plan, PlanIntegrityError
    from loramgr.runtime.ort import LoraSession

    _, _, _, plan_path = planned
    hashed: list[str] = []
    real = rt._sha256
    monkeypatch.setattr(rt, "_sha256", lambda p: hashed.append(p.name) or real(p))
    plan = Plan.load(plan_path)
    s = LoraSession(plan, graph="prefill")
    s.apply("a4")
    first = len(hashed)
    sec = plan.adapter("a4").section_for("prefill").path
    s._cache.clear()  # evicted: the next apply loads the file again ...
    s.apply("a4")
    assert len(hashed) == first  # ... checked by identity, not hashed
    b = bytearray(sec.read_bytes())
    b[-1] ^= 1
    sec.write_bytes(bytes(b))
    st = sec.stat()
    os.utime(sec, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks: make the change visible
    s._cache.clear()
    with pytest.raises(PlanIntegrityError):
        s.apply("a4")
    assert len(hashed) == first + 1


def test_plan_with_escaping_path_refused(planned):
    import json

    from loramgr.runtime import Plan, PlanFormatError

    tmp, _, _, plan_path = planned
    doc = json.loads(plan_path.read_text())
    doc["adapters"][0]["sections"][0]["path"] = "../../etc/passwd"
    bad = plan_path.with_name("bad.json")
    bad.write_text(json.dumps(doc))
    with pytest.raises(PlanFormatError):
        Plan.load(bad)


def test_plan_load_pauses_the_garbage_collector_and_restores_it(planned, monkeypatch):
    """Plan.load runs with the cyclic collector paused (a big plan's parse and entries otherwise
    trigger full collections over and over) and leaves it as it found it, also when it refuses."""
    import gc
    import json

    from loramgr import runtime
    from loramgr.runtime import Plan, PlanFormatError

    _, _, _, plan_path = planned
    bad = plan_path.with_name("bad.json")
    doc = json.loads(plan_path.read_text())
    doc["adapters"][0]["sections"][0]["path"] = "../../etc/passwd"
    bad.write_text(json.dumps(doc))
    seen = []  # the collector's state while the plan's JSON is parsed
    real = runtime.json.loads
    monkeypatch.setattr(runtime.json, "loads", lambda *a, **k: (seen.append(gc.isenabled()), real(*a, **k))[1])
    try:
        assert gc.isenabled()
        assert Plan.load(plan_path).adapters and gc.isenabled()
        with pytest.raises(PlanFormatError):
            Plan.load(bad)
        assert gc.isenabled()
        gc.disable()
        Plan.load(plan_path)
        assert not gc.isenabled()  # a caller's choice to keep it off is kept
    finally:
        gc.enable()
    assert seen == [False, False, False]


def test_plan_paths_through_symlinks(planned, tmp_path):
    """Section paths are resolved like realpath, component by component: a symlinked directory or
    file that stays inside the plan's directory is accepted; one that points outside is refused, also
    when many sections share the directory (its answer is kept) and when the link is the last part."""
    import json
    import shutil

    from loramgr.runtime import Plan, PlanFormatError

    _, _, _, plan_path = planned
    root = plan_path.parent
    doc = json.loads(plan_path.read_text())
    sec = doc["adapters"][0]["sections"][0]
    real = root / sec["path"]
    (root / "alias").symlink_to(real.parent, target_is_directory=True)  # inside: fine
    outside = tmp_path / "outside"
    shutil.copytree(real.parent, outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "leaf.onnx_adapter").symlink_to(outside / real.name)

    def load_with(path: str) -> Plan:
        d = json.loads(json.dumps(doc))
        for a in d["adapters"]:  # every adapter's first section through the same directory
            a["sections"][0]["path"] = path
        f = root / "variant.json"
        f.write_text(json.dumps(d))
        return Plan.load(f)

    plan = load_with(f"alias/{real.name}")
    assert plan.adapter(doc["adapters"][0]["name"]).sections()[0].path == root / "alias" / real.name
    for path in (f"escape/{real.name}", f"./alias/../escape/{real.name}", "leaf.onnx_adapter"):
        with pytest.raises(PlanFormatError):
            load_with(path)


def test_bundle_reproducible_and_check(planned):
    tmp, _, _, plan_path = planned
    assert invoke("bundle", "--plan", plan_path, "-o", tmp / "b1.tar").exit_code == 0
    time.sleep(1.1)
    assert invoke("bundle", "--plan", plan_path, "-o", tmp / "b2.tar").exit_code == 0
    assert (tmp / "b1.tar").read_bytes() == (tmp / "b2.tar").read_bytes()
    r = invoke("bundle", "check", tmp / "b1.tar", "--json")
    assert r.exit_code == 0 and r.json["ok"]
    with tarfile.open(tmp / "b1.tar") as tar:
        names = tar.getnames()
    assert "plan.json" in names and "SHA256SUMS" in names and names == sorted(names)
    with tarfile.open(tmp / "b1.tar") as tar:
        m = [x for x in tar.getmembers() if x.name.endswith(".onnx_adapter")][0]
    data = bytearray((tmp / "b1.tar").read_bytes())
    data[m.offset_data + 10] ^= 0xFF
    (tmp / "b3.tar").write_bytes(bytes(data))
    r = invoke("bundle", "check", tmp / "b3.tar")
    assert r.exit_code == 8 and m.name in r.stderr
    evil = tmp / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        ti = tarfile.TarInfo("../escape.txt")
        ti.size = 1
        import io

        tar.addfile(ti, io.BytesIO(b"x"))
    r = invoke("bundle", "check", evil)
    assert r.exit_code == 4 and "'..'" in r.stderr
    assert invoke("bundle", "--plan", plan_path, "-o", tmp / "bdir", "--dir").exit_code == 0
    assert invoke("bundle", "check", tmp / "bdir").exit_code == 0


def test_parallel_build_equals_serial(ctx2):
    """--jobs 2 runs a process pool; its sections are byte-identical to a serial build's."""
    tmp, _, _ = ctx2
    ser = invoke("build", "--base", "tiny", "--all", "-o", tmp / "serial", "--json").json
    par = invoke("build", "--base", "tiny", "--all", "-o", tmp / "par", "-j", "2", "--force", "--json").json
    assert par["status"] == "done" and len(par["rebuilt"]) == 4

    def digests(res):
        return sorted(
            (a["adapter"] or "", tuple(a["graphs"]), a["kind"], a["sha256"])
            for a in res["artifacts"]
            if "section" in a["kind"]
        )

    assert digests(ser) == digests(par) and len(digests(par)) == 8


def test_graphs_share_the_output_directory_unless_a_file_name_clashes():
    """A data file several graphs read is placed once in ``base/``; a graph whose file names are
    taken there by other content (or whose graph file name is taken at all) gets ``base/<graph>/``."""
    from loramgr.records import ExternalData, Graph
    from loramgr.sections.layout import graph_dirs

    def g(name: str, file_name: str, sha: str, *data: tuple[str, str]) -> Graph:
        ext = tuple(ExternalData(loc, s, 1) for loc, s in data)
        return Graph(name, "part", sha, 1, file_name, "/src", {}, ext)

    graphs = [
        g("prefill", "prefill.onnx", "p", ("w.data", "W")),
        g("decode", "decode.onnx", "d", ("w.data", "W")),  # the same weights: shares base/
        g("other", "other.onnx", "o", ("w.data", "X")),  # a different w.data: its own directory
        g("again", "prefill.onnx", "p", ("w.data", "W")),  # a graph file name taken: its own directory
        g("sneaky", "s.onnx", "s", ("decode.onnx", "Y")),  # data named like a placed graph file
        g("plain", "plain.onnx", "q"),  # no external data
    ]
    assert graph_dirs(graphs) == {
        "prefill": "base",
        "decode": "base",
        "other": "base/other",
        "again": "base/again",
        "sneaky": "base/sneaky",
        "plain": "base",
    }


def test_a_build_checks_each_adapter_once(tmp_path, monkeypatch):
    """Validation before a build and the preparation of each adapter's inputs share one check per
    adapter (it ran twice: once in the group validation, once again per adapter's inputs)."""
    from loramgr.lora import rules

    mps = synth.module_paths()
    synth.write_base(tmp_path / "b.onnx", mps)
    assert invoke("base", "register", tmp_path / "b.onnx", "--name", "tiny").exit_code == 0
    for i in range(2):
        d = synth.write_adapter(
            tmp_path / f"a{i}", synth.adapter_tensors(mps, 4, seed=i), synth.peft_config(4, 8, ["q_proj"])
        )
        assert invoke("register", d, "--name", f"a{i}").exit_code == 0
    calls = []
    real = rules._check_adapter
    monkeypatch.setattr(rules, "_check_adapter", lambda a, *rest: calls.append(a.ref) or real(a, *rest))
    rules._MEMO.clear()
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    assert sorted(calls) == ["a0@1", "a1@1"]
