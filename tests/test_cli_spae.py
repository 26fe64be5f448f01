"""``genmodels tokenize-image``: an image file as a pyramid of words; bad inputs are one ``error:`` line, exit 2."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.cli import main
from tests.models.spae.test_spae import tiny_model


@pytest.fixture(scope="module")
def spae_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("spae") / "m"
    genmodels.save(tiny_model(), folder)
    return folder


@pytest.fixture
def digit_png(tmp_path):
    from PIL import Image
    a = (torch.rand(8, 8) * 255).to(torch.uint8).numpy()
    Image.fromarray(a, mode="L").resize((32, 32)).save(tmp_path / "d.png")
    return tmp_path / "d.png"


def test_tokenize_image_prints_a_line_per_layer_and_writes_the_reconstructions(spae_dir, digit_png, tmp_path, capsys):
    assert main(["tokenize-image", str(spae_dir), str(digit_png), "--recon", str(tmp_path / "r.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["1 (1×1)", "2 (2×2)", "3 (4×4)"]
    assert [len(line.split(": ")[1].split()) for line in lines[:3]] == [1, 4, 16]
    model = genmodels.load(spae_dir)
    words = [line.split(": ")[1].split() for line in lines[:3]]
    assert all(w in model.tokenizer.get_vocab() for layer in words for w in layer)
    assert lines[3].startswith("reconstructions: ") and (tmp_path / "r.png").is_file()


@pytest.mark.parametrize("which, message", [
    ("no-model", "no-model"),
    ("no-image", "missing.png: no such image file"),
    ("not-image", "not an image: not a readable image"),
    ("not-spae", "an SPAE model is needed"),
])
def test_tokenize_image_bad_inputs_are_one_line(which, message, spae_dir, digit_png, tmp_path, capsys):
    path, image = str(spae_dir), str(digit_png)
    if which == "no-model":
        path = str(tmp_path / "no-model")
    elif which == "no-image":
        image = str(tmp_path / "missing.png")
    elif which == "not-image":
        (tmp_path / "not an image").write_text("hello")
        image = str(tmp_path / "not an image")
    else:
        path = str(tmp_path / "gan")
        genmodels.save(genmodels.build_model(genmodels.preset("dcgan-digits", g_width=8, d_width=8, z_dim=4)), path)
    assert main(["tokenize-image", path, image]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--top", "0"], "--top 0 must be >= 1"),
    (["--lm", "no-such-lm"], "no-such-lm: no such file or folder"),
])
def test_neurons_bad_inputs_are_one_line(argv, message, spae_dir, tmp_path, capsys):
    assert main(["neurons", str(spae_dir), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
