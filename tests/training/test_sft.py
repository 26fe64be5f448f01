"""`train.objective: sft` and LoRA runs (issue #22 d2, d3's training half, d5): the loss reads assistant turns
only; per-token normalisation (4 accumulated micro-batches = one batch 4 times as large, to 1e-6 of the
gradients); a LoRA run's checkpoints hold adapters only and resume bit for bit, its final/ is PEFT's files that
genmodels.load reads back over the base; bad records are refused naming file and line; and, end to end through
the CLI, a 2-step SFT + LoRA run on the task set is scored by `genmodels eval-tasks`."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import genmodels
from genmodels.data import save_tokenizer, train_bpe_tokenizer
from genmodels.data.examples import ExampleError
from genmodels.data.examples_kind import ExamplesDataConfig, prepare_example_run
from genmodels.objectives import build_objective
from genmodels.training import RunConfig, train
from genmodels.training.distributed import DistInfo
from genmodels.training.trainer import build_train_step
from tests.training.conftest import losses

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64}


def conversations(n: int = 24) -> list[dict]:
    """Conversations whose replies differ in length (so micro-batches hold different numbers of labelled tokens)."""
    out = []
    for i in range(n):
        turns = [{"role": "user", "content": f"What is {i} plus {i + 1}?"},
                 {"role": "assistant", "content": f"It is {2 * i + 1}." + " Indeed" * (i % 5)}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Answer briefly."}] + turns + [
                {"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "You are welcome."}]
        out.append({"messages": turns})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama saved with a 300-id BPE trained on the conversations (the LoRA runs' model.init_from)."""
    root = tmp_path_factory.mktemp("sft")
    text = "\n".join(json.dumps(c) for c in conversations()) + " User: Assistant:"
    tok = train_bpe_tokenizer([text] * 4, 300)
    torch.manual_seed(123)  # (not train.seed: a base the run's own fresh initialisation could not stand for)
    model = genmodels.build_model(genmodels.preset("llama-tiny", **TINY, vocab_size=tok.get_vocab_size(),
                                                   max_seq_len=128))
    return genmodels.save(model, root / "base", tok)


