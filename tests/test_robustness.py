"""Hostile files, fault injection (disk full, SIGKILL, read-only database, hanging tool) and resource
bounds. After every fault: `fsck` is clean, nothing partial is recorded, and the operation re-runs."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from loramgr.testing import synth
from tests.conftest import invoke, store_files


def _adapter(tmp: Path, name: str = "ad", seed: int = 1, r: int = 4) -> Path:
    return synth.write_adapter(
        tmp / name,
        synth.adapter_tensors(synth.module_paths(), r, seed=seed),
        synth.peft_config(r, 8, ["q_proj", "v_proj"]),
    )


def _base(tmp: Path) -> None:
    synth.write_base(tmp / "base.onnx", synth.module_paths())
    assert invoke("base", "register", tmp / "base.onnx", "--name", "tiny").exit_code == 0


def clean(home: Path) -> None:
    """fsck clean (in-flight leftovers of a killed process are repaired first, as an operator would)."""
    invoke("fsck", "--repair", "--grace", "0")
    r = invoke("fsck", "--grace", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert not list((home / "store" / "tmp").glob("*"))


# -- hostile files ---------------------------------------------------------------------------------------
def test_header_of_100_mb_refused_without_reading_it(tmp_path, home):
    f = tmp_path / "big-header.safetensors"
    with open(f, "wb") as fh:
        fh.write((100_000_001).to_bytes(8, "little"))
        fh.truncate(100_000_001 + 8)  # sparse
    r = invoke("register", f)
    assert r.exit_code == 4 and "exceeds" in r.stderr and store_files(home) == []


def test_peft_config_with_dotdot_paths_never_opens_them(tmp_path, home):
    """Path-like config fields are data, never opened: `../` in them changes nothing on disk."""
    d = _adapter(tmp_path)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "../../../../etc/passwd"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    r = invoke("register", d, "--name", "../evil")
    assert r.exit_code == 4 and store_files(home) == []  # names never reach paths
    r = invoke("register", d, "--json")
    assert r.exit_code == 0
    shown = invoke("show", r.json["ref"], "--json").json
    assert shown["peft_config"]["base_model_name_or_path"] == "../../../../etc/passwd"
    assert all(p.startswith(("objects/", "tmp")) or p == ".gc.lock" for p in store_files(home))


def test_bundle_members_with_absolute_or_dotdot_paths_refused(tmp_path):
    for bad in ("/etc/evil", "../evil", "ok/../../evil"):
        t = tmp_path / f"b{abs(hash(bad))}.tar"
        with tarfile.open(t, "w") as tar:
            data = b"x"
            ti = tarfile.TarInfo(bad)
            ti.size = len(data)
            import io

            tar.addfile(ti, io.BytesIO(data))
        r = invoke("bundle", "check", t)
        assert r.exit_code == 4 and "'..' path" in r.stderr, (bad, r.stderr)
    lt = tmp_path / "link.tar"
    with tarfile.open(lt, "w") as tar:
        ti = tarfile.TarInfo("plan.json")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(ti)
    r = invoke("bundle", "check", lt)
    assert r.exit_code == 4 and "not a regular file" in r.stderr


def test_yaml_with_python_tags_is_refused_not_run(tmp_path, home, monkeypatch):
    from tests.standin_sdk import make_standin_sdk

    sdk = make_standin_sdk(tmp_path / "qairt-standin")
    marker = tmp_path / "pwned"
    (sdk / "sdk.yaml").write_text(f"version: !!python/object/apply:os.system ['touch {marker}']\n")
    _base(tmp_path)
    invoke("register", _adapter(tmp_path))
    invoke("validate", "ad", "--base", "tiny")
    r = invoke("build", "--base", "tiny", "--backend", "qairt", "--sdk-root", sdk, "-o", tmp_path / "o")
    assert r.exit_code == 4 and "sdk.yaml" in r.stderr and not marker.exists()


# -- fault injection ---------------------------------------------------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_register(tmp_path, home, monkeypatch):
    import loramgr.infra.hashcopy as hashcopy

    d = _adapter(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashcopy, "hash_copy", _enospc)
        r = invoke("register", d)
    assert r.exit_code == 9 and "No space left" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not [p for p in store_files(home) if p.startswith(("objects", "tmp/"))]
    assert invoke("list", "--json").json == []
    assert invoke("register", d).exit_code == 0
    clean(home)


def test_disk_full_during_build(tmp_path, home, monkeypatch):
    import loramgr.sections.backends.ort as ortb

    _base(tmp_path)
    invoke("register", _adapter(tmp_path))
    invoke("validate", "ad", "--base", "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ortb, "write_section", _enospc)
        r = invoke("build", "--base", "tiny", "-o", tmp_path / "out")
    assert r.exit_code == 9
    assert not list((tmp_path / "out").glob(".loramgr-tmp-*")) and not (tmp_path / "out" / "sections").exists()
    assert invoke("show", "ad", "--json").json["status"] == "validated"
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    clean(home)


def test_read_only_database(tmp_path, home, monkeypatch):
    _base(tmp_path)
    d = _adapter(tmp_path)
    db = home / "registry.db"
    objects = [p for p in store_files(home) if p.startswith("objects")]
    monkeypatch.setenv("LORAMGR_DB_URL", f"sqlite:///file:{db}?mode=ro&uri=true")
    r = invoke("register", d)
    assert r.exit_code == 9 and "read-only" in r.stderr
    assert invoke("list", "--json").exit_code == 0  # reads still work
    monkeypatch.delenv("LORAMGR_DB_URL")
    assert [p for p in store_files(home) if p.startswith("objects")] == objects  # the copy was removed again
    assert invoke("list", "--json").json == []
    assert invoke("register", d).exit_code == 0
    clean(home)


def _spawn(args: list, env: dict, slow: float | None = None) -> subprocess.Popen:
    """The CLI in a child process; ``slow``: through tests/slowbuild.py (each section job + slow s)."""
    head = (
        [sys.executable, str(Path(__file__).with_name("slowbuild.py")), str(slow)]
        if slow
        else [sys.executable, "-m", "loramgr"]
    )
    return subprocess.Popen([*head, *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_sigkill_at_random_points_of_register_and_build(tmp_path, home):
    """20 runs: SIGKILL register (a 24 MB adapter) and build at random moments; each time the
    registry stays consistent and the operation then succeeds."""
    rng = random.Random(7)
    env = dict(os.environ)
    big = synth.write_adapter(
        tmp_path / "big",
        synth.adapter_tensors(synth.module_paths(), 16, seed=3)
        | {"pad.weight": __import__("numpy").zeros((3000, 2000), "float32")},
        synth.peft_config(16, 16, ["q_proj", "v_proj"]),
    )
    for i in range(10):
        p = _spawn(["register", big, "--name", f"big{i}"], env)
        time.sleep(rng.uniform(0.05, 0.8))
        p.send_signal(signal.SIGKILL)
        p.wait()
        clean(home)
        assert invoke("register", big, "--name", f"big{i}").exit_code == 0
        clean(home)
    _base(tmp_path)
    for k in range(3):
        invoke("register", _adapter(tmp_path, f"s{k}", seed=50 + k))
        invoke("validate", f"s{k}", "--base", "tiny")
    for _ in range(10):
        p = _spawn(["build", "--base", "tiny", "-o", tmp_path / "out", "--force"], env, slow=0.15)
        time.sleep(rng.uniform(0.3, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        clean(home)
        r = invoke("build", "--base", "tiny", "-o", tmp_path / "out", "--json")
        assert r.exit_code == 0 and all(Path(a["path"]).is_file() for a in r.json["artifacts"])
        clean(home)


def test_hanging_tool_times_out_then_rerun(tmp_path, home, monkeypatch):
    from tests.standin_sdk import make_standin_sdk

    sdk = make_standin_sdk(tmp_path / "qairt-standin")
    synth.write_base(tmp_path / "base.onnx", synth.module_paths())
    invoke("base", "register", tmp_path / "base.onnx", "--name", "tiny", "--sdk-version", "2.28.0")
    invoke("register", _adapter(tmp_path))
    invoke("validate", "ad", "--base", "tiny")
    monkeypatch.setenv("STANDIN_HANG", "qnn-context-binary-generator")
    t = time.monotonic()
    r = invoke(
        "build", "--base", "tiny", "--backend", "qairt", "--sdk-root", sdk, "--tool-timeout", "1", "-o", tmp_path / "o"
    )
    assert r.exit_code == 7 and "timed out" in r.stderr and time.monotonic() - t < 30
    assert not list((tmp_path / "o").glob("sections/**/*.bin"))
    clean(home)
    monkeypatch.delenv("STANDIN_HANG")
    assert (
        invoke("build", "--base", "tiny", "--backend", "qairt", "--sdk-root", sdk, "-o", tmp_path / "o").exit_code == 0
    )
    clean(home)


# -- resource bounds ------------------------------------------------------------------------------------------
def test_validate_and_plan_do_not_read_tensor_bytes_they_do_not_need(tmp_path, home, monkeypatch):
    """fp32 base: validation is header-only, plans never open adapters. Any tensor read fails here."""
    import loramgr.lora.loader as loader

    _base(tmp_path)
    invoke("register", _adapter(tmp_path))

    def no_reads(*a, **k):
        raise AssertionError("tensor bytes were read")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader.AdapterFile, "load", no_reads)
        assert invoke("validate", "ad", "--base", "tiny").exit_code == 0
    assert invoke("build", "--base", "tiny", "-o", tmp_path / "out").exit_code == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader.AdapterFile, "load", no_reads)
        assert invoke("plan", "--base", "tiny").exit_code == 0


@pytest.mark.slow
def test_register_1gb_adapter_keeps_rss_under_200mb(tmp_path, home):
    f = synth.write_large_adapter(tmp_path / "big.safetensors", 1 << 30)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forking pytest worker
    code = (
        "import sys; from loramgr.cli import main\n"
        "try:\n main(sys.argv[1:])\nexcept SystemExit as e:\n assert not e.code, e.code\n"
        "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "register", str(f), "--name", "big"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    rss_mb = int(p.stdout.strip().splitlines()[-1]) / 1024
    print(f"peak RSS registering 1 GiB: {rss_mb:.0f} MB")
    assert rss_mb < 200, rss_mb
    f.unlink()
