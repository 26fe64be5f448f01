"""Import torchscale 0.3.0's RetNet for the parity tests and the benchmark, without timm.

torchscale installs only as ``pip install --no-deps torchscale==0.3.0 fairscale==0.4.0`` (its timm
dependency drags in torchvision and a CUDA torch), and ``torchscale/component/droppath.py`` imports
``timm.models.layers.drop_path``. When timm is absent we register a stand-in module with that one
function (stochastic depth: zero a sample's residual branch with probability p in training and
rescale the survivors by 1/(1-p); identity at eval and p = 0) before importing.

Where torchscale itself is missing, the tests skip on a developer's machine and FAIL under CI
(``CI`` or ``GENMODELS_REQUIRE_REFERENCES`` set: tests/helpers/references.py), so CI can never go green
without running them (`make setup` installs it).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch

from tests.helpers.references import references_required

INSTALL = "pip install --no-deps torchscale==0.3.0 fairscale==0.4.0"


def _drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
               scale_by_keep: bool = True) -> torch.Tensor:
    """Stochastic depth (Huang et al., 2016), timm's signature: per sample, keep the branch with
    probability 1-p and divide it by 1-p (when ``scale_by_keep``)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep if scale_by_keep and keep > 0 else x * mask


def _install_timm_stand_in() -> None:
    if "timm.models.layers" in sys.modules or importlib.util.find_spec("timm") is not None:
        return
    timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
    layers.drop_path = _drop_path
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def torchscale_retnet():
    """(RetNetConfig, RetNetDecoder) of torchscale 0.3.0, or None when it is not installed."""
    if importlib.util.find_spec("torchscale") is None or importlib.util.find_spec("fairscale") is None:
        return None
    _install_timm_stand_in()
    config = importlib.import_module("torchscale.architecture.config")
    retnet = importlib.import_module("torchscale.architecture.retnet")
    return config.RetNetConfig, retnet.RetNetDecoder


def require_torchscale():
    """The two classes, or skip (a developer without it) / fail (CI) naming the install command."""
    found = torchscale_retnet()
    if found is None:
        msg = f"torchscale 0.3.0 is not installed ({INSTALL}; `make setup` does it)"
        if os.environ.get("CI") or references_required():
            pytest.fail(msg + " — CI must run the torchscale parity tests", pytrace=False)
        pytest.skip(msg)
    return found
