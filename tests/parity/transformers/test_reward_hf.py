"""Reward models against transformers' LlamaForSequenceClassification(num_labels=1) (issue 23 d2): a random tiny
config with every parameter randomised loads with equal scores (1e-5), the score read where transformers reads it
(the rightmost token that is not pad_token_id: right padding, a pad id inside a row, a row of pads; no pad id:
one row only), and our reward model exports to a folder transformers loads with equal scores."""
from __future__ import annotations

import pytest
import torch

from tests.parity.transformers._hf import MODEL_TOL, llama_config, randomise, transformers

import genmodels  # noqa: E402
from genmodels.interop.base import ConversionError
from genmodels.interop.reward_hf import export_reward_hf, is_reward_folder, load_reward_hf
from genmodels.models.score_head import RewardModel, last_real_token

PAD = 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.LlamaForSequenceClassification(llama_config(pad_token_id=PAD, num_labels=1)).eval()
    randomise(hf, seed=3)
    path = tmp_path_factory.mktemp("reward") / "hf"
    hf.save_pretrained(path)
    return hf, load_reward_hf(path, genmodels.build_model).eval(), path


def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 128, (4, 12), generator=g)
    ids[0, 9:] = PAD  # right padding
    ids[1, 4] = PAD  # a pad id among the tokens: transformers reads the rightmost non-pad token all the same
    ids[1, 10:] = PAD
    ids[3, :] = PAD  # a row of pads: position 0
    return ids


def test_scores_equal_transformers(pair):
    hf, ours, path = pair
    assert is_reward_folder(path)
    ids = batch()
    with torch.no_grad():
        want = hf(ids).logits.squeeze(-1)
        got = ours(ids)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, **MODEL_TOL)
    assert last_real_token(ids, PAD).tolist() == [8, 9, 11, 0]


def test_without_a_pad_id_one_row_reads_the_last_token_and_a_batch_is_refused(pair):
    hf, ours, _ = pair
    ids = batch()[2:3]
    plain = RewardModel(ours.lm, pad_token_id=None)
    plain.score = ours.score
    plain.pad_token_id = None
    with torch.no_grad():
        torch.testing.assert_close(plain(ids), ours(ids), **MODEL_TOL)
    with pytest.raises(ValueError, match="without a pad token id"):
        plain(batch())


def test_our_reward_model_exports_to_transformers(tmp_path):
    cfg = genmodels.preset("llama-tiny", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                           head_dim=16, pad_token_id=PAD, max_seq_len=64)
    torch.manual_seed(1)
    ours = RewardModel(genmodels.build_model(cfg)).eval()
    randomise(ours, seed=4)
    export_reward_hf(ours, tmp_path / "out")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    ids = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits.squeeze(-1), **MODEL_TOL)
    back = load_reward_hf(tmp_path / "out", genmodels.build_model).eval()
    with torch.no_grad():
        assert torch.equal(back(ids), ours(ids))


def test_more_than_one_label_is_refused(tmp_path):
    hf = transformers.LlamaForSequenceClassification(llama_config(pad_token_id=PAD, num_labels=3))
    hf.save_pretrained(tmp_path / "three")
    with pytest.raises(ConversionError, match="num_labels=3; a reward model has one score"):
        load_reward_hf(tmp_path / "three", genmodels.build_model)
