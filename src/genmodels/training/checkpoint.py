"""Training checkpoints: safetensors tensors + JSON metadata, written atomically, last K kept.

    RUN_DIR/checkpoints/step-000200/
        model.safetensors      full model state (genmodels key names)
        optimizer.safetensors  AdamW state, keys "state/<param fqn>/<exp_avg|exp_avg_sq|step>"
        rng.safetensors        torch RNG state of every rank ("cpu/rank<r>", "cuda/rank<r>")
        state.json             step, tokens, data-sampler position, optimizer param groups,
                               world size, elapsed time, the resolved config

A checkpoint is written into ``.tmp-step-…`` and renamed into place (a step written again is
first renamed aside to ``.old-step-…``, deleted only once the new one is in), so a process killed
at any moment (kill -9 included) leaves either the previous set or the new complete one. Nothing is ever
unpickled: tensors come from safetensors, everything else from JSON.

``--resume`` uses the newest *readable* checkpoint (:func:`read_checkpoint` raises
:class:`CheckpointUnreadable` with the reason for a missing or corrupt state.json, a truncated
safetensors file or a tensor of the wrong shape). For tests, ``GENMODELS_TEST_KILL_IN_CHECKPOINT=NAME``
(or ``NAME@STEP``) SIGKILLs the process right after ``NAME`` is written into the temporary folder of
a checkpoint (of step ``STEP``): a kill that lands inside a checkpoint write, deterministically.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..files import fsync_dir, fsync_files, write_safetensors
from ..folders import as_published

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _recover_aside(root: Path) -> None:
    """A process killed between moving a step aside and renaming its rewrite in leaves
    ``.old-step-N-…`` and no ``step-N``: put the old set back; otherwise it is stale."""
    for old in sorted(root.glob(".old-step-*")):
        m = re.match(r"^\.old-(step-\d+)-\d+$", old.name)
        if m is None:
            continue
        final = root / m.group(1)
        if not final.exists() and (old / "state.json").is_file():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    _recover_aside(root)
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def step_dirs(run_dir: Path) -> list[Path]:
    """Every ``step-N`` folder, complete or not, oldest first (what ``--resume`` looks through)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    _recover_aside(root)
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, extra = {}, {}
    for fqn, st in osd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{fqn}/{name}"] = v.detach().cpu().contiguous()
            else:
                extra.setdefault(fqn, {})[name] = v
    groups = []
    for g in osd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "non_tensor_state": extra}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, rest = key.split("/", 1)
        fqn, name = rest.rsplit("/", 1)
        state.setdefault(fqn, {})[name] = t
    for fqn, extra in meta.get("non_tensor_state", {}).items():
        state.setdefault(fqn, {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, model_sd: dict[str, torch.Tensor], optim_sd: dict,
                    rng: dict[str, torch.Tensor], state: dict[str, Any], keep_last: int) -> Path:
    """Write a checkpoint atomically (call on the main rank only) and prune to the last ``keep_last``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_safetensors({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
        _test_kill_point(tmp, "model.safetensors", step)
        otensors, ometa = _flatten_optimizer(optim_sd)
        write_safetensors(otensors, tmp / "optimizer.safetensors")
        _test_kill_point(tmp, "optimizer.safetensors", step)
        write_safetensors({k: v.contiguous() for k, v in rng.items()}, tmp / "rng.safetensors")
        _test_kill_point(tmp, "rng.safetensors", step)
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": ometa}, indent=1))
        _test_kill_point(tmp, "state.json", step)
        fsync_files(tmp)  # data on disk before the rename makes it visible
        aside = root / f".old-step-{step:06d}-{os.getpid()}"
        if final.exists():  # rewriting a step: move the old set aside, put the new one in, then delete
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(root)  # the rename itself survives a power loss
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk: named on the checkpoint file being written
            raise as_published(e, tmp, final) from None
        raise
    shutil.rmtree(aside, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a killed process
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    _recover_aside(root)
    return final


def _test_kill_point(tmp: Path, name: str, step: int) -> None:
    """Test hook: SIGKILL this process once ``name`` is written, if GENMODELS_TEST_KILL_IN_CHECKPOINT asks."""
    want = os.environ.get("GENMODELS_TEST_KILL_IN_CHECKPOINT")
    if not want:
        return
    file, _, at = want.partition("@")
    if file == name and (not at or int(at) == step):
        fsync_files(tmp)  # what was written is on disk, as after a real kill some time later
        os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor], dict[str, Any]]:
    """``(model_sd, optim_sd, rng, state)`` of a checkpoint folder."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model_sd = load_file(str(path / "model.safetensors"))
    optim_sd = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state.pop("optimizer"))
    rng = load_file(str(path / "rng.safetensors"))
    return model_sd, optim_sd, rng, state


class CheckpointUnreadable(Exception):
    """A checkpoint folder ``--resume`` cannot use; ``str()`` says why, in a few words."""


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json; CheckpointUnreadable if it is missing, not JSON or lacks its fields."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointUnreadable("no state.json (an unfinished write)")
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        missing = {"step", "tokens", "sampler", "optimizer"} - set(state)
        if missing:
            raise ValueError("no " + ", ".join(sorted(missing)))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointUnreadable(f"state.json is corrupt ({_one_line(e)})") from None
    return state


def read_checkpoint(path: Path, param_shapes: dict[str, tuple[int, ...]] | None = None):
    """:func:`load_checkpoint`, checked: CheckpointUnreadable (with the reason) for a missing or corrupt
    state.json, an unreadable or truncated safetensors file, or — given the model's ``param_shapes``
    (genmodels key → shape) — a model or optimizer tensor missing or of another shape."""
    path = Path(path)
    state = read_state(path)
    loaded = {}
    for name in ("model", "optimizer", "rng"):
        try:
            loaded[name] = load_file(str(path / f"{name}.safetensors"))
        except Exception as e:  # missing, truncated, garbled: safetensors raises its own error types
            raise CheckpointUnreadable(f"{name}.safetensors is unreadable ({_one_line(e)})") from None
    if param_shapes is not None:
        _check_shapes(loaded["model"], loaded["optimizer"], param_shapes)
    optim_sd = _unflatten_optimizer(loaded["optimizer"], state.pop("optimizer"))
    return loaded["model"], optim_sd, loaded["rng"], state


def _check_shapes(model_sd: dict, otensors: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    for key, shape in shapes.items():
        if key not in model_sd:
            raise CheckpointUnreadable(f"model.safetensors lacks {key}")
        if tuple(model_sd[key].shape) != tuple(shape):
            raise CheckpointUnreadable(f"model.safetensors: {key} has shape {tuple(model_sd[key].shape)}, "
                                       f"the model {tuple(shape)}")
    for key, t in otensors.items():  # "state/<fqn>/<exp_avg|exp_avg_sq|step>"
        fqn, name = key.split("/", 1)[1].rsplit("/", 1)
        want = shapes.get(fqn.removeprefix("model."))
        if name != "step" and want is not None and tuple(t.shape) != tuple(want):
            raise CheckpointUnreadable(f"optimizer.safetensors: {key} has shape {tuple(t.shape)}, "
                                       f"the model {tuple(want)}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."
