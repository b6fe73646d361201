"""ARLNet: torchvision's ResNet layout with attention residual learning; ImageNet weights load; RM fits."""

import pytest
import torch
import torchvision

from rmnet import create_model
from rmnet.equivariance import check_invariance
from rmnet.groups import CyclicGroup
from rmnet.models.arlnet import ARLBlock, attention_map
from rmnet.models.resnets import resnet


def test_resnet_builder_has_torchvisions_layout_and_computes_the_same_network():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=7).eval()
    ours = resnet(18, num_classes=7).eval()
    ours.load_state_dict(reference.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 33, 33)
    torch.testing.assert_close(ours(x), reference(x))


def test_resnet_width_scales_every_stage():
    model = resnet(34, width=8, num_classes=3)
    assert model.layer1[0].conv1.out_channels == 8 and model.layer4[0].conv1.out_channels == 64
    assert len(model.layer3) == 6
    with pytest.raises(ValueError, match="does not take"):
        resnet(18, colour=True)


def test_arl_block_adds_alpha_times_softmax_attention_of_the_residual_times_the_shortcut():
    torch.manual_seed(0)
    block = ARLBlock(4, 4, alpha_init=0.5).eval()
    x = torch.randn(2, 4, 5, 5)
    residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    expected = torch.relu(x + residual + 0.5 * torch.softmax(residual, dim=1) * x)
    torch.testing.assert_close(block(x), expected)


def test_spatial_attention_normalises_each_channel_over_its_positions():
    f = torch.randn(2, 3, 4, 5)
    a = attention_map(f, "spatial")
    torch.testing.assert_close(a.sum(dim=(-2, -1)), torch.ones(2, 3))
    torch.testing.assert_close(attention_map(f, "channel").sum(dim=1), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="unknown ARL attention"):
        create_model("arlnet18", num_classes=3, width=4, attention="temporal")


def test_alpha_is_one_learnable_scalar_per_block():
    model = create_model("arlnet34", num_classes=3, width=4)
    alphas = [p for name, p in model.named_parameters() if name.endswith(".alpha")]
    assert len(alphas) == 16 and all(a.requires_grad and a.numel() == 1 for a in alphas)
    assert alphas[0].item() == pytest.approx(0.001)


@pytest.mark.parametrize("rm", [None, "5-8"])
def test_a_torchvision_resnet18_state_dict_loads_and_alphas_keep_their_start(tmp_path, rm):
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    model = create_model("arlnet18", num_classes=5, rm=rm, pretrained=tmp_path / "resnet18.pth")
    source = torch.load(tmp_path / "resnet18.pth")
    state = model.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):  # the 1000-class head is dropped for 5 classes
            assert torch.equal(state[key], value), key
    assert float(state["layer2.1.alpha"]) == pytest.approx(0.001)


def test_imagenet_weights_come_from_the_torch_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_model("arlnet18", num_classes=3, pretrained="imagenet")
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = create_model("arlnet18", num_classes=3, pretrained="imagenet")
    assert model.conv1.weight.shape == (64, 3, 7, 7)


def test_rotation_meanout_on_arlnet_is_invariant_over_its_region():
    torch.manual_seed(0)
    model = create_model("arlnet18", num_classes=3, rm="5-8", width=4).eval()
    assert model.rm_regions() == [("layer3.0", "layer4.1")]
    region = model.rm[0]
    features = torch.randn(2, 8, 9, 9)  # the input of block 5 (layer3.0) at width 4
    check_invariance(lambda t: region(t).mean(dim=(-2, -1)), CyclicGroup(4), features, rtol=1e-5)


def test_rotation_meanout_over_the_whole_arlnet_makes_it_invariant_to_quarter_turns():
    torch.manual_seed(0)
    model = create_model("arlnet18", num_classes=3, rm="all", width=4).eval()
    check_invariance(model, CyclicGroup(4), torch.randn(2, 3, 33, 33), rtol=1e-5)
