"""The CAD service (`rmnet serve`): the HTTP contract, every bad input, the API key, durability of
added cases, thread safety of concurrent search + add, and the micro-batching engine.

One tiny demo (generated lesions, the RM model, its hash model and index) is built per session;
tests that add cases work on their own copy of the index.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.data.lesions import render_lesion
from rmnet.retrieval.index import CodeIndex
from rmnet.retrieval.search import build_index
from rmnet.service.access import AccessDenied, KeyCheck
from rmnet.service.app import build_service, create_app, resolve_parallelism, resolve_run
from rmnet.service.config import ServiceConfig
from rmnet.service.engine import InferenceEngine, ModelInfo
from rmnet.train import train

KEY = "test-key-0123456789"


def make_example(root: Path) -> tuple[Path, Path]:
    """A folder of runs in ``root`` with an RM small CNN trained for one epoch on generated lesions,
    and the index of its training images. Returns (the folder, the index).

    The codes are the pooled features (no hash layer): a briefly trained hash layer gives every
    image nearly the same code, while these tests need an image's own code to be its nearest.
    (``rmnet demo``'s hash model and index are served in tests/test_demo.py.)
    """
    data = make_lesion_dataset(root / "data", n_per_class=10, size=20, num_classes=3)
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
    train(config, root / "rm", progress=False)
    build_index(root / "rm", root / "index")
    return root, root / "index"


@pytest.fixture(scope="session")
def example(tmp_path_factory) -> tuple[Path, Path]:
    return make_example(tmp_path_factory.mktemp("service-demo"))


def local_client(app) -> TestClient:
    """A TestClient that sends ``Host: localhost`` (the service answers only its allowed hosts)."""
    return TestClient(app, base_url="http://localhost")


def copy_index(index: Path, to: Path) -> Path:
    shutil.copytree(index, to, ignore=shutil.ignore_patterns("cases"))
    return to


@pytest.fixture
def writable(example, tmp_path):
    """A service with the API key over a fresh copy of the index (tests may add cases)."""
    demo, index = example
    config = ServiceConfig(run=demo, index=copy_index(index, tmp_path / "index"), api_key=KEY, device="cpu")
    service = build_service(config)
    with local_client(create_app(service)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"  # reads need the key too when one is set
        yield client, service
    service.close()


@pytest.fixture(scope="module")
def client(example, tmp_path_factory):
    """A read-only service (no API key) over a copy of the index, shared by the tests of this module."""
    demo, index = example
    index = copy_index(index, tmp_path_factory.mktemp("ro") / "index")
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu"))
    with local_client(create_app(service)) as test_client:
        yield test_client
    service.close()


def png(array_or_image, fmt: str = "PNG", **options) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def lesion(seed: int, kind: str = "globules", size: int = 20) -> np.ndarray:
    return render_lesion(kind, size, np.random.default_rng(seed))


def training_image(example) -> tuple[str, Path]:
    """(id, file) of one indexed image."""
    _, index = example
    with CodeIndex.open(index) as opened:
        hit = opened.search(np.ones((1, opened.code_length)), 1, model_fingerprint=opened.model.fingerprint)[
            0
        ][0]
    return hit.image_id, Path(hit.path)


def files(data: bytes, field: str = "image", name: str = "lesion.png", content_type: str = "image/png"):
    return {field: (name, data, content_type)}


def case_files(folder: Path) -> list[Path]:
    """The case images in a cases folder (not its lock file)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def assert_refused(response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert words.lower() in detail.lower(), detail


# -- the contract -----------------------------------------------------------------------------------


def test_healthz_names_the_model_and_the_index(client, example):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["model"]["classes"] == ["globules", "lobed", "regular"]
    assert body["model"]["rm"] == "all" and body["model"]["hash_bits"] is None
    assert body["model"]["run"] == "rm" and body["model"]["checkpoint"] == "best.pt"  # names, not paths
    assert str(example[0].resolve()) not in str(body) and "/tmp" not in str(body)
    assert body["index"]["count"] == 24 and body["index"]["metric"] == "cosine"
    assert body["writes"].startswith("disabled")
    assert body["limits"]["max_k"] == 100 and body["limits"]["max_upload_mb"] == 20
    assert body["engine"]["gradcam_layer"] == "rm.0"  # the RM module: the fused, realigned feature map


def test_predict_gives_calibrated_classes_and_checks_only_the_turns_rm_is_not_invariant_to(client):
    image = lesion(1)
    body = client.post("/api/predict", files=files(png(image))).json()
    names = [c["name"] for c in body["classes"]]
    assert names == ["globules", "lobed", "regular"]
    probabilities = np.array([c["probability"] for c in body["classes"]])
    assert probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert body["prediction"] == names[int(probabilities.argmax())]
    assert body["calibrated"] is True and body["temperature"] > 0 and isinstance(body["uncertain"], bool)
    assert body["model"]["rm"] == "all"
    # RM over the whole network cannot change at quarter turns: those are not "checked" but named
    rc = body["rotation_check"]
    assert rc["invariant_by_construction"] == [90.0, 180.0, 270.0]
    assert 45.0 in rc["angles"] and not {90.0, 180.0, 270.0} & set(rc["angles"])
    assert [t["angle"] for t in rc["turns"]] == rc["angles"] and 0 <= rc["largest_change"] <= 1
    assert rc["sensitive"] == (bool(rc["changed_at"]) or rc["largest_change"] > rc["tolerance"])
    # The same lesion uploaded turned by 90°: the same probabilities (the crop is centred and square).
    turned = client.post("/api/predict", files=files(png(np.rot90(image).copy()))).json()
    assert [c["probability"] for c in turned["classes"]] == pytest.approx(probabilities.tolist(), abs=1e-5)


def test_predict_warns_in_one_vocabulary_about_flat_tiny_and_uncertain_images(client):
    codes = {"low_confidence", "out_of_distribution", "small_image", "rotation_sensitive"}
    flat = client.post("/api/predict", files=files(png(np.zeros((64, 64, 3), np.uint8)))).json()
    tiny = client.post("/api/predict", files=files(png(np.full((1, 1, 3), 90, np.uint8)))).json()
    for body in (flat, tiny, client.post("/api/predict", files=files(png(lesion(2)))).json()):
        assert all(set(w) == {"code", "message"} and w["code"] in codes for w in body["warnings"])
        assert all(isinstance(w["message"], str) and len(w["message"]) > 20 for w in body["warnings"])
        assert body["uncertain"] == ("low_confidence" in [w["code"] for w in body["warnings"]])
    assert "out_of_distribution" in [w["code"] for w in flat["warnings"]]
    tiny_codes = [w["code"] for w in tiny["warnings"]]
    assert "small_image" in tiny_codes and "out_of_distribution" in tiny_codes
    assert "1×1 px" in next(w["message"] for w in tiny["warnings"] if w["code"] == "small_image")


def test_search_returns_ranked_cases_and_finds_an_indexed_image_first(client, example):
    case_id, path = training_image(example)
    body = client.post("/api/search?k=10", files=files(path.read_bytes())).json()
    assert body["calibrated"] is True  # the probability is the run's calibrated one
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 11))
    assert results[0]["id"] == case_id and results[0]["distance"] == pytest.approx(0, abs=1e-5)
    distances = [r["distance"] for r in results]
    assert distances == sorted(distances)
    assert {r["label"] for r in results} <= {"globules", "lobed", "regular"}
    assert body["prediction"] in ("globules", "lobed", "regular")
    image = client.get(results[0]["image_url"])
    assert image.status_code == 200 and image.content == path.read_bytes()
    assert (
        len(client.post("/api/search", files=files(path.read_bytes())).json()["results"]) == 10
    )  # default k
    assert len(client.post("/api/search?k=100", files=files(path.read_bytes())).json()["results"]) == 24


