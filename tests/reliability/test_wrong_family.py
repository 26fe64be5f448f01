"""A command on a model of the wrong kind is one line naming the command that fits it (report 2026-12-07
B-3, B-21): ``sample`` / ``evaluate`` on a text model, ``generate`` / ``embed`` on an image model. One
mechanism, ``registry.require`` over the families' capabilities, serves the CLI and the API. And
``generate`` checks every argument before it echoes the prompt (B-22)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.data.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny RetNet with a tokenizer (text), a tiny UNet and the digits DCGAN (images)."""
    tok = train_bpe_tokenizer(["def foo(x):\n    return x + 1\n"] * 10, 270)
    root = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    ret = genmodels.preset("retnet-tiny", n_layers=1, d_model=32, n_heads=2, vocab_size=tok.get_vocab_size(),
                           max_seq_len=32)
    genmodels.save(genmodels.build_model(ret), root / "ret", tokenizer=tok)
    unet = genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4)
    genmodels.save(genmodels.build_model(unet), root / "unet")
    genmodels.save(genmodels.build_model(genmodels.preset("dcgan-digits")), root / "gan")
    return {k: root / k for k in ("ret", "unet", "gan")}


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (out, err)
    return err


@pytest.mark.parametrize("argv, where, fits", [
    (["sample", "{ret}", "--n", "2"], "ret", "generates text: use `genmodels generate`"),
    (["evaluate", "{ret}", "--n", "8"], "ret", "generates text: use `genmodels generate`"),
    (["generate", "{gan}"], "gan", "samples images: use `genmodels sample`"),
    (["generate", "{unet}"], "unet", "samples images: use `genmodels sample`"),
    (["embed", "{unet}", "hi"], "unet", "samples images: use `genmodels sample`"),
    (["embed", "{gan}", "hi"], "gan", "samples images: use `genmodels sample`"),
])
def test_a_command_on_the_wrong_kind_of_model_names_the_command_that_fits(folders, capsys, argv, where, fits):
    argv = [a.format(**folders) for a in argv]
    assert main(argv) == 2
    err = _one_error_line(capsys)
    assert f"`genmodels {argv[0]}` needs a model that" in err and str(folders[where]) in err and fits in err


def test_the_api_refuses_the_wrong_kind_through_the_same_check(folders):
    ret, unet = genmodels.load(folders["ret"]), genmodels.load(folders["unet"])
    with pytest.raises(ValueError, match="genmodels.sample needs a model that samples images; this is a model "
                                         "of family 'retnet'; it generates text"):
        genmodels.sample(ret, n=2)
    with pytest.raises(ValueError, match="genmodels.embed needs a model that embeds sentences; .*family "
                                         "'diffusion'; it samples images"):
        genmodels.embed(unet, ["hi"])
    with pytest.raises(ValueError, match="genmodels.generate needs a model that generates text"):
        genmodels.generate(unet, torch.tensor([[1]]), 2)


@pytest.mark.parametrize("flags, named", [(["--num-beams", "0"], "--num-beams=0"), (["--top-k", "-1"], "--top-k=-1"),
                                          (["--seed", str(2 ** 64)], f"--seed={2 ** 64}"),
                                          (["--max-new-tokens", "-1"], "--max-new-tokens=-1")])
def test_generate_checks_every_argument_before_the_prompt_is_echoed(folders, capsys, flags, named):
    assert main(["generate", str(folders["ret"]), *flags]) == 2
    err = _one_error_line(capsys)  # nothing on stdout: the prompt was not echoed
    assert named in err
