"""`rmnet demo --quick`: generates its data, trains both models, writes the comparison report."""

import json

import pytest

from rmnet.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_quick_trains_a_plain_and_an_rm_model_and_reports_both(demo_dir):
    summary = json.loads((demo_dir / "report/report.json").read_text())
    plain, rm = summary["models"]["plain"], summary["models"]["rm"]
    assert plain["parameters"] == rm["parameters"]  # RM adds no parameter
    assert rm["changed"]["90"] == rm["changed"]["180"] == rm["changed"]["270"] == 0.0  # invariant at 90°
    assert summary["rm_minus_plain_accuracy"]["0"] == rm["accuracy"]["0"] - plain["accuracy"]["0"]
    assert (demo_dir / "report/rotation.png").stat().st_size > 1000
    for run in ("plain", "rm"):
        assert (demo_dir / run / "report/report.md").is_file()
    assert "![Accuracy against rotation](rotation.png)" in (demo_dir / "report/report.md").read_text()


def test_the_demo_ends_with_a_similar_case_index_that_rmnet_serve_serves(demo_dir):
    from fastapi.testclient import TestClient

    from rmnet.service import ServiceConfig, build_service, create_app

    retrieval = json.loads((demo_dir / "report/report.json").read_text())["retrieval"]
    assert retrieval["cases"] == 24 and retrieval["hash_bits"] == 16  # the training split of 3 × 10 images
    assert 0 <= retrieval["map_at_10"] <= 1 and 0 <= retrieval["mrr_at_10"] <= 1
    assert "## Similar cases" in (demo_dir / "report/report.md").read_text()
    # `rmnet serve runs/demo --index runs/demo/index`: the folder resolves to the run that built the index
    service = build_service(ServiceConfig(run=demo_dir, index=demo_dir / "index", device="cpu"))
    try:
        with TestClient(create_app(service), base_url="http://localhost") as client:  # an allowed Host
            health = client.get("/healthz").json()
            assert health["model"]["run"] == "hash"  # by name: no path on the server in an answer
            assert health["model"]["hash_bits"] == 16 and health["index"]["count"] == 24
            image = next((demo_dir / "data").rglob("*.png")).read_bytes()
            assert client.post("/api/predict", files={"image": ("x.png", image)}).status_code == 200
            assert len(client.post("/api/search", files={"image": ("x.png", image)}).json()["results"]) == 10
    finally:
        service.close()


def test_running_the_demo_again_reuses_the_finished_runs_and_prints_the_table(demo_dir, capsys):
    first = (demo_dir / "rm/checkpoints/last.pt").stat().st_mtime_ns
    index = (demo_dir / "index/manifest.json").stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(demo_dir)]) == 0
    assert (demo_dir / "rm/checkpoints/last.pt").stat().st_mtime_ns == first  # nothing retrained
    assert (demo_dir / "index/manifest.json").stat().st_mtime_ns == index  # nor re-indexed
    printed = capsys.readouterr().out
    assert "upright" in printed and "RM (whole trunk)" in printed
    assert f"report: {demo_dir / 'report' / 'report.md'}" in printed
    assert f"rmnet serve {demo_dir} --index {demo_dir / 'index'}" in printed
