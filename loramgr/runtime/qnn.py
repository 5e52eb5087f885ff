"""Qualcomm's HTP backend through ONNX Runtime's QNN plugin EP (the ``[qnn]`` extra, ``onnxruntime-qnn``).

The one module that imports ``onnxruntime_qnn``: it registers the plugin EP once per process, builds
the session options (HTP backend, a SoC's ``soc_model``, CPU fallback off so a graph either runs wholly
on HTP or fails), compiles graphs into EPContext models and reports the QNN version the backend was
built from. On x86 the HTP backend is Qualcomm's simulator of the SoC (its numerics, not its speed);
the same calls on a Snapdragon machine run on the NPU.

Measured with onnxruntime-qnn 2.7 (QNN 2.51) and onnxruntime 1.32: without a ``soc_model`` the
simulator computes in fp32; with one it uses that SoC's fp16 float path. A context holding several
graphs' shared weights (``ep.share_ep_contexts``) does not load on x86 (the process dies in the QNN
library), so only :func:`simulator_can_load_shared` decides whether to try.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loramgr.errors import ExternalToolError, UsageError

EP_NAME = "QNNExecutionProvider"
INSTALL_HINT = "pip install 'loramgr[qnn]' (onnxruntime-qnn: x86_64 Linux/Windows and Windows on Snapdragon)"


@functools.lru_cache(maxsize=1)
def _module() -> Any:
    try:
        import onnxruntime_qnn
    except ImportError:
        raise UsageError(
            "the HTP backend",
            f"needs onnxruntime-qnn, which is not installed here ({platform.machine()})",
            hint=INSTALL_HINT,
        ) from None
    return onnxruntime_qnn


def available() -> bool:
    """True when the QNN EP can be used in this process."""
    try:
        devices()
    except UsageError:
        return False
    return True


@contextlib.contextmanager
def redirect_fd(fd: int, to: int) -> Iterator[None]:
    """File descriptor ``fd`` (1 or 2) sent to ``to`` for a while: native libraries write there
    directly, past Python's ``sys.stdout`` / ``sys.stderr``."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        os.dup2(to, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Qualcomm's HTP library prints a line about its thread-local configuration on stdout when it is
    first loaded, which would corrupt ``--json``: stdout goes to /dev/null meanwhile."""
    with open(os.devnull, "wb") as null, redirect_fd(1, null.fileno()):
        yield


@functools.lru_cache(maxsize=1)
def _htp_library() -> ctypes.CDLL:
    """``libQnnHtp.so``, loaded once and quietly; the EP's own later load reuses this handle."""
    with _quiet_stdout():
        return ctypes.CDLL(_module().get_qnn_htp_path())


@functools.lru_cache(maxsize=1)
def devices() -> list[Any]:
    """The QNN EP's devices, registering the plugin library once per process."""
    import onnxruntime as ort

    mod = _module()
    _htp_library()
    # a graph HTP cannot place is an exception with the reason; ORT's default logger would also print
    # it, as a second, multi-line message
    ort.set_default_logger_severity(4)
    if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP_NAME, mod.get_library_path())
        except Exception as e:  # noqa: BLE001 - ORT raises plain Exception/RuntimeError subclasses
            raise UsageError("the HTP backend", f"the QNN EP did not register: {e}", hint=INSTALL_HINT) from None
    found = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not found:
        raise UsageError("the HTP backend", "the QNN EP registered no device on this machine", hint=INSTALL_HINT)
    return found


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("patch", ctypes.c_uint32)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("core", _Version), ("backend", _Version)]


_GetBuildId = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.POINTER(ctypes.c_char_p))


class _Interface(ctypes.Structure):
    """The head of QNN's ``QnnInterface_t`` (QnnInterface.h): enough to reach ``backendGetBuildId``."""

    _fields_ = [
        ("backendId", ctypes.c_uint32),
        ("providerName", ctypes.c_char_p),
        ("apiVersion", _ApiVersion),
        ("propertyHasCapability", ctypes.c_void_p),
        ("backendCreate", ctypes.c_void_p),
        ("backendSetConfig", ctypes.c_void_p),
        ("backendGetApiVersion", ctypes.c_void_p),
        ("backendGetBuildId", _GetBuildId),
    ]


