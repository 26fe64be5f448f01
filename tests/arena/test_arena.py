"""The arena (#27) end to end on tiny models: contestants train in their own ``genmodels train`` processes,
are measured in one process, and land in one report; an arena killed between contestants resumes without
retraining the finished ones; a failing contestant is reported while the others complete; a step budget
reproduces the losses bit for bit; spec errors name the field.

Speed: ~40k-parameter models, 5 steps on a 70 KB corpus, contexts of 16 and 32, the PyTorch decode path
(GENMODELS_NATIVE=0: no kernel build in the children). Nothing here depends on the machine's speed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genmodels import cli
from genmodels.arena import load_spec, run_arena
from genmodels.arena.runner import TEST_EXIT_AFTER, ArenaState
from genmodels.config import ConfigError
from genmodels.training.rundir import RunDirError
from tests.helpers.corpus import write_corpus

TINY = {"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.d_ff": 64, "train.batch_size": 8,
        "train.warmup_steps": 2, "train.eval_every": 3, "train.eval_batches": 2, "train.ckpt_every": 2,
        "train.mfu_peak_tflops": 0.1, "sample.max_new_tokens": 4}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache and the PyTorch decode path for this module's processes (the children inherit both)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "genmodels-cache"))
        mp.setenv("GENMODELS_NATIVE", "0")
        mp.delenv(TEST_EXIT_AFTER, raising=False)
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """30 small text files of random sentences (~70 KB), as the training tests use."""
    return write_corpus(tmp_path_factory.mktemp("arena-corpus"))


def contestant(name: str, preset: str, **overrides) -> dict:
    extra = {"model.n_kv_heads": 1} if preset == "llama-tiny" else {}
    return {"name": name, "preset": preset, "overrides": {**TINY, **extra, **overrides}}


def write_spec(path: Path, corpus: Path, contestants: list[dict], **fields) -> Path:
    spec = {"name": "tiny", "equal": "none", "contestants": contestants,
            "data": {"corpus": "folder", "path": str(corpus), "vocab_size": 300, "seq_len": 32, "val_fraction": 0.2},
            "budget": {"steps": 5}, "seeds": [0], "threads": 1,
            "measure": {"contexts": [16], "long_context": 64, "decode_tokens": 4, "repeats": 1, "eval_windows": 8},
            **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def train_losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


@pytest.fixture(scope="module")
def arena(env, corpus, tmp_path_factory):
    """llama, broken (its model.init_from is a folder without a model: it fails inside the trainer) and gpt2.
    The first run is killed (the test hook's os._exit) once llama is trained; then ``--resume`` finishes."""
    root = tmp_path_factory.mktemp("arena")
    (root / "not-a-model").mkdir()
    spec = write_spec(root / "spec.yaml", corpus, [
        contestant("llama", "llama-tiny"),
        contestant("broken", "llama-tiny", **{"model.init_from": str(root / "not-a-model")}),
        contestant("gpt2", "gpt2-tiny")])
    out = root / "out"
    killed = subprocess.run([sys.executable, "-m", "genmodels.cli", "arena", str(spec), "--out", str(out)],
                            env={**os.environ, TEST_EXIT_AFTER: "1"}, capture_output=True, text=True)
    final = out / "runs" / "llama-seed0" / "final" / "model.safetensors"
    before = {"returncode": killed.returncode, "state": json.loads((out / "state.json").read_text()),
              "final_mtime": final.stat().st_mtime_ns, "metrics": (final.parent.parent / "metrics.jsonl").read_text()}
    return {"spec": spec, "out": out, "before": before,
            "status": cli.main(["arena", str(spec), "--out", str(out), "--resume"])}


def test_two_contestants_end_to_end_report_holds_both_rows(arena):
    out = arena["out"]
    assert arena["status"] == 0
    md = (out / "report.md").read_text()
    rows = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d) \| (\w+) \|", md, re.M)}
    assert set(rows) == {"llama", "gpt2"} and sorted(rows.values()) == [1, 2]
    results = json.loads((out / "results.json").read_text())
    by_name = {c["name"]: c for c in results["contestants"]}
    for name in ("llama", "gpt2"):
        m = by_name[name]["runs"][0]["measures"]
        assert m["held_out_windows"] == 8 and m["held_out_loss"] > 0 and m["threads"] == 1
        assert [p["context"] for p in m["speed"]] == [16, 32]  # measure.contexts, then its own context
        assert m["steps"] == 5 and m["trained"] == 5 * 8 * 32 and m["params"] > 0 and m["curve"]
        assert by_name[name]["runs"][0]["peak_rss_mib"] > 0
    assert rows["llama" if by_name["llama"]["summary"]["held_out_loss"]["mean"] <
                by_name["gpt2"]["summary"]["held_out_loss"]["mean"] else "gpt2"] == 1  # ranked by held-out loss
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # loss vs tokens, vs time, speed vs context
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network


