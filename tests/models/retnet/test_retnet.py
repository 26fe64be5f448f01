"""RetNet in the house (issue #10, deliverables 2 and 3): the registered family, its recipe, and
recurrent generation through the cache protocol."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.config import ConfigError
from genmodels.models.flops import attention_layers, count_parameters, matmul_parameters, parameter_count
from genmodels.models.retnet import RetentionCache, RetNetConfig, RetNetLM
from genmodels.native.decoder import unsupported
from genmodels.training import RunConfig, load_config, train
from tests.training.conftest import _cache, corpus_dir, tiny_config  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[3]
V = 97


def _model(seed: int = 0, **kw) -> RetNetLM:
    """A ~30k-parameter RetNet with every parameter randomised (norm gains included)."""
    cfg = genmodels.preset("retnet-tiny", **{**dict(vocab_size=V, d_model=32, n_layers=2, n_heads=2, value_dim=48,
                                                   d_ff=64, max_seq_len=128, retention_eps=0.0), **kw})
    torch.manual_seed(seed)
    m = genmodels.build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return m.eval()


def _ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def _greedy_by_full_forwards(m, ids, n):
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


# ---- deliverable 3: recurrent generation through the cache protocol --------------------------------
def test_greedy_generate_equals_repeated_full_forwards():
    m, ids = _model(), _ids(2, 7)
    out = genmodels.generate(m, ids, max_new_tokens=12, temperature=0)
    assert torch.equal(out, _greedy_by_full_forwards(m, ids, 12))


def test_prefill_then_recurrent_steps_give_the_parallel_logits_at_every_position():
    m, ids = _model(), _ids(2, 14)
    with torch.no_grad():
        want = m(ids)                                                        # (B, T, V) parallel form
        cache = m.new_cache(2, 14, limit=14)
        got = [m.head(m.hidden_states(ids[:, :5], cache=cache))]             # prefill 5
        for i in range(5, 14):
            got.append(m.head(m.hidden_states(ids[:, i:i + 1], position_ids=torch.full((2, 1), i), cache=cache)))
    assert cache.pos == 14
    torch.testing.assert_close(torch.cat(got, 1), want, atol=1e-5, rtol=1e-4)


def test_chunkwise_passes_longer_than_chunk_size_continue_like_the_parallel_form():
    m, ids = _model(chunk_size=4), _ids(1, 11)
    with torch.no_grad():
        want = m.head(m._stack(ids, "parallel", None, 0)[0])
        cache = m.new_cache(1)
        got = torch.cat([m.head(m.hidden_states(ids[:, :6], cache=cache)),    # chunkwise from nothing
                         m.head(m.hidden_states(ids[:, 6:], cache=cache))], 1)    # chunkwise from the state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_left_padded_batch_generates_each_row_as_if_alone():
    m = _model()
    a, b = _ids(1, 8, seed=2), _ids(1, 5, seed=3)
    pad = torch.zeros(1, 3, dtype=torch.long)
    ids = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.cat([torch.ones(1, 8), torch.cat([torch.zeros(1, 3), torch.ones(1, 5)], 1)]).long()
    out = genmodels.generate(m, ids, max_new_tokens=6, attention_mask=mask, pad_token_id=0)
    assert torch.equal(out[0, 8:], genmodels.generate(m, a, max_new_tokens=6)[0, 8:])
    assert torch.equal(out[1, 8:], genmodels.generate(m, b, max_new_tokens=6)[0, 5:])


def test_sampling_with_a_seed_is_reproducible():
    m, ids = _model(), _ids(2, 4)
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=20)
    first = genmodels.generate(m, ids, seed=7, **kw)
    assert torch.equal(first, genmodels.generate(m, ids, seed=7, **kw))
    assert not torch.equal(first, genmodels.generate(m, ids, seed=8, **kw))


def test_cache_reorder_keeps_the_chosen_rows_states():
    m, ids = _model(), _ids(3, 6)
    with torch.no_grad():
        cache = m.new_cache(3)
        m.hidden_states(ids, cache=cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        nxt = _ids(3, 1, seed=5)
        got = m.head(m.hidden_states(nxt, cache=cache))[:, -1]
        want = m(torch.cat([ids[[2, 2, 0]], nxt], 1))[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_state_size_does_not_grow_with_the_prompt():
    m = _model()
    sizes = []
    with torch.no_grad():
        for t in (4, 64):
            cache = m.new_cache(1)
            m.hidden_states(_ids(1, t), cache=cache)
            cache.reserve(100)  # fixed size: nothing to grow
            m.hidden_states(_ids(1, 1), cache=cache)
            sizes.append(cache.state_bytes())
    assert isinstance(cache, RetentionCache)
    assert sizes[0] == sizes[1] == 2 * 4 * (1 * 2 * 16 * 24 + 1 * 2)  # layers × fp32 × (S (B,H,d_k,d_v) + s (B,H))


def test_native_decoder_refuses_retnet_with_a_reason():
    reason = unsupported(_model())
    assert isinstance(reason, str) and "RetNetLM" in reason


# ---- deliverable 2: the family in the house -----------------------------------------------------------
def test_save_load_round_trip_gives_the_same_logits(tmp_path):
    m, ids = _model(), _ids(2, 9)
    genmodels.save(m, tmp_path / "rn")
    back = genmodels.load(tmp_path / "rn")
    assert isinstance(back, RetNetLM) and back.config == m.config
    with torch.no_grad():
        torch.testing.assert_close(back(ids), m(ids), atol=0, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_counts_equal_the_built_models_parameters(tied):
    cfg = genmodels.preset("retnet-tiny", tie_embeddings=tied)
    m = genmodels.build_model(cfg)
    assert parameter_count(cfg) == count_parameters(m)
    blocks = sum(p.numel() for n, p in m.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    assert matmul_parameters(cfg) == blocks + cfg.vocab_size * cfg.d_model
    assert attention_layers(cfg) == cfg.n_layers


def test_info_reports_the_family_and_parameter_count(tmp_path, capsys):
    from genmodels.cli import main
    m = _model()
    genmodels.save(m, tmp_path / "rn")
    assert main(["info", str(tmp_path / "rn"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "retnet" and info["parameters"] == count_parameters(m)
    assert "RetNetLM" in info["cpu_inference"] and info["forward_flops_per_token"]


def test_unknown_config_key_is_refused_naming_model_key():
    with pytest.raises(ConfigError, match=r"model\.n_kv_heads|n_kv_heads") as e:
        genmodels.registry.config_from_dict({"family": "retnet", "n_kv_heads": 2})
    assert "\n" not in str(e.value) and "model" in str(e.value)
    with pytest.raises(ConfigError, match=r"model\.activation='relu'.*gelu, swish"):
        RetNetConfig.from_dict({"activation": "relu"})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_embed_scale_must_be_a_finite_positive_number(bad):
    with pytest.raises(ConfigError, match=r"^model\.embed_scale=.* must be a finite number > 0$"):
        RetNetConfig.from_dict({"embed_scale": bad})


def test_embed_scale_scales_the_embedding_and_not_a_tied_head():
    """x_0 = s·E[ids]; a tied head reads E itself (torchscale's convention), so logits differ from s = 1 only
    through the stack's input."""
    m = _model()
    cfg = m.config.replace(embed_scale=2.0, tie_embeddings=True)
    scaled = genmodels.build_model(cfg)
    scaled.load_state_dict(m.state_dict(), strict=False)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(scaled.embed(ids), 2.0 * m.embed(ids))
    assert scaled.head.get_weight() is scaled.embed.weight


def test_recipe_selects_retnet_tiny_with_llama_tinys_data_and_budget():
    rc, llama = load_config(ROOT / "configs/retnet-tiny.yaml"), load_config(ROOT / "configs/llama-tiny.yaml")
    cfg = rc.model_config()
    assert isinstance(cfg, RetNetConfig) and (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (256, 4, 8192)
    assert rc.data == llama.data and rc.train == llama.train


# A family registered after the transformers trains through the house unchanged: train.objective=auto
# reads the registry's Family.objective (genmodels.objectives.objective_for).
def test_a_three_step_run_trains_retnet(corpus_dir, tmp_path):  # noqa: F811  (the fixture)
    d = tiny_config(corpus_dir, tmp_path / "run",
                    model={"preset": "retnet-tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "value_dim": 32,
                           "d_ff": 64},
                    train={"max_steps": 3, "eval_every": 3, "ckpt_every": 3, "warmup_steps": 1},
                    sample={"prompts": ["the "], "max_new_tokens": 4})
    d["model"] = {k: v for k, v in d["model"].items() if k != "n_kv_heads"}
    res = train(RunConfig.from_dict(d), progress=False, log=lambda s: None)
    assert res.val_ppl == res.val_ppl and res.val_ppl > 1  # finite
    assert isinstance(genmodels.load(tmp_path / "run" / "final"), RetNetLM)


@pytest.mark.parametrize("name,billions", [("retnet-1.3b", 1.3), ("retnet-2.7b", 2.7), ("retnet-6.7b", 6.7)])
def test_paper_presets_have_their_nominal_sizes(name, billions):
    assert parameter_count(genmodels.preset(name)) == pytest.approx(billions * 1e9, rel=0.08)


def test_activation_checkpointing_finds_every_block_and_keeps_the_gradients():
    from genmodels.training.memory import apply_activation_checkpointing, transformer_blocks
    ids = _ids(2, 8)
    grads = []
    for mode in ("none", "full"):
        m = _model().train()
        blocks = transformer_blocks(m)
        assert blocks == list(m.blocks)
        apply_activation_checkpointing(blocks, mode)
        m(ids).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])


def test_training_resumes_exactly_like_the_other_families(corpus_dir, tmp_path):  # noqa: F811  (the fixture)
    """A RetNet run stopped after its step-4 checkpoint and resumed gives the uninterrupted losses, bit for bit."""
    import shutil

    from tests.training.conftest import losses

    def cfg(run):
        d = tiny_config(corpus_dir, run,
                        model={"preset": "retnet-tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "value_dim": 32,
                               "d_ff": 64},
                        train={"max_steps": 8, "eval_every": 4, "ckpt_every": 4, "warmup_steps": 1, "keep_last": 3},
                        sample={"max_new_tokens": 0})
        d["model"] = {k: v for k, v in d["model"].items() if k != "n_kv_heads"}
        return RunConfig.from_dict(d)

    ref = tmp_path / "ref"
    train(cfg(ref), progress=False, log=lambda s: None)
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut, ignore=shutil.ignore_patterns("final"))
    shutil.rmtree(cut / "checkpoints" / "step-000008")
    res = train(cfg(cut), resume=True, progress=False, log=lambda s: None)
    assert min(res.train_losses) == 5
    assert losses(cut) == losses(ref) and losses(cut, "val_loss") == losses(ref, "val_loss")
