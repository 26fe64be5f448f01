"""Plots and samples are best-effort (issue #8, 8 and 9c): a PNG that cannot be drawn, a prompt longer
than the context, or a failing sample is one line of output, never the end of a run or its summary."""
from __future__ import annotations


from genmodels.training import RunConfig, train
from genmodels.training.rundir import MARKER

from .conftest import tiny_config

OVER = dict(train={"max_steps": 6, "eval_every": 2, "ckpt_every": 3})


def _run(corpus_dir, run, **sections):
    said = []
    cfg = tiny_config(corpus_dir, run, **OVER)
    for k, v in sections.items():
        cfg[k] = {**cfg[k], **v}
    res = train(RunConfig.from_dict(cfg), progress=False, log=said.append)
    assert res.final_dir is not None and (run / "final" / "model.safetensors").is_file()
    assert any(s.startswith("summary:") for s in said)
    return res, said


def test_a_plot_that_fails_to_draw_is_one_warning_line(corpus_dir, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("matplotlib exploded\nwith two lines")

    monkeypatch.setattr("genmodels.training.loop.plot_losses", broken)
    res, said = _run(corpus_dir, tmp_path / "run")
    warnings = [s for s in said if "loss.png" in s and "warning" in s]
    assert len(warnings) == 1 and "matplotlib exploded with two lines" in warnings[0]  # once, for 3 evaluations
    assert res.steps == 6


def test_an_unwritable_plot_file_is_one_warning_line(corpus_dir, tmp_path):
    run = tmp_path / "run"
    (run / "loss.png").mkdir(parents=True)  # the PNG cannot replace a folder
    (run / MARKER).write_text("{}")
    res, said = _run(corpus_dir, run)
    assert len([s for s in said if s.startswith("warning: could not draw")]) == 1
    assert not (run / ".loss.tmp.png").exists()


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(corpus_dir, tmp_path):
    long = "the cat sat on a mat and dog ran to big red ball " * 20  # far more than 32 tokens
    res, said = _run(corpus_dir, tmp_path / "run", sample={"prompts": [long, "the "], "max_new_tokens": 8})
    notes = [s for s in said if s.startswith("note: sample.prompts[0]")]
    assert len(notes) == 1 and "kept its last 24" in notes[0]  # 32 - 8 new tokens
    assert len(res.samples) == 2 and res.samples[0] and res.samples[1].startswith("the ")


def test_a_failing_sample_never_loses_the_summary(corpus_dir, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise ValueError("generation broke")

    monkeypatch.setattr("genmodels.generation.generate", broken)  # (what the causal objective samples with)
    res, said = _run(corpus_dir, tmp_path / "run")
    assert res.samples == [""]
    assert any(s.startswith("warning: sample.prompts[0] not generated (ValueError: generation broke)") for s in said)
