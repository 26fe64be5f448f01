"""File primitives shared by every writer and cache: a file's SHA-256, fsync, atomic writes.

An atomic write goes to a temporary name in the target's own folder, is flushed and fsynced, then
renamed over the target (``os.replace``): a reader sees the old file or the new one, never a part,
and a crash never leaves a half-written file under the target's name. The new file's mode follows the
umask (0o666 & ~umask, as ``open`` makes files; ``tempfile.mkstemp`` would make it 0600). A symbolic
link at the target is written through: the file it points to is replaced and the link stays.

A failed write raises an OSError naming the file being written, whatever failed: a ``write()`` that
finds the disk full names no file by itself, and safetensors reports one as ``SafetensorError``
(which reads like a corrupt input); :func:`naming` and :func:`write_safetensors` fix both.

Reading: :func:`read_json`, :func:`read_safetensors` and :func:`read_torch_bin` turn every failure into
one line naming the file (weights are never unpickled); every loader and converter reads through them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(folder: Path) -> None:
    """Flush every file directly in ``folder`` to disk."""
    for f in folder.iterdir():
        if f.is_file():
            fsync_path(f)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def naming(e: OSError, path: str | Path) -> OSError:
    """``e`` naming ``path`` when the OS named no file (a full disk during ``write()``), else ``e``.
    ``OSError(errno, …)`` picks the subclass for the errno, as the OS's own error would."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


def check_out_name(out: str | Path, suffix: str, why: str = "") -> Path:
    """An ``--out`` file name checked before any work: it ends in ``suffix`` (``why`` says why, after the name),
    is not a folder, and its folder exists; ValueError naming the flag otherwise."""
    p = Path(out)
    if p.suffix != suffix:
        raise ValueError(f"--out {out}: give a {suffix} file name{why}")
    if p.is_dir():
        raise ValueError(f"--out {out} is a folder; give a {suffix} file name")
    if not p.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {p.parent} does not exist")
    return p


def write_target(path: str | Path) -> Path:
    """Where a write to ``path`` lands: through a symbolic link, the file it points to (module docstring)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_parents(target: Path, label: str) -> None:
    """The nearest existing folder above ``target`` must be a folder genmodels may write in (missing ones are
    created by the writer): FileExistsError / PermissionError saying ``label: <ancestor> is a file, not a
    folder`` / ``is not writable`` (rather than the OS's bare ``File exists``)."""
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise FileExistsError(f"{label}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):  # permissions, or a read-only file system (EROFS)
                raise PermissionError(f"{label}: {parent} is not writable")
            return


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``path``, mode 0o666 & ~umask."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # a name another writer holds: draw again
            continue
        except OSError as e:  # a read-only file system, a missing folder: say so of the file being written
            raise OSError(e.errno, e.strerror, str(path)) from None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``
    (through a symbolic link; module docstring). An OSError names ``path``."""
    path = write_target(path)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            raise naming(e, path) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda fh: fh.write(data))


def write_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a full disk: ``SafetensorError`` "…I/O error:
    No space left on device (os error 28)") become the OSError they are, naming ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        n = int(code.group(1))
        raise OSError(n, os.strerror(n), str(path)) from None


# ---- reading files: every failure names the file ------------------------------------------------
def one_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, shortened: a refusal is one line."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= limit else msg[:limit - 1] + "…"


def read_utf8(file: str | Path, what: str | None = None) -> str:
    """The text of ``file``; one that is not UTF-8 is a ValueError naming ``what`` (default: the file) and the
    first bad byte (Python's own error names no file)."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what or file}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(file: Path, expect: type = dict) -> Any:
    """A JSON object (or another ``expect`` type) from ``file``; a broken file is a ValueError naming
    it and what is wrong."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"JSON {expect.__name__}"
        raise ValueError(f"{file}: expected {want}, found {type(data).__name__}")
    return data


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or garbage file is a ValueError naming it."""
    from safetensors.torch import load_file
    try:
        return load_file(str(file))
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # safetensors' own errors name neither the file nor the remedy
        raise ValueError(f"{file}: not a readable safetensors file ({one_line(e)})") from None


def read_torch_bin(file: Path) -> dict[str, torch.Tensor]:
    """A legacy ``pytorch_model.bin`` through ``torch.load(weights_only=True)`` (never an unrestricted
    unpickle); a corrupt file is a ValueError naming it."""
    import torch
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, …
        raise ValueError(f"{file}: {_torch_load_failure(e)}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{file}: expected a state dict (names -> tensors), found {type(sd).__name__}")
    return sd


def _torch_load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in our words: torch's own message advises
    ``weights_only=False`` (an unrestricted unpickle), which genmodels never does nor suggests."""
    text = str(e)
    if m := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (f"holds pickled Python objects ({m.group(1)}), not only tensors; genmodels reads weights only "
                "(never an unrestricted unpickle): save the state dict, torch.save(model.state_dict(), FILE)")
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1).strip() if m else one_line(e)
    if "weights_only" in reason or not m and "Weights only load failed" in text:
        reason = type(e).__name__
    elif isinstance(e, EOFError):
        reason = "the file ends early: EOFError"
    elif " " not in reason:  # a bare KeyError argument: say what kind of failure it is
        reason = f"{type(e).__name__}: {reason}"
    return f"not a readable PyTorch checkpoint ({reason})"
