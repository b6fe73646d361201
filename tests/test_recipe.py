"""The paper's recipe, exactly (issue 13): ImageNet initialisation, each architecture's input size,
and a loud line when a preset backbone starts from random weights."""

import pytest
import torch

from rmnet.cli import build_parser, config_from_args, main
from rmnet.config import TrainConfig, build_model
from rmnet.models import PRESETS, list_models, model_entry
from rmnet.models.weights import IMAGENET, resolve_weights


def test_the_papers_recipe_starts_from_imagenet_for_60_epochs_and_80_for_retrieval():
    config = TrainConfig.paper("resnet18")
    assert (config.pretrained, config.epochs, config.hash_bits) == (IMAGENET, 60, None)
    retrieval = TrainConfig.paper("resnet18", task="retrieval")
    assert (retrieval.pretrained, retrieval.epochs, retrieval.hash_bits) == (IMAGENET, 80, 16)
    assert TrainConfig.paper("resnet18", epochs=3).epochs == 3  # explicit options override it
    with pytest.raises(ValueError, match="task must be"):
        TrainConfig.paper("resnet18", task="segmentation")


def test_the_papers_recipe_pads_rm_copies_at_angles_between_quarter_turns():
    """The paper zero-pads a feature map before rotating it by 45° (k = 8) so that no corner is lost;
    ``rm_padding`` reaches every RotationMeanout of the model, and the recipe selects it."""
    from rmnet.config import RM_PADDINGS
    from rmnet.meanout import PADDINGS, RotationMeanout

    assert RM_PADDINGS == PADDINGS  # config.py cannot import torch to read them
    assert TrainConfig.paper("small_cnn").rm_padding == "full" and TrainConfig().rm_padding == "none"
    for padding in RM_PADDINGS:
        model = build_model(TrainConfig(arch="small_cnn", rm="all", k=8, rm_padding=padding), 3)
        regions = [m for m in model.modules() if isinstance(m, RotationMeanout)]
        assert regions and {region.padding for region in regions} == {padding}
    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--rm-padding", "full", "--out", "r"])).rm_padding == "full"
    with pytest.raises(ValueError, match="rm_padding must be one of none, full"):
        TrainConfig(rm_padding="corners")


def test_recipe_paper_on_the_command_line_and_explicit_options_override_it():
    parse = build_parser().parse_args
    config = config_from_args(parse(["train", "--recipe", "paper", "--arch", "inception_v3", "--out", "r"]))
    assert (config.arch, config.pretrained, config.epochs, config.input_size()) == (
        "inception_v3", IMAGENET, 60, 299,
    )  # fmt: skip
    hashing = config_from_args(parse(["train", "--recipe", "paper", "--hash-bits", "16", "--out", "r"]))
    assert (hashing.epochs, hashing.hash_bits) == (80, 16)
    override = config_from_args(parse(["train", "--recipe", "paper", "--epochs", "2", "--out", "r"]))
    assert override.epochs == 2 and override.pretrained == IMAGENET
    assert config_from_args(parse(["train", "--out", "r"])).pretrained is None  # without it: random


@pytest.mark.parametrize(("arch", "size", "resize"), [("inception_v3", 299, 342), ("resnet18", 224, 256)])
def test_the_image_size_defaults_to_the_architectures_own_input_size(arch, size, resize):
    config = TrainConfig(arch=arch)
    assert (config.input_size(), config.resize_short_edge()) == (size, resize)
    assert TrainConfig(arch=arch, image_size=64).input_size() == 64
    assert model_entry(arch).input_size == size


def test_missing_imagenet_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = PRESETS["resnet18"].weights
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights(IMAGENET, weights, "resnet18")
    message = str(error.value)
    assert weights.filename in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "never downloads" in message


def test_a_preset_trained_from_random_weights_says_so_in_one_line(tmp_path, lesion_root, capsys):
    argv = ["train", "--data", str(lesion_root), "--out", str(tmp_path / "run"), "--arch", "resnet18"]
    argv += ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("starts from random weights") == 1 and "--recipe paper" in err


@pytest.fixture(scope="module")
def imagenet_hub(tmp_path_factory):
    """A torch home whose hub cache holds a torchvision-layout weights file for every preset that
    has published ImageNet weights (random values: only the layout matters here)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    builders = {
        "inception_v3": lambda: torchvision.models.inception_v3(weights=None, init_weights=False),
    }
    for name, preset in PRESETS.items():
        if preset.weights is None or name.startswith("arlnet"):  # ARLNet reads ResNet's file
            continue
        build = builders.get(name, lambda name=name: torchvision.models.get_model(name, weights=None))
        model = build()
        torch.save(model.state_dict(), home / "hub" / "checkpoints" / preset.weights.filename)
    return home


@pytest.mark.parametrize("arch", list_models())
def test_recipe_paper_trains_every_registered_model(arch, imagenet_hub, lesion_root, tmp_path, monkeypatch):
    """One tiny epoch with --recipe paper: the recipe forces no option a model does not take
    (it once forced rm_padding on every architecture), and ImageNet weights start every model
    that has them."""
    monkeypatch.setenv("TORCH_HOME", str(imagenet_hub))
    entry = model_entry(arch)
    size = max(32, entry.min_input_size)
    out = tmp_path / "run"
    argv = ["train", "--recipe", "paper", "--arch", arch, "--data", str(lesion_root), "--out", str(out)]
    argv += ["--image-size", str(size), "--epochs", "1", "--batch-size", "16", "--workers", "0", "--quiet"]
    assert main(argv) == 0
    config = TrainConfig.from_json(out / "config.json")
    assert config.pretrained == (IMAGENET if entry.has_imagenet_weights else None)
    assert config.epochs == 1 and (out / "checkpoints" / "best.pt").is_file()


def test_a_training_step_returns_the_codes_before_the_heads_dropout():
    """EfficientNet's head dropout worked in place: it overwrote the features returned as codes
    (and broke TI-pooling's backward through its max)."""
    model = build_model(TrainConfig(arch="efficientnet_b0"), 3).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    codes, _ = model.forward_codes(x)
    torch.testing.assert_close(codes, model.forward_features(x))
