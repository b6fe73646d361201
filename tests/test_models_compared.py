"""The contract every compared method keeps: one factory, the same methods, 224 px and small inputs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rmnet import create_model
from rmnet.models import ImageClassifier

TINY = {
    "arlnet18": dict(width=4),
    "arlnet34": dict(width=4),
    "stn_resnet18": dict(width=4),
    "cycnn_resnet18": dict(width=4),
    "orn_resnet18": dict(width=2),
    "e4net_resnet18": dict(width=2),
    "gcnn_resnet18": dict(width=2),
}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [224, 33])
def test_runs_at_224_px_and_at_benchmark_sizes(name, size):
    model = create_model(name, num_classes=5, **TINY[name]).eval()
    assert isinstance(model, ImageClassifier)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


@pytest.mark.parametrize("name", TINY)
def test_offers_features_codes_and_logits_with_a_hash_layer(name):
    model = create_model(name, num_classes=3, hash_bits=6, **TINY[name]).eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        features = model.forward_features(x)
        codes, logits = model.forward_codes(x)
        assert features.shape == (2, model.num_features)
        assert codes.shape == (2, 6) and logits.shape == (2, 3)
        torch.testing.assert_close(model.embed(x), codes)
        torch.testing.assert_close(model(x), logits)
    assert model.code_length == 6 and model.num_classes == 3


@pytest.mark.parametrize("name", TINY)
def test_reports_parameters_and_flops(name):
    model = create_model(name, num_classes=3, **TINY[name]).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 33, 33))
    assert counter.get_total_flops() > 0
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", TINY)
def test_an_option_the_model_does_not_take_is_one_clear_error(name):
    with pytest.raises(ValueError, match="does not take"):
        create_model(name, num_classes=3, no_such_option=1, **TINY[name])


def test_parameter_counts_at_full_width_stay_near_resnet18():
    def count(name, **options):
        return sum(p.numel() for p in create_model(name, num_classes=8, **options).parameters())

    plain = count("resnet18")
    for name in ("arlnet18", "stn_resnet18", "cycnn_resnet18", "orn_resnet18", "gcnn_resnet18"):
        assert abs(count(name) / plain - 1) < 0.01, name
    assert count("arlnet18") - plain == 8  # one α per block
    assert count("cycnn_resnet18") == plain
