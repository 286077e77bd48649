"""Calibration: a temperature fitted on validation cells, so that a predicted probability of .9 is right about
nine times in ten, and the expected calibration error that measures it."""

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of `softmax(logits / T)` on `labels`."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)

    def nll(log_temperature):
        probabilities = softmax(logits, np.exp(log_temperature))
        return -np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Each cell's bin among `n_bins` equal-width confidence bins over [0, 1] (right edges inclusive)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence (top probability) and accuracy, averaged over `n_bins` equal-width
    confidence bins weighted by their cells."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence, predicted = probabilities.max(-1), probabilities.argmax(-1)
    correct = predicted == labels
    bins = confidence_bins(confidence, n_bins)
    error = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def calibrated_ece_floor(probabilities: np.ndarray, n_bins: int = ECE_BINS, n_draws: int = 200, seed: int = 0) -> float:
    """The ECE that a perfectly calibrated model with these probabilities would still show on this many cells: the
    mean ECE over `n_draws` label sets in which each cell's top class is right with its own top probability. On a few
    hundred cells it is well above 0, so a measured ECE near it is as good as this test set can show."""
    confidence = np.asarray(probabilities).max(-1)
    bins = confidence_bins(confidence, n_bins)
    correct = np.random.default_rng(seed).random((n_draws, len(confidence))) < confidence
    error = np.zeros(n_draws)
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * np.abs(correct[:, members].mean(1) - confidence[members].mean())
    return float(error.mean())


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS):
    """Per confidence bin: `(mean confidence, accuracy, cells)`, for reliability diagrams."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    bins = confidence_bins(confidence, n_bins)
    return [(float(confidence[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
            for b in range(n_bins) if (bins == b).any()]


UNASSIGNED_RATE = 0.05


def fit_unassigned_threshold(confidences: np.ndarray, rate: float = UNASSIGNED_RATE) -> float:
    """
    The confidence below which a cell is called `Unassigned`: the `rate` quantile of the validation cells'
    confidences, so that at most about `rate` of cells of the known types are flagged.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    if not len(confidences):
        raise ValueError("no validation cells to fit the Unassigned threshold on")
    return float(np.quantile(confidences, rate, method="lower"))


def fit_unassigned_thresholds(confidences: np.ndarray, rate: float = UNASSIGNED_RATE) -> list:
    """
    One threshold per column of `confidences` (validation cells x scores), for flagging a cell when any of its scores
    falls below its threshold: each is the same quantile of its score, the largest for which at most about `rate` of
    the validation cells are flagged in all. With one column it is `fit_unassigned_threshold`.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    if confidences.ndim != 2 or not len(confidences):
        raise ValueError("no validation cells to fit the Unassigned thresholds on")
    best = None
    for quantile in np.linspace(0.0, rate, 201):
        thresholds = np.quantile(confidences, quantile, axis=0, method="lower")
        if (confidences < thresholds).any(1).mean() > rate:
            break
        best = thresholds
    return [float(value) for value in best]
