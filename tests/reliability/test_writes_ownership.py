"""Issue #19, W-1 and B-12: a model write replaces a file only when its content says it is a model file of
a format genmodels writes, and replaces another family's or architecture's model only with
``overwrite=True`` (``genmodels convert --overwrite``). Code: ``folders.atomic_dir_write``, genmodels/ownership.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.cli import main
from tests.helpers.tiny import tiny_model

USER_CONFIG = '{"my_app": "settings", "api_key": "xyz"}\n'


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    unet = genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4))
    mixtral = genmodels.build_model(genmodels.preset("mixtral-tiny", n_layers=1, d_model=32, n_heads=2,
                                                     vocab_size=64, n_experts=2, expert_d_ff=32))
    return {"unet": unet, "mixtral": mixtral, "llama": tiny_model("llama", n_layers=1), "gpt2": tiny_model("gpt2")}


def _writers(models):
    """Every model writer, each with a model it can write."""
    return [lambda p, **k: genmodels.save(models["gpt2"], p, **k),
            lambda p, **k: genmodels.export_hf(models["gpt2"], p, **k),
            lambda p, **k: genmodels.export_diffusers(models["unet"], p, **k)]


def _tokenizer():
    from tokenizers import Tokenizer, models
    return Tokenizer(models.BPE())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, content", [
    ("config.json", USER_CONFIG),
    ("tokenizer.json", '{"my": "vocabulary"}'),
    ("modules.json", '{"modules": "of my app"}'),
    ("scheduler_config.json", '{"cron": "0 3 * * *"}'),
])
def test_a_lone_user_file_with_a_model_file_name_is_never_replaced(tmp_path, models, name, content):
    """W-1: the user's own file is refused in one line naming it, by every writer, even with overwrite."""
    for i, write in enumerate(_writers(models)):
        out = tmp_path / f"f{i}"
        out.mkdir()
        (out / name).write_text(content)
        for overwrite in (False, True):
            with pytest.raises(FileExistsError) as e:
                write(out, overwrite=overwrite)
            msg = str(e.value)
            assert "\n" not in msg and str(out) in msg and name in msg
        assert _snapshot(out) == {name: content.encode()}


def test_cli_convert_refuses_a_users_config_json(tmp_path, models, capsys):
    src, dst = tmp_path / "gm_unet", tmp_path / "u2"
    genmodels.save(models["unet"], src)
    dst.mkdir()
    (dst / "config.json").write_text(USER_CONFIG)
    assert main(["convert", str(src), str(dst), "--to", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "config.json" in err and "not a model config" in err
    assert (dst / "config.json").read_text() == USER_CONFIG and len(list(dst.iterdir())) == 1


def test_another_models_folder_is_replaced_only_with_overwrite(tmp_path, models, capsys):
    """B-12: a Mixtral folder (with its tokenizer) is not replaced by a UNet, nor by a Llama, without
    --overwrite; with it, it is (and its stale tokenizer goes)."""
    src, dst = tmp_path / "gm_unet", tmp_path / "u3"
    genmodels.save(models["unet"], src)
    genmodels.export_hf(models["mixtral"], dst, tokenizer=_tokenizer())
    before = _snapshot(dst)
    assert main(["convert", str(src), str(dst), "--to", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MixtralForCausalLM" in err and "--overwrite" in err and str(dst) in err
    for write in (lambda: genmodels.export_diffusers(models["unet"], dst),
                  lambda: genmodels.save(models["unet"], dst),
                  lambda: genmodels.export_hf(models["llama"], dst)):  # same family, another architecture
        with pytest.raises(FileExistsError, match="another model"):
            write()
    assert _snapshot(dst) == before
    assert main(["convert", str(src), str(dst), "--to", "diffusers", "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                      "scheduler_config.json"]


def test_model_files_without_a_config_are_replaced_only_with_overwrite(tmp_path, models):
    """A lone (real) tokenizer.json says no model: it is another model's file until --overwrite says so."""
    out = tmp_path / "t"
    out.mkdir()
    _tokenizer().save(str(out / "tokenizer.json"))
    with pytest.raises(FileExistsError, match="without a config.json"):
        genmodels.save(models["gpt2"], out)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json"]
    genmodels.save(models["gpt2"], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_same_model_is_resaved_and_converted_in_place(tmp_path, models):
    """The same kind needs no flag: re-saves, a diffusers folder converted in place to genmodels and back,
    a Hugging Face Llama folder converted in place to genmodels."""
    d = tmp_path / "d"
    genmodels.export_diffusers(models["unet"], d)
    genmodels.save(genmodels.load(d), d)
    assert json.loads((d / "config.json").read_text())["format"] == "genmodels"
    genmodels.export_diffusers(genmodels.load(d), d)
    assert "_class_name" in json.loads((d / "config.json").read_text())
    h = tmp_path / "h"
    genmodels.export_hf(models["llama"], h)
    genmodels.save(genmodels.load(h), h)
    genmodels.save(models["llama"], h)
    genmodels.export_hf(models["mixtral"], tmp_path / "mx")
    genmodels.export_hf(genmodels.load(tmp_path / "mx"), tmp_path / "mx")


def test_a_corrupt_weights_file_with_our_name_is_not_ours(tmp_path, models):
    out = tmp_path / "w"
    genmodels.save(models["gpt2"], out)
    (out / "model.safetensors").write_bytes(b"my own data")
    with pytest.raises(FileExistsError, match=r"model.safetensors \[not a safetensors file\]"):
        genmodels.save(models["gpt2"], out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == b"my own data"


def test_a_write_killed_between_weights_and_config_is_finished_by_the_next(tmp_path, models):
    """Weights move in before config.json; a write killed between the two leaves them and its staging
    folder, which says they are ours: the next write replaces them without --overwrite."""
    out = tmp_path / "k"
    genmodels.export_diffusers(models["unet"], tmp_path / "done")
    out.mkdir()
    (out / ".genmodels-partial-x1").mkdir()
    (out / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "done" / "diffusion_pytorch_model.safetensors").read_bytes())
    genmodels.export_diffusers(models["unet"], out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                      "scheduler_config.json"]