def test_case_thumbnails_and_unknown_or_hostile_ids(client, example):
    case_id, _ = training_image(example)
    thumbnail = client.get(f"/api/cases/{case_id}/image?size=16")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 16
    assert_refused(client.get(f"/api/cases/{case_id}/image?size=4"), 422, "size")
    assert_refused(client.get(f"/api/cases/{case_id}/image?size=big"), 422, "size")
    assert_refused(client.get("/api/cases/no-such-case/image"), 404, "no case")
    for hostile in (
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "..",
        "%2Fetc%2Fpasswd",
        "data%2Fglobules%2Fglobules_0000",
    ):
        response = client.get(f"/api/cases/{hostile}/image")
        assert response.status_code == 404, (hostile, response.text)
        assert "detail" in response.json()


def test_explain_returns_a_grad_cam_overlay_png(client):
    response = client.post("/api/explain", files=files(png(lesion(2))))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.size == (256, 256) and overlay.mode == "RGB"
    assert response.headers["x-explained-class"] in ("globules", "lobed", "regular")
    chosen = client.post("/api/explain?class=lobed", files=files(png(lesion(2))))
    assert chosen.status_code == 200 and chosen.headers["x-explained-class"] == "lobed"
    assert_refused(
        client.post("/api/explain?class=melanoma", files=files(png(lesion(2)))), 422, "unknown class"
    )


