"""The task set on disk (``genmodels tasks --out DIR``), and read back.

Per split (:data:`~.tasks.SPLITS`) three JSONL files, line ``i`` of each the same record:

=============================  =====================================================================
``<split>.prompt.jsonl``       ``{"prompt": "<question>\\nAnswer:", "response": " <answer>"}``
``<split>.messages.jsonl``     ``{"messages": [{"role": "user", …}, {"role": "assistant", …}]}``
``<split>.meta.jsonl``         ``{"id", "task", "split", "template", "answer", "values"}``
=============================  =====================================================================

The two example forms are read by the ``examples`` data kind (data/examples.py), which refuses
any other key, so the metadata lives beside them. ``manifest.json`` (written last) holds
``"format": "genmodels-tasks"``, the version, seed, ``per_task``, the set's checksum, the task lists,
the counts per split and the SHA-256 of every file.

**Only our own files are replaced.** Each file is written atomically (``files.atomic_write_bytes``).
A file of these names that already exists is replaced only when ``DIR/manifest.json`` is ours and
lists it with its current SHA-256 (written by an earlier ``genmodels tasks`` and not changed since);
anything else is refused in one line naming the file, before anything is written. Other files in
``DIR`` are never touched.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_bytes, file_sha256, read_json
from .tasks import SEEN_TASKS, SPLITS, TASKSET_VERSION, UNSEEN_TASKS, TaskRecord, build_taskset, checksum

__all__ = ["FORMAT", "FORMS", "read_taskset", "write_taskset"]

FORMAT = "genmodels-tasks"
MANIFEST = "manifest.json"
FORMS = ("prompt", "messages", "meta")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _contents(records: list[TaskRecord]) -> dict[str, bytes]:
    """File name -> bytes, for every split and form."""
    out = {}
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        out[f"{split}.prompt.jsonl"] = _jsonl([r.prompt_form() for r in rows])
        out[f"{split}.messages.jsonl"] = _jsonl([r.messages_form() for r in rows])
        out[f"{split}.meta.jsonl"] = _jsonl([r.meta() for r in rows])
    return out


def _ours(out: Path) -> dict[str, str]:
    """The files an earlier ``genmodels tasks`` wrote into ``out`` (name -> SHA-256), from its manifest;
    empty when there is none. A manifest.json that is not ours is refused."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return {}
    try:
        data = read_json(manifest)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise FileExistsError(f"{manifest} exists and is not a task-set manifest (no \"format\": \"{FORMAT}\"); "
                              "genmodels tasks never replaces a file it did not write: choose another --out")
    return {str(k): str(v) for k, v in data["files"].items()}


def _check_target(out: Path, names: list[str]) -> None:
    """Refuse (one line, naming the file) to replace anything genmodels tasks did not write."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder (new, or one genmodels tasks wrote)")
    if not out.exists():
        return
    ours = _ours(out)  # a manifest.json that is not ours is refused here
    for name in names:
        f = out / name
        if name == MANIFEST:
            continue
        if not f.exists() and not f.is_symlink():
            continue
        if not f.is_file():
            raise FileExistsError(f"{f} exists and is not a file; genmodels tasks writes a file there: move it "
                                  "or choose another --out")
        if name not in ours:
            raise FileExistsError(f"{f} exists and genmodels tasks did not write it (not in {out / MANIFEST}); "
                                  "it is never replaced: move it or choose another --out")
        if file_sha256(f) != ours[name]:
            raise FileExistsError(f"{f} was changed since genmodels tasks wrote it (its SHA-256 differs from "
                                  f"{out / MANIFEST}'s); it is never replaced: move it or choose another --out")


def write_taskset(out: str | Path, seed: int = 0, per_task: int = 100) -> dict:
    """Write the task set into folder ``out`` (module doc); returns the manifest."""
    out = Path(out)
    records = build_taskset(seed, per_task)
    contents = _contents(records)
    _check_target(out, [*contents, MANIFEST])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in contents.items():
        atomic_write_bytes(out / name, data)
        files[name] = file_sha256(out / name)
    counts = {s: sum(r.split == s for r in records) for s in SPLITS}
    manifest = {"format": FORMAT, "version": TASKSET_VERSION, "seed": seed, "per_task": per_task,
                "checksum": checksum(records), "seen_tasks": list(SEEN_TASKS), "unseen_tasks": list(UNSEEN_TASKS),
                "counts": counts, "files": files}
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_taskset(folder: str | Path, split: str) -> list[TaskRecord]:
    """The records of one split of a written task set (its messages and meta files, checked against
    the manifest's SHA-256)."""
    folder = Path(folder)
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    files = _ours(folder)
    if not files:
        raise FileNotFoundError(f"{folder / MANIFEST}: no task set there (write one with genmodels tasks --out)")
    names = {form: f"{split}.{form}.jsonl" for form in ("messages", "meta")}
    rows = {}
    for form, name in names.items():
        f = folder / name
        if name not in files or not f.is_file() or file_sha256(f) != files[name]:
            raise ValueError(f"{f}: missing or changed since genmodels tasks wrote it (SHA-256 differs from "
                             f"{folder / MANIFEST}); write the task set again")
        rows[form] = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [TaskRecord(m["id"], m["task"], m["split"], m["template"], msg["messages"][0]["content"], m["answer"],
                       m["values"]) for msg, m in zip(rows["messages"], rows["meta"])]
