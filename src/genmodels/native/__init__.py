"""Native CPU kernels (``csrc/``: C, one shared library): compiled on first use with the system C compiler, loaded
with ctypes, and optional — when no compiler is available (or ``GENMODELS_NATIVE=0``) everything
runs on the PyTorch path, which is also the reference the tests hold the kernels equal to.

The shared library is cached under ``$GENMODELS_CACHE`` (default ``~/.cache/genmodels``), keyed by
the source, the compiler and the CPU (it is built with ``-march=native``); it is written to a
temporary name and renamed, so concurrent first uses (parallel tests) are safe. A sidecar
``<name>.so.json`` written after it records its size and SHA-256, checked before ctypes maps the
file (a truncated library can kill the process with SIGBUS): a cached library that fails the check,
or that the loader refuses, is rebuilt (once). The build runs under a timeout
(``GENMODELS_NATIVE_BUILD_TIMEOUT`` seconds, default 120, for ``--version`` and the build together; past it:
the PyTorch path, with the reason) and says on stderr that it is compiling, and when it gives up, when it
takes more than a second. A compiler that hangs is given up once: the failure is remembered in the cache
(``failed-<key>.json``, keyed by the compiler's identity: the CC command and its resolved file's path, size
and modification time), so later processes take the PyTorch path at once; a changed compiler, a longer
timeout or deleting that file tries again.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..files import atomic_write_bytes, file_sha256, fsync_path
from .hangs import GaveUp, remember_hang, remembered_hang

import torch  # noqa: F401  (loads torch's libgomp first: the kernels then share its OpenMP thread pool)

from .switches import OFF, SWITCHES, switch  # noqa: E402,F401  (the environment switches)

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc")  # common.h; linear.c, ops.c, decoder.c (+ decoder.h, moe.c), encoder.c,
# retnet.c, attention.c, quant.c (+ quant.h), prefill.c (+ gemm.c, gemm_bf16.c, prefill.h), rows_gemm.c
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])
_COMMON_FLAGS = ["-fvisibility=hidden", "-shared", "-fPIC"]
BUILD_TIMEOUT_S = 120.0  # default of GENMODELS_NATIVE_BUILD_TIMEOUT
NOTICE_AFTER_S = 1.0  # a build still running after this says so on stderr
NOTICE = "genmodels: compiling native CPU kernels (first use)"  # + the timeout (see _say_compiling)


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE.iterdir() if p.suffix in (".c", ".h"))
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    """False when ``GENMODELS_NATIVE`` is 0/false/off/no; every switch's value checked (:func:`switch`)."""
    for name in SWITCHES:
        switch(name)
    return switch("GENMODELS_NATIVE") not in OFF


def cache_dir() -> Path:
    root = os.environ.get("GENMODELS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "genmodels")
    return Path(root) / "native"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature lines (x86 and Arm names)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU implementer",
                                                      "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def build_timeout() -> float:
    """Seconds a build may take (``GENMODELS_NATIVE_BUILD_TIMEOUT``, default 120)."""
    raw = os.environ.get("GENMODELS_NATIVE_BUILD_TIMEOUT", "").strip()
    if not raw:
        return BUILD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"GENMODELS_NATIVE_BUILD_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` with output captured; on ``timeout`` its whole process group (the compiler's cc1, as,
    ld too, which would otherwise hold the pipes open) is killed and ``TimeoutExpired`` raised."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _compiler_id(compiler: list[str], timeout: float | None = None) -> str:
    """``compiler --version``'s output ("" when it cannot run); a compiler that does not answer within
    ``timeout`` (default: the build timeout) raises ``TimeoutExpired``: it is the hang the build gives up on."""
    try:
        return _run([*compiler, "--version"], build_timeout() if timeout is None else timeout).stdout
    except OSError:
        return ""


def _private_dir(path: Path) -> Path | None:
    """``path`` created if needed, if it is a writable folder owned by this user and writable by
    nobody else (a library loaded from a folder others can write to could be planted)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return None
    if not os.access(path, os.W_OK) or (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
        return None
    return path


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".json")


def _write_sidecar(lib: Path, size: int, sha256: str) -> None:
    """``<lib>.json`` = {size, sha256}: temp name, fsync, rename."""
    atomic_write_bytes(_sidecar(lib), json.dumps({"size": size, "sha256": sha256}).encode("utf-8"))


def check_cached(lib: Path) -> str | None:
    """Why the cached library ``lib`` must not be loaded (``"missing"``: not built), or ``None``
    when its size and SHA-256 match its sidecar. Reads the file; never maps it."""
    if not lib.is_file():
        return "missing"
    try:
        meta = json.loads(_sidecar(lib).read_text(encoding="utf-8"))
        size, sha = int(meta["size"]), str(meta["sha256"])
    except FileNotFoundError:
        return "without its checksum sidecar (interrupted write or older genmodels)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"with an unreadable sidecar ({e})"
    try:
        have = lib.stat().st_size
        if have != size:
            return f"{have} bytes, not the {size} recorded (truncated?)"
        if file_sha256(lib) != sha:
            return "not matching its recorded SHA-256 (corrupted)"
    except OSError as e:
        return f"unreadable ({e})"
    return None


def forget(lib: Path) -> None:
    """Delete a cached library and its sidecar (files genmodels wrote)."""
    lib.unlink(missing_ok=True)
    _sidecar(lib).unlink(missing_ok=True)


def _folder() -> Path:
    """The private folder of the cached libraries (and remembered failures)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    found = _private_dir(cache_dir()) or _private_dir(Path(tempfile.gettempdir()) / f"genmodels-native-{uid}")
    if found is None and "folder" not in _state:  # last resort: this process only
        _state["folder"] = Path(tempfile.mkdtemp(prefix="genmodels-native-"))
    return found or _state["folder"]


