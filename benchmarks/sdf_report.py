"""Self-distillation with feedback's results (issue #23 d5/d7): exact match base → SFT → … → SDF, a table and a chart.

    .venv/bin/python benchmarks/sdf_report.py EVAL [--png docs/img/sdf-exact-match.png]

``EVAL`` holds ``genmodels eval-tasks --out`` reports named ``<stage>[-s<seed>]-<split>.json``: stage ``base``,
``sft``, ``sftc`` (a control: SFT continued on the DPO pairs' chosen replies alone, same steps), ``dpo`` (plain DPO,
β 0.1, on the pairs), ``dpob5`` (plain DPO, β 0.5) or ``sdf`` (DPO + RPO); on on-policy pairs (sampled from each SFT
seed itself, docs/alignment.md's fourth measurement) ``opdpo`` / ``opdpo5`` (plain DPO, LoRA lr 2e-4 / 5e-4),
``oprpo`` (DPO + RPO, lr 2e-4) and their control ``opsftc`` (SFT, lr 2e-4); ``oprpo3`` and its control
``opsftc3`` (the same at the recipe's lr 2e-3); split ``seen-test`` or ``unseen`` (e.g.
``sdf-s1-seen-test.json``). Prints a Markdown table: per stage the seeds, exact match per seed and mean ±
standard deviation (sample, n − 1) per split; then for
each tuned stage (``TUNED``) the issue's test — its mean gain over SFT on seen-test in units of its own standard
deviation over seeds (target: more than 2) — and, where SFT and the stage share seeds (seed s tuned from SFT seed s),
the paired reading: the mean of the per-seed gains in units of their standard deviation; with the stage's control
(SFT on the same pairs' chosen replies), stage − control the same ways. A stage without reports is left
out of the table and the chart. The chart: a horizontal bar per stage on seen-test (mean, the std as an error bar,
each seed a dot).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from seed_bars import mean_std

STAGES = {"base": "base (untuned)", "sft": "SFT (LoRA, task data)",
          "sftc": "control: SFT on the pairs' chosen replies", "dpo": "DPO (β 0.1) on the pairs",
          "dpob5": "DPO (β 0.5) on the pairs", "sdf": "SDF: DPO + RPO (α 1) on the pairs",
          "opsftc": "control: SFT (lr 2e-4) on the on-policy pairs' chosen replies",
          "opdpo": "DPO (β 0.1, lr 2e-4) on on-policy pairs", "opdpo5": "DPO (β 0.1, lr 5e-4) on on-policy pairs",
          "oprpo": "DPO + RPO (α 1, lr 2e-4) on on-policy pairs",
          "opsftc3": "control: SFT (lr 2e-3) on the on-policy pairs' chosen replies",
          "oprpo3": "DPO + RPO (α 1, lr 2e-3) on on-policy pairs"}
# the stages read against SFT and against their control: stage -> (its name in the lines, its control's stage)
TUNED = {"dpo": ("DPO", "sftc"), "dpob5": ("DPO β0.5", "sftc"), "sdf": ("SDF", "sftc"),
         "opdpo": ("on-policy DPO", "opsftc"), "opdpo5": ("on-policy DPO lr 5e-4", "opsftc"),
         "oprpo": ("on-policy DPO+RPO", "opsftc"), "oprpo3": ("on-policy DPO+RPO lr 2e-3", "opsftc3")}
SPLITS = ("seen-test", "unseen")
NAME = re.compile(rf"({'|'.join(STAGES)})(?:-s(\d+))?-(seen-test|unseen)")


def scores(folder: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{stage: {split: {seed: exact match}}}`` of the reports in ``folder`` (an unseeded report is seed 0)."""
    out: dict = {}
    for f in sorted(folder.glob("*.json")):
        m = NAME.fullmatch(f.stem)
        if m:
            report = json.loads(f.read_text())
            out.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2) or 0)] = report["exact_match"]
    return out


def spread(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(found: dict) -> list[str]:
    rows = ["| stage | seeds | " + " | ".join(f"{s} per seed | {s} mean ± std" for s in SPLITS) + " |",
            "|---|---|" + "---|---|" * len(SPLITS)]
    for stage, label in STAGES.items():
        per = found.get(stage, {})
        if not per:
            continue
        seeds = sorted({k for split in per.values() for k in split})
        cells = []
        for split in SPLITS:
            xs = [per.get(split, {})[k] for k in seeds if k in per.get(split, {})]
            m, s = spread(xs) if xs else (float("nan"), float("nan"))
            cells += [", ".join(f"{x:.3f}" for x in xs) or "—", f"{m:.3f} ± {s:.3f}" if xs else "—"]
        rows.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    for split in SPLITS:
        for stage, (_, control) in TUNED.items():
            rows += gain_lines(found, split, "sft", stage) + gain_lines(found, split, control, stage)
    return rows


def gain_lines(found: dict, split: str, against: str, stage: str = "sdf") -> list[str]:
    """``stage`` (a tuned stage, ``TUNED``) − ``against`` (sft or the stage's control) on ``split``: in the stage's
    std over seeds, and paired by seed where both stages have the seed."""
    base, tuned = (found.get(k, {}).get(split, {}) for k in (against, stage))
    if not (base and tuned):
        return []
    name = TUNED[stage][0]
    (m_tuned, s), m_base = spread(list(tuned.values())), spread(list(base.values()))[0]
    gain = m_tuned - m_base
    out = ["", f"{name} − {against.upper()} on {split}: {gain:+.3f} = "
           + (f"{gain / s:+.1f} std of {name}'s seeds" if s > 0 else "(no spread over seeds)")
           + (" (target > 2)" if split == "seen-test" and against == "sft" else "")]
    both = sorted(set(base) & set(tuned))
    diffs = [tuned[k] - base[k] for k in both]
    per_seed = ", ".join(f"s{k} {x:+.3f}" for k, x in zip(both, diffs))
    if len(both) > 1:
        m, d = spread(diffs)
        out.append(f"paired by seed ({per_seed}): "
                   f"{m:+.3f} ± {d:.3f} = " + (f"{m / d:+.1f} std of the per-seed gains" if d > 0 else "no spread"))
    elif both:
        out.append(f"paired by seed ({per_seed}): one seed, no spread")
    return out


def plot(found: dict, png: Path, split: str = "seen-test") -> None:
    """One horizontal bar per stage on ``split`` (mean, the std as an error bar, each seed a dot; a dashed line at
    SFT's mean): a dozen stages stay legible, their names on the axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(label, list(found[stage][split].values())) for stage, label in STAGES.items()
            if found.get(stage, {}).get(split)]
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.32 * len(rows)), dpi=120)
    for y, (label, xs) in enumerate(rows):
        m, s = mean_std(xs)
        ax.barh(y, m, 0.7, xerr=None if s != s else s, capsize=3, color=f"C{y % 10}")
        ax.scatter(xs, [y] * len(xs), color="k", s=8, zorder=3)
    if found.get("sft", {}).get(split):
        ax.axvline(mean_std(list(found["sft"][split].values()))[0], color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"exact match on {split} (mean ± std over seeds; dots: seeds; dashed: SFT)", fontsize=8)
    ax.set_title("SmolLM2-135M-Instruct: base → SFT → DPO / SDF", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("eval", type=Path)
    p.add_argument("--png", type=Path)
    args = p.parse_args()
    found = scores(args.eval)
    print("\n".join(table(found)))
    if args.png is not None:
        plot(found, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
