"""Reward models (issue 23 d2): the Bradley–Terry loss and its metrics against their definitions, the score read
at each reply's last token in the pairs' one forward (= each side alone), 100% accuracy on a separable toy set,
a reward run's final/ read back by genmodels.reward and `genmodels score`."""
from __future__ import annotations

import json
import math

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.data import save_tokenizer, train_bpe_tokenizer
from genmodels.data.pairs import PackedPairs, parse_pair, tokenize_pairs
from genmodels.models.score_head import RewardModel, bradley_terry
from genmodels.objectives import build_objective
from genmodels.objectives.pairwise import last_slots
from genmodels.reward import load_reward, save_reward, score
from genmodels.training import RunConfig, train

WORDS = "apple river stone cloud maple tiger ocean lemon forest candle".split()


def toy_pairs(n: int = 24) -> list[dict]:
    """Separable: the chosen reply ends with '!' and the rejected one with '?' (the words are shared)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        w = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (4,), generator=g)]
        out.append({"prompt": f"say {w[0]} {w[1]}:", "chosen": f" {w[2]} {w[3]}!", "rejected": f" {w[3]} {w[2]}?"})
    return out


@pytest.fixture(scope="module")
def toy():
    pairs = toy_pairs()
    tok = train_bpe_tokenizer([json.dumps(pairs)] * 4, 300)
    records = [parse_pair(json.dumps(p), "toy.jsonl", i + 1) for i, p in enumerate(pairs)]
    data = tokenize_pairs(records, tok, 0)
    packed = PackedPairs(data, range(len(data)), 64, 0)
    return tok, data, packed


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=300, d_model=32, n_layers=1, n_heads=2,
                                                  n_kv_heads=1, d_ff=64, head_dim=16, max_seq_len=64))


def test_bradley_terry_equals_its_definition():
    c, r = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    loss, m = bradley_terry(c, r)
    want = sum(-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(c.tolist(), r.tolist())) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert m["accuracy"].item() == pytest.approx(1 / 3) and m["margin"].item() == pytest.approx(-0.5 / 3)


def test_the_pairs_forward_scores_each_reply_as_it_alone(toy):
    _, data, packed = toy
    objective = build_objective("reward", tiny()).eval()
    batch = packed.batch([0, 1])
    reward = RewardModel(objective.model)
    reward.score = objective.score
    with torch.no_grad():
        h = objective.model.hidden_states(batch["input_ids"], position_ids=batch["position_ids"],
                                          segment_ids=batch["segment_ids"],
                                          allowed=~((batch["branch"][:, :, None] == 2) & (batch["branch"][:, None] == 1)))
        lc, lr = last_slots(batch)
        together = reward.scores(h, lc), reward.scores(h, lr)
        order = [int(packed.pairs[j]) for r in (0, 1) for j in packed.rows[r]]
        for k, i in enumerate(order):
            for side, got in (("chosen", together[0]), ("rejected", together[1])):
                ids = torch.tensor([list(data.prompt(i)) + list(data.reply(i, side))])
                alone = RewardModel(objective.model, pad_token_id=None)
                alone.score = objective.score
                assert abs(float(alone(ids)[0]) - float(got[k])) < 1e-5


def test_a_reward_model_reaches_full_accuracy_on_a_separable_toy_set(toy):
    _, _, packed = toy
    objective = build_objective("reward", tiny())
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    batch = packed.batch(range(len(packed)))
    for _ in range(60):
        opt.zero_grad()
        loss, metrics = objective(batch)
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, metrics = objective(batch)
    assert metrics["accuracy"].item() == 1.0 and metrics["margin"].item() > 0 and loss.item() < 0.3


def test_a_reward_run_writes_a_reward_folder_that_scores(toy, tmp_path, capsys):
    tok, _, _ = toy
    save_tokenizer(tok, tmp_path / "tok")
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in toy_pairs()))
    run = tmp_path / "run"
    cfg = {"model": {"preset": "llama-tiny", "d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1,
                     "d_ff": 64, "head_dim": 16},
           "data": {"kind": "pairs", "path": str(path), "tokenizer": str(tmp_path / "tok"), "seq_len": 64,
                    "val_fraction": 0.25},
           "train": {"objective": "reward", "batch_size": 4, "max_steps": 3, "warmup_steps": 1, "eval_every": 100,
                     "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1},
           "sample": {"prompts": []}, "run_dir": str(run)}
    res = train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert res.steps == 3 and (run / "final" / "score.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("accuracy" in r and "margin" in r for r in rows if "loss" in r)
    model = load_reward(run / "final")
    s = score(model, "say apple river:", " stone cloud!")
    assert main(["score", str(run), "--prompt", "say apple river:", "--response", " stone cloud!",
                 "--response", " cloud stone?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and float(out[0].split("\t")[0]) == pytest.approx(s, abs=1e-6)
    again = tmp_path / "again"  # save_reward / load_reward round trip
    save_reward(model, again)
    assert score(load_reward(again), "say apple river:", " stone cloud!") == s


def test_score_refuses_a_folder_without_a_score_head(tmp_path, capsys):
    genmodels.save(tiny(), tmp_path / "lm")
    assert main(["score", str(tmp_path / "lm"), "--prompt", "a", "--response", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'lm'} is not a reward model: it has no score.safetensors (a genmodels reward "
                   "folder) and its config.json does not name LlamaForSequenceClassification")


def test_score_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope"), "--prompt", "a", "--response", "b"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such folder (a reward model is a folder)"