@pytest.fixture(scope="module")
def examples(base, tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", conversations())


def data_section(examples: Path, base: Path, **over) -> dict:
    return {"kind": "examples", "path": str(examples), "tokenizer": str(base), "seq_len": 128, "val_fraction": 0.2,
            **over}


def prepared(examples: Path, base: Path, **over):
    return prepare_example_run(ExamplesDataConfig.from_dict(data_section(examples, base, **over), "data"),
                               say=lambda s: None)


def sft_on(base: Path):
    model = genmodels.load(base).train()
    return build_objective("sft", model, loss_chunk=16), model


# ---- the loss reads assistant turns only ------------------------------------------------------------
def test_the_loss_reads_no_prediction_at_a_prompt_position(examples, base, tmp_path):
    data = prepared(examples, base)
    batch = data.train.batch([0, 1, 2, 3])
    objective, model = sft_on(base)
    kept = []
    hidden_states = model.hidden_states

    def spy(*args, **kwargs):  # the hidden states the loss reads, kept with their gradient
        h = hidden_states(*args, **kwargs)
        h.retain_grad()
        kept.append(h)
        return h

    model.hidden_states = spy
    loss, _ = objective(batch)
    loss.backward()
    grad, labelled = kept[0].grad, batch["labels"] != -100  # (B, T, D), (B, T)
    assert labelled.any() and (~labelled & (batch["segment_ids"] > 0)).any()
    assert grad[~labelled].abs().max() == 0  # no prediction at a prompt (or padding) position enters the loss
    assert (grad[labelled].abs().sum(-1) > 0).all()
    # what is labelled is the assistant replies' text, nothing of the user's, system's or template's
    tok = data.tokenizer
    text = tok.decode(batch["labels"][labelled].tolist())
    assert "It is" in text and "plus" not in text and "User" not in text and "Answer briefly" not in text
    # changing a prompt token changes the inputs, never the labels
    changed = [dict(c, messages=[dict(m, content=m["content"].replace("plus", "minus")) if m["role"] == "user" else m
                                 for m in c["messages"]]) for c in conversations()]
    other = prepared(write_jsonl(tmp_path / "changed.jsonl", changed), base)
    assert labelled_tokens(other) == labelled_tokens(data)
    assert inputs(other) != inputs(data)


def _segments(split, key: str) -> list[tuple[int, ...]]:
    """``key``'s tokens of every example of ``split`` (labels: the labelled ones only), sorted."""
    b = split.batch(list(range(len(split))))
    out = []
    for row, seg in zip(b[key], b["segment_ids"]):
        for k in range(1, int(seg.max()) + 1):
            t = row[seg == k]
            out.append(tuple(t[t != -100].tolist()))
    return sorted(out)


def labelled_tokens(data) -> list[tuple[int, ...]]:
    return _segments(data.train, "labels")


def inputs(data) -> list[tuple[int, ...]]:
    return _segments(data.train, "input_ids")


# ---- per-token normalisation ----------------------------------------------------------------------------
def _grads(step, batches) -> tuple[float, dict[str, torch.Tensor]]:
    phase = step.phases[0]
    loss, _ = step._accumulate(phase, batches)
    out = {n: p.grad.clone() for n, p in phase.module.named_parameters() if p.grad is not None}
    phase.optimizer.zero_grad(set_to_none=True)
    return float(loss), out


def test_four_accumulated_micro_batches_equal_one_big_batch(examples, base):
    data = prepared(examples, base)
    objective, _ = sft_on(base)
    tc = SimpleNamespace(lr=1e-3, grad_clip=None, compile=False, weight_decay=0.0, betas=[0.9, 0.95], eps=1e-8,
                         distributed="none")
    step, _ = build_train_step(objective, tc, DistInfo())
    rows = list(range(8))
    micro = [data.train.batch(rows[i:i + 2]) for i in range(0, 8, 2)]
    counts = [int((b["labels"] != -100).sum()) for b in micro]
    assert len(set(counts)) > 1, counts  # otherwise a mean of means would pass too
    loss4, g4 = _grads(step, micro)
    loss1, g1 = _grads(step, [data.train.batch(rows)])
    assert abs(loss4 - loss1) < 1e-6
    assert g4.keys() == g1.keys() and len(g1) > 0
    worst = max(float((g4[k] - g1[k]).abs().max()) for k in g1)
    assert worst < 1e-6, worst


# ---- LoRA runs ----------------------------------------------------------------------------------------
def lora_recipe(examples: Path, base: Path, run: Path, **train_over) -> dict:
    return {"model": {"init_from": str(base)},
            "data": {"kind": "examples", "path": str(examples), "seq_len": 128, "val_fraction": 0.2},
            "train": {"objective": "sft", "batch_size": 4, "grad_accum": 2, "max_steps": 4, "warmup_steps": 1,
                      "lr": 1e-2, "eval_every": 2, "ckpt_every": 2, "eval_batches": 1, "threads": 1,
                      "mfu_peak_tflops": 0.1, "lora": {"targets": "q,v", "r": 4, "alpha": 8, "dropout": 0.1},
                      **train_over},
            "sample": {"prompts": []}, "run_dir": str(run)}


def test_a_lora_run_checkpoints_adapters_only_resumes_bit_for_bit_and_loads_back(examples, base, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(RunConfig.from_dict(lora_recipe(examples, base, whole)), progress=False, log=lambda s: None)
    # checkpoints: the adapters (and their optimizer state), not the base
    ckpt = whole / "checkpoints" / "step-000002"
    held = load_file(ckpt / "model.safetensors")
    assert held and all(".lora_A." in k or ".lora_B." in k for k in held), sorted(held)[:3]
    assert sorted({k.split(".lora_")[0] for k in held}) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    base_bytes = (base / "model.safetensors").stat().st_size
    assert (ckpt / "model.safetensors").stat().st_size < base_bytes / 10
    assert json.loads((ckpt / "state.json").read_text())["lora_base"]
    # 2 steps, then --resume to 4: the same losses and the same adapter, bit for bit
    train(RunConfig.from_dict(lora_recipe(examples, base, part, max_steps=2)), progress=False, log=lambda s: None)
    train(RunConfig.from_dict(lora_recipe(examples, base, part)), resume=True, progress=False, log=lambda s: None)
    assert sorted(losses(whole)) == [1, 2, 3, 4] and losses(part) == losses(whole)
    assert losses(part, "val_loss") == losses(whole, "val_loss")
    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and t.abs().max() > 0 for k, t in a.items())  # it trained
    # final/: PEFT's files over the named base; genmodels.load reads base + adapter (= the two-step load)
    cfg = json.loads((whole / "final" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and Path(cfg["base_model_name_or_path"]) == base.resolve()
    loaded = genmodels.load(whole / "final")
    two_step = genmodels.lora.load(genmodels.load(base), whole / "final")
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), two_step(ids))
        genmodels.lora.merge(two_step)
        assert not torch.allclose(loaded(ids), genmodels.load(base)(ids))  # the adapter changes the outputs


def test_a_lora_runs_final_keeps_the_template_it_was_trained_with(examples, base, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    run = tmp_path / "run"
    cfg = lora_recipe(examples, base, run, max_steps=1)
    cfg["data"]["chat_template"] = str(template)
    train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert genmodels.load(base).chat_template is None
    assert genmodels.load(run / "final").chat_template == template.read_text()  # (not the base's)


def test_a_lora_resume_on_another_base_is_refused(examples, base, tmp_path):
    run = tmp_path / "run"
    train(RunConfig.from_dict(lora_recipe(examples, base, run, max_steps=2)), progress=False, log=lambda s: None)
    other = tmp_path / "other-base"
    model = genmodels.load(base)
    with torch.no_grad():
        model.blocks[0].mlp.down.weight.add_(1e-3)
    genmodels.save(model, other, model.tokenizer)
    cfg = lora_recipe(examples, base, run)
    cfg["model"]["init_from"] = str(other)
    with pytest.raises(Exception, match="is not the base .* trained its adapters on"):
        train(RunConfig.from_dict(cfg), resume=True, progress=False, log=lambda s: None)


def test_train_lora_needs_model_init_from(examples, base, tmp_path):
    cfg = lora_recipe(examples, base, tmp_path / "run")
    cfg["model"] = {"preset": "llama-tiny", **TINY}
    cfg["data"]["tokenizer"] = str(base)
    with pytest.raises(genmodels.config.ConfigError, match="^train.lora needs model.init_from"):
        RunConfig.from_dict(cfg)


# ---- bad records: one line naming the file and line ---------------------------------------------------
@pytest.mark.parametrize("bad, why", [
    ('{"messages": [{"role": "user", "content": "Hi"}, ', "invalid JSON"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
     r"messages\[1\].content is empty"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "It is. " * 90}]},
     r"the example is \d+ tokens, over data.seq_len \+ 1 = 129"),
])
def test_a_bad_record_is_refused_naming_file_and_line(bad, why, examples, base, tmp_path):
    records = [json.dumps(c) for c in conversations()]
    records[4] = bad if isinstance(bad, str) else json.dumps(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ExampleError, match=f"^{path}, line 5: {why}"):
        train(RunConfig.from_dict(lora_recipe(path, base, tmp_path / "run")), progress=False, log=lambda s: None)


