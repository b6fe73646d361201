"""Codes: embedding a data set in order, packing signs into bytes, fingerprinting the model."""

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import rmnet
from rmnet.retrieval.codes import embed_dataset, model_fingerprint, pack_codes


def tiny_model():
    torch.manual_seed(0)
    return rmnet.create_model("small_cnn", num_classes=3, hash_bits=8, width=8)


def test_embed_dataset_returns_eval_mode_codes_and_labels_in_dataset_order():
    model = tiny_model().train()
    images, labels = torch.randn(10, 3, 16, 16), torch.tensor([2, 0, 1, 1, 0, 2, 2, 1, 0, 0])
    codes, got_labels = embed_dataset(model, TensorDataset(images, labels), batch_size=4, progress=False)
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        expected = model.eval().embed(images).numpy()
    assert codes.dtype == np.float32 and codes.shape == (10, 8)
    assert np.allclose(codes, expected, atol=1e-5)
    assert got_labels.tolist() == labels.tolist()


def test_embedding_an_empty_dataset_is_an_error():
    empty = TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        embed_dataset(tiny_model(), empty, progress=False)


def test_pack_codes_keeps_one_bit_per_positive_code_eight_to_a_byte():
    codes = np.array([[0.5, -1, 2, 0, -3, 5, 0.1, -0.1, 1, 1, -1, -1, -1, -1, -1, 1]])
    # bits 1 0 1 0 0 1 1 0 | 1 1 0 0 0 0 0 1  (0 counts as negative)
    assert pack_codes(codes).tolist() == [[0b10100110, 0b11000001]]
    assert pack_codes(np.ones((3, 12))).shape == (3, 2)  # 12 bits padded to 2 bytes


def test_fingerprint_is_equal_for_equal_weights_and_changes_with_any_weight_or_buffer():
    model = tiny_model()
    twin = copy.deepcopy(model)
    assert model_fingerprint(model) == model_fingerprint(twin)
    with torch.no_grad():
        twin.hash.weight[0, 0] += 1e-3
    assert model_fingerprint(twin) != model_fingerprint(model)
    other = copy.deepcopy(model)
    other.block1[1].running_mean += 1.0  # BatchNorm statistics change the codes too
    assert model_fingerprint(other) != model_fingerprint(model)
