"""Checkpoint writes never leave a moment where a step's files are gone, and recover a killed rewrite."""
from __future__ import annotations

import json
import shutil

import torch

from genmodels.training import checkpoint as ck


def _save(run, step, value):
    sd = {"w": torch.full((2,), float(value))}
    return ck.save_checkpoint(run, step, sd, {"state": {}, "param_groups": []}, {"cpu/rank0": torch.zeros(1)},
                              {"step": step, "value": value}, keep_last=2)


def test_rewriting_a_step_never_deletes_it_before_the_new_one_is_in(tmp_path, monkeypatch):
    final = _save(tmp_path, 10, 1)
    real_rmtree, seen = shutil.rmtree, []

    def rmtree(path, *a, **kw):
        real_rmtree(path, *a, **kw)
        seen.append((final / "state.json").is_file())

    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    _save(tmp_path, 10, 2)
    assert seen and all(seen)  # after every deletion step-000010 is complete
    assert json.loads((final / "state.json").read_text())["value"] == 2
    assert not list(ck.checkpoint_dir(tmp_path).glob(".old-*"))


def test_a_step_moved_aside_by_a_killed_rewrite_is_recovered(tmp_path):
    final = _save(tmp_path, 10, 1)
    final.rename(final.parent / ".old-step-000010-12345")  # killed between the two renames
    assert ck.latest_checkpoint(tmp_path) == final
    assert ck.load_checkpoint(final)[3]["value"] == 1
