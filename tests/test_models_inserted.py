"""Compared methods inserted into a pretrained ResNet18 the way RM is (issue 18, item 1): the
untouched layers keep the weights file's values, the changed part is invariant to quarter turns
where the method promises it, and bad positions or methods fail with one clear line."""

import pytest
import torch
import torchvision

from rmnet.cli import main
from rmnet.config import METHODS as CONFIG_METHODS
from rmnet.equivariance import check_invariance
from rmnet.groups import CyclicGroup
from rmnet.models import METHODS, PRESETS, InsertedNet, allowed_positions, create_model
from rmnet.models.resnets import resnet_preset

C4 = CyclicGroup(4)
RESNET18_BLOCKS = [
    "layer1.0",
    "layer1.1",
    "layer2.0",
    "layer2.1",
    "layer3.0",
    "layer3.1",
    "layer4.0",
    "layer4.1",
]
# (method, position, changed module paths, region input (C, side)): two positions per method; the
# group methods and CyCNN reach the last block, so their features are invariant to quarter turns
# of the map entering the changed part. Sides: odd before each stride-2 block (GCNN, E4-Net, ORN);
# the polar map's rows a multiple of 4 × the stride (CyCNN).
CASES = [
    ("gcnn", "5-8", RESNET18_BLOCKS[4:], (128, 9)),
    ("gcnn", "8", RESNET18_BLOCKS[7:], (512, 3)),
    ("e4net", "7-8", RESNET18_BLOCKS[6:], (256, 5)),
    ("e4net", "8", RESNET18_BLOCKS[7:], (512, 3)),
    ("orn", "6-8", RESNET18_BLOCKS[5:], (256, 5)),
    ("orn", "8", RESNET18_BLOCKS[7:], (512, 3)),
    ("cycnn", "7-8", [], (256, 16)),  # convolutions turn cylindrical but keep their weights
    ("cycnn", "8", [], (512, 8)),
    ("stn", "1", [], None),
    ("stn", "5", [], None),
    ("stn_affine", "3", [], None),
    ("stn_affine", "all", [], None),
]


