"""A compiler that hangs is given up once, not once per process (issue 19, B-20).

When ``cc --version`` or the build runs past ``GENMODELS_NATIVE_BUILD_TIMEOUT``, :func:`remember_hang` writes
``failed-<key>.json`` into the native cache folder, keyed by the compiler's identity — the CC command and its
resolved file's path, size and modification time, read without running it. :func:`remembered_hang` then makes
later processes take the PyTorch path at once. A fixed, reinstalled or other compiler has another identity and
is tried again; so is the same one given a longer timeout than the one it failed with, and deleting the file
retries too (each message says so).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..files import atomic_write_bytes

RETRY = ("To try again: fix or change the compiler (CC), raise GENMODELS_NATIVE_BUILD_TIMEOUT, or delete {record}; "
         "GENMODELS_NATIVE=0 skips the native kernels")


class GaveUp(RuntimeError):
    """The compiler did not finish within the build timeout (and is remembered: :func:`remember_hang`)."""


def compiler_identity(compiler: list[str]) -> dict:
    """What names this compiler without running it: the command, its resolved file, that file's size and
    modification time (a fixed, reinstalled or other compiler differs in one of them)."""
    exe = shutil.which(compiler[0]) if compiler else None
    try:
        st = os.stat(exe) if exe else None
    except OSError:
        st = None
    return {"command": list(compiler), "path": exe and os.path.realpath(exe), "size": st and st.st_size,
            "mtime_ns": st and st.st_mtime_ns}


def hang_record(folder: Path, compiler: list[str]) -> Path:
    """The file that remembers a hang of ``compiler`` in ``folder`` (the native cache)."""
    ident = json.dumps(compiler_identity(compiler), sort_keys=True).encode()
    return folder / f"failed-{hashlib.sha256(ident).hexdigest()[:16]}.json"


def remembered_hang(folder: Path, compiler: list[str], timeout: float) -> str | None:
    """Why ``compiler`` is not tried again — it hung in an earlier process, given at least ``timeout`` seconds —
    or None (never hung, changed since, or now given more time)."""
    record = hang_record(folder, compiler)
    try:
        seen = json.loads(record.read_text(encoding="utf-8"))
        if float(seen["timeout_s"]) < timeout or seen["identity"] != compiler_identity(compiler):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (f"CC={' '.join(compiler)!r} did not finish within {float(seen['timeout_s']):g} s in an earlier process "
            f"({seen.get('step', 'the build')}); genmodels gave it up and remembers it in {record}. "
            + RETRY.format(record=record))


def remember_hang(folder: Path, compiler: list[str], timeout: float, step: str) -> str:
    """Record that ``compiler`` hung at ``step`` (so no later process waits for it again); the message to show."""
    record = hang_record(folder, compiler)
    try:
        atomic_write_bytes(record, json.dumps({"identity": compiler_identity(compiler), "timeout_s": timeout,
                                               "step": step, "when": time.time()}).encode("utf-8"))
        kept = f"remembers it for this compiler in {record}, so later processes do not wait for it"
    except OSError as e:
        kept = f"could not remember it ({record}: {e})"
    return (f"{step} timed out after {timeout:g} s (GENMODELS_NATIVE_BUILD_TIMEOUT): genmodels gave it up and "
            f"{kept}. " + RETRY.format(record=record))
