"""Run folders are owned: genmodels writes only into a folder it made a run folder, and only one
trainer writes a run at a time.

    RUN_DIR/.genmodels-run.json   the marker: written when a run starts in a new or empty folder
    RUN_DIR/.lock                 held while a trainer writes the run: {"pid", "host", "started"}

A folder without the marker that holds anything is refused (it is the user's), unless it is a run
written by a genmodels from before the marker (``checkpoints/step-*/state.json``), which is adopted
with ``--resume``. The lock is created with ``O_CREAT | O_EXCL``; a lock left by a dead process on
this host is taken over, one from another host is refused (this host cannot tell whether it lives).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

MARKER = ".genmodels-run.json"
LOCK = ".lock"
_SHOWN = 5  # entries named in a refusal


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked; the message names the folder or file and what to do."""


def _is_legacy_run(run_dir: Path) -> bool:
    """A run written before the marker existed: at least one complete checkpoint."""
    return any((p / "state.json").is_file() for p in (run_dir / "checkpoints").glob("step-*"))


def has_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds any ``step-*`` folder (complete or not)."""
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir())


def claim_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a ``run_dir`` genmodels may not write, else make it a run folder (create it, write the marker).

    Allowed: a new or empty folder; a folder with the marker (a fresh start only while it holds no
    checkpoints); an older genmodels run with ``resume``. Call on the main rank, before any work.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir} is a file, not a folder; choose another run_dir (--set run_dir=...)")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()) if run_dir.is_dir() else []
    owned = (run_dir / MARKER).is_file()
    if entries and not owned and not _is_legacy_run(run_dir):
        shown = ", ".join(entries[:_SHOWN]) + (f", ... ({len(entries)} entries)" if len(entries) > _SHOWN else "")
        raise RunDirError(f"run_dir {run_dir} is not a genmodels run folder (no {MARKER}) and holds {shown}; "
                          "genmodels writes only into a new or empty folder or one of its own runs: "
                          "choose another run_dir (--set run_dir=...)")
    if not resume and has_checkpoints(run_dir):
        raise RunDirError(f"{run_dir} already holds checkpoints; pass --resume to continue it, "
                          "or choose another run_dir (--set run_dir=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not owned:
        (run_dir / MARKER).write_text(json.dumps({"genmodels_run": 1, "created": time.time()}) + "\n")


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {when}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The run's lock file, held from :meth:`acquire` to :meth:`release` (idempotent)."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = Path(path), owner

    @classmethod
    def acquire(cls, run_dir: Path, say=lambda s: None) -> "RunLock":
        """Create ``run_dir/.lock``; take over one left by a dead process on this host, else RunDirError."""
        path = Path(run_dir) / LOCK
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):  # a lock taken over by a racing process is looked at again
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _take_over_if_stale(path, owner["host"], say)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(owner) + "\n")
            return cls(path, owner)
        raise RunDirError(f"{path}: could not take the run's lock (another trainer keeps taking it); retry")

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        try:
            if json.loads(self.path.read_text()) == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _take_over_if_stale(path: Path, host: str, say) -> None:
    """Remove the lock at ``path`` if its process is gone (this host); RunDirError if it may live."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return  # released meanwhile: try again
    try:
        owner = json.loads(text)
        pid = int(owner["pid"])
    except (ValueError, KeyError, TypeError):
        raise RunDirError(f"{path} is held but unreadable ({text[:60]!r}); if no trainer writes this run, "
                          f"delete {path} and retry") from None
    if owner.get("host") != host:
        raise RunDirError(f"{path}: the run is locked by {_describe(owner)}; this host ({host!r}) cannot tell "
                          f"whether it still runs: if that process is gone, delete {path} and retry")
    if pid == os.getpid() or _alive(pid):
        raise RunDirError(f"{path}: another trainer writes this run ({_describe(owner)}); wait for it to end, "
                          "or choose another run_dir (--set run_dir=...)")
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if aside.read_text() != text:  # another process took the stale lock over first: its lock, put back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink()
        return
    aside.unlink()
    say(f"taking over the stale lock {path} ({_describe(owner)}: that process is gone)")