def _cache_path(compiler: list[str], timeout: float | None = None) -> Path:
    key = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in _sources()) + " ".join(compiler).encode()
                         + _compiler_id(compiler, timeout).encode() + _cpu_id().encode()
                         + platform.machine().encode()).hexdigest()[:16]
    return _folder() / f"genmodels_native_{key}.so"


def _say_compiling() -> None:
    print(f"{NOTICE}: usually a few seconds; giving up after {build_timeout():g} s "
          "(GENMODELS_NATIVE_BUILD_TIMEOUT)...", file=sys.stderr, flush=True)


def _build(compiler: list[str]) -> Path:
    """The cached library for ``compiler`` (checked against its sidecar), compiled if missing or bad. A
    compiler that hangs (``--version`` or the build past the timeout) is given up and remembered."""
    timeout = build_timeout()
    hung = remembered_hang(_folder(), compiler, timeout)
    if hung is not None:
        raise GaveUp(f"could not build genmodels' native kernels:\n{hung}")
    deadline = time.monotonic() + timeout
    notice = threading.Timer(NOTICE_AFTER_S, _say_compiling)
    notice.daemon = True
    notice.start()
    try:
        try:
            out = _cache_path(compiler, timeout)
        except subprocess.TimeoutExpired:
            raise GaveUp("could not build genmodels' native kernels:\n"
                         + remember_hang(_folder(), compiler, timeout, f"{' '.join(compiler)} --version")) from None
        why = check_cached(out)
        if why is None:
            return out
        if why != "missing":
            log.warning("genmodels: cached native library %s is %s; rebuilding it", out, why)
        return _compile(compiler, out, deadline, timeout)
    finally:
        notice.cancel()


