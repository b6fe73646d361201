"""retrieval_report: the paper's mAP@k / mRR@k for upright and rotated queries, cosine and Hamming."""

import pytest
import torch

import rmnet
from rmnet.data import TensorImageDataset
from rmnet.metrics.retrieval import rank_database, retrieval_metrics
from rmnet.retrieval.codes import embed_dataset
from rmnet.retrieval.evaluation import RotatedDataset, format_retrieval_report, retrieval_report

NAMES = ["MEL", "NV", "BCC"]


def datasets():
    torch.manual_seed(0)
    database = TensorImageDataset(torch.randn(24, 3, 16, 16), torch.arange(24) % 3, class_names=NAMES)
    queries = TensorImageDataset(torch.randn(9, 3, 16, 16), torch.arange(9) % 3, class_names=NAMES)
    return database, queries


def tiny_model(**options):
    torch.manual_seed(0)
    return rmnet.create_model("small_cnn", num_classes=3, hash_bits=8, width=8, **options).eval()


def test_report_has_one_row_per_angle_and_distance_matching_the_metrics():
    model, (database, queries) = tiny_model(), datasets()
    report = retrieval_report(model, database, queries, k=5, angles=(0, 90), progress=False)
    assert (report["k"], report["database_size"], report["num_queries"], report["code_length"]) == (
        5,
        24,
        9,
        8,
    )
    assert [(r["angle"], r["metric"]) for r in report["results"]] == [
        (0, "cosine"),
        (0, "hamming"),
        (90, "cosine"),
        (90, "hamming"),
    ]
    db_codes, db_labels = embed_dataset(model, database, progress=False)
    q_codes, q_labels = embed_dataset(model, queries, progress=False)
    expected = retrieval_metrics(q_codes, q_labels, db_codes, db_labels, k=5, metric="hamming")
    upright_hamming = report["results"][1]
    assert upright_hamming["map_at_k"] == pytest.approx(expected["map_at_k"])
    assert upright_hamming["mrr_at_k"] == pytest.approx(expected["mrr_at_k"])
    assert set(upright_hamming["per_class"]) == set(NAMES)  # keyed by the data set's class names


def test_a_model_invariant_to_quarter_turns_retrieves_the_same_for_rotated_queries():
    invariant, (database, queries) = tiny_model(rm="all"), datasets()
    with torch.no_grad():  # at initialisation the bias dominates the codes and near-ties abound
        invariant.hash.bias.zero_()
    report = retrieval_report(invariant, database, queries, k=5, progress=False)
    by_angle = {
        (r["angle"], r["metric"]): (r["map_at_k"], r["mrr_at_k"], r["map"]) for r in report["results"]
    }
    for angle in (90, 180, 270):
        for metric in ("cosine", "hamming"):
            assert by_angle[(angle, metric)] == pytest.approx(by_angle[(0, metric)])


def test_a_plain_model_retrieves_differently_for_rotated_queries():
    """The counterpart of the test above: with a model that is not rotation invariant, 180° queries
    must give other results, or the rotated queries were never rotated."""
    plain, (database, queries) = tiny_model(), datasets()
    with torch.no_grad():  # as above: let the images, not the bias, make the codes
        plain.hash.bias.zero_()
    report = retrieval_report(plain, database, queries, k=5, angles=(0, 180), progress=False)
    rows = {(r["angle"], r["metric"]): r for r in report["results"]}
    for metric in ("cosine", "hamming"):
        upright, rotated = rows[(0, metric)], rows[(180, metric)]
        assert (upright["map_at_k"], upright["mrr_at_k"], upright["map"]) != pytest.approx(
            (rotated["map_at_k"], rotated["mrr_at_k"], rotated["map"])
        )
    upright_codes, _ = embed_dataset(plain, queries, progress=False)
    rotated_codes, _ = embed_dataset(plain, RotatedDataset(queries, 180), progress=False)
    db_codes, _ = embed_dataset(plain, database, progress=False)
    assert (
        rank_database(upright_codes, db_codes, k=5)[0] != rank_database(rotated_codes, db_codes, k=5)[0]
    ).any()


def test_the_report_formats_as_a_markdown_table_in_percent():
    model, (database, queries) = tiny_model(), datasets()
    report = retrieval_report(model, database, queries, k=3, angles=(0,), progress=False)
    table = format_retrieval_report(report)
    assert "| query rotation | ranking | mAP@3 (%) | mRR@3 (%) | mAP, full ranking (%) |" in table
    cosine = report["results"][0]
    assert f"| 0° | cosine | {100 * cosine['map_at_k']:.2f} | {100 * cosine['mrr_at_k']:.2f} |" in table
