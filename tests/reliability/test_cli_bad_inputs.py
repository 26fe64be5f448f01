"""Bad inputs a user really gives the command line, found by an audit of every subcommand (docs/reliability.md,
"Bad inputs, command by command"): each is ONE ``error:`` line naming the file or flag, exit status 2, and
nothing the user wrote is replaced. Every test here failed on the code before its fix.

Most refusals come before any model is read, so most tests give a model path that does not exist: the
refusal under test must come first. Run in-process (``cli.main``), as tests/reliability/test_cli_errors.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import genmodels
from genmodels import cli, cli_train

from .conftest import tiny_config
from .test_cli_errors import refused

USER = b"the user's own notes\n"


def _user_file(path: Path) -> Path:
    path.write_bytes(USER)
    return path


def _gist_model(tmp_path: Path) -> Path:
    """A tiny Llama whose tokenizer has a <GIST> token, saved (the model ``genmodels compress`` needs)."""
    from genmodels.data.tokenizer import train_bpe_tokenizer
    from tests.helpers.tiny import randomise
    tok = train_bpe_tokenizer(["Translate to French: the cat. Le chat. " * 3], vocab_size=290,
                              special_tokens=("<|endoftext|>", "<GIST>"), min_frequency=1)
    cfg = genmodels.preset("llama-tiny", vocab_size=tok.get_vocab_size(), d_model=16, n_layers=1, n_heads=2,
                           n_kv_heads=1, d_ff=32, max_seq_len=32)
    genmodels.save(randomise(genmodels.build_model(cfg)).eval(), tmp_path / "m", tokenizer=tok)
    return tmp_path / "m"


# ---- nothing the user wrote is replaced ------------------------------------------------------------
def test_compress_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    """`compress --out` wrote over any file (a user's notes, a model's weights); a folder was named by its
    temporary file (`.adir.4cb0c602.tmp -> adir: Is a directory`)."""
    model = _gist_model(tmp_path)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))  # safetensors, but not a gist cache
    (tmp_path / "adir").mkdir()
    for name in ("notes.safetensors", "notes.txt"):
        _user_file(tmp_path / name)
    kept = {name: (tmp_path / name).read_bytes() for name in ("notes.safetensors", "notes.txt", "weights.safetensors")}
    for name in (*kept, "adir"):
        out = str(tmp_path / name)
        line = refused(capsys, cli.main(["compress", str(model), "--prompt", "Translate", "--out", out]), "--out", out)
        assert "tmp" not in line.replace(str(tmp_path), "")
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    gist = genmodels.compress(genmodels.load(model), "Translate")
    with pytest.raises(FileExistsError, match="never replaced"):  # the API holds the same rule
        gist.save(tmp_path / "notes.txt")
    out = str(tmp_path / "g.safetensors")
    for _ in range(2):  # a new file, then the gist cache it wrote: replaced
        assert cli.main(["compress", str(model), "--prompt", "Translate", "--out", out]) == 0
    assert tmp_path.joinpath("notes.txt").read_bytes() == USER


def test_perplexity_save_text_never_replaces_another_file(tmp_path, capsys):
    """`perplexity --save-text` wrote over any file, before the model was even read."""
    text = tmp_path / "t.txt"
    text.write_text("some text to score\n")
    notes, adir = _user_file(tmp_path / "notes.txt"), tmp_path / "adir"
    adir.mkdir()
    for out in (notes, adir):
        refused(capsys, cli.main(["perplexity", str(tmp_path / "no-model"), "--text-file", str(text),
                                  "--save-text", str(out)]), "--save-text", str(out))
    assert notes.read_bytes() == USER
    same = tmp_path / "same.txt"
    for _ in range(2):  # written new, then left as it is (it holds this text): the model is what is missing
        refused(capsys, cli.main(["perplexity", str(tmp_path / "no-model"), "--text-file", str(text),
                                  "--save-text", str(same)]), "no-model")
        assert same.read_bytes() == text.read_bytes()


def test_tokenize_image_recon_is_refused_naming_recon_before_any_work(tmp_path, capsys):
    """The refusal named `--out` and advised `--overwrite`, flags tokenize-image does not have, after the work."""
    png = _user_file(tmp_path / "mine.png")
    line = refused(capsys, cli.main(["tokenize-image", str(tmp_path / "no-model"), str(tmp_path / "x.png"),
                                     "--recon", str(png)]), f"--recon {png}")
    assert "--overwrite" not in line and png.read_bytes() == USER


@pytest.mark.parametrize("planted", ["neurons.png", "neurons.tsv"])
def test_neurons_refuses_its_out_folder_before_writing_either_file(tmp_path, capsys, planted):
    """A user's neurons.png was refused after the whole probe, with neurons.tsv already written beside it,
    advising an `--overwrite` the command does not have."""
    out = tmp_path / "out"
    out.mkdir()
    _user_file(out / planted)
    line = refused(capsys, cli.main(["neurons", str(tmp_path / "no-model"), "--out", str(out)]), str(out / planted))
    assert "--overwrite" not in line and sorted(p.name for p in out.iterdir()) == [planted]
    assert (out / planted).read_bytes() == USER
    afile = _user_file(tmp_path / "afile")
    refused(capsys, cli.main(["neurons", str(tmp_path / "no-model"), "--out", str(afile)]), f"--out {afile}")


# ---- a bad input is refused, never read as something else -------------------------------------------
@pytest.mark.parametrize("content", ["", "# only a comment\n"])
def test_an_empty_recipe_is_refused_not_run_with_the_defaults(tmp_path, monkeypatch, capsys, content):
    """An empty recipe trained the default recipe: 200 steps of a 7M-parameter Llama into runs/default."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(content)
    refused(capsys, cli_train.main(["r.yaml"]), "r.yaml", "no recipe", "run_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("argv", [["convert", "SRC", "", "--to", "genmodels"], ["tasks", "--out", ""],
                                  ["generate", ""], ["sample", "SRC", "--out", ""]])
