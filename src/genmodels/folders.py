"""Writing a model folder in place: every file appears whole, and nothing genmodels did not write is
ever replaced or removed (:func:`atomic_dir_write`, which ``genmodels.save``, ``export_hf`` and
``export_diffusers`` use; which files are ours is decided by content, :mod:`genmodels.ownership`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .files import fsync_dir, fsync_path, naming
from .ownership import check_same_kind, config_kind, not_ours_reason

# Every path (relative to the model folder) that a genmodels writer produces. A re-save recognises
# a previous genmodels / HF-export set by these exact names AND by their content: a file with one of
# these names is ours only when it holds a model file of that format (genmodels/ownership.py: a user's
# own config.json is not a model config). (A manifest was the other choice; it would be one more file
# to lose, go stale, or be missing from folders written before it existed.) Nothing else is ever
# replaced or removed: a folder holding any other file is refused, and a folder holding a model of
# another kind is replaced only with overwrite=True (--overwrite).
WRITTEN_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                           # sentence-transformers export (interop/sentence_transformers.py)
                           "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                           "tokenizer_config.json",
                           # diffusers export (interop/diffusers_unet.py)
                           "diffusion_pytorch_model.safetensors", "scheduler_config.json",
                           # a reward model's score head (genmodels/reward.py)
                           "score.safetensors"})
WRITTEN_DIRS = frozenset(str(Path(f).parent) for f in WRITTEN_FILES if "/" in f)
# The staging folder a write uses inside the target; one left by a killed write is genmodels' own.
PARTIAL = ".genmodels-partial-"


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the regular files (and links) under ``folder``, as ``a/b`` strings."""
    return sorted(str(p.relative_to(folder)).replace(os.sep, "/")
                  for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _previous_model_files(path: Path, kind: str | None = None,
                          overwrite: bool = False) -> tuple[set[str], list[Path]]:
    """What a write into ``path`` may replace: (genmodels model files present, leftover staging
    folders). Refuses a non-folder; a folder holding anything genmodels does not write, or a file
    with one of our names that is not the model file it should be (genmodels.ownership); and, unless
    ``overwrite``, a folder holding a model of another kind than ``kind`` (the one being written)."""
    if not path.exists():
        if path.is_symlink():
            raise FileExistsError(f"{path} is a broken symbolic link; point it at a folder or remove it")
        return set(), []
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    ours: set[str] = set()
    partial: list[Path] = []
    others: list[str] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith(PARTIAL) and p.is_dir() and not p.is_symlink():
            partial.append(p)
        elif p.name in WRITTEN_DIRS and p.is_dir() and not p.is_symlink():
            inside = [f"{p.name}/{q.name}" for q in sorted(p.iterdir())]
            bad = [f for f in inside if f not in WRITTEN_FILES or (path / f).is_dir()]
            others += bad
            ours |= set(inside) - set(bad)
        elif p.name in WRITTEN_FILES and not p.is_dir():
            ours.add(p.name)
        else:
            others.append(p.name + ("/" if p.is_dir() else ""))
    for name in sorted(ours):  # our names, but are they our files?
        why = not_ours_reason(path, name)
        if why is not None:
            others.append(f"{name} [{why}]")
    if others:
        raise FileExistsError(f"{path} already holds other files ({', '.join(others[:5])}"
                              f"{', …' if len(others) > 5 else ''}); save the model into a new or empty folder")
    if kind is not None and not overwrite:
        check_same_kind(path, ours, bool(partial), kind)
    return ours, partial


def _new_file_mode(folder: Path) -> int:
    """The mode a new file gets here (0o666 & ~umask), read from a probe file: the umask cannot be
    read without setting it, which would race with other threads."""
    probe = folder / ".mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666))
    try:
        return os.stat(probe).st_mode & 0o777
    finally:
        probe.unlink()


def _publish_order(names: list[str]) -> list[str]:
    """Weights first, ``config.json`` last: a reader that sees the new config sees the new weights."""
    return sorted(names, key=lambda n: (0 if n.endswith(".safetensors") else 2 if n == "config.json" else 1, n))


def atomic_dir_write(path: Path, write, config=None, overwrite: bool = False) -> Path:
    """Fill ``path`` with the files ``write(folder)`` produces, each appearing whole.

    ``path`` may be new, an empty folder, a previous genmodels / HF-export folder, a mount point or
    a symbolic link to a folder: it is always filled in place (never renamed or replaced), so the
    folder itself, its mode, owner and link stay. ``write`` writes into a staging folder inside
    ``path``; each file is fsynced, then moved to its name with ``os.replace`` (weights before
    ``config.json``), so a reader never sees half a file. Files of a previous save that this write
    does not produce are removed — only names in ``WRITTEN_FILES`` whose content is ours
    (genmodels.ownership). When ``config`` (the model's) is given, a folder holding a model of another
    kind is refused unless ``overwrite``. A new folder's mode follows the umask. On failure nothing
    already in ``path`` is touched, and an OSError names the file being written (a full disk)."""
    path = Path(path)
    kind = config_kind(config) if config is not None else None
    previous, partial = _previous_model_files(path, kind, overwrite)
    created = not path.exists()
    if created:
        path.mkdir(parents=True)  # 0o777 & ~umask, as any folder the user makes
    stage = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=path))
    try:
        write(stage)
        written = _files_under(stage)
        stray = [n for n in written if n not in WRITTEN_FILES]
        if stray:  # a writer outside the list would leave files a re-save then refuses
            raise RuntimeError(f"genmodels wrote unexpected files {', '.join(stray)}; add them to folders.WRITTEN_FILES")
        mode = _new_file_mode(stage)
        for name in written:
            os.chmod(stage / name, mode)  # some writers (safetensors) create 0600 files
            fsync_path(stage / name)
        order = _publish_order(written)
        for name in order[:-1] if order[-1] == "config.json" else order:
            (path / name).parent.mkdir(exist_ok=True)
            os.replace(stage / name, path / name)
        for name in sorted(previous - set(written)):  # a stale file of the previous save
            (path / name).unlink()
        for d in WRITTEN_DIRS:
            if (path / d).is_dir() and not any((path / d).iterdir()):
                (path / d).rmdir()
        if "config.json" in written:
            os.replace(stage / "config.json", path / "config.json")
        for d in {str(Path(n).parent) for n in written} - {"."}:
            fsync_dir(path / d)
        fsync_dir(path)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(path.iterdir()):
            path.rmdir()
        if isinstance(e, OSError):
            raise as_published(e, stage, path) from None
        raise
    shutil.rmtree(stage, ignore_errors=True)
    for p in partial:  # staging folders of an earlier, killed write
        shutil.rmtree(p, ignore_errors=True)
    if created:
        fsync_dir(path.parent)
    return path


def as_published(e: OSError, stage: Path, path: Path) -> OSError:
    """An OSError of a folder write naming the file as published (``path/name``), not its staging
    copy, nor nothing (a full disk during ``write()`` names no file: then ``path``)."""
    name = str(e.filename) if e.filename is not None else ""
    if name.startswith(str(stage) + os.sep):
        return OSError(e.errno, e.strerror, str(path / os.path.relpath(name, stage)))
    return naming(e, path)
