"""A STAND-IN for the QAIRT SDK, made by the tests: the real SDK is proprietary and not installable
here. Its tools are small Python scripts that record their argv and cwd to ``calls.jsonl`` and
write the outputs the QAIRT contract documents (docs/conventions.md and docs/qairt-lora-v3.md: converter, quantizer,
importer, context-binary generator, and the LoRA v3 model creator), checking their inputs the way
those sections say the real tools do, so the qairt backend is tested by contract: argv, YAML, JSON,
files, exit codes. Nothing it writes runs on a device.

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
p.add_argument("--quantization_overrides")
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
p.add_argument("--input_network")
p.add_argument("--input_dlc", required=True)
p.add_argument("--lora_config", required=True)
p.add_argument("--output_dir", required=True)
p.add_argument("--enable_float_fallback", action="store_true")
p.add_argument("--input_list")
a = p.parse_args()
dlc = json.loads(Path(a.input_dlc).read_text())
if dlc.get("mode", "none") != "none" and not a.input_network:
    print("ERROR: --input_network is required for quant_updatable_mode other than none", file=sys.stderr)
    sys.exit(2)
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
# STANDIN_GROUP_SECTIONS=g1,g2 plays an SDK whose generator has the (unpublished) switch for
# quantization-only sections: it writes <graph>_<group>.bin for the groups named
for grp in filter(None, os.environ.get("STANDIN_GROUP_SECTIONS", "").split(",")):
    for g in graphs:
        (out / f"{g}_{grp}.bin").write_bytes(b"STANDIN-QUANT-SECTION\0" + grp.encode())
"""
)

QUANTIZER = (
    COMMON
    + r"""
p = argparse.ArgumentParser()
p.add_argument("--input_dlc", required=True)
p.add_argument("--output_dlc", required=True)
p.add_argument("--enable_float_fallback", action="store_true")
p.add_argument("--input_list")
a = p.parse_args()
if not (a.enable_float_fallback or a.input_list):
    print("ERROR: give --input_list or --enable_float_fallback", file=sys.stderr)
    sys.exit(2)
if not SKIP:
    Path(a.output_dlc).write_text(json.dumps(json.loads(Path(a.input_dlc).read_text()) | {"quantized": True}))
"""
)