def test_a_failing_contestant_is_reported_and_the_others_complete(arena):
    state = json.loads((arena["out"] / "state.json").read_text())["entries"]
    assert state["broken-seed0"]["status"] == "failed"
    error = state["broken-seed0"]["error"]
    assert "not-a-model" in error and "\n" not in error and not error.startswith("error:")
    assert state["gpt2-seed0"]["status"] == state["llama-seed0"]["status"] == "measured"
    md = (arena["out"] / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| — | broken |"))
    assert error.replace("|", "\\|") in row


def test_a_killed_arena_resumes_without_retraining_finished_contestants(arena):
    before = arena["before"]
    assert before["returncode"] == 137
    assert [e["status"] for e in before["state"]["entries"].values()] == ["trained", "pending", "pending"]
    run = arena["out"] / "runs" / "llama-seed0"
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == before["final_mtime"]
    assert (run / "metrics.jsonl").read_text() == before["metrics"]
    state = json.loads((arena["out"] / "state.json").read_text())["entries"]
    assert state["llama-seed0"]["attempts"] == 1 and state["gpt2-seed0"]["attempts"] == 1


def test_a_step_budget_reproduces_the_losses_bit_for_bit(arena, tmp_path):
    """The same spec and seed in another folder: every training and validation loss, and the held-out loss,
    equal to the bit (a second arena with llama alone: its recipe is the same)."""
    spec = yaml.safe_load(arena["spec"].read_text())
    spec["contestants"] = spec["contestants"][:1]
    again = write_spec(tmp_path / "spec.yaml", Path(spec["data"]["path"]), spec["contestants"])
    run_arena(again, tmp_path / "out", log=lambda s: None)
    first, second = arena["out"] / "runs" / "llama-seed0", tmp_path / "out" / "runs" / "llama-seed0"
    assert train_losses(first) == train_losses(second)
    assert len(train_losses(first)) == 5 + 2  # 5 steps, evaluated at 3 and the end
    held = [json.loads((o / "measure" / "llama-seed0.json").read_text())["held_out_loss"]
            for o in (arena["out"], tmp_path / "out")]
    assert held[0] == held[1]


@pytest.mark.parametrize("change, field", [
    ({"budget": {"steps": 5, "minutes": 1}}, "arena.budget must set exactly one"),
    ({"budget": {"tokens": 0}}, "arena.budget.tokens=0"),
    ({"seeds": [0, 0]}, "arena.seeds"),
    ({"equal": "flops"}, "arena.equal='flops'"),
    ({"frobnicate": 1}, "unknown arena config key(s): frobnicate"),
    ({"measure": {"contexts": [4]}}, "arena.measure.contexts[0]=4"),
    ({"contestants": [{"name": "x", "preset": "llama-tiny", "colour": "red"}]}, "arena.contestants[0]"),
    ({"contestants": [{"name": "x", "recipe": "nowhere.yaml"}]}, "arena.contestants[0] (x).recipe='nowhere.yaml'"),
    ({"contestants": [{"name": "x", "preset": "llama-tiny", "overrides": {"train.max_steps": 9}}]},
     "arena.contestants[0].overrides: train.max_steps"),
    ({"contestants": [{"name": "x", "preset": "llama-tiny", "overrides": {"data.seq_len": 9}}]},
     "arena.contestants[0].overrides: key 'data.seq_len'"),
    ({"contestants": [{"name": "x", "preset": "llama-tiny", "overrides": {"model.n_heads": 3}}]},
     "arena.contestants[0] (x): model"),
    ({"contestants": [{"name": "x", "preset": "nope"}]}, "arena.contestants[0] (x): model.preset='nope'"),
    ({"rank_by": "kid"}, "arena.rank_by='kid'"),
])
def test_spec_errors_name_the_field(corpus, tmp_path, change, field):
    change = dict(change)
    contestants = change.pop("contestants", [contestant("llama", "llama-tiny")])
    spec = write_spec(tmp_path / "spec.yaml", corpus, contestants, **change)
    with pytest.raises(ConfigError) as e:
        load_spec(spec)
    assert field in str(e.value) and str(spec) in str(e.value)


def test_the_cli_refuses_a_bad_spec_in_one_line(corpus, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", corpus, [contestant("llama", "llama-tiny")], seeds=[-1])
    assert cli.main(["arena", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "arena.seeds=[-1]" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_budgets_become_each_recipes_steps(corpus, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", corpus, [contestant("a", "llama-tiny")], budget={"tokens": 1000})
    train = load_spec(spec).recipe(0, 3)["train"]
    assert (train["max_steps"], train["max_minutes"], train["seed"]) == (4, None, 3)  # ceil(1000 / (8 × 32))
    spec = write_spec(tmp_path / "s.yaml", corpus, [contestant("a", "llama-tiny")], budget={"minutes": 2.5})
    train = load_spec(spec).recipe(0, 0)["train"]
    assert train["max_minutes"] == 2.5 and train["max_steps"] >= 10 ** 6  # the schedule is fitted to the time


def test_the_out_folder_is_claimed_like_a_run_folder(corpus, tmp_path):
    spec_path = write_spec(tmp_path / "s.yaml", corpus, [contestant("a", "llama-tiny")])
    spec = load_spec(spec_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an arena folder .*notes.txt"):
        ArenaState.open(foreign, spec, resume=False)
    ArenaState.open(tmp_path / "out", spec, resume=False)
    with pytest.raises(RunDirError, match="pass --resume"):
        ArenaState.open(tmp_path / "out", spec, resume=False)
    other = load_spec(write_spec(tmp_path / "s2.yaml", corpus, [contestant("a", "llama-tiny")], seeds=[0, 1]))
    with pytest.raises(RunDirError, match="differs in arena.seeds"):
        ArenaState.open(tmp_path / "out", other, resume=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_several_seeds_report_the_spread_and_rank_by_the_mean(corpus, tmp_path):
    """The report alone, over measures as the measuring process writes them: two seeds give mean ± std
    (min–max), the ranking follows the mean, and a contestant with no measured seed comes last."""
    from genmodels.arena.report import write_report
    spec = load_spec(write_spec(tmp_path / "s.yaml", corpus, [contestant("a", "llama-tiny"),
                                                                contestant("b", "gpt2-tiny"),
                                                                contestant("c", "gpt2-tiny")], seeds=[0, 1]))
    state = ArenaState.open(tmp_path / "out", spec, resume=False)
    (state.out / "measure").mkdir()
    for eid, loss in (("a-seed0", 3.0), ("a-seed1", 3.2), ("b-seed0", 2.0), ("b-seed1", 2.4)):
        steps = 1 if eid == "a-seed1" else 50  # a-seed1 stopped inside its warm-up of 20 steps
        (state.out / "measure" / f"{eid}.json").write_text(json.dumps({"held_out_loss": loss, "params": 1000,
                                                                       "steps": steps, "warmup_steps": 20}))
        state.update(eid, status="measured", peak_rss_mib=100.0)
    state.update("c-seed0", status="failed", error="model.init_from='x': no model there")
    md = write_report(spec, state).read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "contestant" not in line][:3]
    assert rows[0].startswith("| 1 | b | 2.2 ± 0.2828 (2–2.4) |")
    assert rows[1].startswith("| 2 | a | 3.1 ± 0.1414 (3–3.2) |")
    assert rows[2].startswith("| — | c |") and "c-seed0: model.init_from='x': no model there" in rows[2]
    assert "**Warning**: a-seed1 stopped inside the learning-rate warm-up" in md
    summary = {c["name"]: c["summary"] for c in json.loads((state.out / "results.json").read_text())["contestants"]}
    assert summary["b"]["held_out_loss"] == {"mean": 2.2, "std": pytest.approx(0.2828, abs=1e-4), "min": 2.0,
                                             "max": 2.4, "n": 2}
