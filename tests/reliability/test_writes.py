"""Issue #8, deliverable 1: model writes never destroy user files (genmodels.save / export_hf, and so
``genmodels convert``). Each test names the promised behaviour."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels import io
from tests.helpers.tiny import tiny_model


@pytest.fixture
def model():
    return tiny_model("gpt2", d_ff=128, n_layers=1)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_resave_keeps_user_files_named_like_model_files(tmp_path, model):
    """``model-card.md`` is the user's: a save into a folder holding it is refused and it stays."""
    out = tmp_path / "m"
    genmodels.save(model, out)
    (out / "model-card.md").write_text("mine")
    with pytest.raises(FileExistsError, match="model-card.md"):
        genmodels.save(model, out)
    assert (out / "model-card.md").read_text() == "mine"
    with pytest.raises(FileExistsError, match="model-card.md"):
        genmodels.export_hf(model, out)
    assert (out / "model-card.md").read_text() == "mine"


def test_refusal_is_one_line_naming_folder_and_files(tmp_path, model):
    out = tmp_path / "m"
    out.mkdir()
    for name in ("notes.txt", "data.csv"):
        (out / name).write_text("x")
    with pytest.raises(FileExistsError) as e:
        genmodels.save(model, out)
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "notes.txt" in msg and "data.csv" in msg
    assert sorted(p.name for p in out.iterdir()) == ["data.csv", "notes.txt"]


def test_sibling_old_folder_is_never_touched(tmp_path, model):
    out = tmp_path / "m"
    genmodels.save(model, out)
    old = tmp_path / ".m.old"
    old.mkdir()
    (old / "keep.txt").write_text("user data")
    genmodels.save(model, out)
    genmodels.export_hf(model, out)
    assert (old / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.old", "m"]  # no .old or temp siblings


def test_existing_empty_folder_is_filled_in_place(tmp_path, model):
    out = tmp_path / "empty"
    out.mkdir()
    os.chmod(out, 0o751)
    inode = os.stat(out).st_ino
    genmodels.save(model, out)
    assert os.stat(out).st_ino == inode and _mode(out) == 0o751  # the same folder, not a replacement
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(genmodels.load(out).embed.weight, model.embed.weight)


def test_symlink_to_folder_is_filled_in_place(tmp_path, model):
    """The link stays a link and the model lands in its target (a mount point takes the same path)."""
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    genmodels.save(model, link)
    genmodels.export_hf(model, link)  # a re-save through the link replaces genmodels' own files
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert genmodels.load(link).config.extra["hf_architecture"] == "GPT2LMHeadModel"


def test_new_folder_mode_follows_umask(tmp_path, model):
    old = os.umask(0o027)
    try:
        genmodels.save(model, tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "b") == 0o750
    assert _mode(tmp_path / "a" / "b" / "model.safetensors") == 0o640


def test_resave_removes_only_stale_genmodels_files(tmp_path, model):
    """A previous save's tokenizer.json, which this save does not produce, goes; nothing else does."""
    from tokenizers import Tokenizer, models
    out = tmp_path / "m"
    genmodels.save(model, out, tokenizer=Tokenizer(models.BPE()))
    assert (out / "tokenizer.json").is_file()
    genmodels.save(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_files_are_fsynced_before_visible_weights_before_config(tmp_path, model, monkeypatch):
    """Each file is fsynced under its temporary name, then moved in; config.json moves in last."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        assert os.path.dirname(os.path.dirname(src)) == os.path.dirname(dst)  # staged inside the target
        return replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", spy_fsync)
    monkeypatch.setattr(io.os, "replace", spy_replace)
    genmodels.save(model, tmp_path / "m")
    replaced = [name for kind, name in events if kind == "replace"]
    assert replaced == ["model.safetensors", "config.json"]
    for name in replaced:
        assert events.index(("fsync", name)) < events.index(("replace", name))


def test_failed_write_leaves_previous_model_whole(tmp_path, model, monkeypatch):
    """A write that fails part-way leaves the previous files and no staging folder."""
    out = tmp_path / "m"
    genmodels.save(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        genmodels.save(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_file_as_target_is_refused(tmp_path, model):
    f = tmp_path / "model"
    f.write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        genmodels.save(model, f)
    assert f.read_text() == "not a folder"
