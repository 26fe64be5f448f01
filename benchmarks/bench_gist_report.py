"""#24 d4: the gist reproduction's table, its targets and its PNG (``bench_gist.py report``).

Each ``--out`` folder is one start model's set of conditions (``OUT/results/<mask>-k<k>-s<seed>-n<steps>.json``,
written by ``bench_gist.py run``); ``--labels`` names them (SmolLM2, T5). Rows are per model, condition and step
count (runs of different lengths are never averaged together); the spread is over seeds (mean [min, max]). The
targets (Mu, Li, Goodman 2023, table 1: ROUGE-L 58.0 / 57.8 / 31.5 pos_control / gist / neg_control, seen split)
are read on seen-test exact match, over the seeds that pos_control, gist k=1 and neg_control share at one step
count:

    gist k=1 − neg_control ≥ 0.2          pos_control − gist k=1 ≤ 0.05
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench_gist import CONDITIONS, SPLITS  # one definition (bench_gist.py puts this folder on sys.path)

ABOVE_NEG, WITHIN_POS = 0.2, 0.05  # the targets on seen-test exact match


def label(mask: str, k: int) -> str:
    return mask if mask != "gist" else f"gist k={k}"


def table_rows(results: list[dict]) -> list[dict]:
    """One row per (condition, steps) in :data:`CONDITIONS` order: seeds, and per split (mean, min, max) and the
    per-seed values."""
    rows = []
    for mask, k in CONDITIONS:
        for steps in sorted({r["steps"] for r in results if r["mask"] == mask and r["k"] == k}):
            got = sorted((r for r in results if (r["mask"], r["k"], r["steps"]) == (mask, k, steps)),
                         key=lambda r: r["seed"])
            row = {"condition": label(mask, k), "steps": steps, "seeds": [r["seed"] for r in got],
                   "n": {s: got[0][s]["n"] for s in SPLITS}}
            for split in SPLITS:
                xs = [r[split]["exact_match"] for r in got]
                row[split] = (statistics.mean(xs), min(xs), max(xs), xs)
            rows.append(row)
    return rows


def targets(results: list[dict]) -> list[str]:
    """The two targets' verdicts, one line per step count where pos_control, gist k=1 and neg_control ran."""
    lines = []
    for steps in sorted({r["steps"] for r in results}):
        by = {c: {r["seed"]: r["seen-test"]["exact_match"] for r in results
                  if (r["mask"], r["k"], r["steps"]) == (*c, steps)}
              for c in (("pos_control", 1), ("gist", 1), ("neg_control", 1))}
        seeds = sorted(set.intersection(*(set(v) for v in by.values())))
        if not seeds:
            continue
        pos, gist, neg = (statistics.mean(v[s] for s in seeds) for v in by.values())
        above, below = gist - neg, pos - gist
        lines.append(f"{steps} steps, seeds {seeds}, seen-test: gist k=1 {gist:.3f} − neg_control {neg:.3f} = "
                     f"{above:+.3f} (target ≥ {ABOVE_NEG}: {'met' if above >= ABOVE_NEG else 'NOT met'}); "
                     f"pos_control {pos:.3f} − gist k=1 = {below:+.3f} (target ≤ {WITHIN_POS}: "
                     f"{'met' if below <= WITHIN_POS else 'NOT met'})")
    return lines


def report(args) -> None:
    """Print the table and the targets of every ``--out`` (labelled by ``--labels``); write the PNG."""
    outs = [Path(o) for o in args.out]
    names = args.labels or [o.name for o in outs]
    if len(names) != len(outs):
        raise SystemExit(f"error: --labels has {len(names)} names for {len(outs)} --out folders; give one per folder")
    panels = []
    print("| model | condition | steps | seeds | seen-test EM, mean [min, max] | unseen EM, mean [min, max] |")
    print("|---|---|---|---|---|---|")
    for out, name in zip(outs, names):
        results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
        rows = table_rows(results)
        for row in rows:
            cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n={row['n'][s]})" for s, (m, lo, hi, _) in
                     ((s, row[s]) for s in SPLITS)]
            print(f"| {name} | {row['condition']} | {row['steps']} | {row['seeds']} | {cells[0]} | {cells[1]} |")
        panels.append((name, rows))
    for out, name in zip(outs, names):
        results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
        for line in targets(results) or ["no step count with pos_control, gist k=1 and neg_control at one seed"]:
            print(f"targets ({name}): {line}")
    if args.png and any(rows for _, rows in panels):
        plot([p for p in panels if p[1]], Path(args.png), args.title)


def plot(panels: list[tuple[str, list[dict]]], png: Path, title: str) -> None:
    """One panel per model: bars = the mean over seeds per split, dots = each seed (the spread)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = [max(len(rows), 2) for _, rows in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.1 * sum(widths), 3.8), sharey=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        for j, split in enumerate(SPLITS):
            xs = [i + (j - 0.5) * 0.36 for i in range(len(rows))]
            ax.bar(xs, [r[split][0] for r in rows], width=0.34, label=split, alpha=0.8, color=f"C{j}")
            for x, r in zip(xs, rows):
                ax.scatter([x] * len(r[split][3]), r[split][3], color="k", s=8, zorder=3)
        ax.set_xticks(range(len(rows)), [f"{r['condition']}\n{r['steps']} st, {len(r['seeds'])} sd" for r in rows],
                      fontsize=7)
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("held-out exact match")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")
