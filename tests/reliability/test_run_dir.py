"""Run folders are owned and locked (issue #8, 2): genmodels never writes into a folder of the user's,
and one trainer at a time writes a run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

from genmodels.training import RunConfig, train
from genmodels.training.rundir import LOCK, MARKER, RunDirError

from .conftest import tiny_config


class Stop(Exception):
    """Raised by a stand-in prepare_data: the run got past its run-folder checks."""


def _stop_at_data(monkeypatch, run=None, seen=None):
    """prepare_data records ``run``'s lock in ``seen`` (if given) and stops the run there."""
    def prepare(cfg, log=None):
        if seen is not None:
            seen.append(json.loads((run / LOCK).read_text()))
        raise Stop
    monkeypatch.setattr("genmodels.training.data.prepare_data", prepare)


def _no_work(monkeypatch):
    def prepare(*a, **kw):
        raise AssertionError("data prepared before the run folder was checked")
    monkeypatch.setattr("genmodels.training.data.prepare_data", prepare)


def _cfg(corpus_dir, run, **over):
    return RunConfig.from_dict(tiny_config(corpus_dir, run, **over))


@pytest.fixture(scope="module")
def old_run(corpus_dir, tmp_path_factory):
    """A short finished run (4 steps, checkpoints at 2 and 4)."""
    run = tmp_path_factory.mktemp("owned") / "run"
    train(_cfg(corpus_dir, run, train={"max_steps": 4, "ckpt_every": 2, "eval_every": 2},
               sample={"max_new_tokens": 0}), progress=False, log=lambda s: None)
    return run


def test_a_folder_of_the_users_is_refused_before_any_work(corpus_dir, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "config.yaml").write_text("mine: true\n")
    _no_work(monkeypatch)
    with pytest.raises(RunDirError) as e:
        train(_cfg(corpus_dir, mine), progress=False, log=lambda s: None)
    msg = str(e.value)
    assert str(mine) in msg and "config.yaml, data/, notes.txt" in msg and MARKER in msg and "\n" not in msg
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "data", "notes.txt"]  # nothing written
    assert (mine / "config.yaml").read_text() == "mine: true\n"
    with pytest.raises(RunDirError, match="not a genmodels run folder"):  # --resume too
        train(_cfg(corpus_dir, mine), resume=True, progress=False, log=lambda s: None)


def test_an_empty_folder_is_claimed_and_the_lock_released_on_errors(corpus_dir, tmp_path, monkeypatch):
    run = tmp_path / "empty"
    run.mkdir()
    seen = []
    _stop_at_data(monkeypatch, run, seen)
    with pytest.raises(Stop):
        train(_cfg(corpus_dir, run), progress=False, log=lambda s: None)
    assert (run / MARKER).is_file()
    assert seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()  # held during the run
    assert not (run / LOCK).exists()  # released although the run failed


def test_an_older_run_without_the_marker_is_resumed_not_overwritten(old_run, corpus_dir, tmp_path, monkeypatch):
    legacy = tmp_path / "legacy"
    shutil.copytree(old_run, legacy)
    (legacy / MARKER).unlink()  # as written by a genmodels from before the marker
    _no_work(monkeypatch)
    with pytest.raises(RunDirError, match="already holds checkpoints; pass --resume"):
        train(_cfg(corpus_dir, legacy), progress=False, log=lambda s: None)
    assert not (legacy / MARKER).exists()
    _stop_at_data(monkeypatch)
    with pytest.raises(Stop):  # accepted: past the checks, into data preparation
        train(_cfg(corpus_dir, legacy), resume=True, progress=False, log=lambda s: None)
    assert (legacy / MARKER).is_file()


def _lock(run, pid, host=None):
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 1.7e9}))


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_live_lock_stops_a_second_trainer_and_a_resume(old_run, corpus_dir, tmp_path, monkeypatch):
    run = tmp_path / "busy"
    shutil.copytree(old_run, run)
    other = subprocess.Popen(["sleep", "30"])  # a live process on this host holds the run
    try:
        _lock(run, other.pid)
        _no_work(monkeypatch)
        for resume in (True, False):
            with pytest.raises(RunDirError) as e:
                train(_cfg(corpus_dir, run), resume=resume, progress=False, log=lambda s: None)
            msg = str(e.value)
            if resume:
                assert str(run / LOCK) in msg and f"pid {other.pid}" in msg and socket.gethostname() in msg
        assert json.loads((run / LOCK).read_text())["pid"] == other.pid  # not taken, not removed
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(corpus_dir, tmp_path, monkeypatch):
    run = tmp_path / "stale"
    run.mkdir()
    (run / MARKER).write_text("{}")
    dead = _dead_pid()
    _lock(run, dead)
    said, seen = [], []
    _stop_at_data(monkeypatch, run, seen)
    with pytest.raises(Stop):
        train(_cfg(corpus_dir, run), progress=False, log=said.append)
    assert seen[0]["pid"] == os.getpid()
    assert any("taking over the stale lock" in s and f"pid {dead}" in s for s in said)
    assert not (run / LOCK).exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(corpus_dir, tmp_path, monkeypatch):
    run = tmp_path / "remote"
    run.mkdir()
    (run / MARKER).write_text("{}")
    _lock(run, _dead_pid(), host="some-other-host")  # dead here, but that says nothing of the other host
    _no_work(monkeypatch)
    with pytest.raises(RunDirError) as e:
        train(_cfg(corpus_dir, run), progress=False, log=lambda s: None)
    msg = str(e.value)
    assert "'some-other-host'" in msg and f"delete {run / LOCK}" in msg and "\n" not in msg
    assert (run / LOCK).exists()
