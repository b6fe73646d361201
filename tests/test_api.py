"""The Python API of a trained run (`rmnet.load_run`): the same answers as the service and `rmnet search`,
batched or not, with clear errors for bad images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import rmnet
from rmnet.api import RunModel, load_run, quarter_turns
from rmnet.cli import main
from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.data.images import UnreadableImageError
from rmnet.data.lesions import render_lesion
from rmnet.groups import rotate
from rmnet.retrieval.search import build_index
from rmnet.service.app import build_service, create_app
from rmnet.service.config import ServiceConfig
from rmnet.train import train
from rmnet.trust import TrustProfile


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(run, index, query images): an RM small CNN trained one epoch on generated lesions, the index of
    its training split, and six new lesion PNGs of several sizes."""
    root = tmp_path_factory.mktemp("api")
    data = make_lesion_dataset(root / "data", n_per_class=8, size=20, num_classes=3)
    config = TrainConfig(
        arch="small_cnn",
        rm="all",
        model_options={"width": 8},
        data=str(data),
        image_size=16,
        resize=20,
        epochs=1,
        batch_size=8,
        device="cpu",
        workers=0,
    )
    train(config, root / "run", progress=False)
    build_index(root / "run", root / "index")
    queries = []
    for i, kind in enumerate(("regular", "lobed", "globules", "streaks", "regular", "lobed")):
        path = root / "queries" / f"q{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(render_lesion(kind, 20 + 4 * i, np.random.default_rng(100 + i))).save(path)
        queries.append(path)
    return root / "run", root / "index", queries


@pytest.fixture(scope="module")
def model(example) -> RunModel:
    return load_run(example[0], device="cpu")


@pytest.fixture(scope="module")
def client(example):
    run, index, _ = example
    service = build_service(ServiceConfig(run=run, index=index, api_key="", device="cpu"))
    with TestClient(create_app(service), base_url="http://localhost") as test_client:  # an allowed Host
        yield test_client, service
    service.close()


def test_load_run_is_a_top_level_name_and_describes_the_run(example, model):
    assert rmnet.load_run is load_run and rmnet.RunModel is RunModel
    assert model.class_names == ["globules", "lobed", "regular"]
    assert (model.image_size, model.resize, str(model.device)) == (16, 20, "cpu")
    assert model.config.rm == "all" and model.run_dir == example[0]
    assert model.temperature == TrustProfile.load(example[0]).temperature != 1.0  # calibrated in training
    assert not model.model.training
    assert model.info.fingerprint == model.fingerprint and model.info.class_names == tuple(model.class_names)
    assert model.prepare(example[2][0]).shape == (3, 16, 16)


def test_predict_gives_what_the_service_gives_for_the_same_image(example, model, client):
    test_client, _ = client
    for path in example[2][:3]:
        body = test_client.post("/api/predict", files={"image": (path.name, path.read_bytes(), "image/png")})
        assert body.status_code == 200, body.text
        body = body.json()
        got = model.predict(path)[0].to_dict()
        assert sorted(got) == sorted(body)  # the same JSON fields
        assert got["prediction"] == body["prediction"] and got["image"] == body["image"]
        # the service names the run without its path on the server (issue 20); all else is the same
        assert {**got["model"], "run": Path(got["model"]["run"]).name} == body["model"]
        assert [c["name"] for c in got["classes"]] == [c["name"] for c in body["classes"]]
        expected = [c["probability"] for c in body["classes"]]
        assert [c["probability"] for c in got["classes"]] == pytest.approx(expected, abs=1e-5)
        ours, theirs = got["rotation_check"], body["rotation_check"]
        assert ours["angles"] == theirs["angles"] and ours["sensitive"] == theirs["sensitive"]
        assert [t["prediction"] for t in ours["turns"]] == [t["prediction"] for t in theirs["turns"]]
        assert ours["largest_change"] == pytest.approx(theirs["largest_change"], abs=1e-5)
        assert got["uncertain"] == body["uncertain"] and got["calibrated"] is body["calibrated"] is True


def test_the_service_turns_logits_into_probabilities_through_the_run_model(example, client):
    """Changing the RunModel's temperature changes what /api/predict says: softmax(logits / T)."""
    test_client, service = client
    run_model = service.engine.run_model
    path = example[2][0]
    logits = run_model.forward(run_model.prepare(path)[None]).logits[0]
    run_model.temperature = 2.0
    try:
        body = test_client.post("/api/predict", files={"image": (path.name, path.read_bytes(), "image/png")})
    finally:
        run_model.temperature = 1.0
    expected = np.exp(logits / 2 - (logits / 2).max())
    expected /= expected.sum()
    got = [c["probability"] for c in body.json()["classes"]]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)


def test_forward_divides_the_logits_by_the_temperature_before_the_softmax(model):
    x = torch.rand(2, 3, 16, 16)
    plain = model.forward(x)
    model.temperature = 4.0
    try:
        cooled = model.forward(x)
    finally:
        model.temperature = 1.0
    np.testing.assert_allclose(cooled.logits, plain.logits, atol=1e-6)
    by_hand = np.exp(plain.logits / 4) / np.exp(plain.logits / 4).sum(1, keepdims=True)
    np.testing.assert_allclose(cooled.probabilities, by_hand, atol=1e-6)
    assert plain.codes.shape == (2, model.code_length) and plain.turns is None


