"""The arena's figures (matplotlib, Agg, written atomically): validation loss against units trained and
against wall-clock, and decode / prefill speed against the context. Each takes the collected contestants
of :func:`genmodels.arena.report.collect` and returns the path written, or None when nothing can be drawn."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int) -> list:
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _measured(row: dict) -> list[dict]:
    """The measured runs of one contestant (its seeds)."""
    return [r for r in row["runs"] if r.get("measures") and not r["measures"].get("error")]


def loss_curves(rows: list[dict], path: Path, x: str, unit: str) -> Path | None:
    """Validation loss of every run against ``x``: ``units`` (tokens or images trained) or ``time``
    (seconds of the training loop); one colour per contestant, one line per seed."""
    plt = _pyplot()
    col = 0 if x == "units" else 1
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    try:
        for row, color in zip(rows, _colors(len(rows))):
            for i, run in enumerate(_measured(row)):
                curve = run["measures"].get("curve") or []
                if curve:
                    ax.plot([p[col] for p in curve], [p[2] for p in curve], "o-", color=color, ms=3, lw=1,
                            alpha=0.85, label=row["name"] if i == 0 else None)
                    drawn = True
        ax.set_xlabel(f"{unit} trained" if x == "units" else "seconds of training (wall-clock)")
        ax.set_ylabel("validation loss")
        ax.set_title(f"validation loss against {unit if x == 'units' else 'time'} (one line per seed)")
        ax.grid(alpha=0.3)
    except BaseException:
        plt.close(fig)
        raise
    return _finish(fig, [ax], drawn, path)


def speed_curves(rows: list[dict], path: Path) -> Path | None:
    """Decode latency (ms per token) and prefill speed (tokens/s) against the context, batch 1, first seed."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    try:
        for row, color in zip(rows, _colors(len(rows))):
            runs = [r for r in _measured(row) if r["measures"].get("speed")]
            if not runs:
                continue
            points = runs[0]["measures"]["speed"]
            ctx = [p["context"] for p in points]
            ax1.plot(ctx, [p["decode_ms_per_token"] for p in points], "o-", color=color, label=row["name"])
            ax2.plot(ctx, [p["prefill_tok_s"] for p in points], "o-", color=color, label=row["name"])
            drawn = True
        for ax, label in ((ax1, "decode latency (ms / token)"), (ax2, "prefill (prompt tokens / s)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
        ax1.set_title("decode, batch 1 (lower is faster)")
        ax2.set_title("prefill, batch 1 (higher is faster)")
    except BaseException:
        plt.close(fig)
        raise
    return _finish(fig, [ax1, ax2], drawn, path)


def _finish(fig, axes: list, drawn: bool, path: Path) -> Path | None:
    """Legends, then ``fig`` written atomically to ``path``; nothing (and None) when no line was drawn."""
    from ..training.metrics import _save_figure
    plt = _pyplot()
    if not drawn:
        plt.close(fig)
        return None
    for ax in axes:
        ax.legend()
    _save_figure(fig, path, plt)
    return path