@functools.lru_cache(maxsize=1)
def qnn_version() -> str:
    """The QNN SDK build the HTP backend library comes from (``2.51.0.260929181845``): what a context
    binary records as ``ep_sdk_version`` and what the same-SDK rule compares."""
    try:
        dll = _htp_library()
        provs = ctypes.POINTER(ctypes.POINTER(_Interface))()
        n = ctypes.c_uint32()
        if dll.QnnInterface_getProviders(ctypes.byref(provs), ctypes.byref(n)) != 0 or n.value < 1:
            raise OSError("QnnInterface_getProviders failed")
        bid = ctypes.c_char_p()
        if provs[0].contents.backendGetBuildId(ctypes.byref(bid)) != 0 or not bid.value:
            raise OSError("backendGetBuildId failed")
        return bid.value.decode().lstrip("v")
    except (OSError, AttributeError, ValueError):
        from onnxruntime_qnn import build_and_package_info

        return str(build_and_package_info.qnn_version)


def simulator_can_load_shared() -> bool:
    """Weight-shared contexts load on Snapdragon devices, not in the x86 simulator."""
    return platform.machine().lower() not in ("x86_64", "amd64")


#: whether this process has created an HTP device with a SoC's numerics (see :func:`session_options`)
_SOC_USED: list[int] = []


def session_options(soc_model: int | None, *, config: dict[str, str] | None = None, cpu_fallback: bool = False) -> Any:
    """Session options for the HTP backend: the SoC's numerics (``soc_model``; None: the simulator's
    fp32 mode), CPU fallback disabled, extra session config entries (``ep.context_*``).

    Measured: once a process has used a ``soc_model``, a later session without one still gets fp16
    numerics (the backend keeps its device), so the fp32 mode is refused in such a process rather
    than giving fp16 results under an fp32 name."""
    import onnxruntime as ort

    if soc_model is None and _SOC_USED:
        raise UsageError(
            "the HTP simulator's fp32 mode",
            f"this process already used soc_model {_SOC_USED[0]}, whose fp16 numerics the backend keeps",
            hint="run the fp32 check (--htp-fp32) in a process of its own",
        )
    if soc_model is not None and not _SOC_USED:
        _SOC_USED.append(soc_model)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    opts = {"backend_type": "htp"} | ({"soc_model": str(soc_model)} if soc_model is not None else {})
    so.add_provider_for_devices(devices(), opts)
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if cpu_fallback else "1")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return so


