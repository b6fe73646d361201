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
