"""Issue #19, B-8, B-9 and B-23's ``--out`` items: single-file writes (``files.atomic_write``) follow the
umask, write through a symbolic link and name the file on a full disk; image outputs
(``genmodels sample --out``, ``save_grid``) take their format from the suffix and replace only files
genmodels wrote unless ``--overwrite``; model and checkpoint writes report a full disk as a full disk on
the file being written. Code: files.py, generation/image_file.py, folders.as_published."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

import genmodels
from genmodels import files
from genmodels.cli import main
from genmodels.generation.images import save_grid
from tests.helpers.tiny import tiny_model

IMAGES = torch.linspace(-1, 1, 4 * 64).reshape(4, 1, 8, 8)  # (N, C, H, W)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "gm_unet"
    genmodels.save(genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16],
                                                          norm_num_groups=4)), path)
    return path


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


# ---- B-8: modes, ownership, links, formats ---------------------------------------------------------
def test_single_file_writes_follow_the_umask(tmp_path, umask):
    """mkstemp made every atomic write 0600 (samples.png, a run's config.yaml); now 0o666 & ~umask."""
    files.atomic_write_bytes(tmp_path / "a.yaml", b"x")
    save_grid(IMAGES, tmp_path / "g.png")
    umask(0o027)
    files.atomic_write_bytes(tmp_path / "b.yaml", b"x")
    assert (_mode(tmp_path / "a.yaml"), _mode(tmp_path / "g.png"), _mode(tmp_path / "b.yaml")) == (0o644, 0o644, 0o640)


def test_an_image_genmodels_did_not_write_is_replaced_only_with_overwrite(tmp_path):
    mine = tmp_path / "notes.png"
    Image.new("L", (3, 3)).save(mine)  # the user's own PNG
    before = mine.read_bytes()
    with pytest.raises(FileExistsError) as e:
        save_grid(IMAGES, mine)
    msg = str(e.value)
    assert "\n" not in msg and "--out" in msg and str(mine) in msg and "--overwrite" in msg
    assert mine.read_bytes() == before
    save_grid(IMAGES, mine, overwrite=True)
    save_grid(IMAGES * 0, mine)  # now it is ours: replaced without the flag
    assert Image.open(mine).getextrema() == (128, 255)  # the zero grid (127.5 rounds to 128) and its white gaps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]  # no temporary file left


def test_a_symbolic_link_is_written_through(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(b"the user's file")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    with pytest.raises(FileExistsError, match="a link to"):
        save_grid(IMAGES, link)
    assert real.read_bytes() == b"the user's file"
    save_grid(IMAGES, link, overwrite=True)
    assert link.is_symlink() and Image.open(real).format == "PNG"
    files.atomic_write_bytes(link, b"through")
    assert link.is_symlink() and real.read_bytes() == b"through"


@pytest.mark.parametrize("name, fmt", [("g.png", "PNG"), ("g.PNG", "PNG"), ("g.jpg", "JPEG"), ("g.jpeg", "JPEG")])
def test_the_format_follows_the_suffix(tmp_path, name, fmt):
    save_grid(IMAGES, tmp_path / name)
    assert Image.open(tmp_path / name).format == fmt
    save_grid(IMAGES, tmp_path / name)  # our own file, rewritten


@pytest.mark.parametrize("name", ["g.gif", "notes.txt", "grid", ""])
def test_other_suffixes_are_refused_naming_out(tmp_path, name):
    out = str(tmp_path / name) if name else ""
    with pytest.raises(ValueError) as e:
        save_grid(IMAGES, out)
    assert "--out" in str(e.value) and ".png, .jpg, .jpeg" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


# ---- B-23: --out paths, one line naming --out ---------------------------------------------------------
def test_cli_out_refusals_name_out_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "notes.png").write_text("my notes")
    missing = str(tmp_path / "no-such-model")  # --out is refused before the model is even read
    for out, words in [("", "names no file"), ("afile/x.png", "afile is a file"), ("x.gif", ".png, .jpg, .jpeg"),
                       ("notes.png", "--overwrite"), (".", "format follows the suffix")]:
        rc, err = _cli(capsys, "sample", missing, "--out", out)
        assert rc == 2 and err.startswith("error: --out") and err.count("\n") == 1 and words in err, (out, err)
    assert (tmp_path / "notes.png").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes.png"]


def test_cli_sample_overwrite(tmp_path, capsys, unet_dir):
    out = tmp_path / "notes.png"
    out.write_text("my notes")
    rc, err = _cli(capsys, "sample", str(unet_dir), "--n", "2", "--steps", "1", "--no-progress", "--out", str(out))
    assert rc == 2 and out.read_text() == "my notes"
    assert main(["sample", str(unet_dir), "--n", "2", "--steps", "1", "--no-progress", "--out", str(out),
                 "--overwrite"]) == 0
    assert Image.open(out).format == "PNG"


# ---- B-9: a full disk is a full disk, on the file being written -------------------------------------------
def _disk_full_in_safetensors(monkeypatch):
    """safetensors reports ENOSPC as SafetensorError, as it does on a full tmpfs."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)


def test_full_disk_during_a_model_write_names_the_file(tmp_path, capsys, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    genmodels.save(tiny_model("gpt2", n_layers=1), src)
    _disk_full_in_safetensors(monkeypatch)
    with pytest.raises(OSError) as e:
        genmodels.save(tiny_model("gpt2", n_layers=1), dst)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(dst / "model.safetensors")
    assert not dst.exists()
    rc, err = _cli(capsys, "convert", str(src), str(dst), "--to", "hf")
    assert rc == 2 and err == f"error: {dst / 'model.safetensors'}: No space left on device\n"


def test_full_disk_during_a_checkpoint_names_the_checkpoint(tmp_path, monkeypatch):
    from genmodels.training.checkpoint import save_checkpoint
    _disk_full_in_safetensors(monkeypatch)
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path, 7, {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}, {}, {}, keep_last=2)
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == str(tmp_path / "checkpoints" / "step-000007" / "model.safetensors")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []  # no temporary folder left


def test_full_disk_during_sample_out_names_the_output_not_the_model(tmp_path, capsys, unet_dir, monkeypatch):
    out = tmp_path / "x.png"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write()/fsync() report it: no file name

    monkeypatch.setattr(files.os, "fsync", full)
    rc, err = _cli(capsys, "sample", str(unet_dir), "--n", "2", "--steps", "1", "--no-progress", "--out", str(out))
    assert rc == 2 and err == f"error: {out}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be made")
def test_a_failed_create_names_the_output_not_a_temporary_file():
    with pytest.raises(OSError) as e:
        save_grid(IMAGES, "/proc/x.png")
    assert "/proc/x.png" in str(e.value) and ".tmp" not in str(e.value)
