"""The metric formulas, one function each, on plain arrays.

Everything here is deterministic numpy in float64, so the known-answer tests
can check each formula against closed-form values independently of any model.
"""
from __future__ import annotations

import numpy as np

KL_EPS = 1e-6  # smoothing added to every class probability before KL (the value AudioCraft's PaSST KL uses)


def gaussian_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1) of the rows of ``x`` (n, d); needs n >= 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embedding frames of shape (n, d) for a covariance, got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative rounding noise clipped to 0)."""
    a = (a + a.T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``. The trace
    term is taken from the eigenvalues of a symmetric PSD matrix, so it stays
    real and finite for singular covariances (fewer frames than dimensions).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root1 = psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt), 0.0)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """Row-wise KL(p || q) = sum p log(p / q) after smoothing both rows as (x + eps) / sum(x + eps).

    Smoothing keeps the divergence finite where the classifier gives a class
    (numerically) zero probability, and smoothing both sides alike keeps it a
    proper divergence: never negative, exactly 0 for identical rows. With
    ``eps = 0`` it is the plain KL, with 0 log 0 = 0.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"distributions differ in shape: {p.shape} vs {q.shape}")
    p = (p + eps) / np.sum(p + eps, axis=-1, keepdims=True)
    q = (q + eps) / np.sum(q + eps, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        ratio = np.where(p > 0, p, 1.0) / np.where(p > 0, q, 1.0)
        return np.sum(np.where(p > 0, p * np.log(ratio), 0.0), axis=-1)


def inception_score(probs: np.ndarray, n_splits: int, seed: int) -> tuple[float, float]:
    """Inception score: exp(E_x KL(p(y|x) || p(y))) per split; mean and std over splits.

    Rows are shuffled with ``seed`` and cut into ``n_splits`` near-equal parts;
    p(y) is the mean prediction within each part.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"need a (n_samples, n_classes) array, got {probs.shape}")
    if not 1 <= n_splits <= len(probs):
        raise ValueError(f"n_splits must be between 1 and the number of samples ({len(probs)}), got {n_splits}")
    order = np.random.default_rng(seed).permutation(len(probs))
    scores = []
    for part in np.array_split(probs[order], n_splits):
        marginal = part.mean(axis=0, keepdims=True)
        scores.append(float(np.exp(kl_divergence(part, np.broadcast_to(marginal, part.shape), eps=0.0).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (broadcasting)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / denom


def chroma_cosine(chroma_a: np.ndarray, chroma_b: np.ndarray) -> float:
    """Mean frame-wise cosine similarity of two (12, T) chromagrams.

    Frames are aligned from t = 0 and the longer chromagram is cut to the
    shorter; frames where either side is all zero (digital silence) have no
    direction and are left out. NaN when no frame is left.
    """
    a, b = np.asarray(chroma_a, np.float64), np.asarray(chroma_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"chromagrams must be (n_chroma, T) with equal n_chroma, got {a.shape} and {b.shape}")
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n].T, b[:, :n].T
    voiced = (np.linalg.norm(a, axis=1) > 0) & (np.linalg.norm(b, axis=1) > 0)
    if not voiced.any():
        return float("nan")
    return float(cosine_similarity(a[voiced], b[voiced]).mean())