def test_turns_are_the_images_at_the_rotation_checks_angles_in_order(model):
    x = torch.rand(2, 3, 16, 16)
    out = model.forward(x, turns=True)
    angles = model.turn_angles  # upright, then the angles an RM-all model is not invariant to
    assert angles[0] == 0.0 and 45.0 in angles and 90.0 not in angles
    assert out.turns.shape == (2, len(angles), 3)
    np.testing.assert_allclose(out.turns[:, 0], out.probabilities, atol=1e-6)
    turned = model.forward(rotate(x, angles[2]))  # each image turned on its own
    np.testing.assert_allclose(out.turns[:, 2], turned.probabilities, atol=1e-5)
    assert torch.equal(model.turned(x)[len(angles) + 2], rotate(x[1], angles[2]))
    assert torch.equal(quarter_turns(x)[5], torch.rot90(x[1], 1, dims=(1, 2)))


def test_batched_predictions_equal_one_by_one(example, model):
    paths = example[2]
    batched = model.predict(paths, batch_size=4)  # two passes: 4 images, then 2
    assert len(batched) == len(paths)
    for path, prediction in zip(paths, batched, strict=True):
        alone = model.predict(path)[0]
        np.testing.assert_allclose(prediction.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(prediction.turns, alone.turns, atol=1e-5)
        assert prediction.label == alone.label
    first = batched[0]
    assert first.top[0] == (first.label, pytest.approx(float(first.probabilities.max())))
    assert [p for _, p in first.top] == sorted((p for _, p in first.top), reverse=True)
    assert model.predict(paths[:1], turns=False)[0].turns is None


def test_images_as_arrays_or_pictures_give_the_same_prediction_as_their_file(example, model):
    path = example[2][1]
    picture = Image.open(path)
    expected = model.predict(path)[0].probabilities
    for image in (picture, np.asarray(picture.convert("RGB")), picture.convert("RGBA")):
        got = model.predict(image)[0].probabilities
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_search_finds_the_cases_that_rmnet_search_finds(example, model, capsys):
    _, index, queries = example
    for query in queries[:3]:
        assert main(["search", str(query), "--index", str(index), "--top-k", "5", "--json"]) == 0
        cli_hits = json.loads(capsys.readouterr().out)[0]["hits"]
        hits = model.search(query, index, k=5)
        assert [hit.image_id for hit in hits] == [hit["image_id"] for hit in cli_hits]
        assert [hit.distance for hit in hits] == pytest.approx(
            [hit["distance"] for hit in cli_hits], abs=1e-5
        )


def test_an_indexed_image_finds_itself_first(example, model):
    from rmnet.runs import Run

    run, index, _ = example
    opened = Run(run)
    i = opened.split.train[3]
    hits = model.search(opened.table.paths[i], index, k=3)
    assert hits[0].image_id == opened.table.ids[i] and hits[0].distance == pytest.approx(0, abs=1e-5)
    assert [hit.rank for hit in hits] == [1, 2, 3]
    with pytest.raises(ValueError, match="k must be at least 1"):
        model.search(opened.table.paths[i], index, k=0)


def test_explain_gives_a_heat_map_over_the_network_input(example, model, client):
    path = example[2][2]
    explanation = model.explain(path)
    assert explanation.heatmap.shape == (16, 16)
    assert 0 <= explanation.heatmap.min() and explanation.heatmap.max() == pytest.approx(1)
    predicted = model.predict(path)[0]
    assert explanation.target == model.class_names.index(predicted.label)
    np.testing.assert_allclose(explanation.probabilities, predicted.probabilities, atol=1e-5)
    other = model.explain(path, target="lobed")
    assert other.target == 1
    _, service = client  # the service's explanation is the same computation
    served = service.engine.explain(model.prepare(path)).result(timeout=60)
    np.testing.assert_allclose(served.heatmap, explanation.heatmap, atol=1e-5)
    with pytest.raises(ValueError, match="unknown class 'MEL'"):
        model.explain(path, target="MEL")


def test_bad_images_get_a_clear_error_naming_them(tmp_path, model):
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="image not found: .*nowhere.jpg"):
        model.predict(missing)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="cannot read image .*broken.png"):
        model.predict([broken])
    with pytest.raises(ValueError, match="H×W×3"):
        model.predict(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError, match="forward"):
        model.prepare(torch.zeros(3, 16, 16))


def test_load_run_takes_a_checkpoint_file_and_names_a_missing_run(example, tmp_path):
    run = example[0]
    last = load_run(run / "checkpoints" / "last.pt", device="cpu")
    assert last.run_dir == run and last.class_names == ["globules", "lobed", "regular"]
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        load_run(run, checkpoint="final")


def test_png_bytes_round_trip_keeps_the_format_in_the_prediction(example, model):
    picture = Image.open(io.BytesIO(example[2][0].read_bytes()))
    assert model.predict(picture)[0].to_dict()["image"]["format"] == "PNG"
