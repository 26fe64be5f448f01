"""`genmodels train` on `data.kind: examples` (tests/fixtures/examples/sft.jsonl: the three record forms),
end to end through the CLI: two steps, a resume that continues bit for bit, and a bad record refused as
`error: <file>, line N: …` with exit status 2."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from genmodels.cli import main
from genmodels.data import save_tokenizer, train_bpe_tokenizer
from tests.training.conftest import losses

FIXTURE = Path(__file__).parent.parent / "fixtures" / "examples" / "sft.jsonl"


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def recipe(tmp_path: Path, examples: Path, run: Path, template: str | None = None) -> Path:
    tok_dir = tmp_path / "tok"
    if not tok_dir.exists():
        text = FIXTURE.read_text().replace("\\n", "\n")
        special = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
        save_tokenizer(train_bpe_tokenizer([text] * 4, 300, special_tokens=special), tok_dir)
        if template is not None:  # the model's own template, kept beside its tokenizer
            (tok_dir / "chat_template.jinja").write_text(template)
    cfg = {"model": {"preset": "llama-tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64},
           "data": {"kind": "examples", "path": str(examples), "tokenizer": str(tok_dir), "seq_len": 48,
                    "val_fraction": 0.2},
           "train": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "eval_every": 2, "ckpt_every": 2,
                     "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1},
           "sample": {"prompts": []},  # (no samples: the native decode step would be compiled for them)
           "run_dir": str(run)}
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_genmodels_train_on_examples_and_resume_bit_for_bit(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", str(recipe(tmp_path, FIXTURE, whole)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "24 examples from" in out and "the plain chat template" in out
    assert main(["train", str(recipe(tmp_path, FIXTURE, part)), "--no-progress", "--set", "train.max_steps=2"]) == 0
    assert main(["train", str(recipe(tmp_path, FIXTURE, part)), "--no-progress", "--resume"]) == 0
    assert sorted(losses(whole)) == [1, 2, 3, 4]
    assert losses(part) == losses(whole) and losses(part, "val_loss") == losses(whole, "val_loss")
    assert yaml.safe_load((whole / "config.yaml").read_text())["data"]["kind"] == "examples"
    assert (whole / "final" / "model.safetensors").is_file()


def test_a_bad_record_stops_the_cli_in_one_line_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = FIXTURE.read_text().splitlines()
    lines[6] = json.dumps({"prompt": "Q: ?", "response": "", "id": 7})
    bad.write_text("\n".join(lines) + "\n")
    assert main(["train", str(recipe(tmp_path, bad, tmp_path / "run")), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {bad}, line 7: keys ['id', 'prompt', 'response']: unknown ['id']"), err


def test_a_run_on_the_tokenizers_template_keeps_it_for_resume_and_chat(tmp_path, capsys):
    from genmodels import load
    run = tmp_path / "run"
    assert main(["train", str(recipe(tmp_path, FIXTURE, run, CHATML)), "--no-progress", "--set", "train.max_steps=2"]) == 0
    assert "its own chat template" in capsys.readouterr().out
    assert (run / "chat_template.jinja").read_text() == CHATML  # beside RUN/tokenizer.json: what a resume reads
    assert load(run / "final").chat_template == CHATML  # genmodels chat renders as the run trained
    (tmp_path / "tok" / "chat_template.jinja").unlink()  # a resume reads the run folder's own copy
    assert main(["train", str(recipe(tmp_path, FIXTURE, run)), "--no-progress", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "its own chat template" in out
    assert sorted(losses(run)) == [1, 2, 3, 4]