def test_an_empty_path_argument_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys, argv):
    """`convert SRC ""` wrote the model into the current folder, `tasks --out ""` the task set (an unset shell
    variable gives ""); `generate ""` was refused naming `.`."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m"
    genmodels.save(genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=32, d_model=16, n_layers=1,
                                                          n_heads=2, n_kv_heads=1, d_ff=32)), model)
    argv = [str(model) if a == "SRC" else a for a in argv]
    name = {"convert": "DST", "generate": "PATH"}.get(argv[0], "--out")
    refused(capsys, cli.main(argv), f"{name} ''")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_plan_refuses_seq_0_and_a_preset_it_does_not_model_in_one_line(capsys):
    """`--seq 0` planned the model's whole context; an image preset was an AttributeError traceback."""
    refused(capsys, cli.main(["plan", "llama2-7b", "--gpus", "8", "--seq", "0"]), "--seq 0")
    refused(capsys, cli.main(["plan", "unet-digits", "--gpus", "1"]), "diffusion", "decoder")


def test_a_tokenizer_file_that_is_not_one_is_named(corpus_dir, tmp_path, capsys):
    """`data.tokenizer` set to a text file was blamed on the recipe: `a file read for CONFIG r.yaml could not be
    parsed (expected value at line 1 column 1)`."""
    notes = _user_file(tmp_path / "notes.txt")
    recipe = tiny_config(corpus_dir, tmp_path / "run", data={"tokenizer": str(notes)})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    refused(capsys, cli_train.main([str(tmp_path / "r.yaml")]), f"{notes}: not a readable tokenizer file")


def test_a_file_that_is_not_utf8_is_named_not_another_argument(tmp_path, capsys):
    """A non-UTF-8 `--seeds` file was blamed on `PATH … --out …`, an arena spec on `--out`."""
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"\xff\xfe caf\xe9\n")
    refused(capsys, cli.main(["selfchat", str(tmp_path / "no-model"), "--seeds", str(latin), "--turns", "1",
                              "--out", str(tmp_path / "d.jsonl")]), f"--seeds {latin}: not UTF-8")
    refused(capsys, cli.main(["arena", str(latin), "--out", str(tmp_path / "arena")]), f"{latin}", "not UTF-8")


