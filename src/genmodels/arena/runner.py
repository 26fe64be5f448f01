"""Running an arena: every (contestant, seed) trains through ``genmodels train`` in its own process, then
one measuring process scores them all (:mod:`.measure`), then the report is written (:mod:`.report`).

    OUT/state.json            the arena's state (its marker): the spec and each entry's status, written atomically
    OUT/recipes/<id>.yaml     the training recipe of entry <id> (``llama-seed0``), as given to the trainer
    OUT/runs/<id>/            an ordinary run folder (resumes, samples, loads: ``genmodels generate OUT/runs/<id>``)
    OUT/logs/<id>.out|.err    the trainer's stdout and stderr
    OUT/measure/<id>.json     what the measuring process found (and <id>-samples.png for image families)
    OUT/report.md, report.html, results.json, plots/

An entry goes pending → training → trained → measured, or → failed with the one line its trainer printed
last on stderr (``error: …``); the others go on. ``--resume`` continues where the arena stopped: entries
found trained or measured are never retrained, an interrupted one resumes from its newest checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from ..files import atomic_write_bytes
from ..training.rundir import RunDirError, has_checkpoints
from .spec import ArenaSpec, load_spec

STATE = "state.json"
TEST_EXIT_AFTER = "GENMODELS_TEST_ARENA_EXIT_AFTER"  # test hook: os._exit(137) after N entries trained


class ArenaState:
    """``OUT/state.json``: the spec and each entry's record, rewritten atomically after every change."""

    def __init__(self, out: Path, spec: dict, entries: dict[str, dict]):
        self.out, self.spec, self.entries = out, spec, entries

    @classmethod
    def open(cls, out: Path, spec: ArenaSpec, resume: bool) -> "ArenaState":
        """Claim ``out`` (new, empty, or an arena of the same spec with ``resume``) and read its state."""
        path = out / STATE
        if out.exists() and not out.is_dir():
            raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if entries and not path.is_file():
            raise RunDirError(f"--out {out} is not an arena folder (no {STATE}) and holds {', '.join(entries[:5])}"
                              f"{' ...' if len(entries) > 5 else ''}; choose a new or empty --out")
        wanted = spec.to_dict()
        if not path.is_file():
            out.mkdir(parents=True, exist_ok=True)
            state = cls(out, wanted, {eid: {"status": "pending"} for eid, _, _ in spec.entries()})
            state.save()
            return state
        try:
            saved = json.loads(path.read_text())
            old_spec, old_entries = saved["spec"], saved["entries"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunDirError(f"{path} cannot be read as an arena's state ({type(e).__name__}: {e}); "
                              "choose another --out") from None
        if not resume:
            raise RunDirError(f"--out {out} already holds an arena ({path}); pass --resume to continue it, "
                              "or choose another --out")
        differ = sorted(k for k in set(wanted) | set(old_spec) if wanted.get(k) != old_spec.get(k))
        if differ:
            raise RunDirError(f"--resume: {path} was written for another spec (it differs in "
                              f"{', '.join('arena.' + k for k in differ)}); resume with the same spec or choose "
                              "another --out")
        return cls(out, wanted, {eid: old_entries.get(eid, {"status": "pending"}) for eid, _, _ in spec.entries()})

    def save(self) -> None:
        doc = {"genmodels_arena": 1, "spec": self.spec, "entries": self.entries}
        atomic_write_bytes(self.out / STATE, (json.dumps(doc, indent=2) + "\n").encode())

    def update(self, eid: str, **fields) -> None:
        self.entries[eid] = {**self.entries[eid], **fields}
        self.save()


def run_arena(spec_path: str | Path, out: str | Path | None = None, resume: bool = False,
              log: Callable[[str], None] | None = None) -> Path:
    """Run (or with ``resume`` continue) the arena of ``spec_path`` into ``out`` (default
    ``runs/arena/<spec name>``); returns the path of ``report.md``. See docs/arena.md."""
    say = log or (lambda s: print(s, flush=True))
    spec = load_spec(spec_path)
    out = Path(out if out is not None else Path("runs") / "arena" / Path(spec_path).stem)
    state = ArenaState.open(out, spec, resume)
    exit_after = os.environ.get(TEST_EXIT_AFTER)
    trained_here = 0
    entries = spec.entries()
    for k, (eid, index, seed) in enumerate(entries, 1):
        status = state.entries[eid]["status"]
        if status in ("trained", "measured"):
            say(f"[{k}/{len(entries)}] {eid}: {status} already, not retrained")
            continue
        train_entry(spec, state, eid, index, seed, say, f"[{k}/{len(entries)}]")
        trained_here += 1
        if exit_after is not None and trained_here >= int(exit_after):
            os._exit(137)  # the test hook: an arena killed between two contestants
    measure_entries(spec, state, say)
    from .report import write_report
    report = write_report(spec, state, command=f"genmodels arena {spec_path} --out {out}")
    failed = [eid for eid, e in state.entries.items() if e["status"] == "failed"]
    if failed:
        say(f"{len(failed)} of {len(state.entries)} entries failed ({', '.join(failed)}): their errors are in the report")
    say(f"report: {report}, {report.with_suffix('.html')}, {out / 'results.json'}")
    return report


def train_entry(spec: ArenaSpec, state: ArenaState, eid: str, index: int, seed: int, say, tag: str) -> None:
    """Train one entry in its own ``genmodels train`` process; record its outcome in the state."""
    out = state.out
    run_dir = out / "runs" / eid
    if (run_dir / "final" / "config.json").is_file() and state.entries[eid]["status"] == "training":
        state.update(eid, status="trained", note="found complete on resume (its final/ was written)")
        say(f"{tag} {eid}: found complete in {run_dir}, not retrained")
        return
    recipe = out / "recipes" / f"{eid}.yaml"
    recipe.parent.mkdir(exist_ok=True)
    spec.run_config(index, seed, str(run_dir.resolve()))  # (checked at load; a recipe file may have changed)
    atomic_write_bytes(recipe, yaml.safe_dump(spec.recipe(index, seed, str(run_dir.resolve())),
                                              sort_keys=False).encode())
    resume = has_checkpoints(run_dir)
    cmd = [sys.executable, "-m", "genmodels.cli", "train", str(recipe), "--no-progress"] + (["--resume"] if resume else [])
    attempts = int(state.entries[eid].get("attempts", 0)) + 1
    state.update(eid, status="training", attempts=attempts, run_dir=str(run_dir), error=None)
    say(f"{tag} {eid}: training ({'resumed' if resume else 'fresh'}) -> {run_dir}")
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    rc, seconds, peak_kib = run_child(cmd, logs / f"{eid}.out", logs / f"{eid}.err")
    peak = None if peak_kib is None else round(peak_kib / 1024, 1)
    if rc == 0:
        state.update(eid, status="trained", wall_s=round(seconds, 2), peak_rss_mib=peak)
        say(f"{tag} {eid}: trained in {seconds:.0f} s (peak memory {peak} MiB)")
    else:
        error = error_line(logs / f"{eid}.err", rc)
        state.update(eid, status="failed", error=error, wall_s=round(seconds, 2), peak_rss_mib=peak)
        say(f"{tag} {eid}: FAILED: {error}")


def run_child(cmd: list[str], stdout: Path, stderr: Path) -> tuple[int, float, int | None]:
    """Run ``cmd`` with its output in files; ``(exit status, seconds, peak resident memory in KiB)``. The
    peak is the child's own (``wait4``'s ``ru_maxrss``: its VmHWM); the child dies with the arena (Linux)."""
    t0 = time.monotonic()
    with open(stdout, "wb") as fo, open(stderr, "wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or an error here: never leave the child running alone
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - t0, int(usage.ru_maxrss) or None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the arena process dies (prctl PR_SET_PDEATHSIG; Linux only)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def error_line(stderr: Path, rc: int) -> str:
    """The one line a failed child left: its last ``error: …`` line, else its last line, else its status."""
    try:
        lines = [s.strip() for s in stderr.read_text(errors="replace").splitlines() if s.strip()]
    except OSError:
        lines = []
    errors = [s for s in lines if s.startswith("error:")]
    why = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc} ({signal.Signals(-rc).name})"
    if errors:
        return errors[-1][len("error:"):].strip()
    return f"{lines[-1]} ({why})" if lines else why


def measure_entries(spec: ArenaSpec, state: ArenaState, say) -> None:
    """Measure every trained, unmeasured entry in ONE process (:mod:`.measure`), all on the same held-out
    data and with ``spec.threads`` threads; each result is written as soon as it is taken."""
    todo = [eid for eid, _, _ in spec.entries() if state.entries[eid]["status"] == "trained"]
    if not todo:
        return
    say(f"measuring {', '.join(todo)} ({spec.threads} thread(s), one process)")
    (state.out / "measure").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "genmodels.arena.measure", str(state.out), *todo]
    logs = state.out / "logs"
    rc, seconds, _ = run_child(cmd, logs / "measure.out", logs / "measure.err")
    for eid in todo:
        path = state.out / "measure" / f"{eid}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result.get("error"):
                state.update(eid, status="measured", measure_error=result["error"])
                say(f"{eid}: measuring failed: {result['error']}")
            else:
                state.update(eid, status="measured", measure_error=None)
        else:  # the measuring process died before this entry: measured again on --resume
            state.update(eid, measure_error=error_line(logs / "measure.err", rc))
    say(f"measured in {seconds:.0f} s")