def narrow(method: str, at: str, num_classes: int = 4) -> InsertedNet:
    """``method`` in a ResNet18 of width 8 (torchvision's layout, fewer channels): fast checks."""
    return InsertedNet(resnet_preset(18), num_classes, method, at, width=8)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision-layout ResNet18 state_dict (random but fixed values) in a torch hub cache."""
    home = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():  # BN statistics away from 0/1, so that copying them is checked
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 1.5)
    path = home / "hub" / "checkpoints" / PRESETS["resnet18"].weights.filename
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return home, state


@pytest.fixture
def hub(resnet18_file, monkeypatch):
    home, state = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    return state


def test_the_config_and_the_models_name_the_same_methods():
    assert CONFIG_METHODS == METHODS  # config.py cannot import torch to read them


@pytest.mark.parametrize(("method", "at", "changed", "region"), CASES)
def test_untouched_layers_keep_the_weights_file_and_changed_ones_do_not(hub, method, at, changed, region):
    model = create_model("resnet18", 8, method=method, at=at, pretrained="imagenet")
    assert isinstance(model, InsertedNet)
    mine = model.state_dict()
    untouched = [
        k for k in hub if not k.startswith("fc.") and not k.startswith(tuple(p + "." for p in changed))
    ]
    assert untouched and all(torch.equal(mine[k], hub[k]) for k in untouched)
    for path in changed:  # the group blocks are new (random) layers at the block's own path
        block_keys = [  # (BN weights 1, biases 0 and counters are the same in any new layer)
            k for k in hub if k.startswith(path + ".") and (hub[k].dim() > 1 or "running_" in k)
        ]
        assert block_keys
        assert not any(
            k in mine and mine[k].shape == hub[k].shape and torch.equal(mine[k], hub[k]) for k in block_keys
        )
    assert mine["fc.weight"].shape == (8, 512)


def _region_logits(model: InsertedNet):
    return lambda h: model.forward_head(model.features_from_region(h))[1]


@pytest.mark.parametrize(("method", "at", "changed", "region"), [c for c in CASES if c[3] is not None])
def test_the_changed_part_is_invariant_to_quarter_turns_of_its_input(method, at, changed, region):
    """At width 8 (channels / 8): the same layers, fast."""
    torch.manual_seed(1)
    model = narrow(method, at).eval()
    assert model.invariant
    channels, side = region
    errors = check_invariance(_region_logits(model), C4, torch.randn(2, channels // 8, side, side), rtol=1e-4)
    assert max(errors.values()) < 1e-4
    image = torch.randn(1, 3, 65, 65)  # the map from an image reaches the changed part there
    torch.testing.assert_close(model(image), _region_logits(model)(model.region_input(image)))


@pytest.mark.parametrize("method", ["gcnn", "e4net", "orn", "cycnn"])
def test_in_the_pretrained_resnet18_too(hub, method):
    torch.manual_seed(1)
    model = create_model("resnet18", 8, method=method, at="8", pretrained="imagenet").eval()
    side = 8 if method == "cycnn" else 3
    check_invariance(_region_logits(model), C4, torch.randn(1, 512, side, side), rtol=1e-4)


@pytest.mark.parametrize("method", ["gcnn", "e4net", "orn"])
def test_a_group_method_at_all_lifts_the_stem_and_makes_the_whole_model_invariant(method):
    torch.manual_seed(2)
    model = narrow(method, "all").eval()
    assert model.invariant and model.region_start == 0
    check_invariance(model, C4, torch.randn(2, 3, 33, 33), rtol=1e-4)  # 33 ≡ 1 (mod 32): exact


def test_a_group_method_ending_before_the_last_block_gives_plain_maps_back():
    model = narrow("gcnn", "3-4").eval()
    assert not model.invariant
    assert model(torch.randn(2, 3, 33, 33)).shape == (2, 4)
    assert model.region_input(torch.randn(1, 3, 33, 33)).shape[1] == 8  # layer2 gets layer1's width


@pytest.mark.parametrize("method", ["stn", "stn_affine"])
def test_an_inserted_transformer_starts_as_the_identity(hub, method):
    plain = create_model("resnet18", 8, pretrained="imagenet").eval()
    model = create_model("resnet18", 8, method=method, at="5", pretrained="imagenet").eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # the same classifier
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), plain(x), atol=1e-4, rtol=1e-4)
    assert model.transformer.localization.lr_scale == 0.1  # trains at a lower learning rate


def test_method_rm_is_rm():
    torch.manual_seed(3)
    a = create_model("small_cnn", 4, method="rm", at="3-4")
    torch.manual_seed(3)
    b = create_model("small_cnn", 4, rm="3-4")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    assert a.rm_regions() == b.rm_regions()


def test_allowed_positions_in_resnet18():
    blocks = [str(b) for b in range(1, 9)]
    to_last = [f"{b}-8" for b in range(1, 8)]
    assert allowed_positions("gcnn", "resnet18") == blocks + to_last + ["all"]
    assert allowed_positions("stn_affine", "resnet18") == blocks + ["all"]
    assert (
        allowed_positions("cycnn", "resnet18")
        == allowed_positions("rm", "resnet18")
        == to_last + ["8", "all"]
    )
    assert allowed_positions("orn", "resnet34")[-2:] == ["15-16", "all"]
    assert "9" in allowed_positions("stn", "efficientnet_b0")
    for method in ("gcnn", "stn", "cycnn"):  # every listed position builds
        for at in allowed_positions(method, "resnet18")[::5]:
            narrow(method, at).eval()(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(method="gcnn", at="9"), "unknown block '9' for resnet18"),
        (dict(method="gcnn", at="paper"), "is for RM only"),
        (dict(method="gcnn", at="relaxed:5"), "is for RM only"),
        (dict(method="gcnn"), "give method and at together"),
        (dict(method="p4m", at="5"), "unknown method 'p4m'; choose one of rm, gcnn"),
        (dict(method="stn", at="5-8"), "warps the input of one block"),
        (dict(method="cycnn", at="5-7"), "must run to the last one, e.g. '5-8'"),
        (dict(method="gcnn", at="8", k=8), "RM option(s) k do not apply to method 'gcnn'"),
        (dict(method="rm", at="5-8", rm="5-8"), "not both"),
        (dict(arch="efficientnet_b0", method="gcnn", at="5"), "use resnet18 or resnet34"),
        (dict(arch="inception_v3", method="cycnn", at="10-11"), "cycnn needs every padding as a module"),
        (dict(arch="stn_resnet18", method="gcnn", at="5"), "takes no inserted method"),
    ],
)
def test_bad_methods_and_positions_fail_in_one_clear_line(call, message):
    arch = call.pop("arch", "resnet18")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model(arch, 2, **call)
    with pytest.raises(ValueError, match="unknown method"):
        allowed_positions("p4m", "resnet18")


def test_rmnet_train_method_at_on_the_command_line(hub, tmp_path, lesion_root):
    out = tmp_path / "run"
    argv = ["train", "--data", str(lesion_root), "--out", str(out), "--recipe", "paper", "--method", "e4net"]
    argv += [
        "--at",
        "8",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    assert (state["config"]["method"], state["config"]["at"], state["config"]["pretrained"]) == (
        "e4net",
        "8",
        "imagenet",
    )
    assert any(k.startswith("layer4.1.conv2.span") for k in state["model"])  # the E4 layer is there


def test_an_expanded_group_weight_is_kept_only_while_the_weight_is_unchanged():
    model = narrow("gcnn", "8").eval()
    h = torch.randn(1, 64, 3, 3)
    with torch.no_grad():
        before = _region_logits(model)(h)
        model.get_submodule("layer4.1.conv2").weight.mul_(3.0)  # in place: a new version
        after = _region_logits(model)(h)
    assert not torch.allclose(before, after)
    fresh = narrow("gcnn", "8").eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(_region_logits(fresh)(h), after)  # with gradients on: rebuilt each call


def test_a_run_of_an_inserted_method_loads_back_for_evaluation(hub, tmp_path, lesion_root):
    from rmnet.evaluate import evaluate_run
    from rmnet.runs import Run

    out = tmp_path / "run"
    argv = ["train", "--data", str(lesion_root), "--out", str(out), "--recipe", "paper", "--method", "cycnn"]
    argv += [
        "--at",
        "7-8",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0
    model = Run(out).load_model()
    assert isinstance(model, InsertedNet) and (model.method, model.at) == ("cycnn", "7-8")
    report = evaluate_run(out, tsne=False, progress=False, sweep_step=90)
    assert 0.0 <= report["classification"]["accuracy"] <= 1.0