def test_truncate_true_cuts_an_example_over_the_context(examples, base, tmp_path):
    records = conversations()
    records[4] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "It is. " * 90}]}
    path = write_jsonl(tmp_path / "long.jsonl", records)
    cfg = lora_recipe(path, base, tmp_path / "run", max_steps=1)
    cfg["train"]["objective"] = {"name": "sft", "truncate": True}
    said = []
    train(RunConfig.from_dict(cfg), progress=False, log=said.append)
    assert any("cut to fit" in s and "line 5" in s for s in said), said


# ---- end to end: genmodels train (SFT + LoRA, 2 steps) then genmodels eval-tasks on final/ --------------
def test_cli_sft_lora_run_then_eval_tasks(tmp_path, capsys, monkeypatch):
    from genmodels.cli import main
    monkeypatch.setenv("GENMODELS_NATIVE", "0")  # (an unmerged adapter decodes on the PyTorch path: no kernel build)
    tasks = tmp_path / "tasks"
    assert main(["tasks", "--out", str(tasks), "--per-task", "10"]) == 0
    train_file = tasks / "seen-train.messages.jsonl"
    text = train_file.read_text()
    tok = train_bpe_tokenizer([text] * 2, 400)
    torch.manual_seed(123)  # (not train.seed: a base the run's own fresh initialisation could not stand for)
    model = genmodels.build_model(genmodels.preset("llama-tiny", **TINY, vocab_size=tok.get_vocab_size(),
                                                   max_seq_len=128))
    base = genmodels.save(model, tmp_path / "base", tok)
    run = tmp_path / "run"
    cfg = {"model": {"init_from": str(base)},
           "data": {"kind": "examples", "path": str(train_file), "seq_len": 128, "val_fraction": 0.1},
           "train": {"objective": "sft", "batch_size": 2, "max_steps": 2, "warmup_steps": 1, "eval_every": 2,
                     "ckpt_every": 2, "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1,
                     "lora": {"targets": "q,v", "r": 4, "alpha": 8}},
           "sample": {"prompts": []}, "run_dir": str(run)}
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps(cfg))  # (JSON is YAML)
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert "lora: " in capsys.readouterr().out
    assert sorted(p.name for p in (run / "final").iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                                 "tokenizer.json"]
    assert main(["eval-tasks", str(run), "--split", "unseen", "--limit", "1", "--tasks", str(tasks),
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out


# ---- data parallelism: 2 gloo processes compute what one does ------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_equal_one_for_an_sft_lora_run(kind, examples, base, tmp_path):
    from tests.training.test_distributed import torchrun
    over = {"batch_size": 8, "max_steps": 3, "eval_every": 3, "ckpt_every": 3,
            "lora": {"targets": "q,v", "r": 4, "alpha": 8}}  # (no dropout: each process draws its own)
    alone = tmp_path / "alone"
    train(RunConfig.from_dict(lora_recipe(examples, base, alone, **over)), progress=False, log=lambda s: None)
    two = tmp_path / kind
    out = torchrun(lora_recipe(examples, base, two, **over, distributed=kind), tmp_path)
    assert f"2 process(es) [{kind}]" in out.stdout
    a, b = losses(alone), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5, (a, b)
    x, y = (load_file(r / "final" / "adapter_model.safetensors") for r in (alone, two))
    assert max(float((x[k] - y[k]).abs().max()) for k in x) < 1e-5