def test_a_refusal_about_one_flags_path_is_not_blamed_on_another(tmp_path, capsys):
    """`--tasks nope` was refused `… (while reading or writing --out x.jsonl)`, pointing at the wrong argument."""
    line = refused(capsys, cli.main(["critique-data", "--tasks", str(tmp_path / "nope"), "--out",
                                     str(tmp_path / "x.jsonl")]), str(tmp_path / "nope"))
    assert "x.jsonl" not in line


def test_a_missing_model_path_says_it_does_not_exist(tmp_path, capsys):
    """A path that does not exist was called `not a directory`; `info` with a mistyped preset did not say
    that presets are accepted."""
    refused(capsys, cli.main(["generate", str(tmp_path / "nope")]), "no such file or folder")
    refused(capsys, cli.main(["info", "llama-tinyy"]), "llama-tinyy", "preset", "llama-tiny,")


def test_a_folder_or_an_empty_file_given_as_a_file_is_called_so(tmp_path, capsys):
    """`--text-file DIR` and `--gist DIR` were refused as `no such file`; an empty `--text-file` as `the text is
    empty`, naming no flag."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for name, words in (("adir", "a folder"), ("empty.txt", "empty")):
        refused(capsys, cli.main(["perplexity", str(tmp_path / "no-model"), "--text-file", str(tmp_path / name)]),
                f"--text-file {tmp_path / name}: ", words)
    refused(capsys, cli.main(["generate", str(_gist_model(tmp_path)), "--gist", str(tmp_path / "adir")]),
            f"--gist {tmp_path / 'adir'}: a folder")


def test_convert_to_gguf_creates_missing_folders_as_a_folder_export_does(tmp_path, capsys):
    """`convert SRC new/dir/x.gguf --to gguf` failed `No such file or directory`; `--to hf` creates them."""
    out = tmp_path / "new" / "dir" / "x.gguf"
    assert cli.main(["convert", str(_gist_model(tmp_path)), str(out), "--to", "gguf"]) == 0, capsys.readouterr().err
    assert genmodels.load(out).config.vocab_size > 0


def test_a_file_in_the_way_of_a_gguf_output_is_called_a_file(tmp_path, capsys):
    """`convert run notes.txt/x.gguf --to gguf` said `notes.txt: File exists`."""
    notes = _user_file(tmp_path / "notes.txt")
    refused(capsys, cli.main(["convert", str(_gist_model(tmp_path)), str(notes / "x.gguf"), "--to", "gguf"]),
            f"{notes} is a file, not a folder")
    assert notes.read_bytes() == USER


def test_a_model_of_the_wrong_kind_is_refused_naming_its_path(tmp_path, capsys):
    """`convert GAN x.gguf --to gguf` and `tokenize-image GAN …` said `this model is family='gan'` / `got a model of
    family 'gan'`, naming no path."""
    gan = tmp_path / "gan"
    genmodels.save(genmodels.build_model(genmodels.preset("dcgan-digits", g_width=8, d_width=8, z_dim=4)), gan)
    refused(capsys, cli.main(["convert", str(gan), str(tmp_path / "x.gguf"), "--to", "gguf"]), f"SRC {gan}", "gan")
    refused(capsys, cli.main(["tokenize-image", str(gan), str(tmp_path / "x.png")]), str(gan), "gan")
    refused(capsys, cli.main(["serve", str(gan), "--port", "0"]), str(gan), "gan")
    assert not (tmp_path / "x.gguf").exists()


def test_critique_refuses_an_empty_question_before_reading_the_model(tmp_path, capsys):
    status = cli.main(["critique", str(tmp_path / "nope"), "--question", "  ", "--answer", "a"])
    refused(capsys, status, "--question")
