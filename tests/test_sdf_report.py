"""benchmarks/sdf_report.py: the issue's test (SDF − SFT in SDF's std over seeds), the paired-by-seed reading
(SDF seed s tuned from SFT seed s) and the control stage, from eval-tasks reports named by stage and seed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _report():
    sys.path.insert(0, str(BENCH))  # (sdf_report imports seed_bars beside it)
    try:
        import sdf_report
    finally:
        sys.path.remove(str(BENCH))
    return sdf_report


def _write(folder: Path, name: str, exact_match: float) -> None:
    (folder / f"{name}.json").write_text(json.dumps({"exact_match": exact_match}))


def test_gains_over_sft_in_sdfs_std_and_paired_by_seed(tmp_path):
    for seed, (sft, sdf) in enumerate([(0.10, 0.20), (0.20, 0.32), (0.30, 0.38)]):
        _write(tmp_path, f"sft-s{seed}-seen-test", sft)
        _write(tmp_path, f"sdf-s{seed}-seen-test", sdf)
    _write(tmp_path, "sftc-s0-seen-test", 0.25)
    _write(tmp_path, "base-seen-test", 0.01)
    rep = _report()
    found = rep.scores(tmp_path)
    assert found["sft"]["seen-test"] == {0: 0.10, 1: 0.20, 2: 0.30} and found["sftc"]["seen-test"] == {0: 0.25}
    text = "\n".join(rep.table(found))
    # SDF 0.30 ± 0.09165 vs SFT 0.20: +0.100 = +1.1 std; per-seed gains 0.10, 0.12, 0.08: 0.100 ± 0.020 = +5.0 std
    assert "SDF − SFT on seen-test: +0.100 = +1.1 std of SDF's seeds (target > 2)" in text
    assert "paired by seed (s0 +0.100, s1 +0.120, s2 +0.080): +0.100 ± 0.020 = +5.0 std of the per-seed gains" in text
    assert "SDF − SFTC on seen-test: +0.050 = +0.5 std of SDF's seeds" in text
    assert "| control: SFT on the pairs' chosen replies | 1 | 0.250 |" in text


def test_each_tuned_stage_is_read_against_sft_and_the_control(tmp_path):
    for seed, (sft, dpo) in enumerate([(0.10, 0.0), (0.20, 0.05), (0.30, 0.10)]):
        _write(tmp_path, f"sft-s{seed}-seen-test", sft)
        _write(tmp_path, f"dpo-s{seed}-seen-test", dpo)
        _write(tmp_path, f"sftc-s{seed}-seen-test", 0.3)
    rep = _report()
    text = "\n".join(rep.table(rep.scores(tmp_path)))
    # DPO 0.05 ± 0.05 vs SFT 0.20: −0.150 = −3.0 std; per-seed −0.10, −0.15, −0.20: −0.150 ± 0.050 = −3.0 std
    assert "DPO − SFT on seen-test: -0.150 = -3.0 std of DPO's seeds (target > 2)" in text
    assert "paired by seed (s0 -0.100, s1 -0.150, s2 -0.200): -0.150 ± 0.050 = -3.0 std of the per-seed gains" in text
    assert "DPO − SFTC on seen-test: -0.250 = -5.0 std of DPO's seeds" in text
    assert "| DPO (β 0.1) on the pairs | 3 | 0.000, 0.050, 0.100 | 0.050 ± 0.050 |" in text
    assert "β 0.5" not in text and "SDF" not in text  # stages without reports are left out
    _write(tmp_path, "dpob5-s0-seen-test", 0.04)
    text = "\n".join(rep.table(rep.scores(tmp_path)))
    assert "DPO β0.5 − SFT on seen-test: -0.160 = (no spread over seeds) (target > 2)\npaired by seed (s0 -0.060): one seed" in text


def test_on_policy_stages_are_read_against_their_own_control(tmp_path):
    for seed, (sft, opdpo, opsftc) in enumerate([(0.10, 0.20, 0.15), (0.20, 0.25, 0.20), (0.30, 0.30, 0.25)]):
        _write(tmp_path, f"sft-s{seed}-seen-test", sft)
        _write(tmp_path, f"opdpo-s{seed}-seen-test", opdpo)
        _write(tmp_path, f"opsftc-s{seed}-seen-test", opsftc)
        _write(tmp_path, f"sftc-s{seed}-seen-test", 0.9)  # the offline pairs' control: not opdpo's
    rep = _report()
    text = "\n".join(rep.table(rep.scores(tmp_path)))
    # on-policy DPO 0.25 ± 0.05 vs SFT 0.20: +0.050 = +1.0 std;
    # vs its control 0.20: +0.050, paired 0.05 ± 0 (no spread)
    assert "on-policy DPO − SFT on seen-test: +0.050 = +1.0 std of on-policy DPO's seeds (target > 2)" in text
    assert "on-policy DPO − OPSFTC on seen-test: +0.050 = +1.0 std of on-policy DPO's seeds" in text
    assert "on-policy DPO − SFTC" not in text
    assert "| DPO (β 0.1, lr 2e-4) on on-policy pairs | 3 | 0.200, 0.250, 0.300 | 0.250 ± 0.050 |" in text
