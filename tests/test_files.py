"""genmodels.files.atomic_write: a write that fails or dies midway leaves the old file whole.

Every caller (metrics.jsonl, config.yaml, tokenizer.json, scheduler_config.json, the caches, the native
library's sidecar) takes the success path in its own tests; a plain ``open(path, "wb")`` in its place passed
the whole suite (test-audit-2026-12-07, M20: the target then held '{"new": "hal').
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genmodels import files

OLD, NEW = b'{"old": "whole file"}\n', b'{"new": "half of it is written before the failure"}\n'


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "target.json")


def _half_then(exc: BaseException):
    """A writer that writes half of NEW, flushes it to the OS, then raises ``exc``."""
    def write(fh):
        fh.write(NEW[: len(NEW) // 2])
        fh.flush()
        raise exc
    return write


@pytest.mark.parametrize("exc", [RuntimeError("the writer failed"), KeyboardInterrupt(),
                                 OSError(errno.ENOSPC, "No space left on device")], ids=["error", "interrupt", "full"])
def test_a_write_failing_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path, exc):
    target = tmp_path / "target.json"
    target.write_bytes(OLD)
    with pytest.raises(type(exc)) as caught:
        files.atomic_write(target, _half_then(exc))
    assert target.read_bytes() == OLD
    assert _leftovers(tmp_path) == []
    if isinstance(exc, OSError):  # the disk-full error names the file being written
        assert caught.value.filename == str(target)


def test_a_new_file_failing_midway_is_not_created(tmp_path):
    target = tmp_path / "target.json"
    with pytest.raises(RuntimeError):
        files.atomic_write(target, _half_then(RuntimeError("the writer failed")))
    assert not target.exists() and _leftovers(tmp_path) == []


def test_a_process_killed_midway_leaves_the_old_file_whole(tmp_path):
    """SIGKILL after half the bytes reached the OS: no cleanup runs, and the target still holds the old file
    (only a temporary file beside it may be left). files.py is loaded alone: no torch import in the child."""
    target = tmp_path / "target.json"
    target.write_bytes(OLD)
    code = ("import importlib.util, os, signal, sys\n"
            "spec = importlib.util.spec_from_file_location('gm_files', sys.argv[1])\n"
            "files = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(files)\n"
            "def write(fh):\n"
            "    fh.write(sys.argv[3].encode()[:20])\n"
            "    fh.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "files.atomic_write(sys.argv[2], write)\n")
    r = subprocess.run([sys.executable, "-c", code, files.__file__, str(target), NEW.decode()], timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert target.read_bytes() == OLD
    assert all(name.endswith(".tmp") for name in _leftovers(tmp_path))


def test_a_completed_write_replaces_the_file(tmp_path):
    target = tmp_path / "target.json"
    target.write_bytes(OLD)
    files.atomic_write(target, lambda fh: fh.write(NEW))
    assert target.read_bytes() == NEW and _leftovers(tmp_path) == []
    files.atomic_write_bytes(target, OLD)
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["target.json"]