def test_the_page_and_the_openapi_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN: works offline
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {
        "/healthz",
        "/api/predict",
        "/api/search",
        "/api/explain",
        "/api/cases",
        "/api/cases/{case_id}/image",
    } <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]


# -- bad input: 4xx with a reason, never 5xx, and the service stays up ---------------------------------


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = png(noise, "JPEG", quality=95)
    return data[: len(data) * 2 // 3]


def bomb() -> bytes:
    """A 48 KB PNG of 20000 × 20000 pixels (400 million: 1.2 GB as RGB)."""
    return png(Image.new("1", (20000, 20000)))


BAD_IMAGES = {
    "text": (b"this is not an image", 415, "not an image"),
    "empty": (b"", 422, "empty"),
    "truncated JPEG": (truncated_jpeg(), 422, "truncated"),
    "decompression bomb": (bomb(), 422, "pixels"),
    "SVG": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
        415,
        "not an image",
    ),
    "PDF": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", 415, "not an image"),
}


@pytest.mark.parametrize("endpoint", ["/api/predict", "/api/search", "/api/explain"])
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_refused_with_a_reason(client, endpoint, name):
    data, status, words = BAD_IMAGES[name]
    assert_refused(client.post(endpoint, files=files(data)), status, words)


@pytest.mark.parametrize("endpoint", ["/api/predict", "/api/search", "/api/explain"])
def test_bad_requests_are_refused_with_a_reason(client, endpoint):
    image = png(lesion(3))
    assert_refused(
        client.post(endpoint, files=files(image, field="file")), 422, "missing the form field 'image'"
    )
    assert_refused(client.post(endpoint), 415, "multipart/form-data")
    assert_refused(client.post(endpoint, json={"image": "abc"}), 415, "multipart/form-data")
    assert_refused(client.post(endpoint, data={"image": "abc"}), 415, "multipart/form-data")  # url-encoded
    two = [("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))]
    assert_refused(client.post(endpoint, files=two), 422, "more than once")
    extra = [("image", ("a.png", image, "image/png")), ("label", (None, "lobed"))]
    assert_refused(client.post(endpoint, files=extra), 422, "unexpected form field 'label'")
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    assert_refused(client.post(endpoint, content=b"--xyz\r\ngarbage without headers", headers=headers), 400)
    assert_refused(
        client.post(endpoint, content=b"whatever", headers={"content-type": "multipart/form-data"}), 400
    )
    assert_refused(client.get(endpoint), 405)


def test_search_k_out_of_range(client):
    image = png(lesion(4))
    for k in ("0", "-1", "101", "1e9", "ten", ""):
        assert_refused(client.post(f"/api/search?k={k}", files=files(image)), 422, "k")


def test_uploads_over_the_limit_get_413_with_or_without_content_length(client):
    big = b"\xff\xd8" + os.urandom(21 * 1024 * 1024)
    assert_refused(client.post("/api/predict", files=files(big, content_type="image/jpeg")), 413, "20 MB")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(22):
            yield os.urandom(1024 * 1024)

    headers = {"content-type": "multipart/form-data; boundary=abc"}
    assert_refused(client.post("/api/search", content=chunks(), headers=headers), 413, "larger than")


def test_pixel_limit_is_an_option(example, tmp_path):
    demo, index = example
    config = ServiceConfig(run=demo, index=index, max_pixels=20 * 20 - 1, max_upload_mb=0.05, device="cpu")
    service = build_service(config)
    try:
        with local_client(create_app(service)) as small:
            assert_refused(
                small.post("/api/predict", files=files(png(lesion(5)))), 422, "more than the limit of 399"
            )
            assert small.post("/api/predict", files=files(png(lesion(5, size=19)))).status_code == 200
            assert_refused(small.post("/api/predict", files=files(os.urandom(60_000))), 413, "0.05 MB")
    finally:
        service.close()


def test_uploads_are_never_written_to_disk(client, monkeypatch, tmp_path):
    """Starlette's form parser would spool a file part over 1 MB to a temporary file; ours does not."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    noise = np.random.default_rng(1).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    big = png(noise)  # about 4 MB
    assert len(big) > 2 * 1024 * 1024
    assert client.post("/api/predict", files=files(big)).status_code == 200
    assert client.post("/api/search", files=files(big)).status_code == 200
    assert list(spool.iterdir()) == []


def test_uploads_are_decoded_upright_in_rgb():
    from rmnet.service.uploads import decode_image

    upright = lesion(13)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: rotate 90° clockwise to display
    stored = png(Image.fromarray(np.rot90(upright).copy()), exif=exif)
    decoded = decode_image(stored, max_pixels=10**6)
    np.testing.assert_array_equal(np.asarray(decoded.image), upright)
    for mode in ("L", "RGBA", "P", "CMYK"):
        image = Image.fromarray(upright).convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert decode_image(png(image, fmt), max_pixels=10**6).image.mode == "RGB"


def test_the_service_stays_up_after_bad_input(client):
    for data, _, _ in BAD_IMAGES.values():
        client.post("/api/predict", files=files(data))
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.post("/api/predict", files=files(png(lesion(6)))).status_code == 200


# -- adding cases: the key, validation, durability ------------------------------------------------------


def test_writes_are_disabled_without_a_key(client):
    assert_refused(
        client.post("/api/cases", files=files(png(lesion(7))), data={"label": "lobed"}), 403, "RMNET_API_KEY"
    )


def test_adding_a_case_needs_the_right_key(writable):
    client, _ = writable
    form = dict(files=files(png(lesion(8))), data={"label": "lobed"})
    missing = local_client(client.app).post("/api/cases", **form)
    assert_refused(missing, 401, "Bearer")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_refused(client.post("/api/cases", headers={"Authorization": f"Basic {KEY}"}, **form), 401)
    assert_refused(client.post("/api/cases", headers={"Authorization": "Bearer "}, **form), 401)
    assert_refused(client.post("/api/cases", headers={"Authorization": "Bearer wrong"}, **form), 403, "wrong")
    assert_refused(client.post("/api/cases", headers={"Authorization": f"Bearer {KEY}x"}, **form), 403)
    added = client.post("/api/cases", headers={"Authorization": f"Bearer {KEY}"}, **form)
    assert added.status_code == 201 and added.json()["id"].startswith("case-")


def test_the_key_is_compared_in_constant_time_and_stripped(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    keys = KeyCheck("secret-key-0123456789")
    keys.check("c", {"authorization": "Bearer  secret-key-0123456789 "})
    keys.check("c", {"x-api-key": "secret-key-0123456789"})
    with pytest.raises(AccessDenied):
        keys.check("c", {"authorization": "Bearer guess"})
    assert calls == [(b"secret-key-0123456789", b"secret-key-0123456789")] * 2 + [
        (b"guess", b"secret-key-0123456789")
    ]


def test_an_added_case_is_searchable_at_once_and_survives_a_restart(writable, example):
    client, service = writable
    auth = {"Authorization": f"Bearer {KEY}"}
    image = png(lesion(9, "regular"))
    added = client.post(
        "/api/cases", headers=auth, files=files(image), data={"label": "regular", "id": "clinic-0001"}
    )
    assert added.status_code == 201, added.text
    assert added.json() == {
        "id": "clinic-0001",
        "label": "regular",
        "image_url": "/api/cases/clinic-0001/image",
        "count": 25,
    }
    first = client.post("/api/search?k=3", files=files(image)).json()["results"][0]
    assert first["id"] == "clinic-0001" and first["label"] == "regular" and first["distance"] < 1e-5
    assert client.get("/api/cases/clinic-0001/image").content == image
    stored = case_files(service.config.index / "cases")
    assert [p.read_bytes() for p in stored] == [image]  # the upload, byte for byte, named by its content

    # Restart: a new service over the same folder.
    service.close()
    again = build_service(ServiceConfig(run=example[0], index=service.config.index, device="cpu", api_key=""))
    try:
        with local_client(create_app(again)) as restarted:
            assert restarted.get("/healthz").json()["index"]["count"] == 25
            first = restarted.post("/api/search?k=1", files=files(image)).json()["results"][0]
            assert first["id"] == "clinic-0001"
            assert restarted.get("/api/cases/clinic-0001/image").content == image
    finally:
        again.close()


def test_adding_refuses_bad_labels_ids_and_duplicates(writable):
    client, service = writable
    auth = {"Authorization": f"Bearer {KEY}"}
    image = png(lesion(10))

    def add(data=None, **form):
        return client.post("/api/cases", headers=auth, files=files(data or image), data=form)

    assert_refused(add(), 422, "missing the form field 'label'")
    assert_refused(add(label="melanoma"), 422, "unknown label")
    for bad_id in ("../../etc/passwd", "a/b", ".hidden", "-x", "a..b", "x" * 129, "spaces here", "é"):
        assert_refused(add(label="lobed", id=bad_id), 422, "invalid case id")
    assert_refused(add(b"not an image", label="lobed"), 415)
    assert add(label="lobed", id="ok-1").status_code == 201
    assert_refused(add(label="lobed", id="ok-1"), 409, "already in the index")
    assert_refused(add(label="globules", id="ok-2"), 409, "same file content")  # same image, another id
    assert client.get("/healthz").json()["index"]["count"] == 25
    assert len(case_files(service.config.index / "cases")) == 1  # refused uploads left no file


def test_cases_another_process_adds_are_served_too(writable, tmp_path):
    """`rmnet index add` while the service runs: the service picks the new generation up."""
    from rmnet.retrieval.index import IndexItem

    client, service = writable
    image = tmp_path / "outside.png"
    image.write_bytes(png(lesion(11, "lobed")))
    x = service.engine.prepare(Image.open(image).convert("RGB"))
    code = service.engine.infer(x).result(timeout=30).code
    with CodeIndex.open(service.config.index) as other_process:
        item = IndexItem("outside-1", 1, str(image), "sha-of-outside", {})
        other_process.add(code[None], [item], model_fingerprint=service.engine.info.fingerprint)
    assert client.get("/api/cases/outside-1/image").status_code == 200  # at once: no polling interval
    assert (
        client.post("/api/search?k=1", files=files(image.read_bytes())).json()["results"][0]["id"]
        == "outside-1"
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    added = client.post("/api/cases", headers=auth, files=files(png(lesion(12))), data={"label": "regular"})
    assert added.status_code == 201 and added.json()["count"] == 26


# -- concurrency ----------------------------------------------------------------------------------------


def test_concurrent_searches_and_adds_are_safe(writable):
    """8 threads at once: 32 searches, 12 predicts and 12 adds through the HTTP app. Every request
    succeeds, every added case is found first by its own image, nothing is lost or duplicated."""
    client, service = writable
    auth = {"Authorization": f"Bearer {KEY}"}
    kinds = ("globules", "lobed", "regular")
    new = {f"new-{i:02d}": (png(lesion(100 + i, kinds[i % 3])), kinds[i % 3]) for i in range(12)}
    queries = [png(lesion(200 + i, kinds[i % 3])) for i in range(32)]

    def search(data):
        response = client.post("/api/search?k=5", files=files(data))
        return response.status_code, len(response.json().get("results", []))

    def predict(data):
        return client.post("/api/predict", files=files(data)).status_code, 4

    def add(case):
        case_id, (data, label) = case
        response = client.post(
            "/api/cases", headers=auth, files=files(data), data={"label": label, "id": case_id}
        )
        return response.status_code, response.json().get("id")

    jobs = (
        [(search, q) for q in queries]
        + [(predict, q) for q in queries[:12]]
        + [(add, c) for c in new.items()]
    )
    order = np.random.default_rng(0).permutation(len(jobs))
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: (jobs[i][0].__name__, jobs[i][0](jobs[i][1])), order))
    assert all(status in (200, 201) for _, (status, _) in outcomes), outcomes
    assert sorted(value for name, (_, value) in outcomes if name == "add") == sorted(new)
    assert client.get("/healthz").json()["index"]["count"] == 24 + 12
    for case_id, (data, label) in new.items():
        first = client.post("/api/search?k=1", files=files(data)).json()["results"][0]
        assert (first["id"], first["label"]) == (case_id, label)
    with CodeIndex.open(service.config.index) as reopened:  # what is on disk agrees
        assert len(reopened) == 36
    stats = client.get("/healthz").json()["engine"]
    assert stats["requests"] >= 32 + 12 + 12


# -- the engine -----------------------------------------------------------------------------------------


class Gated(nn.Module):
    """A model whose forward pass waits for a gate, and whose output depends on orientation."""

    hash_bits, num_features = None, 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.gate = threading.Event()
        self.batches: list[int] = []

    def forward_codes(self, x):
        self.gate.wait(10)
        self.batches.append(len(x))
        top, bottom = x[:, :, : x.shape[2] // 2].mean((1, 2, 3)), x[:, :, x.shape[2] // 2 :].mean((1, 2, 3))
        logits = self.scale * torch.stack([top, bottom], 1)
        return logits, logits

    def forward(self, x):
        return self.forward_codes(x)[1]


def toy_engine(model: nn.Module, **options) -> InferenceEngine:
    info = ModelInfo("run", "best.pt", "toy", "f", 2, ("up", "down"), 8, 8)
    model.gate.set()  # the dry run that finds the Grad-CAM layer
    engine = InferenceEngine(model, lambda image: image, info, **options)
    model.gate.clear()
    model.batches.clear()
    return engine


def test_requests_waiting_together_run_as_one_batch():
    model = Gated()
    engine = toy_engine(model, batch_wait_ms=0, forward_batch=64)
    try:
        first = engine.infer(torch.rand(3, 8, 8))
        time.sleep(0.2)  # the worker has taken the first request and waits at the gate
        rest = [engine.infer(torch.rand(3, 8, 8)) for _ in range(5)]
        model.gate.set()
        for future in [first, *rest]:
            future.result(timeout=10)
        assert model.batches == [1, 5]
        assert engine.stats.requests_per_batch == {1: 1, 5: 1}
    finally:
        engine.close()


def test_a_batch_runs_in_forward_passes_of_the_tuned_size():
    model = Gated()
    engine = toy_engine(model, forward_batch=3)
    assert engine.forward_batch == 3
    try:
        first = engine.infer(torch.rand(3, 8, 8))
        time.sleep(0.2)
        rest = [engine.infer(torch.rand(3, 8, 8), turns=True) for _ in range(2)]
        model.gate.set()
        for future in [first, *rest]:
            future.result(timeout=10)
        assert model.batches == [1, 3, 1, 3, 1]  # then one predict (4 images) at a time, in passes of 3
        assert rest[1].result().turns.shape == (4, 2)
    finally:
        engine.close()


def test_tuning_picks_the_batch_size_with_the_lowest_time_per_image():
    class Costly(Gated):
        def forward_codes(self, x):  # 1 ms + 1 ms per image up to 4 images, then 5 ms per image
            time.sleep(0.001 + 0.001 * len(x) + 0.004 * max(0, len(x) - 4))
            return super().forward_codes(x)

    engine = toy_engine(Costly())
    try:
        assert engine.forward_batch == 4
        assert sorted(engine.forward_times) == [4, 8]  # from one predict's 4 images; stopped once the
    finally:  # cost per image doubled
        engine.close()

    class CheapestInTwos(Gated):
        def forward_codes(self, x):  # 1 ms per image up to 2 images, then 5 ms per image
            time.sleep(0.001 * len(x) + 0.004 * max(0, len(x) - 2))
            return super().forward_codes(x)

    engine = toy_engine(CheapestInTwos())
    try:
        assert engine.forward_batch == 4  # a predict's quarter turns are never split over two passes
    finally:
        engine.close()


def test_a_batch_waits_for_announced_requests_but_a_lone_one_does_not():
    model = Gated()
    model.gate.set()
    engine = toy_engine(model, batch_wait_ms=2000, forward_batch=8)
    model.gate.set()
    try:
        started = time.perf_counter()
        engine.infer(torch.rand(3, 8, 8)).result(timeout=5)
        assert time.perf_counter() - started < 1.0  # nobody else announced: no waiting
        with engine.arriving() as a, engine.arriving() as b:
            one = engine.infer(torch.rand(3, 8, 8), arrival=a)
            time.sleep(0.1)
            two = engine.infer(torch.rand(3, 8, 8), turns=True, arrival=b)
            one.result(timeout=5), two.result(timeout=5)
        assert model.batches[-1] == 1 + 4  # both in one batch: the first waited for the second
    finally:
        engine.close()


def test_quarter_turns_can_disagree_for_a_model_that_is_not_rotation_invariant():
    model = Gated()
    engine = toy_engine(model)
    model.gate.set()
    try:
        x = torch.zeros(3, 8, 8)
        x[:, :4] = 1  # bright top half
        result = engine.infer(x, turns=True).result(timeout=5)
        predictions = result.turns.argmax(1).tolist()
        assert predictions[0] == 0 and predictions[2] == 1  # upside down: the other class
    finally:
        engine.close()


def test_the_queue_has_a_limit_and_closing_fails_waiting_requests():
    from rmnet.service.engine import EngineBusyError, EngineClosedError

    model = Gated()
    engine = toy_engine(model, max_queue=2)
    engine.infer(torch.rand(3, 8, 8))
    time.sleep(0.2)
    waiting = [engine.infer(torch.rand(3, 8, 8)) for _ in range(2)]
    with pytest.raises(EngineBusyError):
        engine.infer(torch.rand(3, 8, 8))
    threading.Timer(0.3, model.gate.set).start()
    engine.close()
    for future in waiting:
        with pytest.raises(EngineClosedError):
            future.result(timeout=5)


def test_parallel_workers_agree_with_one_and_grad_cam_runs_alone(example):
    demo, _ = example
    images = [torch.tensor(lesion(300 + i)).permute(2, 0, 1).float() / 255 for i in range(12)]
    images = [x[:, 2:18, 2:18] for x in images]  # the network input size (16 px)
    single = InferenceEngine.from_run(demo / "rm", device="cpu", workers=1)
    parallel = InferenceEngine.from_run(demo / "rm", device="cpu", workers=3)
    try:
        expected = [single.infer(x, turns=True).result(timeout=30) for x in images]
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(lambda x: parallel.infer(x, turns=True).result(timeout=60), x) for x in images
            ]
            explanations = [parallel.explain(x) for x in images[:3]]
            got = [f.result() for f in futures]
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(a.turns, b.turns, atol=1e-5)
            np.testing.assert_allclose(a.code, b.code, atol=1e-5)
        for explanation in explanations:
            heatmap = explanation.result(timeout=60).heatmap
            assert heatmap.shape == (16, 16) and 0 <= heatmap.min() and heatmap.max() <= 1
        assert parallel.stats.requests == 12 and parallel.stats.explanations == 3
    finally:
        single.close()
        parallel.close()


# -- the command line -----------------------------------------------------------------------------------


def test_serve_resolves_a_demo_folder_to_the_run_that_built_the_index(example, tmp_path):
    demo, index = example
    with CodeIndex.open(index) as opened:
        built_by = opened.model.run
    assert resolve_run(demo, built_by) == Path(built_by)
    assert resolve_run(demo / "rm", built_by) == demo / "rm"
    with pytest.raises(ValueError, match="the runs inside it: rm"):
        resolve_run(demo, "/elsewhere/run")
    with pytest.raises(FileNotFoundError):
        resolve_run(tmp_path / "missing", built_by)
    moved = shutil.copytree(demo, tmp_path / "moved", ignore=shutil.ignore_patterns("data"))
    assert resolve_run(moved, built_by) == moved / "rm"  # the index still names the old place


def test_serve_refuses_a_run_that_did_not_build_the_index(example, tmp_path):
    demo, index = example
    other = shutil.copytree(demo / "rm", tmp_path / "retrained")
    checkpoint = torch.load(other / "checkpoints/best.pt", weights_only=True)
    checkpoint["model"]["fc.bias"] += 0.1  # another model: another fingerprint
    torch.save(checkpoint, other / "checkpoints/best.pt")
    with pytest.raises(ValueError, match="was built with model"):
        build_service(ServiceConfig(run=other, index=index, device="cpu"))


@pytest.mark.parametrize(
    ("cores", "asked", "chosen"),
    [
        (2, {}, (2, 1, 1)),  # this machine: 2 processes of 1 worker × 1 thread
        (16, {}, (4, 1, 4)),  # at most 4 processes; the cores go to torch threads
        (1, {}, (1, 1, 1)),
        (2, {"workers": 2}, (1, 2, 1)),  # threads in one process when asked for
        (8, {"processes": 1}, (1, 1, 8)),
        (8, {"processes": 2, "workers": 2, "torch_threads": 3}, (2, 2, 3)),  # as asked, whatever the cores
    ],
)
def test_processes_workers_and_threads_the_command_line_leaves_open(monkeypatch, cores, asked, chosen):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    config = resolve_parallelism(ServiceConfig(run="r", index="i", device="cpu", **asked))
    assert (config.processes, config.workers, config.torch_threads) == chosen


def test_on_a_gpu_one_process_with_one_worker_serves(monkeypatch):
    import rmnet.io

    monkeypatch.setattr(rmnet.io, "resolve_device", lambda device: torch.device("cuda", 0))
    config = resolve_parallelism(ServiceConfig(run="r", index="i", device="cuda"))
    assert (config.processes, config.workers, config.torch_threads) == (1, 1, None)


def test_settings_travel_to_the_serving_processes_as_json(tmp_path):
    config = ServiceConfig(run=tmp_path / "run", index=tmp_path / "index", processes=3, max_k=7, api_key=None)
    assert ServiceConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="processes=0"):
        ServiceConfig(run="r", index="i", processes=0)


def test_the_cli_does_not_load_the_service_until_serve_runs():
    code = "import sys, rmnet.cli; sys.exit(any(m in sys.modules for m in ('fastapi', 'uvicorn', 'captum')))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_supervisor_of_several_processes_never_loads_torch():
    code = "import sys, rmnet.service.server; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rmnet_serve(demo: Path, index: Path, *options: str, key: str = "") -> Iterator[tuple[str, list[str]]]:
    """``rmnet serve`` in a child process on a free loopback port: (its URL, its output once stopped).
    Stopped with Ctrl-C (SIGINT), which must end it with status 0."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rmnet",
            "serve",
            str(demo),
            "--index",
            str(index),
            "--port",
            str(port),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, RMNET_API_KEY=key),
    )
    url, output = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        yield url, output
    finally:
        process.send_signal(signal.SIGINT)
        output.append(process.communicate(timeout=60)[0])
    assert process.returncode == 0, output[0]


