"""x̂0 / ε̂ per prediction type and dynamic thresholding, against diffusers and against the definitions."""
import diffusers
import pytest
import torch

from genmodels.schedulers import PREDICTION_TYPES
from genmodels.schedulers.prediction import dynamic_threshold, original_sample, predicted_noise

from .common import seeded


@pytest.mark.parametrize("ratio, max_value", [(0.995, 1.0), (0.995, 2.5), (0.9, 4.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dynamic_threshold_equals_diffusers(ratio, max_value, dtype):
    # per sample: one inside ±1 (s clamps to 1), one a little outside, one far outside (s clamps to max)
    x0 = torch.cat([seeded(0, (1, 3, 4, 4), 0.3), seeded(1, (1, 3, 4, 4), 1.5), seeded(2, (1, 3, 4, 4), 8.0)]).to(dtype)
    ref = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    expected = ref._threshold_sample(x0)
    ours = dynamic_threshold(x0, ratio, max_value)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    assert torch.equal(ours[0], x0[0])  # s = 1 and |x̂0| ≤ 1: untouched


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_prediction_types_invert_the_forward_process(kind):
    # x_t = α·x0 + σ·ε; each parametrisation of the exact answer gives back x0 and ε
    alpha, sigma = torch.tensor(0.6), torch.tensor(0.8)
    x0, eps = seeded(0), seeded(1)
    x_t = alpha * x0 + sigma * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[kind]
    got_x0 = original_sample(kind, out, x_t, alpha, sigma)
    torch.testing.assert_close(got_x0, x0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(predicted_noise(kind, out, x_t, got_x0, alpha, sigma), eps, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        original_sample("flow_prediction", out, x_t, alpha, sigma)
