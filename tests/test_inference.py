"""rmnet.inference: the one loop over a dataset, shared by evaluation and retrieval."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmnet import create_model
from rmnet.inference import infer


def test_infer_returns_logits_per_view_and_codes_where_asked_in_dataset_order():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, hash_bits=5, width=4).eval()
    images, labels = torch.randn(10, 3, 12, 12), torch.arange(10) % 3
    views = {0: lambda x, start: x, 180: lambda x, start: torch.rot90(x, 2, dims=(-2, -1))}
    y, outputs = infer(model, TensorDataset(images, labels), views, batch_size=4, device="cpu")
    assert (y == labels.numpy()).all()
    with torch.no_grad():
        codes, logits = model.forward_codes(images)
        rotated = model(torch.rot90(images, 2, dims=(-2, -1)))
    assert torch.allclose(torch.from_numpy(outputs[0].logits), logits, atol=1e-5)
    assert torch.allclose(torch.from_numpy(outputs[0].codes), codes, atol=1e-5)
    assert torch.allclose(torch.from_numpy(outputs[180].logits), rotated, atol=1e-5)
    assert outputs[180].codes is None  # codes are kept for the first view only, by default


def test_infer_refuses_a_module_that_is_not_an_rmnet_model():
    with pytest.raises(TypeError, match="not an rmnet model"):
        infer(nn.Linear(3, 2), TensorDataset(torch.randn(2, 3), torch.zeros(2)))
