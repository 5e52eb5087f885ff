"""register / list / show: the contract of issue #3 (exit codes, JSON fields, nothing left behind)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from loramgr.testing import synth
from tests.conftest import invoke, store_files

REQUIRED = {"name", "version", "sha256", "size", "rank", "lora_alpha", "dtype", "status", "tensors", "target_modules"}


#: every registry test runs on SQLite and on a real PostgreSQL server
pytestmark = pytest.mark.usefixtures("registry_db")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_register_json_contract(tiny, home):
    d, t = tiny.adapter("ad1", r=8, alpha=16)
    r = invoke("register", d, "--json", "--tag", "team=nlp")
    assert r.exit_code == 0, r.stderr
    rec = r.json
    assert REQUIRED <= set(rec)
    assert rec["name"] == "ad1" and rec["version"] == "1" and rec["rank"] == 8 and rec["lora_alpha"] == 16.0
    assert rec["sha256"] == sha(d / "adapter_model.safetensors")
    assert rec["tensors"] == len(t) == 8 and rec["dtype"] == "F32" and rec["status"] == "registered"
    assert rec["target_modules"] == ["q_proj", "v_proj"] and rec["tags"] == {"team": "nlp"}
    stored = home / "store" / "objects" / rec["sha256"][:2] / rec["sha256"]
    assert stored.read_bytes() == (d / "adapter_model.safetensors").read_bytes()
    assert not list((home / "store" / "tmp").iterdir())


def test_header_is_recorded_exactly(tiny):
    d, t = tiny.adapter("ad1")
    invoke("register", d)
    rec = invoke("show", "ad1", "--json").json
    by_key = {x["key"]: x for x in rec["tensor_list"]}
    raw = (d / "adapter_model.safetensors").read_bytes()
    for k, arr in t.items():
        b, e = by_key[k]["offsets"]
        assert by_key[k]["shape"] == list(arr.shape) and by_key[k]["dtype"] == "F32"
        assert np.array_equal(np.frombuffer(raw[b:e], np.float32).reshape(arr.shape), arr)


def test_idempotent_and_versions(tiny, tmp_path):
    d, _ = tiny.adapter("ad1", seed=1)
    assert invoke("register", d).exit_code == 0
    r = invoke("register", d)
    assert r.exit_code == 0 and "already registered as ad1@1" in r.stdout
    other = synth.write_adapter(
        tmp_path / "v2" / "ad1",
        synth.adapter_tensors(tiny.mps, 8, seed=2),
        synth.peft_config(8, 16, ["q_proj", "v_proj"]),
    )
    assert invoke("register", other, "--json").json["version"] == "2"
    third = synth.write_adapter(tmp_path / "v3" / "ad1", synth.adapter_tensors(tiny.mps, 8, seed=3), None)
    r = invoke("register", third, "--version", "2", "--lora-alpha", "8")
    assert r.exit_code == 6 and "ad1@2" in r.stderr and "already taken" in r.stderr
    r = invoke("register", third, "--version", "exp-1", "--lora-alpha", "8", "--json")
    assert r.exit_code == 0 and r.json["version"] == "exp-1"
    rows = invoke("list", "adapters", "--json").json
    assert [x["version"] for x in rows] == ["1", "2", "exp-1"]
    assert invoke("show", "ad1", "--json").json["version"] == "exp-1"  # newest


def test_same_weights_other_config_is_a_new_version(tiny):
    d, _ = tiny.adapter("ad1", alpha=16)
    invoke("register", d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 32
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    rec = invoke("register", d, "--json").json
    assert rec["version"] == "2" and rec["lora_alpha"] == 32.0


def test_ref_resolution(tiny):
    d, _ = tiny.adapter("ad1")
    rec = invoke("register", d, "--json").json
    for ref in ("ad1", "ad1@1", rec["sha256"][:8], rec["sha256"]):
        r = invoke("show", ref, "--json")
        assert r.exit_code == 0 and r.json["sha256"] == rec["sha256"], ref
    r = invoke("show", "nope")
    assert r.exit_code == 3 and r.stderr.startswith("loramgr: error: nope:")
    assert invoke("show", "ad1@9").exit_code == 3
    assert invoke("show", "abc").exit_code == 3  # too short for a sha prefix


def test_bare_safetensors_needs_no_config(tiny, tmp_path):
    from safetensors.numpy import save_file

    t = synth.adapter_tensors(tiny.mps, 4, seed=5)
    f = tmp_path / "my adapter.safetensors"
    save_file(t, str(f))
    rec = invoke("register", f, "--lora-alpha", "8", "--json").json
    assert rec["name"] == "my-adapter" and rec["rank"] == 4 and rec["lora_alpha"] == 8.0
    assert rec["target_modules"] == ["q_proj", "v_proj"]


def _pickle_bytes() -> bytes:
    return b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


def _st(header: dict, data: bytes = b"") -> bytes:
    body = json.dumps(header).encode()
    return len(body).to_bytes(8, "little") + body + data


BAD = {
    "truncated": (lambda good: good[:200], "truncated"),
    "tiny": (lambda good: b"\x01\x02", "truncated"),
    "header_too_long": (lambda good: (10**12).to_bytes(8, "little") + b"{}", "larger than the file"),
    "not_json": (lambda good: (8).to_bytes(8, "little") + b"nonjson!", "not JSON"),
    "not_utf8": (lambda good: (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc", "not UTF-8"),
    "not_object": (lambda good: _st([1, 2]), "not an object"),  # type: ignore[arg-type]
    "unknown_dtype": (
        lambda good: _st({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "unknown dtype",
    ),
    "out_of_bounds": (
        lambda good: _st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        "out of bounds",
    ),
    "overlap": (
        lambda good: _st(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
        ),
        "overlaps",
    ),
    "size_mismatch": (
        lambda good: _st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "do not match",
    ),
    "huge_tensor": (
        lambda good: _st({"a": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}, b"\0" * 8),
        "out of bounds",
    ),
    "lfs": (
        lambda good: b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 1234\n",
        "git lfs pull",
    ),
    "pickle": (lambda good: _pickle_bytes(), "never loads"),
    "zip_checkpoint": (lambda good: b"PK\x03\x04" + b"\0" * 60, "pickle"),
    "deep_json": (
        lambda good: (lambda b: len(b).to_bytes(8, "little") + b)(b"[" * 100000 + b"]" * 100000),
        "nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_safetensors_refused_cleanly(case, tiny, home, tmp_path):
    d, _ = tiny.adapter("good")
    invoke("register", d)
    before_rows = invoke("list", "--json").json
    before_store = store_files(home)
    make, needle = BAD[case]
    f = tmp_path / f"{case}.safetensors"
    f.write_bytes(make((d / "adapter_model.safetensors").read_bytes()))
    r = invoke("register", f)
    assert r.exit_code == 4, (r.exit_code, r.stderr)
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"loramgr: error: {f}:"), line
    assert needle.lower() in line.lower(), line
    assert "Traceback" not in r.stderr
    assert invoke("list", "--json").json == before_rows
    assert store_files(home) == before_store


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_by_suffix_is_refused(suffix, tmp_path):
    f = tmp_path / f"adapter_model{suffix}"
    f.write_bytes(b"\x00" * 64)
    r = invoke("register", f)
    assert r.exit_code == 4 and "safetensors" in r.stderr


def test_peft_dir_with_only_bin_is_refused(tmp_path):
    d = tmp_path / "ad"
    d.mkdir()
    (d / "adapter_model.bin").write_bytes(_pickle_bytes())
    (d / "adapter_config.json").write_text("{}")
    r = invoke("register", d)
    assert r.exit_code == 4 and "never loads" in r.stderr


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ("{not json", "invalid JSON"),
        ('{"r": "eight"}', "'r'"),
        ('{"peft_type": "IA3"}', "only LORA"),
        ('{"lora_alpha": true}', "lora_alpha"),
        ('{"target_modules": 5}', "target_modules"),
        ("[]", "not a JSON object"),
        ('{"use_dora": "yes"}', "use_dora"),
    ],
)
def test_invalid_adapter_config(cfg, needle, tiny, home):
    d, _ = tiny.adapter("ad")
    (d / "adapter_config.json").write_text(cfg)
    r = invoke("register", d)
    assert r.exit_code == 4 and needle in r.stderr, r.stderr
    assert invoke("list", "--json").json == [] and store_files(home) == []


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "x\ty", "bad\x01", "", "-lead"])
def test_bad_names_refused(name, tiny, home):
    d, _ = tiny.adapter("ad")
    r = invoke("register", d, "--name", name)
    assert r.exit_code == 4, (name, r.stderr)
    assert invoke("list", "--json").json == [] and store_files(home) == []


def test_symlink_escaping_peft_dir_is_refused(tiny, tmp_path, home):
    d, _ = tiny.adapter("ad")
    outside = tmp_path / "outside.safetensors"
    (d / "adapter_model.safetensors").rename(outside)
    os.symlink(outside, d / "adapter_model.safetensors")
    r = invoke("register", d)
    assert r.exit_code == 4 and "outside" in r.stderr
    assert store_files(home) == []


def test_missing_path_is_not_found(tmp_path):
    r = invoke("register", tmp_path / "nope")
    assert r.exit_code == 3


def test_link_mode_shares_inode(tiny, home):
    d, _ = tiny.adapter("ad")
    rec = invoke("register", d, "--link", "--json").json
    stored = Path(rec["store_path"])
    assert stored.stat().st_ino == (d / "adapter_model.safetensors").stat().st_ino


def test_json_error_object(tmp_path):
    r = invoke("show", "nope", "--json")
    assert r.exit_code == 3 and r.json["error"] == "not_found" and r.json["exit_code"] == 3


def test_bf16_adapter_dtype(tmp_path):
    import ml_dtypes

    mps = synth.module_paths()
    t = {k: v.astype(ml_dtypes.bfloat16) for k, v in synth.adapter_tensors(mps, 4).items()}
    # safetensors.numpy cannot write bf16, so lay the file out by hand
    from loramgr.formats.safetensors import read_header

    header, blobs, off = {}, [], 0
    for k, v in t.items():
        b = v.tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    f = tmp_path / "bf16.safetensors"
    f.write_bytes(_st(header, b"".join(blobs)))
    assert len(read_header(f).tensors) == len(t)
    rec = invoke("register", f, "--lora-alpha", "8", "--json").json
    assert rec["dtype"] == "BF16"


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A header of 640 bytes is encoded 80 02 00..., which starts like pickle protocol 2."""
    header = {
        "base_model.model.layers.0.q_proj.lora_A.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},
        "__metadata__": {"pad": ""},
    }
    body = json.dumps(header)
    header["__metadata__"]["pad"] = "x" * (640 - len(body))
    raw = json.dumps(header).encode()
    assert len(raw) == 640
    f = tmp_path / "a.safetensors"
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    assert f.read_bytes()[:2] == b"\x80\x02"
    r = invoke("register", f, "--json")
    assert r.exit_code == 0, r.stderr
