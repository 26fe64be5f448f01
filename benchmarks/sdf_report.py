"""Self-distillation with feedback's results (issue #23 d5/d7): exact match base → SFT → SDF, a table and a chart.

    .venv/bin/python benchmarks/sdf_report.py EVAL [--png docs/img/sdf-exact-match.png]

``EVAL`` holds ``genmodels eval-tasks --out`` reports named ``<stage>[-s<seed>]-<split>.json``: stage ``base``,
``sft`` or ``sdf``, split ``seen-test`` or ``unseen`` (e.g. ``sdf-s1-seen-test.json``). Prints a Markdown table:
per stage the seeds, exact match per seed and mean ± standard deviation (sample, n − 1) per split, and the
issue's test — SDF's mean gain over SFT on seen-test in units of SDF's standard deviation over seeds (target: more
than 2). The chart: a bar per stage and split (mean, the std as an error bar, each seed a dot).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from seed_bars import seed_bars

STAGES = {"base": "base (untuned)", "sft": "SFT (LoRA, task data)", "sdf": "SDF: DPO on sampled pairs"}
SPLITS = ("seen-test", "unseen")
NAME = re.compile(r"(base|sft|sdf)(?:-s(\d+))?-(seen-test|unseen)")


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
        seeds = sorted({k for split in per.values() for k in split})
        cells = []
        for split in SPLITS:
            xs = [per.get(split, {})[k] for k in seeds if k in per.get(split, {})]
            m, s = spread(xs) if xs else (float("nan"), float("nan"))
            cells += [", ".join(f"{x:.3f}" for x in xs) or "—", f"{m:.3f} ± {s:.3f}" if xs else "—"]
        rows.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    sft, sdf = (list(found.get(k, {}).get("seen-test", {}).values()) for k in ("sft", "sdf"))
    if sft and sdf:
        gain, s = spread(sdf)[0] - spread(sft)[0], spread(sdf)[1]
        rows += ["", f"SDF − SFT on seen-test: {gain:+.3f} = "
                 + (f"{gain / s:+.1f} std of SDF's seeds (target > 2)" if s > 0 else "(one seed: no spread)")]
    return rows


def plot(found: dict, png: Path) -> None:
    groups = [(label, {split: list(found.get(stage, {}).get(split, {}).values()) for split in SPLITS})
              for stage, label in STAGES.items()]
    seed_bars(groups, SPLITS, "SmolLM2-135M-Instruct: base → SFT → SDF (mean ± std over seeds; dots: seeds)", png)


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
