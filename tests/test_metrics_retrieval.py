"""Retrieval metrics against values computed by hand (the arithmetic is written next to each)."""

import numpy as np
import pytest

from rmnet.metrics.retrieval import (
    COSINE_SCALE,
    cosine_distances,
    cosine_similarity_keys,
    hamming_distances,
    quantize_codes,
    rank_database,
    retrieval_metrics,
)

# A database of four 2-D codes (labels 0 and 1) and five queries, one of a class (2) absent from it.
DB_CODES = np.array([[1, 1], [1, -1], [-1, 0], [0, 1]], dtype=np.float32)
DB_LABELS = np.array([0, 1, 0, 1])
QUERY_CODES = np.array([[1, 0], [0, -1], [0, 1], [-1, 1], [1, 0]], dtype=np.float32)
QUERY_LABELS = np.array([0, 0, 1, 1, 2])
# Cosine rankings (database indices, nearest first) and whether each result has the query's label:
#   q0 (1,0):   cos .707 .707 -1 0    -> [0, 1, 3, 2] (0 and 1 tie: lower index first) rel [1,0,0,1]
#   q1 (0,-1):  cos -.707 .707 0 -1   -> [1, 2, 0, 3]                                   rel [0,1,1,0]
#   q2 (0,1):   cos .707 -.707 0 1    -> [3, 0, 2, 1]                                   rel [1,0,0,1]
#   q3 (-1,1):  cos 0 -1 .707 .707    -> [2, 3, 0, 1] (2 and 3 tie: lower index first) rel [0,1,0,1]
#   q4 (1,0):   label 2 is nowhere in the database                                     rel [0,0,0,0]
RANKINGS = [[0, 1, 3, 2], [1, 2, 0, 3], [3, 0, 2, 1], [2, 3, 0, 1], [0, 1, 3, 2]]


def test_ranking_by_cosine_breaks_exact_ties_by_database_index():
    order, distances = rank_database(QUERY_CODES, DB_CODES, "cosine")
    assert order.tolist() == RANKINGS
    assert distances[0] == pytest.approx([1 - 2**-0.5, 1 - 2**-0.5, 1.0, 2.0], abs=1e-6)


def test_an_images_cosine_distance_to_itself_is_zero_never_below():
    codes = np.random.default_rng(0).standard_normal((200, 16))
    fixed = quantize_codes(codes)
    unclamped = 1.0 - np.diag(cosine_similarity_keys(fixed, fixed)) / COSINE_SCALE**2
    assert (unclamped < 0).any()  # rounding to 2^-24 leaves some unit codes a hair over norm 1
    order, distances = rank_database(codes, codes, "cosine", k=1)
    assert order[:, 0].tolist() == list(range(200)) and (distances >= 0).all()
    assert (cosine_distances(codes, codes) >= 0).all()


