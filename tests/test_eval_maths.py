"""Known-answer tests of the metric formulas: Fréchet distance, KL, IS, cosine and chroma cosine."""
from __future__ import annotations

import math

import numpy as np
import pytest

from expotion.evaluation.maths import (KL_EPS, chroma_cosine, cosine_similarity, frechet_distance, gaussian_statistics,
                                       inception_score, kl_divergence, softmax)


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---- Fréchet distance ------------------------------------------------------------


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -2.0, 0.5), (3.0, 0.0, 0.0, 4.0)])
def test_frechet_1d_closed_form(m1, s1, m2, s2):
    """In one dimension the distance is (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2."""
    got = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]]))
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-10)


def test_frechet_diagonal_closed_form():
    """Diagonal covariances: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0, -1.0]), np.array([1.0, 1.0, 0.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(6.0 + 1.0 + 1.0 + 0.25, rel=1e-12)


def test_frechet_non_commuting_covariances_match_rotated_closed_form():
    """Rotating one diagonal Gaussian's axes: the distance equals the formula with an explicit matrix square root.

    For S1 = I the trace term is tr(S2^1/2), independent of the rotation.
    """
    d = 5
    rot = random_rotation(d, seed=3)
    eig = np.array([0.5, 1.0, 2.0, 3.0, 7.0])
    s2 = rot @ np.diag(eig) @ rot.T
    expected = d + eig.sum() - 2 * np.sqrt(eig).sum()
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_is_zero_for_identical_and_symmetric():
    x = np.random.default_rng(0).normal(size=(200, 6))
    y = np.random.default_rng(1).normal(size=(150, 6)) * 1.5 + 0.3
    sx, sy = gaussian_statistics(x), gaussian_statistics(y)
    assert frechet_distance(*sx, *sx) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(*sx, *sy) == pytest.approx(frechet_distance(*sy, *sx), rel=1e-9)
    assert frechet_distance(*sx, *sy) > 0.5


def test_frechet_singular_covariances_stay_finite():
    """Fewer samples than dimensions (as with few VGGish frames): rank-deficient but a finite, exact value."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 16)), rng.normal(size=(5, 16))
    value = frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y))
    assert math.isfinite(value) and value > 0
    # A Gaussian against itself shifted by a vector v: exactly |v|^2, even when singular.
    mu, cov = gaussian_statistics(x)
    assert frechet_distance(mu, cov, mu + 0.5, cov) == pytest.approx(16 * 0.25, rel=1e-6)


def test_gaussian_statistics_uses_unbiased_covariance():
    x = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 1.0]])
    mu, cov = gaussian_statistics(x)
    assert mu == pytest.approx([3.0, 1.0])
    assert cov == pytest.approx(np.array([[4.0, 1.0], [1.0, 1.0]]))


def test_gaussian_statistics_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_statistics(np.ones((1, 8)))


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- KL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, q, expected",
    [
        ([0.5, 0.5], [0.25, 0.75], 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)),
        ([0.25, 0.75], [0.5, 0.5], 0.25 * math.log(0.5) + 0.75 * math.log(1.5)),
        ([1.0, 0.0, 0.0], [0.5, 0.25, 0.25], math.log(2.0)),
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], 0.0),
    ],
)
def test_kl_hand_computed(p, q, expected):
    assert float(kl_divergence(np.array(p), np.array(q))) == pytest.approx(expected, abs=1e-4)
    assert float(kl_divergence(np.array(p), np.array(q), eps=0.0)) == pytest.approx(expected, abs=1e-12)


def test_kl_is_asymmetric_and_rowwise():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.5, 0.5]])
    forward, backward = kl_divergence(p, q), kl_divergence(q, p)
    assert forward.shape == (2,)
    assert forward[1] == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-5)
    assert backward[1] == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0), abs=1e-5)
    assert not np.allclose(forward, backward)


def test_kl_epsilon_bounds_a_zero_in_the_second_argument():
    """A class the second distribution rules out costs about log(p / eps), not infinity."""
    got = float(kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])))
    q = np.array([1 + KL_EPS, KL_EPS]) / (1 + 2 * KL_EPS)
    assert got == pytest.approx(0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1]), rel=1e-9)
    assert float(kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0]), eps=0.0)) == math.inf


def test_kl_of_identical_distributions_is_exactly_zero():
    """Even over many small classes (where adding eps to one side only would go negative)."""
    p = softmax(np.random.default_rng(0).normal(size=(4, 527)) * 0.01)
    assert np.all(kl_divergence(p, p) == 0.0)
    q = softmax(np.random.default_rng(1).normal(size=(4, 527)) * 0.01)
    assert np.all(kl_divergence(p, q) > 0)


def test_softmax_rows_sum_to_one_and_are_shift_invariant():
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]])
    probs = softmax(logits)
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probs[1] == pytest.approx([1 / 3] * 3)
    assert probs[0] == pytest.approx(softmax(logits[0] - 1000.0))


# ---- IS --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_is_of_uniform_one_hot_predictions_is_k(k):
    probs = np.eye(k)[np.arange(k * 20) % k]
    mean, std = inception_score(probs, n_splits=1, seed=0)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == 0.0


def test_is_of_identical_predictions_is_one():
    probs = np.tile(np.array([0.7, 0.2, 0.1]), (30, 1))
    mean, std = inception_score(probs, n_splits=5, seed=0)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_splits_are_seeded():
    probs = softmax(np.random.default_rng(0).normal(size=(37, 6)) * 3)
    assert inception_score(probs, 4, seed=1) == inception_score(probs, 4, seed=1)
    assert inception_score(probs, 4, seed=1) != inception_score(probs, 4, seed=2)
    mean, std = inception_score(probs, 4, seed=1)
    assert 1.0 < mean < 6.0 and std > 0


def test_is_split_count_is_checked():
    with pytest.raises(ValueError, match="n_splits"):
        inception_score(np.eye(3), n_splits=4, seed=0)


# ---- cosine and chroma cosine --------------------------------------------------------


def test_cosine_similarity_known_values():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([3.0, 3.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))


def test_chroma_cosine_frames_and_alignment():
    c = np.zeros((12, 4))
    c[0, :2] = 1.0  # C for two frames
    c[7, 2:] = 2.0  # then G
    d = c.copy()
    d[:, 3] = 0.0  # silence in the last frame: left out
    assert chroma_cosine(c, d) == pytest.approx(1.0)
    e = np.zeros((12, 6))
    e[4, :] = 1.0  # E throughout, and longer: cut to 4 frames
    assert chroma_cosine(c, e) == pytest.approx(0.0)
    half = c.copy()
    half[:, 2:] = 0.0
    half[0, 2:] = 1.0  # agree on frames 0-1 (cos 1), disagree on 2-3 (cos 0)
    assert chroma_cosine(c, half) == pytest.approx(0.5)


def test_chroma_cosine_of_silence_is_nan():
    assert math.isnan(chroma_cosine(np.zeros((12, 5)), np.ones((12, 5))))
