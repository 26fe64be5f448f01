"""The Baize recipe's results (issue #22 d4/d6) from a measurement folder: a table and a bar chart.

    .venv/bin/python benchmarks/baize_report.py OUT [--png docs/img/baize-exact-match.png]

``OUT`` is what ``benchmarks/baize_recipe.py OUT`` filled: ``eval/{base,baize-s<k>,no-selfchat-s<k>}-{seen-test,
unseen}.json`` (``genmodels eval-tasks --out`` reports), ``runs/*/final/adapter_model.safetensors`` and
``phases.json`` (each phase's wall seconds and the load average). Prints a Markdown table — per seed, exact
match on seen-test and unseen with and without the self-chat data, the adapter's bytes; mean ± standard
deviation (sample, n − 1) over seeds; the gain over the base in standard deviations — and each phase's time.
The issue's target: the mean gain on seen-test ≥ 0.2 and more than 2 standard deviations of the seeds.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from seed_bars import mean_std, seed_bars

SPLITS = ("seen-test", "unseen")
ARMS = ("baize", "no-selfchat")
LABELS = {"base": "base (untuned)", "baize": "Baize: self-chat + task data", "no-selfchat": "task data only"}


def load(out: Path) -> dict:
    """``{arm: {seed: {split: report}}}`` (the base under seed None) for every eval report in ``out/eval``."""
    found: dict = {}
    for f in sorted((out / "eval").glob("*.json")):
        m = re.fullmatch(r"(base|baize|no-selfchat)(?:-s(\d+))?-(seen-test|unseen)", f.stem)
        if m:
            arm, seed, split = m.group(1), m.group(2), m.group(3)
            found.setdefault(arm, {}).setdefault(None if seed is None else int(seed), {})[split] = \
                json.loads(f.read_text())
    return found


def fmt(r: dict | None) -> str:
    return "—" if r is None else f"{r['exact_match']:.3f} ({r['correct']}/{r['records']})"


def adapter_bytes(out: Path, arm: str, seed: int) -> int | None:
    f = out / "runs" / f"{arm}-s{seed}" / "final" / "adapter_model.safetensors"
    return f.stat().st_size if f.exists() else None


def table(out: Path, found: dict) -> list[str]:
    base = found.get("base", {}).get(None, {})
    lines = ["| run | seed | seen-test exact match | unseen exact match | adapter bytes |", "|---|---|---|---|---|",
             f"| base (untuned) | — | {fmt(base.get('seen-test'))} | {fmt(base.get('unseen'))} | — |"]
    for arm in ARMS:
        for seed, reps in sorted(found.get(arm, {}).items()):
            size = adapter_bytes(out, arm, seed)
            lines.append(f"| {LABELS[arm]} | {seed} | {fmt(reps.get('seen-test'))} | {fmt(reps.get('unseen'))} | "
                         f"{size if size is None else f'{size:,}'} |")
    lines += ["", "| run | seeds | seen-test mean ± std | gain over base (in std) | unseen mean ± std | gain |",
              "|---|---|---|---|---|---|"]
    for arm in ARMS:
        cells = []
        for split in SPLITS:
            xs = [r[split]["exact_match"] for r in found.get(arm, {}).values() if split in r]
            if not xs or split not in base:
                cells += ["—", "—"]
                continue
            m, s = mean_std(xs)
            gain = m - base[split]["exact_match"]
            cells += [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f} (one seed)", f"{gain:+.3f} ({gain / s:.1f} std)" if s == s and s > 0 else f"{gain:+.3f}"]
        n = len(found.get(arm, {}))
        lines.append(f"| {LABELS[arm]} | {n} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return lines


def task_lines(found: dict, split: str = "seen-test") -> list[str]:
    """Per task of ``split``: the base's exact match and each arm's mean over its seeds."""
    arms = [a for a in ("base",) + ARMS if found.get(a)]
    tasks = sorted({t for a in arms for r in found[a].values() if split in r for t in r[split]["tasks"]})
    lines = ["", f"| {split} task | " + " | ".join(LABELS[a] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for t in tasks:
        cells = []
        for a in arms:
            xs = [r[split]["tasks"][t]["exact_match"] for r in found[a].values() if split in r and t in r[split]["tasks"]]
            cells.append(f"{statistics.mean(xs):.2f}" if xs else "—")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def phase_lines(out: Path) -> list[str]:
    f = out / "phases.json"
    if not f.exists():
        return []
    phases = json.loads(f.read_text())
    lines = ["", "| phase | wall s | load before → after | threads |", "|---|---|---|---|"]
    for name, p in phases.items():
        lines.append(f"| {name} | {p['seconds']:.0f} | {p['load_before']:.1f} → {p['load_after']:.1f} | {p['threads']} |")
    cpu = {p.get("cpu") for p in phases.values()} - {None}
    return lines + ([f"", f"CPU: {', '.join(sorted(cpu))}"] if cpu else [])


def plot(found: dict, png: Path) -> None:
    base = found.get("base", {}).get(None, {})
    groups = []
    for arm in ("base",) + ARMS:
        reports = [base] if arm == "base" else list(found.get(arm, {}).values())
        groups.append((LABELS[arm], {split: [r[split]["exact_match"] for r in reports if split in r] for split in SPLITS}))
    seed_bars(groups, SPLITS, "SmolLM2-135M-Instruct + LoRA (mean ± std over seeds; dots: seeds)", png)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--png", type=Path, default=None, help="write the bar chart here")
    args = p.parse_args()
    found = load(args.out)
    print("\n".join(table(args.out, found) + task_lines(found) + task_lines(found, "unseen") + phase_lines(args.out)))
    if args.png is not None:
        plot(found, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