def test_rmnet_serve_runs_uvicorn_on_loopback_and_stops_on_ctrl_c(example):
    import httpx

    demo, index = example
    with rmnet_serve(demo, index, "--processes", "1") as (url, output):
        health = httpx.get(url + "/healthz", timeout=5).json()
        assert health["status"] == "ok" and health["process"]["processes"] == 1
        assert "rmnet" in httpx.get(url + "/", timeout=5).text
    assert f"open {url}/" in output[0] and "writes disabled" in output[0]
    assert "1 process(es)" in output[0] and "Uvicorn running on http://127.0.0.1" in output[0]


def test_several_processes_serve_one_index_and_see_each_others_cases_at_once(example, tmp_path):
    """--processes 2: both answer on one port; a case added through one is found through the other."""
    import httpx

    demo, index = example
    index = copy_index(index, tmp_path / "index")
    image = png(lesion(13, "lobed"))
    with rmnet_serve(demo, index, "--processes", "2", key=KEY) as (url, output):
        added = httpx.post(
            url + "/api/cases",
            headers={"Authorization": f"Bearer {KEY}"},
            files=files(image),
            data={"label": "lobed", "id": "shared-1"},
            timeout=30,
        )
        assert added.status_code == 201, added.text
        answered: dict[int, str] = {}  # process id -> the first search result it gave
        for _ in range(300):  # a new connection each time: the kernel hands it to either process
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as fresh:
                pid = fresh.get("/healthz").json()["process"]["pid"]
                top = fresh.post("/api/search?k=1", files=files(image)).json()["results"][0]["id"]
                assert fresh.get("/api/cases/shared-1/image").content == image
            answered.setdefault(pid, top)
            if len(answered) == 2:
                break
        assert list(answered.values()) == ["shared-1", "shared-1"], answered
    assert "2 process(es)" in output[0]


def test_rmnet_serve_reports_a_missing_index_in_one_line(tmp_path, capsys):
    from rmnet.cli import main

    assert main(["serve", str(tmp_path), "--index", str(tmp_path / "nothing")]) == 1
    assert "rmnet: error:" in capsys.readouterr().err
