"""TrainConfig: the paper's recipe by default, a lossless JSON round trip, loud on unknown keys."""

import dataclasses
import json

import pytest

from rmnet.config import TrainConfig, build_model


def test_defaults_are_the_papers_recipe():
    config = TrainConfig()
    assert (config.arch, config.rm, config.k, config.fusion, config.loss) == (
        "resnet18",
        None,
        4,
        "mean",
        "wce",
    )
    assert (config.epochs, config.batch_size, config.lr, config.momentum) == (60, 32, 0.01, 0.9)
    assert (config.weight_decay, config.lr_step, config.lr_gamma) == (5e-4, 20, 0.1)
    assert (config.input_size(), config.rotation_augmentation, config.val_metric) == (
        224,
        False,
        "balanced_accuracy",
    )


def test_every_field_documents_itself_for_the_command_line():
    undocumented = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")]
    assert undocumented == []


def test_dict_and_json_round_trips_are_lossless(tmp_path):
    config = TrainConfig(arch="small_cnn", rm="3-4", hash_bits=16, model_options={"width": 8}, amp=False)
    assert TrainConfig.from_dict(config.to_dict()) == config
    config.to_json(tmp_path / "config.json")
    assert TrainConfig.from_json(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["rm"] == "3-4"


def test_an_unknown_key_in_a_saved_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"arch": "resnet18", "learning_rate": 0.1}))
    with pytest.raises(
        ValueError, match=r"config.json has unknown field\(s\) learning_rate; known fields: .*lr"
    ):
        TrainConfig.from_json(path)


def test_invalid_values_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="val_metric 'f1'"):
        TrainConfig(val_metric="f1")
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)


def test_build_model_passes_the_model_fields_to_create_model():
    config = TrainConfig(arch="small_cnn", rm="3-4", hash_bits=6, model_options={"width": 8})
    model = build_model(config, num_classes=5)
    assert model.num_classes == 5 and model.hash_bits == 6
    assert model.rm_regions() == [("block3", "block4")]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(method="p4m", at="5"), "method must be one of rm, gcnn, orn, e4net, stn, stn_affine, cycnn"),
        (dict(method="gcnn"), "--method and --at go together"),
        (dict(at="5-8"), "--method and --at go together"),
        (dict(method="rm", at="5-8", rm="5-8"), "not both"),
        (
            dict(rotation_augmentation_mode="eighth"),
            "rotation_augmentation_mode must be one of continuous, quarter",
        ),
        (dict(test_crops=15), "test_crops must be a square number"),
        (dict(test_crops=0), "test_crops must be a square number"),
        (dict(lr_milestones="30,x"), "lr_milestones must be epochs separated by commas"),
        (dict(lr_milestones="40,30"), "increasing positive epochs"),
    ],
)
def test_the_method_augmentation_crops_and_milestone_fields_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_the_new_fields_on_the_command_line_and_in_build_model():
    from rmnet.cli import build_parser, config_from_args

    argv = ["train", "--out", "r", "--arch", "small_cnn", "--method", "stn_affine", "--at", "3"]
    argv += ["--rotation-augmentation-mode", "quarter", "--test-crops", "4", "--lr-milestones", "30,40"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.method, config.at, config.rotation_augmentation_mode) == ("stn_affine", "3", "quarter")
    assert (config.test_crops, config.milestones(), TrainConfig().milestones()) == (4, [30, 40], None)
    model = build_model(config, 3)
    assert (model.method, model.at) == ("stn_affine", "3")
    assert build_model(TrainConfig(arch="small_cnn", method="rm", at="3-4"), 3).rm_regions()


def test_the_quarter_mode_reaches_the_training_images(lesion_root):
    from rmnet.data.transforms import RandomQuarterTurn
    from rmnet.runs import split_dataset
    from rmnet.train import load_table, make_split

    config = TrainConfig(
        data=str(lesion_root), image_size=16, rotation_augmentation_mode="quarter", randaugment=True
    )
    table = load_table(config)
    split = make_split(table)
    steps = [
        type(t).__name__
        for t in split_dataset(config, table, split, "train", train=True).transform.transforms
    ]
    assert "RandomQuarterTurn" in steps and "RandAugment" in steps and "RandomRotation" not in steps
    assert RandomQuarterTurn.__name__ not in str(
        split_dataset(config, table, split, "val", train=False).transform
    )
    assert split_dataset(config, table, split, "val", train=False, crops=4)[0][0].shape == (4, 3, 16, 16)
