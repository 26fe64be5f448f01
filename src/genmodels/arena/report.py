"""The arena's report: ``results.json`` (for machines), ``report.md`` and ``report.html`` (one self-contained
file: its PNGs inlined as base64, no network), drawn from ONE list of blocks so the two never disagree.

The ranked table sorts the contestants by the spec's ranking measure (``held_out_loss`` for text, ``kid`` for
images, unless ``rank_by`` says otherwise), mean over seeds; with several seeds every cell reads
``mean ± std (min–max)``. A failed entry keeps its row, with the one-line error its trainer printed.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import os
import statistics
from pathlib import Path

from ..files import atomic_write_bytes
from ..training.metrics import cpu_name
from .plots import loss_curves, speed_curves
from .spec import LOWER_IS_BETTER, ArenaSpec, entry_id

SCALARS = ("held_out_loss", "held_out_ppl", "final_val_loss", "params", "active_params", "forward_flops_per_token",
           "train_rate", "mfu", "peak_rss_mib", "wall_s", "trained", "steps", "train_time_s", "images_per_s",
           "accuracy", "kid", "fid", "precision", "recall")


def spread(values: list[float]) -> dict:
    """mean, std (sample; 0 for one value), min, max and n of ``values``."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _scalars(run: dict) -> dict[str, float]:
    """The numbers of one run to summarise over seeds (speed points keyed ``decode_ms_per_token@128``)."""
    m = run.get("measures") or {}
    out = {k: m[k] for k in SCALARS if isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)}
    for k in ("peak_rss_mib", "wall_s"):
        if isinstance(run.get(k), (int, float)):
            out[k] = run[k]
    for p in m.get("speed") or []:
        for k in ("decode_ms_per_token", "decode_tok_s", "prefill_tok_s"):
            out[f"{k}@{p['context']}"] = p[k]
    return out


def collect(spec: ArenaSpec, out: Path, entries: dict[str, dict]) -> list[dict]:
    """One row per contestant (its runs, one per seed, and the spread of each measure), ranked."""
    rows = []
    for c in spec.contestants:
        runs = []
        for seed in spec.seeds:
            eid = entry_id(c.name, seed)
            e = entries.get(eid, {})
            path = out / "measure" / f"{eid}.json"
            m = json.loads(path.read_text()) if e.get("status") == "measured" and path.is_file() else None
            error = e.get("error") or (m or {}).get("error") or e.get("measure_error")
            runs.append({"id": eid, "seed": seed, "status": e.get("status", "pending"), "error": error,
                         "run_dir": e.get("run_dir"), "wall_s": e.get("wall_s"), "peak_rss_mib": e.get("peak_rss_mib"),
                         "measures": m})
        values: dict[str, list[float]] = {}
        for run in runs:
            if not run["error"]:
                for k, v in _scalars(run).items():
                    values.setdefault(k, []).append(v)
        rows.append({"name": c.name, "source": c.recipe or f"preset {c.preset}", "overrides": c.overrides,
                     "runs": runs, "summary": {k: spread(v) for k, v in values.items()}})
    key, lower = spec.ranking, LOWER_IS_BETTER[spec.ranking]
    ranked = sorted([r for r in rows if key in r["summary"]],
                    key=lambda r: r["summary"][key]["mean"] * (1 if lower else -1))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked + [r for r in rows if key not in r["summary"]]


def equality(spec: ArenaSpec, rows: list[dict]) -> str:
    """What the contestants are matched on, and how closely the measured counts agree."""
    measure = {"parameters": ("params", "parameters"),
               "active_compute": ("forward_flops_per_token", "forward FLOPs per token (active parameters)")}
    if spec.equal not in measure:
        return "Contestants are not matched on size (`equal: none`): read the parameter columns."
    key, words = measure[spec.equal]
    vals = {r["name"]: r["summary"][key]["mean"] for r in rows if key in r["summary"]}
    if not vals:
        return f"Matched on {words}; no contestant was measured."
    lo, hi = min(vals.values()), max(vals.values())
    listed = ", ".join(f"{n} {v / 1e6:.2f} M" for n, v in vals.items())
    return f"Matched on **{words}** (`equal: {spec.equal}`): {listed}; largest / smallest = {hi / lo:.3f}."


def _fmt(s: dict | None, digits: int = 4, scale: float = 1.0) -> str:
    if s is None:
        return "—"
    f = (lambda v: f"{v / scale:.{digits}g}")
    return f(s["mean"]) if s["n"] == 1 else f"{f(s['mean'])} ± {f(s['std'])} ({f(s['min'])}–{f(s['max'])})"


def _columns(spec: ArenaSpec, rows: list[dict]) -> list[tuple[str, str, int, float]]:
    """``(header, summary key, significant digits, scale)`` of the ranked table."""
    if spec.images:
        cols = [("KID", "kid", 3, 1), ("accuracy", "accuracy", 3, 1), ("precision", "precision", 3, 1),
                ("recall", "recall", 3, 1), ("FID", "fid", 3, 1), ("sampling images/s", "images_per_s", 3, 1),
                ("train images/s", "train_rate", 3, 1)]
    else:
        contexts = sorted({int(k.split("@")[1]) for r in rows for k in r["summary"] if k.startswith("decode_ms")})
        cols = [("held-out loss", "held_out_loss", 4, 1), ("perplexity", "held_out_ppl", 4, 1),
                ("train tok/s", "train_rate", 3, 1), ("MFU", "mfu", 2, 1)]
        cols += [(f"decode ms/tok @{c}", f"decode_ms_per_token@{c}", 3, 1) for c in contexts]
        cols += [(f"prefill tok/s @{c}", f"prefill_tok_s@{c}", 3, 1) for c in contexts]
    cols += [("params (M)", "params", 4, 1e6), ("active (M)", "active_params", 4, 1e6),
             ("peak memory (MiB)", "peak_rss_mib", 4, 1), ("trained", "trained", 4, 1)]
    return cols


