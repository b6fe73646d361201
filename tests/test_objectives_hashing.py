"""The hashing objectives DCH, DPN, CSQ and CRI: finite, differentiable, right about good codes, trainable."""

import math

import pytest
import torch
import torch.nn.functional as F

import rmnet
from rmnet.objectives import build_objective
from rmnet.objectives.hashing import balanced_target_codes, hash_centres

BITS, CLASSES = 8, 3
NAMES = ["dch", "dpn", "csq", "cri"]


def tiny_model(**options):
    torch.manual_seed(0)
    return rmnet.create_model("small_cnn", num_classes=CLASSES, hash_bits=BITS, width=8, **options)


def batch():
    torch.manual_seed(1)
    return torch.randn(12, 3, 16, 16), torch.arange(12) % CLASSES


def objective(name, **options):
    return build_objective(
        name, num_classes=CLASSES, class_weights=torch.ones(CLASSES), hash_bits=BITS, **options
    )


@pytest.mark.parametrize("name", NAMES)
def test_each_loss_is_finite_and_gives_finite_gradients_to_every_weight_it_uses(name):
    model = tiny_model()
    images, targets = batch()
    loss, logits = objective(name)(model, images, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.shape == (12, CLASSES)
    loss.backward()
    for param_name, param in model.named_parameters():
        if name != "cri" and param_name.startswith("fc."):  # the published forms train no classifier
            assert param.grad is None, param_name
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert model.hash.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_a_few_optimisation_steps_on_a_tiny_model_reduce_the_loss(name):
    model = tiny_model()
    images, targets = batch()
    loss_fn = objective(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss_fn(model, images, targets)[0].item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_fn(model, images, targets)[0].backward()
        optimizer.step()
    assert loss_fn(model, images, targets)[0].item() < 0.8 * first


def class_codes(targets, table, scale=3.0):
    """Codes equal to ``scale`` × the ±1 row of ``table`` for each target."""
    return scale * table[targets]


def test_dch_prefers_codes_that_are_equal_within_a_class_and_far_across_classes():
    loss = objective("dch")
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    table = hash_centres(CLASSES, BITS)  # rows differ in half their bits
    good = class_codes(targets, table)
    bad = class_codes(torch.tensor([0, 1, 2, 0, 1, 2]), table)  # same class -> different codes
    assert loss.hashing_loss(good, targets) < loss.hashing_loss(bad, targets)


@pytest.mark.parametrize("name", ["dpn", "csq"])
def test_dpn_and_csq_prefer_codes_at_their_class_target_over_the_opposite_code(name):
    loss = objective(name)
    targets = torch.tensor([0, 1, 2, 2])
    table = loss.target_codes if name == "dpn" else loss.centres
    good, bad = class_codes(targets, table), class_codes(targets, -table)
    assert loss.hashing_loss(good, targets) < loss.hashing_loss(bad, targets)


def test_dpn_hinge_is_zero_once_every_bit_passes_the_margin():
    loss = objective("dpn", margin=1.0)
    targets = torch.tensor([0, 1])
    assert loss.hashing_loss(1.5 * loss.target_codes[targets], targets) == 0
    assert loss.hashing_loss(0.5 * loss.target_codes[targets], targets) == pytest.approx(0.5 * BITS)


def test_dpn_sums_its_hinge_over_bits_and_averages_over_images():
    """As published: all-zero codes cost K·m (bits × margin), not m."""
    loss = objective("dpn", margin=2.0)
    targets = torch.tensor([0, 1, 2, 0])
    total, _ = loss(_ZeroCodes(), torch.zeros(4, 3, 8, 8), targets)
    assert total.item() == pytest.approx(BITS * 2.0)


@pytest.mark.parametrize("name", ["dch", "dpn", "csq"])
def test_the_hashing_baselines_default_to_their_published_form_without_a_classifier_term(name):
    assert objective(name).ce_weight == 0
    assert objective(name, ce_weight=1.0).ce_weight == 1.0


class _ZeroCodes(rmnet.models.ImageClassifier):
    """Codes that are all zero and logits that would cost a lot: only a classifier term sees them."""

    num_classes, num_features, hash_bits = CLASSES, BITS, BITS

    def forward_features(self, x):
        return x.new_zeros(len(x), BITS)

    def forward_head(self, features):
        return features, features.new_full((len(features), CLASSES), 50.0) * torch.tensor([1.0, -1.0, 0.0])


def test_cri_prefers_rotated_copies_with_the_same_code():
    loss = objective("cri")
    codes = torch.randn(4, BITS)
    same, opposite = codes.expand(3, 4, BITS), -codes.expand(3, 4, BITS)
    assert loss.rotation_loss(codes, same) == pytest.approx(0.0, abs=1e-6)
    assert loss.rotation_loss(codes, opposite) > 0.1


def test_cri_rotation_term_vanishes_for_a_model_invariant_to_90_degree_rotations():
    images, targets = batch()
    images[:, :, :6, :] += 4.0  # a bright band at the top: rotating the image moves it
    invariant, plain = tiny_model(rm="all").eval(), tiny_model().eval()
    loss = objective("cri")
    rotation_terms = []
    with torch.no_grad():
        for model in (invariant, plain):
            model.hash.bias.zero_()  # codes from the features alone, not from the bias
            total, logits = loss(model, images, targets)
            rotation_terms.append((total - F.cross_entropy(logits, targets)).item())
    assert abs(rotation_terms[0]) < 1e-6 < 1e-4 < rotation_terms[1]


@pytest.mark.parametrize("name", ["dch", "dpn", "csq"])
def test_ce_weight_adds_the_weighted_cross_entropy_and_zero_leaves_the_method_alone(name):
    model = tiny_model().eval()
    images, targets = batch()
    weights = torch.tensor([1.0, 2.0, 0.5])
    options = dict(num_classes=CLASSES, class_weights=weights, hash_bits=BITS)
    with_ce, logits = build_objective(name, ce_weight=1.0, **options)(model, images, targets)
    alone, _ = build_objective(name, ce_weight=0.0, **options)(model, images, targets)
    expected = F.cross_entropy(logits, targets, weight=weights)
    assert (with_ce - alone).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hadamard_centres_differ_in_at_least_half_their_bits():
    centres = hash_centres(8, 16)
    distances = torch.cdist(centres, centres, p=0) + 16 * torch.eye(8)
    assert distances.min() >= 8
    assert set(centres.unique().tolist()) == {-1.0, 1.0}


def test_more_classes_than_twice_the_bits_get_random_balanced_centres_fixed_by_the_seed():
    centres = hash_centres(20, 8, seed=3)
    assert centres.shape == (20, 8) and (centres.sum(dim=1) == 0).all()  # half the bits are -1
    assert torch.equal(centres, hash_centres(20, 8, seed=3))
    assert not torch.equal(centres, hash_centres(20, 8, seed=4))
    assert torch.equal(balanced_target_codes(5, 8, seed=0), balanced_target_codes(5, 8, seed=0))


@pytest.mark.parametrize("name", NAMES)
def test_hashing_losses_need_a_hash_layer(name):
    with pytest.raises(ValueError, match="needs a hash layer"):
        build_objective(name, num_classes=CLASSES, class_weights=None, hash_bits=None)


# Values pinned on hand-computed examples: codes are atanh of round numbers, so tanh(codes) is exact.


def test_dch_matches_a_hand_computation_with_distinct_pairs_only_and_gamma_in_both_terms():
    """h0 = (.28, .96), h1 = (.96, .28), h2 = (.28, −.96): unit vectors, classes 0, 0, 1.

    d = K/2 · (1 − cos), K = 2: d01 = 1 − .5376 = .4624, d02 = 1 + .8432 = 1.8432, d12 = 1.
    Similar pairs (i ≠ j): (0,1), (1,0); dissimilar: (0,2), (2,0), (1,2), (2,1). |h| against the
    all-ones code: cos = 1.24/√2 for every image.
    """
    gamma, weight = 2.0, 0.5
    h = torch.tensor([[0.28, 0.96], [0.96, 0.28], [0.28, -0.96]])
    targets = torch.tensor([0, 0, 1])
    loss = build_objective(
        "dch", num_classes=2, class_weights=None, hash_bits=2, gamma=gamma, quantization_weight=weight
    )
    similar = math.log(1 + 0.4624 / gamma)
    dissimilar = (math.log(1 + gamma / 1.8432) + math.log(1 + gamma / 1.0)) / 2
    quantization = math.log(1 + (1 - 1.24 / math.sqrt(2)) / gamma)
    expected = similar + dissimilar + weight * quantization
    assert loss.hashing_loss(torch.atanh(h), targets).item() == pytest.approx(expected, rel=1e-5)


def test_csq_matches_a_hand_computation_of_its_cross_entropy_on_tanh_codes_mapped_to_0_1():
    """K = 2: the Hadamard centres are (1, 1) for class 0 and (1, −1) for class 1.

    h0 = (.6, −.2), class 0: p = (h + 1)/2 = (.8, .4) against (1, 1); h1 = (.2, .6), class 1:
    p = (.6, .8) against (1, 0). Quantisation: log cosh(|h| − 1) at −.4, −.8, −.8, −.4.
    """
    weight = 0.5
    loss = build_objective("csq", num_classes=2, class_weights=None, hash_bits=2, quantization_weight=weight)
    assert loss.centres.tolist() == [[1.0, 1.0], [1.0, -1.0]]
    h = torch.tensor([[0.6, -0.2], [0.2, 0.6]])
    central = -(math.log(0.8) + math.log(0.4) + math.log(0.6) + math.log(0.2)) / 4
    quantization = (2 * math.log(math.cosh(0.4)) + 2 * math.log(math.cosh(0.8))) / 4
    expected = central + weight * quantization
    value = loss.hashing_loss(torch.atanh(h), torch.tensor([0, 1]))
    assert value.item() == pytest.approx(expected, rel=1e-5)
