"""The SPAE family (models/spae/), its lexicon (genmodels/lexicon.py) and API (genmodels/spae.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.config import ConfigError
from genmodels.lexicon import Lexicon, build_lexicon, lexicon_for, select_words
from genmodels.models.spae import SPAEConfig
from genmodels.spae import image_to_words, reconstructions, save_reconstructions, words_to_image

TINY_LM = Path(__file__).resolve().parents[2] / "fixtures" / "spae" / "tiny-lm"  # make_spae_lm.py


def tiny_config(**kw) -> SPAEConfig:
    return genmodels.preset("spae-tiny", **{"lexicon": str(TINY_LM), "lm_dim": 16, "codebook_size": 20, **kw})


def tiny_model(**kw):
    cfg = tiny_config(**kw)
    return genmodels.build_model(cfg).attach_lexicon(build_lexicon(cfg)).eval()


# ---- config -------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): widht; allowed keys: channels"):
        SPAEConfig.from_dict({"family": "spae", "widht": 8}, "model")
    with pytest.raises(ConfigError, match=r"model\.quantizer='rvq' is not allowed; choose one of saq, residual"):
        SPAEConfig(quantizer="rvq")
    with pytest.raises(ConfigError, match=r"model\.levels=\[2, 3\] must be grid sides"):
        SPAEConfig(levels=[2, 3])
    with pytest.raises(ConfigError, match=r"model\.image_size=12 must be levels\[-1\]=4 times a power of two"):
        SPAEConfig(image_size=12)
    with pytest.raises(ConfigError, match=r"model\.groups=3 must divide model\.width=64"):
        SPAEConfig(groups=3)


# ---- lexicon ------------------------------------------------------------------------------------
def test_lower_words_keeps_whole_lower_case_words_includes_first_then_by_id():
    byte_level = ["Ġthe", "ing", "Ġcat", "ĠThe", "Ġa1", "Ġox", "Ġseven", "Ġdog", "Ġcat"]
    ids, words = select_words(byte_level, "lower_words", 3, 3, include=["seven"])
    assert words == ["seven", "the", "cat"] and ids == [6, 0, 2]  # "ing": no word start; duplicates: the first
    wordpiece = ["[UNK]", "##ing", "the", "The", "dog"]
    assert select_words(wordpiece, "lower_words", 3, 2)[1] == ["the", "dog"]


def test_lexicon_refusals_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.include: eleven is not a whole-word token"):
        select_words(["Ġthe", "Ġcat"], "lower_words", 3, 2, include=["eleven"])
    with pytest.raises(ConfigError, match=r"model\.codebook_size=5: the LM has only 2 tokens"):
        select_words(["Ġthe", "Ġcat"], "lower_words", 3, 5)
    with pytest.raises(ConfigError, match=r"model\.lm_dim=8 differs .* \(16\); set model\.lm_dim=16"):
        build_lexicon(tiny_config(lm_dim=8))


def test_lexicon_rows_are_the_lms_embedding_rows_and_cached(tmp_path):
    from safetensors.torch import load_file
    cfg = tiny_config()
    lex = lexicon_for(cfg, tmp_path)
    table = load_file(str(TINY_LM / "model.safetensors"))["embed.weight"]
    assert lex.words[:10] == list(cfg.include) and len(lex.words) == 20
    assert torch.equal(lex.vectors, table[lex.lm_ids])
    (cached,) = (tmp_path / "spae").iterdir()
    again = Lexicon.load(cached)
    assert again.words == lex.words and torch.equal(again.vectors, lex.vectors)


# ---- the model and its saved tokenizer -----------------------------------------------------------
def test_a_saved_tokenizer_loads_and_reads_images_without_the_lm(tmp_path, monkeypatch):
    model = tiny_model()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    words = image_to_words(model, x)
    genmodels.save(model, tmp_path / "m")
    import genmodels.interop.lm_vocab as lm_vocab
    monkeypatch.setattr(lm_vocab, "token_table", lambda *a: pytest.fail("the LM was read"))
    back = genmodels.load(tmp_path / "m")
    assert image_to_words(back, x) == words
    assert [len(layer) for layer in words[0]] == [1, 4, 16]
    assert torch.equal(words_to_image(back, words), words_to_image(model, words))


def test_words_round_trip_and_depths():
    model = tiny_model()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    words = image_to_words(model, x)
    ids = model.encode(x)
    rec = reconstructions(model, x)
    assert rec.shape == (4, 2, 1, 8, 8) and torch.equal(rec[0], x)
    for d in (1, 2, 3):
        assert torch.allclose(words_to_image(model, words, depth=d), model.decode(ids, d))
        flat = [[w for layer in p[:d] for w in layer] for p in words]  # a flat list of the first d layers
        assert torch.allclose(words_to_image(model, flat), rec[d])


def test_words_to_image_refusals():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"image 0: 'eleven' is not a word of the codebook"):
        words_to_image(model, [["eleven"]])
    with pytest.raises(ValueError, match=r"3 words do not fill whole layers; .* one of \[1, 5, 21\]"):
        words_to_image(model, [["zero", "one", "two"]])
    with pytest.raises(ValueError, match=r"depth=3 must be in 1 … 1"):
        words_to_image(model, [["zero"]], depth=3)
    bare = genmodels.build_model(tiny_config())
    with pytest.raises(ValueError, match="has no word list"):
        image_to_words(bare, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"images must be \(N, 1, 8, 8\)"):
        image_to_words(model, torch.zeros(1, 1, 16, 16))


def test_reconstruction_png_has_a_row_per_depth(tmp_path):
    from PIL import Image
    model = tiny_model()
    path = save_reconstructions(model, torch.rand(5, 1, 8, 8) * 2 - 1, tmp_path / "r.png")
    w, h = Image.open(path).size
    assert w > h and round(w / h) == round(5 / 4)  # 5 columns, 4 rows (the images, then depths 1-3)
