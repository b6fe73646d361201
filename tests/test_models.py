"""create_model: the paper's backbones with RM at the paper's positions, weights and heads."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from rmnet import RotationMeanout, create_model, list_models, register_model
from rmnet.models import PRESETS, ImageClassifier, parse_rm_spec

PAPER_BACKBONES = ["resnet18", "resnet34", "inception_v3", "efficientnet_b0", "regnet_y_800mf"]
EXPECTED_REGIONS = {
    "resnet18": [("layer3.0", "layer4.1")],
    "resnet34": [("layer3.0", "layer4.2")],  # blocks 8–16 of 3+4+6+3: layer1 is 1–3, layer2 4–7
    "inception_v3": [("Mixed_6b", "Mixed_7c")],
    "efficientnet_b0": [("features.4", "features.8")],
    "regnet_y_800mf": [("trunk_output.block3", "trunk_output.block4")],
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    size = PRESETS[name].min_input_size if name == "inception_v3" else 64
    return torch.randn(batch, 3, size, size)


def region_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature maps that enter the first RM region for input x."""
    captured = {}
    handle = model.rm[0].register_forward_pre_hook(lambda m, args: captured.setdefault("z", args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured["z"]


@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_paper_backbone_embeds_rm_at_the_papers_position(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, rm="paper").eval()
    assert model.rm_regions() == EXPECTED_REGIONS[name]

    # The RM region is equivariant: rotate its input, its output rotates the same way.
    region = model.rm[0]
    z = region_input(model, small_input(name))
    with torch.no_grad():
        out = region(z)
        for g in region.group.elements:
            assert torch.allclose(region(region.group.act(z, g)), region.group.act(out, g), atol=1e-4)

    # No parameter added, and the plain network's keys are unchanged.
    plain = create_model(name, num_classes=8)
    assert n_params(model) == n_params(plain)
    assert list(model.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_plain_weights_load_into_the_rm_model_and_forward_backward_run(name, tmp_path):
    torch.manual_seed(0)
    plain = create_model(name, num_classes=8)
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    model = create_model(name, num_classes=8, rm="paper", pretrained=path)
    for (key, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key

    model.train()
    logits = model(small_input(name))
    assert logits.shape == (2, 8)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torchvision_imagenet_checkpoint_loads_and_the_head_is_replaced(tmp_path):
    reference = torchvision.models.resnet18(weights=None)  # the layout of ImageNet weights
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", num_classes=8, rm="5-8", pretrained=path)
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 8 and not torch.equal(model.fc.weight[:8], reference.fc.weight[:8])
    full = create_model("resnet18", num_classes=1000, pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(full(x), reference.eval()(x), atol=1e-5)


def test_inception_skips_the_auxiliary_head_and_transforms_input_for_imagenet_weights(tmp_path):
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("inception_v3", num_classes=8, rm="C-E", pretrained=path)
    assert not any(key.startswith("AuxLogits") for key in model.state_dict())
    assert model.input_transform is not None
    assert create_model("inception_v3", num_classes=8).input_transform is None
    x = torch.zeros(1, 3, 75, 75)  # ImageNet mean, normalised → the [-1, 1] scaling's value
    expected = (torch.tensor([0.485, 0.456, 0.406]) - 0.5) / 0.5
    assert torch.allclose(model.input_transform(x)[0, :, 0, 0], expected)


def test_weights_for_another_architecture_are_refused_with_the_keys_named(tmp_path):
    path = tmp_path / "resnet34.pt"
    torch.save(create_model("resnet34", num_classes=8).state_dict(), path)
    with pytest.raises(ValueError, match="unexpected key layer1.2"):
        create_model("resnet18", num_classes=8, pretrained=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("resnet18", pretrained=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        create_model("resnet18", pretrained=tmp_path / "junk.pt")


def test_pretrained_true_reads_the_torch_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_model("resnet18", pretrained=True)
    cached = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    assert create_model("resnet18", num_classes=8, pretrained=True).fc.out_features == 8


def test_hash_layer_sits_between_pooled_features_and_the_classifier():
    model = create_model("resnet18", num_classes=8, rm="5-8", hash_bits=16).eval()
    x = torch.randn(3, 3, 64, 64)
    codes, logits = model.forward_codes(x)
    assert codes.shape == (3, 16) and logits.shape == (3, 8)
    assert torch.allclose(model.embed(x), codes) and torch.allclose(model(x), logits)
    assert torch.allclose(logits, model.fc(codes), atol=1e-6)
    assert create_model("resnet18", num_classes=8).embed(x).shape == (3, 512)
    with pytest.raises(ValueError, match="positive number of bits"):
        create_model("resnet18", hash_bits=0)


def test_strict_rm_makes_features_invariant_to_rotating_the_region_input():
    """RM over the whole trunk ('all'): the network is invariant to rotating the image itself."""
    for name in ["small_cnn", "resnet18"]:
        model = create_model(name, num_classes=5, rm="all").eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            reference = model(x)
            for quarter_turns in range(1, 4):
                assert torch.allclose(model(torch.rot90(x, quarter_turns, (-2, -1))), reference, atol=1e-4)


def test_dihedral_rm_is_also_invariant_to_mirror_images():
    model = create_model("small_cnn", num_classes=5, rm="all", dihedral=True).eval()
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model(torch.flip(x, (-1,))), model(x), atol=1e-4)


def test_a_plain_network_is_not_invariant():
    model = create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(torch.rot90(x, 1, (-2, -1))) - model(x)).abs().max() > 1e-3


def test_rm_positions_parse_numbers_types_relaxed_and_paths():
    resnet = PRESETS["resnet18"]
    stem = len(resnet.stem)
    assert parse_rm_spec("5-8", resnet) == [(stem + 4, stem + 7)]
    assert parse_rm_spec("relaxed:5", resnet) == [(stem + 4, stem + 4)]
    assert parse_rm_spec(["layer3", "layer4.1"], resnet) == [(stem + 4, stem + 5), (stem + 7, stem + 7)]
    assert parse_rm_spec(None, resnet) == [] and parse_rm_spec("all", resnet) == [(0, stem + 7)]
    inception = PRESETS["inception_v3"]
    assert parse_rm_spec("C-E", inception) == [(len(inception.stem) + 4, len(inception.stem) + 10)]
    with pytest.raises(ValueError, match="unknown block '9' for resnet18"):
        parse_rm_spec("5-9", resnet)
    with pytest.raises(ValueError, match="module types A, B, C, D, E"):
        parse_rm_spec("F", inception)
    with pytest.raises(ValueError, match="comes after"):
        parse_rm_spec("6-5", resnet)
    with pytest.raises(ValueError, match="not a block of resnet18"):
        parse_rm_spec(["layer9"], resnet)


def test_relaxed_rm_wraps_one_block_and_lists_give_one_rm_per_path():
    assert create_model("resnet18", rm="relaxed:5").rm_regions() == [("layer3.0", "layer3.0")]
    model = create_model("resnet18", rm=["layer3", "layer4"])
    assert model.rm_regions() == [("layer3.0", "layer3.1"), ("layer4.0", "layer4.1")]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8)


def test_ablations_through_the_factory():
    plain = create_model("small_cnn", num_classes=4).eval()
    wr = create_model("small_cnn", num_classes=4, rm="3-4", rotate=False).eval()
    wr.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(wr(x), plain(x), atol=1e-6)
    nws = create_model("small_cnn", num_classes=4, rm="3-4", share_weights=False)
    region_params = n_params(plain.block3) + n_params(plain.block4)
    assert n_params(nws) == n_params(plain) + 3 * region_params


def test_embedding_fusion_through_the_factory_adds_only_its_1x1_convs():
    model = create_model("resnet18", num_classes=8, rm="5-8", fusion="embedding")
    extra = n_params(model) - n_params(create_model("resnet18", num_classes=8))
    assert extra == 4 * 512 * 512 + 512
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8)


def test_any_torchvision_cnn_takes_rm_by_module_path():
    model = create_model("mobilenet_v3_small", num_classes=3, rm=["features.9"])
    assert isinstance(model.model.features[9], RotationMeanout)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="no block numbering"):
        create_model("mobilenet_v3_small", rm="5-8")
    with pytest.raises(ValueError, match="hash_bits needs a registered model"):
        create_model("mobilenet_v3_small", hash_bits=16)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")
    assert set(PAPER_BACKBONES) <= set(list_models())


@pytest.fixture
def temporary_model_name():
    """A model name for a test to register; removed from the registry afterwards, so the test can
    run again in the same process (pytest --count, a notebook, a second collection)."""
    name = "test_tiny_linear"
    yield name
    from rmnet.models import factory

    if hasattr(factory, "unregister_model"):
        factory.unregister_model(name)
    else:  # the registry before unregister_model existed
        for registry in ("_REGISTRY", "_CUSTOM"):
            getattr(factory, registry, {}).pop(name, None)
    assert name not in list_models()


@pytest.mark.parametrize("attempt", [1, 2])  # the second attempt fails if the first leaked its name
def test_registered_builders_get_only_the_options_the_caller_set(temporary_model_name, attempt):
    class TinyLinear(ImageClassifier):
        def __init__(self, num_classes: int, width: int = 4) -> None:
            super().__init__()
            self.num_classes, self.num_features = num_classes, 3
            self.fc = nn.Linear(3, num_classes)

        def forward_features(self, x):
            return x.mean(dim=(-2, -1))

        def forward_head(self, features):
            return features, self.fc(features)

    @register_model(temporary_model_name)
    def tiny(num_classes: int, width: int = 4) -> nn.Module:
        return TinyLinear(num_classes, width)

    assert temporary_model_name in list_models()
    assert isinstance(create_model(temporary_model_name, num_classes=3, width=2), TinyLinear)
    with pytest.raises(ValueError, match=r"does not take .*rm"):
        create_model(temporary_model_name, rm="5-8")
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(tiny)


def test_overlapping_rm_regions_are_an_error():
    with pytest.raises(ValueError, match="RM regions overlap"):
        create_model("resnet18", rm=["layer3", "layer3.1"])  # layer3.1 is inside layer3
    with pytest.raises(ValueError, match="RM regions overlap"):
        create_model("small_cnn", rm=["block2", "block2"], width=8)


def test_relaxed_range_puts_one_rm_around_each_block():
    model = create_model("resnet18", rm="relaxed:5-8")
    assert model.rm_regions() == [
        ("layer3.0", "layer3.0"),
        ("layer3.1", "layer3.1"),
        ("layer4.0", "layer4.0"),
        ("layer4.1", "layer4.1"),
    ]
    assert len(model.rm) == 4 and n_params(model) == n_params(create_model("resnet18"))
    # Each wrapped block is equivariant on its own: rotating its input rotates its output.
    region = model.rm[1]
    z = torch.randn(1, 256, 8, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(region(torch.rot90(z, 1, (-2, -1))), torch.rot90(region(z), 1, (-2, -1)))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8)


def test_deepcopy_gives_an_independent_model_with_the_same_function():
    model = create_model("small_cnn", num_classes=4, rm="3-4").eval()
    clone = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(clone(x), model(x))
        clone.block4[0].weight.add_(1.0)
        assert not torch.allclose(clone(x), model(x))
