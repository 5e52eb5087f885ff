"""A STAND-IN for the QAIRT SDK, made by the tests: the real SDK is proprietary and not installable
here. Its three tools are small Python scripts that record their argv and cwd to ``calls.jsonl``
and write the outputs the QAIRT contract documents (DESIGN.md section 4), so the qairt backend is
tested by contract: argv, YAML, files, exit codes. Nothing it writes runs on a device.

Behaviour switches (environment): ``STANDIN_FAIL=<tool>`` exits 3 with an error on stderr,
``STANDIN_SKIP=<tool>`` exits 0 without writing outputs, ``STANDIN_HANG=<tool>`` sleeps.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

COMMON = r"""
import json, os, sys, time, argparse
from pathlib import Path
TOOL = Path(sys.argv[0]).name
ROOT = Path(__file__).resolve().parents[2]
with open(ROOT / "calls.jsonl", "a") as f:
    f.write(json.dumps({"tool": TOOL, "argv": sys.argv[1:], "cwd": os.getcwd(),
                        "env_root": os.environ.get("QNN_SDK_ROOT")}) + "\n")
print(f"[stand-in {TOOL}] starting")
if os.environ.get("STANDIN_HANG") == TOOL:
    time.sleep(120)
if os.environ.get("STANDIN_FAIL") == TOOL:
    print("some progress output")
    print(f"ERROR: {TOOL}: stand-in failure requested", file=sys.stderr)
    print("ERROR: updatable tensor mismatch (simulated)", file=sys.stderr)
    sys.exit(3)
SKIP = os.environ.get("STANDIN_SKIP") == TOOL
"""

CONVERTER = (
    COMMON
    + r"""
p = argparse.ArgumentParser()
p.add_argument("--input_network", required=True)
p.add_argument("--lora_weight_list", required=True)
p.add_argument("--quant_updatable_mode", default="none")
p.add_argument("--output_path", required=True)
a = p.parse_args()
names = Path(a.lora_weight_list).read_text().split()
if not SKIP:
    Path(a.output_path).write_text(json.dumps({"standin_dlc": True, "network": a.input_network,
                                               "updatable": names, "mode": a.quant_updatable_mode}))
"""
)

IMPORTER = (
    COMMON
    + r"""
import yaml
from safetensors.numpy import load_file, save_file
p = argparse.ArgumentParser()
p.add_argument("--input_network", required=True)
p.add_argument("--input_dlc", required=True)
p.add_argument("--lora_config", required=True)
p.add_argument("--output_dir", required=True)
p.add_argument("--enable_float_fallback", action="store_true")
p.add_argument("--input_list")
a = p.parse_args()
dlc = json.loads(Path(a.input_dlc).read_text())
cfg = yaml.safe_load(Path(a.lora_config).read_text())
out = Path(a.output_dir)
out.mkdir(parents=True, exist_ok=True)
listing = []
for uc in cfg["use_case"]:
    w = load_file(uc["lora_weights"])
    if sorted(w) != sorted(dlc["updatable"]):
        print(f"ERROR: use case {uc['name']}: tensors do not match the DLC's updatable tensors", file=sys.stderr)
        sys.exit(4)
    if SKIP:
        continue
    save_file(w, str(out / f"{uc['name']}_lora.safetensors"))
    e = {"name": uc["name"], "weights": os.path.join(a.output_dir, f"{uc['name']}_lora.safetensors"),
         "graph": Path(a.input_dlc).stem}
    if uc.get("quant_overrides"):
        (out / f"{uc['name']}_lora.encodings").write_text(Path(uc["quant_overrides"]).read_text())
        e["encodings"] = os.path.join(a.output_dir, f"{uc['name']}_lora.encodings")
    listing.append(e)
if not SKIP:
    (out / "lora_output_files.yaml").write_text(yaml.safe_dump({"use_case": listing}, sort_keys=False))
"""
)

GENERATOR = (
    COMMON
    + r"""
import hashlib, yaml
from safetensors.numpy import load_file
p = argparse.ArgumentParser()
p.add_argument("--backend", required=True)
p.add_argument("--model", required=True)
p.add_argument("--dlc_path", required=True)
p.add_argument("--binary_file", required=True)
p.add_argument("--output_dir", required=True)
p.add_argument("--adapter_weight_config")
p.add_argument("--config_file")
a = p.parse_args()
dlcs = [Path(x) for x in a.dlc_path.split(",")]
graphs = [d.stem for d in dlcs]
out = Path(a.output_dir)
out.mkdir(parents=True, exist_ok=True)
if SKIP:
    sys.exit(0)
h = hashlib.sha256(b"".join(d.read_bytes() for d in dlcs)).hexdigest()
(out / f"{a.binary_file}.bin").write_bytes(b"STANDIN-CONTEXT\0" + h.encode())
if a.adapter_weight_config:
    cfg = yaml.safe_load(Path(a.adapter_weight_config).read_text())
    share = cfg.get("share_adapters_between_graphs") is True
    by_uc = {}
    for uc in cfg["use_case"]:
        by_uc.setdefault(uc["name"], {})[uc["graph"]] = load_file(uc["weights"])
    def blob(tensors):
        return b"STANDIN-SECTION\0" + b"".join(k.encode() + tensors[k].tobytes() for k in sorted(tensors))
    zeros = None
    for name, per_graph in by_uc.items():
        if share:
            union = {k: v for g in graphs for k, v in per_graph[g].items()}
            (out / f"{graphs[0]}_{name}.bin").write_bytes(blob(union))
            zeros = {k: v * 0 for k, v in union.items()}
        else:
            for g in graphs:
                (out / f"{g}_{name}.bin").write_bytes(blob(per_graph[g]))
            zeros = {g: {k: v * 0 for k, v in per_graph[g].items()} for g in graphs}
    if share:
        (out / f"{graphs[0]}_default_adapter.bin").write_bytes(blob(zeros))
    else:
        for g in graphs:
            (out / f"{g}_default_adapter.bin").write_bytes(blob(zeros[g]))
"""
)

TOOLS = {"qairt-converter": CONVERTER, "qairt-lora-importer": IMPORTER, "qnn-context-binary-generator": GENERATOR}


def make_standin_sdk(root: Path, version: str = "2.28.0", build_id: str | None = "241029") -> Path:
    """Create the stand-in SDK directory at ``root`` (named so nobody mistakes it for the SDK)."""
    bindir = root / "bin" / "x86_64-linux-clang"
    bindir.mkdir(parents=True, exist_ok=True)
    (root / "lib" / "x86_64-linux-clang").mkdir(parents=True, exist_ok=True)
    (root / "STANDIN-NOT-THE-QAIRT-SDK.txt").write_text(__doc__ or "")
    meta = f"# stand-in for tests, not the QAIRT SDK\nname: qairt-standin\nversion: {version}\n"
    if build_id:
        meta += f"build_id: {build_id}\n"
    (root / "sdk.yaml").write_text(meta)
    for name, body in TOOLS.items():
        p = bindir / name
        p.write_text(f"#!{sys.executable}\n" + body)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def calls(root: Path) -> list[dict]:
    p = root / "calls.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []
