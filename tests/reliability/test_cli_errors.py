"""The command line turns every expected failure into ONE ``error: <message>`` line on stderr that
names the file or argument, exit status 2; Ctrl-C is 130; a bug keeps its traceback (issue #8, item 8).

Broken inputs are built in tmp_path; failures no file can provoke here (a full disk, an allocator
failure, a library's raw exception) are raised by a monkeypatched API call, as the library would."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import genmodels
from genmodels import cli, cli_train
from genmodels.training.steps import NonFiniteError

from .conftest import tiny_config


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (with a BPE tokenizer) and a tiny BERT encoder, saved as genmodels folders."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def foo(x):\n    return x + 1\n"] * 10,
                            trainers.BpeTrainer(vocab_size=270, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    root = tmp_path_factory.mktemp("cli")
    small = dict(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64)
    genmodels.save(genmodels.build_model(genmodels.preset("llama-tiny", n_kv_heads=1, **small)), root / "llama",
                   tokenizer=tok)
    genmodels.save(genmodels.build_model(genmodels.preset("bert-tiny", mlm_head=False, **small)), root / "bert",
                   tokenizer=tok)
    return {"llama": root / "llama", "bert": root / "bert"}


def broken_copy(src: Path, dst: Path, name: str, content: bytes | None) -> Path:
    """``src`` copied to ``dst`` with file ``name`` replaced by ``content`` (a folder when None)."""
    shutil.copytree(src, dst)
    (dst / name).unlink(missing_ok=True)
    if content is None:
        (dst / name).mkdir()
    else:
        (dst / name).write_bytes(content)
    return dst


def one_error_line(err: str) -> str:
    """The single ``error:`` line that ends ``err``; any other line must be a ``genmodels:`` progress
    note (e.g. the first-use compile of the native kernels), never a traceback."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and err.endswith("\n"), err
    assert all(line.startswith("genmodels: ") for line in lines[:-1]), err
    return lines[-1]


def refused(capsys, status: int, *names: str) -> str:
    """Assert status 2 and exactly one ``error:`` line on stderr naming each of ``names``; return it."""
    err = capsys.readouterr().err
    assert status == 2, err
    line = one_error_line(err)
    for name in names:
        assert name in line, (name, err)
    return line


# ---- files: missing, wrong kind, garbage -------------------------------------------------------
def test_a_missing_model_folder_is_one_line_naming_it(tmp_path, capsys):
    refused(capsys, cli.main(["info", str(tmp_path / "nope")]), str(tmp_path / "nope"))


def test_a_file_given_as_the_model_folder_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    refused(capsys, cli.main(["generate", str(tmp_path / "f"), "--prompt", "x"]), str(tmp_path / "f"))


def test_a_garbage_config_json_names_the_file(folders, tmp_path, capsys):
    d = broken_copy(folders["llama"], tmp_path / "m", "config.json", b"{garbage")
    refused(capsys, cli.main(["info", str(d)]), str(d / "config.json"))


