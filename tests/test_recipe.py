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
    torch.manual_seed(0)  # the same stochastic depth in both passes
    codes, _ = model.forward_codes(x)
    torch.manual_seed(0)
    torch.testing.assert_close(codes, model.forward_features(x))


def test_the_mwnl_recipe_is_its_authors_isic_2019_settings():
    config = TrainConfig.mwnl()
    assert (config.arch, config.pretrained, config.loss, config.optimizer) == (
        "regnet_y_800mf",
        IMAGENET,
        "mwnl",
        "adam",
    )
    assert (config.lr, config.weight_decay, config.lr_gamma) == (2e-4, 1e-4, 0.1)
    assert (config.milestones(), config.epochs, config.batch_size) == ([30, 40, 50, 60], 70, 32)
    assert (config.randaugment, config.resize, config.test_crops) == (True, 450, 16)
    assert config.model_options == {"dropblock": 0.1} and config.rotation_augmentation == 0.0
    parse = build_parser().parse_args
    cli = config_from_args(parse(["train", "--recipe", "mwnl", "--out", "r"]))
    assert cli == config
    rm = config_from_args(parse(["train", "--recipe", "mwnl", "--rm", "4-5", "--epochs", "2", "--out", "r"]))
    assert (rm.rm, rm.epochs, rm.rm_padding, rm.loss) == ("4-5", 2, "full", "mwnl")
    stn = TrainConfig.recipe("mwnl", "stn_resnet18")  # no DropBlock option there: left out, not an error
    assert stn.model_options == {} and stn.test_crops == 16
    with pytest.raises(ValueError, match="unknown recipe 'timm'; choose one of paper, mwnl"):
        TrainConfig.recipe("timm")


def test_the_mwnl_schedule_divides_the_learning_rate_by_ten_after_epochs_30_40_50_60():
    from rmnet.train import build_scheduler

    config = TrainConfig.mwnl()
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(config, optimizer)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate epoch e (0-based) trains at
        optimizer.step()
        scheduler.step()
    expected = {
        0: 2e-4,
        29: 2e-4,
        30: 2e-5,
        39: 2e-5,
        40: 2e-6,
        49: 2e-6,
        50: 2e-7,
        59: 2e-7,
        60: 2e-8,
        69: 2e-8,
    }
    assert {e: lrs[e] for e in expected} == pytest.approx(expected, rel=1e-9)
    paper = build_scheduler(TrainConfig(), optimizer)
    assert isinstance(paper, torch.optim.lr_scheduler.StepLR) and paper.step_size == 20


def test_train_follows_the_milestones(lesion_root, tmp_path):
    import pandas as pd

    argv = ["train", "--data", str(lesion_root), "--out", str(tmp_path / "run"), "--arch", "small_cnn"]
    argv += [
        "--image-size",
        "16",
        "--epochs",
        "3",
        "--lr-milestones",
        "1,2",
        "--lr",
        "0.01",
        "--workers",
        "0",
    ]
    assert main(argv + ["--batch-size", "16", "--quiet"]) == 0
    lrs = pd.read_csv(tmp_path / "run" / "metrics.csv")["lr"].tolist()
    assert lrs == pytest.approx([0.01, 0.001, 0.0001], rel=1e-9)


def test_dropblock_acts_after_the_last_two_blocks_in_training_only():
    from torchvision.ops import DropBlock2d

    torch.manual_seed(0)
    plain = build_model(TrainConfig(arch="small_cnn"), 3)
    dropping = build_model(TrainConfig(arch="small_cnn", model_options={"dropblock": 0.5}), 3)
    assert set(dropping.state_dict()) == set(plain.state_dict())  # no weights: checkpoints alike
    dropping.load_state_dict(plain.state_dict())
    assert [(d.p, d.block_size) for d in dropping.dropblock if isinstance(d, DropBlock2d)] == [(0.5, 5)] * 2
    x = torch.randn(4, 3, 24, 24)
    torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))
    seen = []
    dropping.block3.register_forward_hook(lambda m, i, out: seen.append(out))  # after DropBlock's hook
    torch.manual_seed(1)
    dropping.train()(x)
    assert (seen[0] == 0).float().mean() > (
        plain.train().block3(plain.block2(plain.block1(x))) == 0
    ).float().mean()
    with pytest.raises(ValueError, match="dropblock must be a probability"):
        build_model(TrainConfig(arch="small_cnn", model_options={"dropblock": 1.5}), 3)


def test_evaluation_averages_the_logits_over_the_test_crops(lesion_root, tmp_path, monkeypatch):
    """A run with test_crops = 4 is evaluated on 4 grid crops per image, logits averaged."""
    import rmnet.evaluate as evaluate
    from rmnet.metrics.classification import classification_report, predict_labels
    from rmnet.runs import Run

    out = tmp_path / "run"
    argv = ["train", "--recipe", "mwnl", "--arch", "small_cnn", "--data", str(lesion_root), "--out", str(out)]
    argv += [
        "--image-size",
        "16",
        "--resize",
        "20",
        "--test-crops",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]
    assert main(argv + ["--workers", "0", "--quiet"]) == 0
    evaluated = []
    real = evaluate.evaluate_model
    monkeypatch.setattr(
        evaluate,
        "evaluate_model",
        lambda model, data, *a, **k: evaluated.append(data) or real(model, data, *a, **k),
    )
    report = evaluate.evaluate_run(out, tsne=False, progress=False, sweep_step=90)
    assert evaluated[0][0][0].shape == (4, 3, 16, 16)
    run = Run(out)
    model, data = run.load_model().eval(), run.dataset("test", crops=4)
    with torch.no_grad():
        logits = torch.stack([model(data[i][0]).mean(dim=0) for i in range(len(data))])
    scores = torch.softmax(logits, dim=1).numpy()
    labels = [data[i][1] for i in range(len(data))]
    manual = classification_report(labels, predict_labels(scores), scores, run.class_names)
    assert report["classification"]["accuracy"] == pytest.approx(manual["accuracy"])
    assert report["classification"]["auc_macro"] == pytest.approx(manual["auc_macro"], abs=1e-6)
