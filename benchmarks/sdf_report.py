"""Self-distillation with feedback's results (issue #23 d5/d7): exact match base → SFT → SDF, a table and a chart.

    .venv/bin/python benchmarks/sdf_report.py EVAL [--png docs/img/sdf-exact-match.png]

``EVAL`` holds ``genmodels eval-tasks --out`` reports named ``<stage>[-s<seed>]-<split>.json``: stage ``base``,
``sft``, ``sftc`` (a control: SFT continued on the DPO pairs' chosen replies alone, same steps) or ``sdf``, split ``seen-test`` or ``unseen`` (e.g. ``sdf-s1-seen-test.json``). Prints a Markdown table:
per stage the seeds, exact match per seed and mean ± standard deviation (sample, n − 1) per split, and the
issue's test — SDF's mean gain over SFT on seen-test in units of SDF's standard deviation over seeds (target: more
than 2) — and, where SFT and SDF share seeds (SDF seed s tuned from SFT seed s), the paired reading: the mean of the
per-seed gains in units of their standard deviation; with a control, SDF − control the same ways. A stage without
reports is left out of the chart. The chart: a bar per stage and split (mean, the std as an error bar, each seed a dot).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from seed_bars import seed_bars

STAGES = {"base": "base (untuned)", "sft": "SFT (LoRA, task data)",
          "sftc": "control: SFT on the pairs' chosen replies", "sdf": "SDF: DPO (+RPO) on the pairs"}
SPLITS = ("seen-test", "unseen")
NAME = re.compile(r"(base|sft|sftc|sdf)(?:-s(\d+))?-(seen-test|unseen)")


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
    for split in SPLITS:
        rows += gain_lines(found, split, "sft") + gain_lines(found, split, "sftc")
    return rows


def gain_lines(found: dict, split: str, against: str) -> list[str]:
    """SDF − ``against`` (sft or sftc) on ``split``: in SDF's std over seeds, and paired by seed where both stages
    have the seed."""
    sft, sdf = (found.get(k, {}).get(split, {}) for k in (against, "sdf"))
    if not (sft and sdf):
        return []
    gain, s = spread(list(sdf.values()))[0] - spread(list(sft.values()))[0], spread(list(sdf.values()))[1]
    out = ["", f"SDF − {against.upper()} on {split}: {gain:+.3f} = "
           + (f"{gain / s:+.1f} std of SDF's seeds" if s > 0 else "(no spread over seeds)")
           + (" (target > 2)" if split == "seen-test" and against == "sft" else "")]
    both = sorted(set(sft) & set(sdf))
    if len(both) > 1:
        diffs = [sdf[k] - sft[k] for k in both]
        m, d = spread(diffs)
        out.append(f"paired by seed ({', '.join(f's{k} {x:+.3f}' for k, x in zip(both, diffs))}): "
                   f"{m:+.3f} ± {d:.3f} = " + (f"{m / d:+.1f} std of the per-seed gains" if d > 0 else "no spread"))
    return out


def plot(found: dict, png: Path) -> None:
    groups = [(label, {split: list(found.get(stage, {}).get(split, {}).values()) for split in SPLITS})
              for stage, label in STAGES.items() if stage in found]
    splits = tuple(s for s in SPLITS if any(by_split.get(s) for _, by_split in groups))  # (the measured ones)
    seed_bars(groups, splits, "SmolLM2-135M-Instruct: base → SFT → SDF (mean ± std over seeds; dots: seeds)", png,
              width=0.8 / max(len(groups), 1))


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