def test_a_truncated_model_safetensors_names_the_file(folders, tmp_path, capsys):
    data = (folders["llama"] / "model.safetensors").read_bytes()
    d = broken_copy(folders["llama"], tmp_path / "m", "model.safetensors", data[:len(data) // 2])
    refused(capsys, cli.main(["convert", str(d), str(tmp_path / "out"), "--to", "hf"]), str(d / "model.safetensors"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_folder_in_place_of_model_safetensors_is_one_line(folders, tmp_path, capsys):
    d = broken_copy(folders["llama"], tmp_path / "m", "model.safetensors", None)
    line = refused(capsys, cli.main(["info", str(d)]), str(d / "model.safetensors"))
    assert "not a file" in line  # not "missing": it is there, as a folder


def test_a_folder_given_as_the_recipe_says_so(tmp_path, capsys):
    line = refused(capsys, cli_train.main([str(tmp_path)]), str(tmp_path))
    assert "is a folder" in line


def test_a_text_that_encodes_to_no_tokens_is_named(folders):
    import genmodels
    from genmodels.io import load_tokenizer
    bpe = load_tokenizer(folders["llama"])  # adds no special tokens: a blank text encodes to nothing
    bert = genmodels.load(folders["bert"])
    with pytest.raises(ValueError, match=r"texts\[1\] \(''\) encodes to no tokens"):
        genmodels.embed(bert, ["def foo", "   "], tokenizer=bpe)


def test_a_garbage_tokenizer_json_names_the_file(folders, tmp_path, capsys):
    d = broken_copy(folders["llama"], tmp_path / "m", "tokenizer.json", b"{garbage")
    refused(capsys, cli.main(["generate", str(d), "--prompt", "x"]), str(d / "tokenizer.json"))


def test_generate_on_an_encoder_is_refused_before_printing_anything(folders, capsys):
    status = cli.main(["generate", str(folders["bert"]), "--prompt", "def"])
    assert capsys.readouterr().out == ""
    assert status == 2


# ---- a library's raw exception, which names no file: the CLI names the argument ----------------
def test_a_raw_json_error_names_the_broken_file(folders, tmp_path, monkeypatch, capsys):
    d = broken_copy(folders["llama"], tmp_path / "m", "tokenizer_config.json", b'{"a": ')
    monkeypatch.setattr(genmodels, "load", lambda p: json.loads((Path(p) / "tokenizer_config.json").read_text()))
    refused(capsys, cli.main(["info", str(d)]), str(d / "tokenizer_config.json"), "not valid JSON")


def test_a_raw_safetensors_error_names_the_command_argument(folders, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file
    d = broken_copy(folders["llama"], tmp_path / "m", "model.safetensors", b"\x10\0\0\0\0\0\0\0{")
    monkeypatch.setattr(genmodels, "load", lambda p: load_file(str(Path(p) / "model.safetensors")))
    refused(capsys, cli.main(["convert", str(d), str(tmp_path / "o"), "--to", "hf"]), f"SRC {d}", "safetensors")


def test_a_raw_tokenizers_exception_names_the_command_argument(folders, tmp_path, monkeypatch, capsys):
    d = broken_copy(folders["llama"], tmp_path / "m", "tokenizer.json", b"{garbage")
    monkeypatch.setattr(genmodels, "load", lambda p: Tokenizer.from_file(str(Path(p) / "tokenizer.json")))
    refused(capsys, cli.main(["generate", str(d), "--prompt", "x"]), f"PATH {d}")


def test_a_raw_yaml_error_names_the_recipe(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.yaml").write_text("model: [unclosed\n")
    monkeypatch.setattr("genmodels.training.load_config",
                        lambda path, overrides: yaml.safe_load(Path(path).read_text()))
    refused(capsys, cli_train.main([str(tmp_path / "r.yaml")]), f"CONFIG {tmp_path / 'r.yaml'}", "YAML")


# ---- the training recipe and run folder ---------------------------------------------------------
def test_a_recipe_with_a_yaml_syntax_error_names_the_file(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("model:\n  preset: [llama-tiny\n")
    refused(capsys, cli.main(["train", str(tmp_path / "r.yaml")]), str(tmp_path / "r.yaml"))


def test_a_recipe_that_is_not_utf8_names_the_argument(tmp_path, capsys):
    (tmp_path / "r.yaml").write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, cli_train.main([str(tmp_path / "r.yaml")]), str(tmp_path / "r.yaml"))


def test_a_run_dir_that_is_a_file_is_one_line_from_both_entry_points(corpus_dir, tmp_path, capsys):
    (tmp_path / "run").write_text("mine")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    a = refused(capsys, cli.main(["train", str(tmp_path / "r.yaml"), "--no-progress"]), str(tmp_path / "run"))
    b = refused(capsys, cli_train.main([str(tmp_path / "r.yaml"), "--no-progress"]))
    assert a == b and (tmp_path / "run").read_text() == "mine"


def test_an_unknown_recipe_key_is_one_line_naming_it(corpus_dir, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run", train={"lrr": 1})))
    refused(capsys, cli_train.main([str(tmp_path / "r.yaml")]), "lrr")


def test_a_diverged_run_is_one_line(tmp_path, monkeypatch, capsys):
    def diverge(cfg, **kw):
        raise NonFiniteError("step 7: the loss is nan; nothing was saved (lower train.lr)")
    monkeypatch.setattr("genmodels.training.load_config", lambda path, overrides: None)
    monkeypatch.setattr("genmodels.training.train", diverge)
    refused(capsys, cli.main(["train", str(tmp_path / "r.yaml")]), "train.lr")


# ---- writing: refused targets, permissions, a full disk -----------------------------------------
def test_an_existing_file_as_the_save_target_is_refused_and_kept(folders, tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    refused(capsys, cli.main(["convert", str(folders["llama"]), str(tmp_path / "out"), "--to", "genmodels"]),
            str(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "mine"


def test_an_unwritable_output_folder_is_one_line_naming_it(folders, capsys):
    """/sys refuses new entries even to root (tests may run as root, where chmod does not)."""
    refused(capsys, cli.main(["convert", str(folders["llama"]), "/sys/genmodels-test/out", "--to", "hf"]),
            "/sys/genmodels-test")


def test_a_full_disk_names_the_output_argument(folders, tmp_path, monkeypatch, capsys):
    def full(model, path, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(genmodels, "save", full)
    refused(capsys, cli.main(["convert", str(folders["llama"]), str(tmp_path / "o"), "--to", "genmodels"]),
            f"DST {tmp_path / 'o'}", "No space left")


# ---- the command line itself --------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--temperature", "nan"), ("--top-p", "nan"), ("--temperature", "inf"),
                                          ("--repetition-penalty", "-inf"), ("--top-p", "half")])
def test_non_finite_sampling_options_are_refused_naming_the_option(folders, option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", str(folders["llama"]), f"{option}={value}"])
    refused(capsys, exc.value.code, option, value)


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["convert", "a", "b"])
    refused(capsys, exc.value.code, "--to")


@pytest.mark.parametrize("error", [MemoryError(),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 1099511627776 bytes"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("MPS backend out of memory"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB")])
def test_an_allocator_failure_is_one_line_naming_the_model(folders, error, monkeypatch, capsys):
    def load(path):
        raise error
    monkeypatch.setattr(genmodels, "load", load)
    refused(capsys, cli.main(["info", str(folders["llama"])]), f"PATH {folders['llama']}", "out of memory")


def test_a_closed_stdout_in_process_is_one_line(folders, monkeypatch, capsys):
    class Closed:
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    refused(capsys, cli.main(["info", str(folders["llama"])]), "broken pipe")


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    monkeypatch.setattr(cli_train, "train_command", interrupted)
    try:
        assert cli.main(["info", "x"]) == 130
        assert cli_train.main([str(tmp_path / "r.yaml")]) == 130
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the CLI's handler")
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("d_model"),
                                 RuntimeError("mat1 and mat2 shapes cannot be multiplied"), AttributeError("x")])
def test_a_bug_keeps_its_traceback(bug, monkeypatch):
    def broken(args):
        raise bug
    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(type(bug)):
        cli.main(["info", "x"])
    monkeypatch.setattr(cli_train, "train_command", broken)
    with pytest.raises(type(bug)):
        cli_train.main(["r.yaml"])


# ---- real processes: exit status and a closed pipe ----------------------------------------------
def closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader is already gone (as after `| head -1` exits):
    every write fails with EPIPE, however fast the machine. Without PYTHONUNBUFFERED, so that output
    waits in stdout's buffer and a flush at interpreter exit would fail outside any handler."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "genmodels.cli", *argv], stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(w)


def test_generate_into_a_closed_pipe_is_one_line_and_status_2(folders):
    p = closed_pipe_run(["generate", str(folders["llama"]), "--prompt", "def", "--max-new-tokens", "4"])
    assert p.returncode == 2, p.stderr
    assert "broken pipe" in one_error_line(p.stderr)


def test_embed_into_a_closed_pipe_is_one_line_and_status_2(folders):
    p = closed_pipe_run(["embed", str(folders["bert"]), "one", "two"])
    assert p.returncode == 2, p.stderr
    assert "broken pipe" in one_error_line(p.stderr)


def test_a_broken_model_folder_exits_2_in_a_real_process(folders, tmp_path):
    d = broken_copy(folders["llama"], tmp_path / "m", "config.json", b"{garbage")
    p = subprocess.run([sys.executable, "-m", "genmodels.cli", "info", str(d)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert str(d / "config.json") in one_error_line(p.stderr)


def test_a_bug_shows_its_traceback_in_a_real_process():
    code = ("import sys, genmodels.cli as c\n"
            "def broken(args): return 1 + 'x'\n"
            "c.cmd_info = broken\n"
            "sys.exit(c.main(['info', 'x']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode not in (0, 2) and "Traceback" in p.stderr and "TypeError" in p.stderr, p.stderr


def test_a_warning_on_the_command_line_is_one_line(folders):
    """Generation past the context stops with a warning: on the command line, one `warning:` line."""
    p = subprocess.run([sys.executable, "-m", "genmodels.cli", "generate", str(folders["llama"]), "--prompt", "def",
                        "--max-new-tokens", "100000", "--temperature", "0"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "max_seq_len" in ln or "warn" in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("warning: generate: prompt"), p.stderr