def test_paper_map_and_mrr_at_2_are_per_class_averages_of_precision_and_reciprocal_rank():
    m = retrieval_metrics(QUERY_CODES, QUERY_LABELS, DB_CODES, DB_LABELS, k=2, metric="cosine")
    # precision@2: q0 1/2, q1 1/2, q2 1/2, q3 1/2, q4 0.
    # reciprocal rank within the top 2: q0 1, q1 1/2, q2 1, q3 1/2, q4 0 (no correct result: 0).
    # Per class: class 0 (q0, q1): mAP@2 = (1/2 + 1/2)/2 = 1/2, mRR@2 = (1 + 1/2)/2 = 3/4
    #            class 1 (q2, q3): mAP@2 = 1/2, mRR@2 = (1 + 1/2)/2 = 3/4;  class 2 (q4): 0, 0.
    assert m["per_class"][0]["map_at_k"] == pytest.approx(0.5)
    assert m["per_class"][0]["mrr_at_k"] == pytest.approx(0.75)
    assert m["per_class"][1]["mrr_at_k"] == pytest.approx(0.75)
    assert m["per_class"][2] == {"queries": 1, "map_at_k": 0.0, "mrr_at_k": 0.0, "map": 0.0}
    # Averaged over the 3 classes (not over the 5 queries, which would give 0.4 and 0.6):
    assert m["map_at_k"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["mrr_at_k"] == pytest.approx((0.75 + 0.75 + 0) / 3)


def test_standard_map_averages_full_ranking_average_precision_over_queries():
    m = retrieval_metrics(QUERY_CODES, QUERY_LABELS, DB_CODES, DB_LABELS, k=2)
    # AP = mean of precision@j at each relevant position j of the full ranking:
    #   q0 rel [1,0,0,1]: (1/1 + 2/4)/2 = 0.75     q1 rel [0,1,1,0]: (1/2 + 2/3)/2 = 7/12
    #   q2 rel [1,0,0,1]: 0.75                      q3 rel [0,1,0,1]: (1/2 + 2/4)/2 = 0.5
    #   q4: no relevant item in the database: 0
    assert m["map"] == pytest.approx((0.75 + 7 / 12 + 0.75 + 0.5 + 0) / 5)
    assert m["per_class"][0]["map"] == pytest.approx((0.75 + 7 / 12) / 2)
    assert m["per_class"][1]["map"] == pytest.approx((0.75 + 0.5) / 2)


def test_top_1_depends_on_how_ties_are_broken():
    m = retrieval_metrics(QUERY_CODES, QUERY_LABELS, DB_CODES, DB_LABELS, k=1)
    # Top 1: q0 -> 0 (right), q1 -> 1 (wrong), q2 -> 3 (right), q3 -> 2 (wrong: the tie with 3,
    # which is right, goes to the lower index), q4 -> wrong.
    # class 0: (1 + 0)/2, class 1: (1 + 0)/2, class 2: 0  ->  (1/2 + 1/2 + 0)/3 for both metrics.
    assert m["map_at_k"] == pytest.approx(1 / 3)
    assert m["mrr_at_k"] == pytest.approx(1 / 3)
    assert m["per_class"][1]["mrr_at_k"] == pytest.approx(0.5)


# Hamming: 3-bit codes whose signs tie; the lower database index wins the tie.
HAM_DB = np.array([[1, 1, -1], [2, 1, -1], [10, 10, 1], [-1, -1, -1]], dtype=np.float32)
HAM_DB_LABELS = np.array([0, 1, 1, 0])
HAM_QUERY = np.array([[10, 10, -1]], dtype=np.float32)  # bits 110, label 0
# Hamming distances to bits 110, 110, 111, 000: 0, 0, 1, 2.
# Cosines: 21/sqrt(201·3) = .855, 31/sqrt(201·6) = .893, 199/201 = .990, -19/sqrt(603) = -.774.


def test_hamming_distance_counts_differing_sign_bits():
    assert hamming_distances(HAM_QUERY, HAM_DB).tolist() == [[0, 0, 1, 2]]


def test_hamming_ties_are_broken_by_database_index_not_by_float_cosines():
    order, distances = rank_database(HAM_QUERY, HAM_DB, "hamming")
    # 0 and 1 tie at Hamming 0: 0 comes first although 1 is closer in cosine (.893 > .855). An
    # integer rule: the same on every machine, and fast on 16-bit codes that tie by the million.
    assert order.tolist() == [[0, 1, 2, 3]]
    assert distances.tolist() == [[0, 0, 1, 2]]
    # By cosine the near-parallel code 2 (whose third bit differs) comes first.
    assert rank_database(HAM_QUERY, HAM_DB, "cosine")[0].tolist() == [[2, 1, 0, 3]]


def test_hamming_and_cosine_metrics_differ_as_their_rankings_do():
    labels = np.array([0])
    ham = retrieval_metrics(HAM_QUERY, labels, HAM_DB, HAM_DB_LABELS, k=2, metric="hamming")
    cos = retrieval_metrics(HAM_QUERY, labels, HAM_DB, HAM_DB_LABELS, k=2, metric="cosine")
    # Hamming ranking [0, 1, 2, 3], rel [1, 0, 0, 1]: P@2 = 1/2, RR = 1, AP = (1 + 2/4)/2 = 3/4.
    assert (ham["map_at_k"], ham["mrr_at_k"], ham["map"]) == pytest.approx((0.5, 1.0, 0.75))
    # Cosine ranking [2, 1, 0, 3], rel [0, 0, 1, 1]: P@2 = 0, RR = 0, AP = (1/3 + 2/4)/2 = 5/12.
    assert (cos["map_at_k"], cos["mrr_at_k"], cos["map"]) == pytest.approx((0.0, 0.0, 5 / 12))


def test_cosine_ranks_on_exact_integers_so_a_batch_position_cannot_reorder_ties():
    """Copies of a code anywhere in the database, or in a query batch, get bit-identical distances."""
    rng = np.random.default_rng(0)
    db = rng.normal(size=(3000, 16)).astype(np.float32)
    db[[5, 999, 1024, 2999]] = db[5]
    db[[6, 7]] = [8 * db[5], 0.5 * db[5]]  # collinear by powers of two: the same unit vector exactly
    queries = np.concatenate([rng.normal(size=(40, 16)), db[[5]], rng.normal(size=(40, 16)), db[[5]]])
    order, distances = rank_database(queries, db, "cosine", k=6)
    assert order[40].tolist() == order[81].tolist() == [5, 6, 7, 999, 1024, 2999]
    assert len(set(distances[40].tolist() + distances[81].tolist())) == 1
    assert distances[40][0] == pytest.approx(0.0, abs=1e-6)
    shuffled = rng.permutation(len(db))
    full = cosine_distances(queries, db)
    assert cosine_distances(queries[::-1], db[shuffled])[::-1].tolist() == full[:, shuffled].tolist()


def test_quantized_codes_keep_every_sign_so_hamming_bits_are_those_of_the_codes():
    codes = np.array([[1e-9, -1e-9, 0.0, 1.0], [3.0, 4.0, 0.0, 0.0]], dtype=np.float32)
    fixed = quantize_codes(codes)
    assert fixed[0].tolist() == [1, -1, 0, 2**24]  # tiny components round to ±1, not to 0
    assert fixed[1].tolist() == [round(0.6 * 2**24), round(0.8 * 2**24), 0, 0]
    assert ((fixed > 0) == (codes > 0)).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_codes(np.array([[np.nan, 1.0]]))


def test_identical_codes_are_ranked_by_database_index_under_both_metrics():
    db = np.array([[1, -1], [1, -1], [1, -1]], dtype=np.float32)
    for metric in ("cosine", "hamming"):
        assert rank_database(np.array([[1.0, -1.0]]), db, metric)[0].tolist() == [[0, 1, 2]]


def test_precision_uses_the_results_returned_when_the_database_is_smaller_than_k():
    m = retrieval_metrics(DB_CODES[:1], [0], DB_CODES[:2], DB_LABELS[:2], k=10)
    # Two results (labels 0, 1): precision 1/2, not 1/10.
    assert m["map_at_k"] == pytest.approx(0.5)


def test_metrics_are_computed_in_query_blocks_without_changing_results(monkeypatch):
    rng = np.random.default_rng(0)
    q, ql = rng.normal(size=(37, 8)), rng.integers(0, 3, 37)
    d, dl = rng.normal(size=(50, 8)), rng.integers(0, 3, 50)
    whole = retrieval_metrics(q, ql, d, dl, k=5, metric="hamming")
    monkeypatch.setattr("rmnet.metrics.retrieval._CHUNK_ELEMENTS", 100)  # two queries per block
    assert retrieval_metrics(q, ql, d, dl, k=5, metric="hamming") == whole


def test_cosine_distance_of_opposite_codes_is_two():
    assert cosine_distances(np.array([[1.0, 2.0]]), np.array([[-2.0, -4.0]]))[0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "query, db, message",
    [
        (np.zeros((1, 3)), np.zeros((0, 3)), "database is empty"),
        (np.zeros((1, 3)), np.zeros((2, 4)), "3 dimensions but the database codes 4"),
        (np.zeros(3), np.zeros((2, 3)), "2-D"),
    ],
)
def test_bad_codes_are_refused_with_a_message_that_says_why(query, db, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(query, np.zeros(len(np.atleast_2d(query))), db, np.zeros(len(db)))


def test_unknown_metric_and_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="unknown retrieval metric 'euclid'"):
        retrieval_metrics(QUERY_CODES, QUERY_LABELS, DB_CODES, DB_LABELS, metric="euclid")
    with pytest.raises(ValueError, match="one per code"):
        retrieval_metrics(QUERY_CODES, QUERY_LABELS[:2], DB_CODES, DB_LABELS)
