"""Self-chat's files: the seed questions read, the dialogues written (``genmodels selfchat``, docs/selfchat.md).

**Seeds**: a ``.jsonl`` file of examples (any form :mod:`genmodels.data.examples` reads; a record's seed is
its first user message, its ``prompt`` or its ``text``) — the task set's ``seen-train.messages.jsonl``
(``genmodels tasks --out DIR``) gives the recipe's seeds — or any other text file, one question a line
(blank lines skipped).

**Output**: JSONL, one ``{"messages": [...]}`` record a line (the ``examples`` data kind reads it), and
beside it ``<out>.selfchat.json``: ``"format": "genmodels-selfchat"``, the file's SHA-256, the settings and
the counts. ``--include FILE`` appends the records of an examples file as they are, after the dialogues (the
Baize recipe's mix: its dialogues plus the task set's training split). Both are written atomically, the data
first. An existing ``<out>`` is replaced only when that record is ours and names the file with its current SHA-256 (so a file genmodels did not write, or one
changed since, is never replaced); an existing record that is not ours is never replaced either. Each
refusal is one line naming the file, given before the model loads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data.examples import read_records
from .files import atomic_write_bytes, check_out_name, file_sha256, read_utf8

__all__ = ["FORMAT", "check_out", "included", "read_seeds", "record_path", "write_dialogues", "write_owned"]

FORMAT = "genmodels-selfchat"


def _command(fmt: str) -> str:
    """The command that writes files of ``fmt`` (``genmodels-selfchat`` -> ``genmodels selfchat``)."""
    return fmt.replace("-", " ", 1)


def record_path(out: str | Path, fmt: str = FORMAT) -> Path:
    """The record written beside the data file ``out`` (``<out>.selfchat.json`` for self-chat; another
    command that writes JSONL the same way, e.g. ``genmodels-critique-data``, gets its own suffix)."""
    out = Path(out)
    return out.with_name(f"{out.name}.{fmt.split('-', 1)[1]}.json")


def read_seeds(path: str | Path) -> list[str]:
    """The seed questions of ``path`` (module doc), in order; an empty file is refused naming it."""
    path = Path(path)
    if path.suffix == ".jsonl":
        seeds = []
        for r in read_records(path):  # a bad record is refused naming the file and line
            f = r.fields
            if "messages" in f:
                user = next((m["content"] for m in f["messages"] if m["role"] == "user"), None)
                if user is None:
                    raise ValueError(f"{r.where}: no user message to take as a seed question")
                seeds.append(user)
            else:
                seeds.append(f.get("prompt", f.get("text")))
    else:
        seeds = [line.strip() for line in read_utf8(path, f"--seeds {path}").splitlines() if line.strip()]
    if not seeds:
        raise ValueError(f"--seeds {path}: no seed questions (one a line, or examples JSONL)")
    return seeds


def _ours(out: Path, fmt: str = FORMAT) -> dict[str, Any] | None:
    """The record beside ``out`` when it is ours; None when there is none; refused when it is not ours."""
    rec = record_path(out, fmt)
    if not rec.exists() and not rec.is_symlink():
        return None
    try:
        data = json.loads(rec.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise FileExistsError(f"{rec} exists and {_command(fmt)} did not write it (no \"format\": \"{fmt}\"); "
                              "it is never replaced: choose another --out")
    return data


def check_out(out: str | Path, fmt: str = FORMAT) -> None:
    """Refuse, before any work, an ``--out`` the command writing ``fmt`` may not write (module doc)."""
    out = check_out_name(out, ".jsonl", " (the examples data kind reads JSONL)")
    ours = _ours(out, fmt)
    who, rec = _command(fmt), record_path(out, fmt).name
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_file():
        raise FileExistsError(f"--out {out} exists and is not a file; choose another --out")
    if ours is None or ours.get("file") != out.name:
        raise FileExistsError(f"--out {out} exists and {who} did not write it (no {rec} "
                              "naming it); it is never replaced: choose another --out")
    if ours.get("sha256") != file_sha256(out):
        raise FileExistsError(f"--out {out} was changed since {who} wrote it (its SHA-256 differs from "
                              f"{rec}'s); it is never replaced: choose another --out")


def included(paths: list[str | Path]) -> list[dict]:
    """The records of examples files (``--include``), each checked as the examples kind checks it."""
    return [r.fields for p in paths for r in read_records(p)]


def write_dialogues(out: str | Path, conversations: list[list[dict]], info: dict[str, Any],
                    include: list[str | Path] = ()) -> dict[str, Any]:
    """Write the dialogues to ``out``, then the records of the ``include`` examples files as they are (the
    recipe's mix: self-chat plus the task set's training split), and the record beside it (``info``: settings
    and counts; the included files' SHA-256 are added); returns the record. Checks ``out`` again first."""
    out = Path(out)
    if not conversations:
        raise ValueError(f"--out {out}: no conversation survived the filters (counts: {info.get('counts')}); "
                         "nothing written (try more seeds, --max-new-tokens or another --temperature)")
    check_out(out)
    rows = [{"messages": c} for c in conversations] + included(list(include))
    return write_owned(out, rows, {**info, "included": {str(p): file_sha256(p) for p in include}})


def write_owned(out: str | Path, rows: list[dict], info: dict[str, Any], fmt: str = FORMAT) -> dict[str, Any]:
    """Write ``rows`` as JSONL to ``out`` (checked again first), then the record beside it (``fmt``, the file's
    name and SHA-256, ``info``); returns the record. The one writer of an owned JSONL file."""
    out = Path(out)
    check_out(out, fmt)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    atomic_write_bytes(out, data)
    record = {"format": fmt, "file": out.name, "sha256": file_sha256(out), **info}
    atomic_write_bytes(record_path(out, fmt), (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())
    return record