CREATOR = (
    COMMON
    + r"""
# qairt-lora-model-creator (docs/qairt-lora-v3.md): checks the config as section 7 says the tool does,
# finds each use case's MatMul -> Mul -> MatMul branches at the adapters' target operators, and
# writes base_model.onnx, lora_tensor_names.txt, <use case>.safetensors and lora_importer_config.yaml
import numpy as np, onnx, yaml
from onnx import numpy_helper
from safetensors.numpy import save_file
p = argparse.ArgumentParser()
p.add_argument("--lora_config", required=True)
p.add_argument("--output_dir", required=True)
p.add_argument("--quant_updatable_mode", default="adapter_only", choices=["none", "adapter_only", "all"])
p.add_argument("--skip_validation", action="store_true")
p.add_argument("--dump_usecase_onnx", action="store_true")
a = p.parse_args()
def die(msg):
    print(f"ERROR: {TOOL}: {msg}", file=sys.stderr)
    sys.exit(4)
here = Path(a.lora_config).parent
cfg = yaml.safe_load(Path(a.lora_config).read_text())
if not isinstance(cfg, dict) or set(cfg) != {"adapter", "use-case"}:
    die("the config needs exactly `adapter` and `use-case`")
adapters = {}
for ad in cfg["adapter"]:
    j = json.loads((here / ad["lora_config"]).read_text())
    if set(j) != {"name", "rank", "alpha", "target_operator_names"} or j["name"] != ad["name"]:
        die(f"adapter config {ad['lora_config']}: keys {sorted(j)}")
    if not j["target_operator_names"]:
        die(f"adapter {j['name']}: no target_operator_names")
    adapters[j["name"]] = j
ucs = cfg["use-case"]
if len([u for u in ucs if not u.get("adapter_names")]) != 1:
    die("exactly one base use case (empty adapter_names) is required")
if len({u["name"] for u in ucs}) != len(ucs):
    die("use case names must be unique")
if a.quant_updatable_mode == "none" and any(u.get("quant_overrides") for u in ucs):
    die("the alpha Mul encoding must be the same across use cases unless quant_updatable_mode is all")
base_uc = next(u for u in ucs if not u.get("adapter_names"))
base = onnx.load(str(here / base_uc["model_name"]))
ops = {n.name: n for n in base.graph.node}
for j in adapters.values():
    for op in j["target_operator_names"]:
        if op not in ops or ops[op].op_type not in ("MatMul", "Conv"):
            die(f"adapter {j['name']}: {op} is not a MatMul/Conv node of the base model")
targets = sorted({op for j in adapters.values() for op in j["target_operator_names"]})
base_w = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
def branches(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    cons = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    found = {}
    def only(t, kind):
        c = cons.get(t, [])
        return c[0] if len(c) == 1 and c[0].op_type == kind else None
    for op in targets:
        x, y = ops[op].input[0], ops[op].output[0]
        for n in cons.get(x, []):
            if n.op_type != "MatMul" or n.name == op or n.input[1] not in inits:
                continue
            mul = only(n.output[0], "Mul")
            mm = mul and only(mul.output[0], "MatMul")
            add = mm and only(mm.output[0], "Add")
            if add and y in add.input:  # x -> MatMul(A) -> Mul -> MatMul(B) -> Add onto the op's output
                found[op] = (inits[n.input[1]], inits[mul.input[1]], inits[mm.input[1]])
    return found
per_uc, R = {}, {op: 0 for op in targets}
n_slots = max(len(u.get("adapter_names") or []) for u in ucs)
for u in ucs:
    if not u.get("adapter_names"):
        continue
    got = branches(onnx.load(str(here / u["model_name"])))
    for name in u["adapter_names"]:
        for op in adapters[name]["target_operator_names"]:
            if op not in got:
                die(f"use case {u['name']}: no MatMul -> Mul -> MatMul branch at {op}")
    for op, (A, s, B) in got.items():
        want = sum(adapters[n]["rank"] for n in u["adapter_names"] if op in adapters[n]["target_operator_names"])
        if A.shape[1] > want:
            die(f"use case {u['name']}: rank {A.shape[1]} at {op} is above its adapters' ranks {want}")
        R[op] = max(R[op], A.shape[1])
    per_uc[u["name"]] = (u, got)
out = Path(a.output_dir)
out.mkdir(parents=True, exist_ok=True)
if SKIP:
    sys.exit(0)
onnx.save(base, str(out / "base_model.onnx"))
names = [f"{op}_lora{x}_MatMul_.weight" for op in targets for x in "AB"] + [f"{op}_indices" for op in targets]
(out / "lora_tensor_names.txt").write_text("\n".join(names) + "\n")
lic = {"use_case": []}
for name, (u, got) in per_uc.items():
    t = {}
    for op in targets:
        r = R[op]
        A, s, B = got.get(op, (None, None, None))
        d_in, d_out = base_w[ops[op].input[1]].shape
        cols = A.shape[1] if A is not None else 0
        pa = np.zeros((d_in, r), np.float32)
        pb = np.zeros((r, d_out), np.float32)
        idx = np.full((1, r), n_slots, np.int64)
        if A is not None:
            pa[:, :cols], pb[:cols] = A, B * s[:, None]
            col = 0
            for slot, an in enumerate(u["adapter_names"]):
                if op in adapters[an]["target_operator_names"]:
                    k = adapters[an]["rank"]
                    idx[0, col : col + k] = slot
                    col += k
        t[f"{op}_loraA_MatMul_.weight"], t[f"{op}_loraB_MatMul_.weight"], t[f"{op}_indices"] = pa, pb, idx
    save_file(t, str(out / f"{name}.safetensors"))
    e = {"name": name, "model_name": "base_model.onnx", "lora_weights": f"{name}.safetensors"}
    if u.get("quant_overrides"):
        (out / f"{name}.encodings").write_text((here / u["quant_overrides"]).read_text())
        e["quant_overrides"] = f"{name}.encodings"
    lic["use_case"].append(e)
(out / "lora_importer_config.yaml").write_text(yaml.safe_dump(lic, sort_keys=False))
"""
)

TOOLS = {
    "qairt-converter": CONVERTER,
    "qairt-quantizer": QUANTIZER,
    "qairt-lora-importer": IMPORTER,
    "qnn-context-binary-generator": GENERATOR,
    "qairt-lora-model-creator": CREATOR,
}


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
