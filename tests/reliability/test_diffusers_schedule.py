"""A diffusers UNet folder never loads with a schedule it was not trained for without saying so (report
2026-12-07 W-4, B-23): our exports record the schedule and prediction type in config.json
(``_genmodels.schedule``), which loading prefers; a folder with neither that record nor a
scheduler_config.json loads with one warning naming the assumed schedule; config values that cannot be
read faithfully are refused naming the key the user wrote."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.interop.base import ConversionError

SCHEDULE = dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", num_train_timesteps=500)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4, **SCHEDULE)
    return genmodels.export_diffusers(genmodels.build_model(cfg), tmp_path_factory.mktemp("df") / "unet")


def _copy(src: Path, dst: Path, edit=None, drop_scheduler: bool = True) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if not (drop_scheduler and f.name == "scheduler_config.json"):
            (dst / f.name).write_bytes(f.read_bytes())
    if edit is not None:
        hf = json.loads((dst / "config.json").read_text())
        edit(hf)
        (dst / "config.json").write_text(json.dumps(hf))
    return dst


def _schedule(model) -> dict:
    return {k: getattr(model.config, k) for k in SCHEDULE}


def test_an_export_without_its_scheduler_config_keeps_its_schedule_silently(exported, tmp_path):
    folder = _copy(exported, tmp_path / "d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _schedule(genmodels.load(folder)) == SCHEDULE


def test_a_folder_with_no_schedule_loads_with_a_warning_naming_the_assumed_one(exported, tmp_path):
    folder = _copy(exported, tmp_path / "d", lambda hf: hf.setdefault("_genmodels", {}).pop("schedule", None))
    with pytest.warns(UserWarning, match=r"no scheduler_config.json .* assumed: num_train_timesteps=1000, "
                                         r"beta_schedule='linear', beta_start=0.0001, beta_end=0.02, "
                                         r"prediction_type='epsilon'") as seen:
        model = genmodels.load(folder)
    assert len(seen) == 1 and model.config.prediction_type == "epsilon"


def test_the_record_wins_over_a_scheduler_config_that_disagrees_and_says_so(exported, tmp_path):
    folder = _copy(exported, tmp_path / "d", drop_scheduler=False)
    sched = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**sched, "prediction_type": "epsilon"}))
    with pytest.warns(UserWarning, match=r"prediction_type='epsilon' differs from the schedule recorded in .*"
                                         r"prediction_type='v_prediction'"):
        assert _schedule(genmodels.load(folder)) == SCHEDULE


@pytest.mark.parametrize("edit, named", [
    (lambda hf: hf.update(num_class_embeds=-1), "num_class_embeds=-1 must be null or an integer >= 2"),
    (lambda hf: hf["_genmodels"].update(null_class="no"), "_genmodels.null_class='no' must be true or false"),
    (lambda hf: hf["_genmodels"].update(null_class=False, schedule=None) or hf.update(num_class_embeds=-1),
     "num_class_embeds=-1 must be null or an integer >= 0"),
    (lambda hf: hf["_genmodels"].update(schedule={"beta_schedule": "linear"}), "_genmodels.schedule=.* must be an object with "
                                                             "exactly the keys"),
])
def test_config_values_are_refused_naming_what_the_user_wrote(exported, tmp_path, edit, named):
    folder = _copy(exported, tmp_path / "d", edit)
    with pytest.raises(ConversionError, match=named):
        genmodels.load(folder)