def _compile(compiler: list[str], out: Path, deadline: float, timeout: float) -> Path:
    errors = []
    for flags in _FLAG_SETS:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        cmd = [*compiler, *flags, *_COMMON_FLAGS, *(str(p) for p in _sources() if p.suffix == ".c"), "-o", str(tmp),
               "-lm"]
        try:
            r = _run(cmd, deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)  # other flags will not be faster enough to matter
            raise GaveUp("could not build genmodels' native kernels:\n"
                         + remember_hang(_folder(), compiler, timeout, f"the build ({' '.join([*compiler, *flags])} …)")) from None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            errors.append(f"{' '.join(cmd)}: {e}")
            break  # no compiler: other flags will not help
        if r.returncode == 0 and tmp.is_file():
            try:
                fsync_path(tmp)
                size, sha = tmp.stat().st_size, file_sha256(tmp)
                os.replace(tmp, out)
                _write_sidecar(out, size, sha)  # after the library: a library without one is not trusted
            finally:
                tmp.unlink(missing_ok=True)
            return out
        tmp.unlink(missing_ok=True)
        errors.append(f"{' '.join(cmd)}:\n{r.stderr.strip()[-2000:]}")
    raise RuntimeError("could not build genmodels' native kernels:\n" + "\n".join(errors))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.gm_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, c_int]
    lib.gm_linear.restype = None
    lib.gm_scratch_floats.argtypes = [vp]
    lib.gm_scratch_floats.restype = i64
    lib.gm_decoder_step.argtypes = [vp, vp, vp, vp, i64, vp]
    lib.gm_decoder_step.restype = c_int
    lib.gm_gemm_packed.argtypes = [vp, i64, i64, vp, vp, vp, i64, c_int]
    lib.gm_gemm_packed.restype = None
    lib.gm_encoder_scratch_floats.argtypes = [vp, i64, i64]
    lib.gm_encoder_scratch_floats.restype = i64
    lib.gm_encoder_forward.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, vp, vp]
    lib.gm_encoder_forward.restype = c_int
    lib.gm_retnet_scratch_floats.argtypes = [vp]
    lib.gm_retnet_scratch_floats.restype = i64
    lib.gm_retnet_step.argtypes = [vp, vp, vp, vp]
    lib.gm_retnet_step.restype = c_int
    f32 = ctypes.c_float
    lib.gm_attention_lanes.argtypes = []
    lib.gm_attention_lanes.restype = i64
    lib.gm_attention_fast.argtypes = []
    lib.gm_attention_fast.restype = c_int
    lib.gm_attention_forward.argtypes = [i64, i64, i64, i64, f32, vp, vp, vp, vp, vp, vp, c_int]
    lib.gm_attention_forward.restype = c_int
    lib.gm_attention_backward.argtypes = [i64, i64, i64, i64, f32, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, c_int]
    lib.gm_attention_backward.restype = c_int
    lib.gm_quant_lanes.argtypes = []  # quant.c: GGUF block formats (native/quant.py)
    lib.gm_quant_lanes.restype = i64
    lib.gm_qlinear.argtypes = [vp, i64, i64, vp, i64, vp, vp, i64, c_int]
    lib.gm_qlinear.restype = c_int
    lib.gm_dequantize.argtypes = [vp, i64, i64, i64, vp]
    lib.gm_dequantize.restype = c_int
    lib.gm_prefill_gemm.argtypes = [vp, i64, i64, vp, i64, vp, vp, i64, c_int, c_int, vp]  # gemm.c + prefill.c (native/prefill.py)
    lib.gm_prefill_gemm.restype = c_int
    lib.gm_prefill_scratch_floats.argtypes = [vp, i64, i64]
    lib.gm_prefill_scratch_floats.restype = i64
    lib.gm_decoder_prefill.argtypes = [vp, vp, vp, vp, i64, i64, vp, vp, c_int, vp]
    lib.gm_decoder_prefill.restype = c_int
    lib.gm_prefill_bf16.argtypes = []  # gemm_bf16.c
    lib.gm_prefill_bf16.restype = c_int
    lib.gm_bf16_packed_size.argtypes = [i64, i64]  # gemm_bf16.c: weights packed once in bf16
    lib.gm_bf16_packed_size.restype = i64
    lib.gm_pack_bf16.argtypes = [vp, i64, i64, vp, c_int]
    lib.gm_pack_bf16.restype = c_int
    lib.gm_pack_bf16_gated.argtypes = [vp, i64, i64, vp, c_int]  # a gated MLP's fc1 (native/prefill.py)
    lib.gm_pack_bf16_gated.restype = c_int
    lib.gm_rows_gemm_min.argtypes = []  # rows_gemm.c: the batched products' threshold in rows (0: not in this build)
    lib.gm_rows_gemm_min.restype = i64
    return lib


def _load(compiler: list[str]) -> ctypes.CDLL:
    """Build (or find) and load the library; one the loader refuses is deleted and rebuilt once."""
    path = _build(compiler)
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("genmodels: native library %s cannot be loaded (%s); deleting it and rebuilding once",
                    path, str(e).splitlines()[0] if str(e) else e)
        forget(path)
    return ctypes.CDLL(str(_build(compiler)))


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; ``None`` if disabled or unavailable (the
    reason is logged once and kept in :func:`unavailable_reason`)."""
    if not enabled():
        return None
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _bind(_load(shlex.split(os.environ.get("CC") or "cc")))
            except (OSError, RuntimeError, AttributeError) as e:
                _state["lib"] = None
                _state["error"] = str(e)
                lines = str(e).splitlines()
                log.warning("genmodels: native CPU kernels unavailable, using the PyTorch path (%s)",
                            " ".join(lines[1:3]) or lines[0])
        return _state["lib"]


def unavailable_reason() -> str | None:
    if not enabled():
        return "disabled by GENMODELS_NATIVE=0"
    return None if library() is not None else _state.get("error")


# shared by decoder.py, encoder.py and retnet.py (native/layout.py), importable from here as before
from .layout import (ACTIVATIONS, Pinned, never_raises, norm_kind, unplain_projection,  # noqa: E402,F401
                     unsupported_tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x (M, K) · weight (N, K)ᵀ + bias`` with the native small-M kernel (fp32, CPU, contiguous).

    For tests and benchmarks of the kernel itself; callers check :func:`library` first.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {unavailable_reason()}")
    tensors = (x, weight) + ((bias,) if bias is not None else ())
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors) or x.dim() != 2 or weight.dim() != 2:
        raise ValueError("native.linear takes fp32 CPU x (M, K), weight (N, K) and bias (N,)")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features, weight expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({weight.shape[0]},)")
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y = x.new_empty(x.shape[0], weight.shape[0])
    lib.gm_linear(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), bias.data_ptr() if bias is not None
                  else None, y.data_ptr(), weight.shape[0], torch.get_num_threads())
    return y