def session(model: str | Path, soc_model: int | None, *, name: str | Path | None = None) -> Any:
    """An ONNX Runtime session wholly on HTP; a graph HTP cannot place is refused with exit 2 naming
    the reason (``name``: the file to name, when ``model`` is a working copy of it)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(model), sess_options=session_options(soc_model))
    except Exception as e:  # noqa: BLE001 - ORT's errors are plain RuntimeError subclasses
        mode = "in the simulator's fp32 mode" if soc_model is None else f"for soc_model {soc_model}"
        raise UsageError(str(name or model), f"does not run wholly on HTP {mode}: {_first_line(e)}") from None


def compile_model(
    model: str | Path, out: str | Path, soc_model: int, *, share: bool = False, last: bool = False
) -> None:
    """Compile ``model`` into the EPContext model ``out`` (and its ``<stem>_qnn.bin`` beside it, unless
    shared). ``share``: the context is shared with the graphs compiled before it in this process,
    until the one marked ``last``."""
    import onnxruntime as ort

    cfg = {"ep.context_enable": "1", "ep.context_file_path": str(out), "ep.context_embed_mode": "0"}
    if share:
        cfg["ep.share_ep_contexts"] = "1"
        if last:
            cfg["ep.stop_share_ep_contexts"] = "1"
    try:
        ort.InferenceSession(str(model), sess_options=session_options(soc_model, config=cfg))
    except Exception as e:  # noqa: BLE001
        raise ExternalToolError("the QNN HTP compiler", f"{model}: {_first_line(e)}") from None


@contextlib.contextmanager
def fp32_simulator_graph(graph: Path) -> Iterator[Path]:
    """``graph`` for the simulator's fp32 mode, which cannot finalize a Gather of fp32 values (the
    token embedding): a copy beside it (its external data resolves) where each such Gather is the
    same lookup as a one-hot MatMul, removed again once the caller has loaded it. V x D multiply-adds
    per token: a check of the graph's logic in simulation, never what a device runs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(graph), load_external_data=False)
    g = m.graph
    tables = {t.name: t for t in g.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    changed = 0
    for n in list(g.node):
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if n.op_type != "Gather" or axis != 0 or n.input[0] not in tables:
            continue
        p = f"{n.name or n.output[0]}/onehot"
        rows = int(tables[n.input[0]].dims[0])
        g.initializer.extend(
            [numpy_helper.from_array(np.arange(rows, dtype=np.int32), f"{p}/rows"),
             numpy_helper.from_array(np.array([-1], np.int64), f"{p}/last")]
        )  # fmt: skip
        new = [
            helper.make_node("Cast", [n.input[1]], [f"{p}/ids"], to=TensorProto.INT32, name=f"{p}/ids"),
            helper.make_node("Unsqueeze", [f"{p}/ids", f"{p}/last"], [f"{p}/col"], name=f"{p}/col"),
            helper.make_node("Equal", [f"{p}/col", f"{p}/rows"], [f"{p}/eq"], name=f"{p}/eq"),
            helper.make_node("Cast", [f"{p}/eq"], [f"{p}/hot"], to=TensorProto.FLOAT, name=f"{p}/hot"),
            helper.make_node("MatMul", [f"{p}/hot", n.input[0]], [n.output[0]], name=f"{p}/mm"),
        ]
        at = list(g.node).index(n)
        g.node.remove(n)
        for j, node in enumerate(new):
            g.node.insert(at + j, node)
        changed += 1
    if not changed:
        yield graph
        return
    copy = graph.with_name(f".htp-fp32-{os.getpid()}-{graph.name}")
    onnx.save(m, str(copy))
    try:
        yield copy
    finally:
        copy.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _genie() -> ctypes.CDLL:
    """``libGenie.so`` from the wheel (its RPATH finds its own dependencies)."""
    lib = ctypes.CDLL(str(Path(_module().__file__).parent / "libGenie.so"))
    lib.GenieDialogConfig_createFromJson.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.GenieDialogConfig_createFromJson.restype = ctypes.c_int32
    lib.GenieDialogConfig_free.argtypes = [ctypes.c_void_p]
    lib.GenieDialogConfig_free.restype = ctypes.c_int32
    for part in ("Major", "Minor", "Patch"):
        getattr(lib, f"Genie_getApi{part}Version").restype = ctypes.c_uint32
    return lib


def genie_version() -> str:
    """The Genie API version of the wheel's ``libGenie.so`` (``1.21.0``)."""
    lib = _genie()
    return ".".join(str(getattr(lib, f"Genie_getApi{p}Version")()) for p in ("Major", "Minor", "Patch"))


def genie_parse(config_json: str) -> tuple[int, str]:
    """Genie's own parser on a dialog config (``GenieDialogConfig_createFromJson``): its status (0:
    accepted; -7 malformed JSON; -8 refused by its schema) and what it printed about a refusal (Genie
    writes the reason to stderr, not to a logger). It checks the structure, not that files exist."""
    lib = _genie()
    handle = ctypes.c_void_p()
    with tempfile.TemporaryFile() as err:
        with redirect_fd(2, err.fileno()):
            status = int(lib.GenieDialogConfig_createFromJson(config_json.encode(), ctypes.byref(handle)))
            ctypes.CDLL(None).fflush(None)
        err.seek(0)
        said = " ".join(err.read().decode(errors="replace").split())
    if status == 0 and handle.value:
        lib.GenieDialogConfig_free(handle)
    return status, said[:400]


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400]
