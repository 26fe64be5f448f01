"""A compiler that hangs is given up once and remembered per compiler identity (issue 19, B-20): the next
process does not wait for it again; a changed compiler, or a longer timeout, is tried again; the message says
it gave up and how to retry. Timeouts here are fractions of a second; the compilers are shell scripts."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from genmodels import native

pytestmark = pytest.mark.skipif(not native.enabled(), reason="GENMODELS_NATIVE=0: native kernels disabled on purpose")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENMODELS_NATIVE_BUILD_TIMEOUT", "0.3")
    return tmp_path


def hanging_cc(tmp_path: Path, monkeypatch, version_hangs: bool = False) -> Path:
    """CC = a script that logs each call to calls.log, then sleeps (at --version, or at the build)."""
    script, calls = tmp_path / "hang-cc.sh", tmp_path / "calls.log"
    version = "sleep 300" if version_hangs else 'echo "hang-cc 1.0"; exit 0'
    script.write_text(f'#!/bin/sh\necho "$1" >> "{calls}"\ncase "$1" in --version) {version};; esac\nsleep 300\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    return calls


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def new_process(monkeypatch) -> None:
    """What a new Python process has: no library loaded or refused yet (the cache on disk stays)."""
    monkeypatch.setattr(native, "_state", {})


@pytest.mark.parametrize("version_hangs", [False, True])
def test_a_hanging_compiler_is_given_up_once_and_remembered(fresh, monkeypatch, caplog, version_hangs):
    log = hanging_cc(fresh, monkeypatch, version_hangs)
    with caplog.at_level(logging.WARNING, logger="genmodels.native"):
        assert native.library() is None
    first = native.unavailable_reason()
    assert "timed out after 0.3 s" in first and "gave it up" in first and "To try again" in first, first
    assert ("--version" in first) == version_hangs
    tried = calls(log)
    assert tried == (1 if version_hangs else 2)  # --version (+ one build): never a second flag set
    assert any("gave it up" in r.getMessage() for r in caplog.records)  # the warning carries the reason
    for _ in range(3):  # later processes: no wait, no call to the compiler
        new_process(monkeypatch)
        assert native.library() is None
        assert calls(log) == tried
        again = native.unavailable_reason()
        assert "earlier process" in again and "To try again" in again and "failed-" in again, again


def test_a_changed_compiler_is_tried_again(fresh, monkeypatch):
    log = hanging_cc(fresh, monkeypatch)
    assert native.library() is None
    tried = calls(log)
    script = fresh / "hang-cc.sh"
    script.write_text(script.read_text() + "# fixed, reinstalled: another size and mtime\n")
    new_process(monkeypatch)
    assert native.library() is None
    assert calls(log) == 2 * tried  # tried again (and given up again)


def test_a_longer_timeout_tries_again_and_a_shorter_one_does_not(fresh, monkeypatch):
    log = hanging_cc(fresh, monkeypatch)
    assert native.library() is None
    tried = calls(log)
    monkeypatch.setenv("GENMODELS_NATIVE_BUILD_TIMEOUT", "0.2")
    new_process(monkeypatch)
    assert native.library() is None and calls(log) == tried
    monkeypatch.setenv("GENMODELS_NATIVE_BUILD_TIMEOUT", "0.4")
    new_process(monkeypatch)
    assert native.library() is None and calls(log) == 2 * tried


def test_the_compiling_notice_names_the_time_limit(fresh, monkeypatch, capfd):
    hanging_cc(fresh, monkeypatch)
    monkeypatch.setattr(native, "NOTICE_AFTER_S", 0.05)
    assert native.library() is None
    err = capfd.readouterr().err
    assert native.NOTICE in err and "giving up after 0.3 s" in err and "~3 s" not in err, err
