"""LoRA with trainable token rows (PEFT 0.21's ``trainable_token_indices``) against PEFT, on a random Llama,
tied and untied embeddings: adapter folders move between PEFT and us by file only, logits agree to 1e-5.

Every tensor is random (the rows too: rows equal to the table's would hide a lookup or a mapping bug)."""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

import genmodels.lora as lora  # noqa: E402
from tests.parity.transformers._hf import hf_model, random_ids, to_ours  # noqa: E402

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-5, rtol=1e-5)
IDS = [3, 17, 40]


def _randomise(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "trainable_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _ids_hitting_rows() -> torch.Tensor:
    ids = random_ids(2, 11)
    ids[0, 2], ids[1, 5], ids[1, 6] = IDS  # every trainable row is read
    return ids


@pytest.mark.parametrize("tied", [False, True])
def test_a_peft_adapter_with_trainable_tokens_applies_to_ours(tied, tmp_path):
    hf = hf_model("llama", seed=0, num_key_value_heads=2, tie_word_embeddings=tied)
    ours = to_ours(hf, tmp_path / "base")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices=IDS,
                          task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, cfg).eval()
    _randomise(pm, seed=3)
    pm.save_pretrained(tmp_path / "adapter")
    ids = _ids_hitting_rows()
    with torch.no_grad():
        base = ours(ids)
        lora.load(ours, tmp_path / "adapter")
        assert ours.embed.trainable_tokens.token_ids == IDS
        theirs = pm(input_ids=ids).logits
        assert (theirs - base).abs().max() > 0.1
        torch.testing.assert_close(ours(ids), theirs, **TOL)
        if tied:  # the rows reach the logits of their own tokens through the tied head
            assert (ours(ids)[..., IDS] - base[..., IDS]).abs().max() > 0.1
        with lora.disabled(ours), pm.disable_adapter():
            torch.testing.assert_close(ours(ids), pm(input_ids=ids).logits, **TOL)
            torch.testing.assert_close(ours(ids), base, **TOL)
        table = ours.embed.weight.clone()
        lora.merge(ours)
        assert not torch.equal(ours.embed.weight, table)  # the rows are in the table now
        assert (ours(ids) - theirs).abs().max() <= 1e-5 * theirs.abs().max()
        lora.unmerge(ours)
        assert torch.equal(ours.embed.weight, table)  # the table's own rows back, exactly (LoRA's: to rounding)
        with lora.disabled(ours):
            torch.testing.assert_close(ours(ids), base, **TOL)


@pytest.mark.parametrize("tied", [False, True])
def test_ours_with_trainable_tokens_loads_in_peft(tied, tmp_path):
    hf = hf_model("llama", seed=1, num_key_value_heads=2, tie_word_embeddings=tied)
    ours = to_ours(hf, tmp_path / "base")
    lora.apply(ours, "all-linear", r=4, alpha=8, trainable_tokens=IDS)
    _randomise(ours, seed=4)
    lora.save(ours, tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert pm.peft_config["default"].trainable_token_indices == IDS
    ids = _ids_hitting_rows()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), pm(input_ids=ids).logits, **TOL)
        lora.merge(ours)  # merged: the rows written into the table, the same function
        torch.testing.assert_close(ours(ids), pm(input_ids=ids).logits, **TOL)


def test_the_rows_start_as_the_table_s_and_only_they_train(tmp_path):
    """The rows start as the embedding's own (a no-op), are the only embedding parameters that train, and an
    optimizer step moves those rows of the table the model reads and no other."""
    hf = hf_model("llama", seed=2, num_key_value_heads=2, tie_word_embeddings=True)
    ours = to_ours(hf, tmp_path / "base")
    ids = _ids_hitting_rows()
    with torch.no_grad():
        before = ours(ids)
    lora.apply(ours, "q,v", r=4, alpha=8, trainable_tokens=IDS)
    with torch.no_grad():
        assert torch.equal(ours(ids), before)
    train = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert "embed.trainable_tokens.weight" in train and "embed.weight" not in train
    assert all("lora_" in n or n == "embed.trainable_tokens.weight" for n in train)
    table = ours.embed.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    ours(ids).logsumexp(-1).mean().backward()
    opt.step()
    assert torch.equal(ours.embed.weight, table)  # the frozen table itself never moves
    moved = (ours.embed.table() - table).abs().amax(1) > 0
    assert moved.nonzero().flatten().tolist() == IDS
    assert opt.state[ours.embed.trainable_tokens.weight]["exp_avg"].shape == (len(IDS), 64)


def test_unload_leaves_the_trained_rows_in_a_plain_embedding_and_a_mismatched_file_is_refused(tmp_path):
    hf = hf_model("llama", seed=5, num_key_value_heads=2, tie_word_embeddings=True)
    ours = to_ours(hf, tmp_path / "base")
    lora.apply(ours, "q,v", r=4, alpha=8, trainable_tokens=IDS)
    _randomise(ours, seed=6)
    lora.save(ours, tmp_path / "adapter")
    ids = _ids_hitting_rows()
    with torch.no_grad():
        want = ours(ids)
        lora.unload(ours)
        assert ours.embed.trainable_tokens is None and not any("trainable" in k for k in ours.state_dict())
        torch.testing.assert_close(ours(ids), want, **TOL)
    other = lora.apply(to_ours(hf, tmp_path / "base2"), "q,v", r=4, alpha=8, trainable_tokens=[3])
    with pytest.raises(ValueError, match="trainable tokens than the model's adapters"):
        lora.load(other, tmp_path / "adapter")