def blocks(spec: ArenaSpec, rows: list[dict], meta: dict, figures: list[tuple[str, Path]]) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", header, rows), ("img", path, caption)."""
    budget = f"{getattr(spec.budget, spec.budget.kind)} {spec.budget.kind}"
    out: list[tuple] = [("h", 1, f"Arena: {spec.name}"),
                        ("p", f"{meta['date']} · CPU {meta['cpu']} · torch {meta['torch']} · {spec.threads} torch "
                              f"thread(s) in every training and measuring process"),
                        ("p", f"Command: `{meta['command']}`"),
                        ("p", f"Budget: **{budget}** for every contestant"
                              + (" (wall-clock: reported, not reproduced)" if spec.budget.kind == "minutes" else
                                 " (reproducible: the same spec and seed give the same losses bit for bit)")
                              + f"; seeds {', '.join(map(str, spec.seeds))}."),
                        ("p", equality(spec, rows)),
                        ("p", f"Ranked by **{spec.ranking}** ({'lower' if LOWER_IS_BETTER[spec.ranking] else 'higher'}"
                              f" is better), mean over seeds" + ("; cells read mean ± std (min–max)."
                                                               if len(spec.seeds) > 1 else "."))]
    cols = _columns(spec, rows)
    table = []
    for r in rows:
        failed = [f"{run['id']}: {run['error']}" for run in r["runs"] if run["error"]]
        status = "ok" if not failed else "; ".join(failed)
        table.append([str(r.get("rank", "—")), r["name"]]
                     + [_fmt(r["summary"].get(key), d, scale) for _, key, d, scale in cols] + [status])
    out.append(("table", ["rank", "contestant"] + [c[0] for c in cols] + ["status"], table))
    out.append(("h", 2, "Contestants"))
    out.append(("table", ["contestant", "from", "overrides", "runs"],
                [[r["name"], r["source"], ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "—",
                  ", ".join(f"runs/{run['id']}" for run in r["runs"])] for r in rows]))
    short = [run["id"] for r in rows for run in r["runs"] if (run["measures"] or {}).get("steps") is not None
             and run["measures"]["steps"] < run["measures"].get("warmup_steps", 0)]
    if short:
        out.append(("p", f"**Warning**: {', '.join(short)} stopped inside the learning-rate warm-up "
                         "(train.warmup_steps): the budget was too short for this machine, or the machine was busy; "
                         "their losses say little about the architecture."))
    notes = sorted({n for r in rows for run in r["runs"] for n in (run["measures"] or {}).get("speed_notes", [])})
    if notes:
        out.append(("p", "Speed notes: " + "; ".join(notes) + "."))
    if spec.images:
        out.append(("p", "The validation losses in the curves are each family's own objective (denoising loss, "
                         "the GAN's): they compare seeds of one contestant, not families; the ranking uses "
                         f"{spec.ranking}."))
    for title, path in figures:
        out += [("h", 2, title), ("img", path, title)]
    out.append(("p", "How each measure is taken: docs/arena.md."))
    return out


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_md(blocks_: list[tuple], root: Path) -> str:
    lines = []
    for b in blocks_:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1].relative_to(root).as_posix()})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold** (the only markup the blocks use)."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks_: list[tuple], title: str) -> str:
    body = []
    for b in blocks_:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:3px 6px}"
             "th{background:#eee}img{max-width:100%;image-rendering:pixelated}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _figures(spec: ArenaSpec, rows: list[dict], out: Path) -> list[tuple[str, Path]]:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    unit = "images" if spec.images else "tokens"
    figs = [(f"Validation loss against {unit}", loss_curves(rows, plots / "loss_vs_units.png", "units", unit)),
            ("Validation loss against wall-clock", loss_curves(rows, plots / "loss_vs_time.png", "time", unit))]
    if not spec.images:
        figs.append(("Speed against context", speed_curves(rows, plots / "speed_vs_context.png")))
    for r in rows:  # image families: the sample grid of each contestant's first measured seed (copied to plots/)
        for run in r["runs"]:
            grid = (run["measures"] or {}).get("grid")
            if grid and (out / "measure" / grid).is_file():
                copy = plots / f"samples-{r['name']}.png"
                atomic_write_bytes(copy, (out / "measure" / grid).read_bytes())
                figs.append((f"Samples: {r['name']} (seed {run['seed']})", copy))
                break
    return [(t, p) for t, p in figs if p is not None]


def write_report(spec: ArenaSpec, state, command: str | None = None) -> Path:
    """Write ``results.json``, ``report.md``, ``report.html`` (and plots/) in ``state.out``; returns report.md."""
    import torch
    out = state.out
    rows = collect(spec, out, state.entries)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
            "torch": torch.__version__, "threads": spec.threads,
            "command": command or f"genmodels arena SPEC.yaml --out {out}"}
    figures = _figures(spec, rows, out)
    results = {"arena": spec.name, **meta, "ranking": spec.ranking, "lower_is_better": LOWER_IS_BETTER[spec.ranking],
               "equal": spec.equal, "equality": equality(spec, rows), "budget": {spec.budget.kind: getattr(
                   spec.budget, spec.budget.kind)}, "seeds": spec.seeds, "spec": spec.to_dict(), "contestants": rows}
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    b = blocks(spec, rows, meta, figures)
    atomic_write_bytes(out / "report.md", render_md(b, out).encode())
    atomic_write_bytes(out / "report.html", render_html(b, f"Arena: {spec.name}").encode())
    return out / "report.md"
