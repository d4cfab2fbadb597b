"""Scores of predictions on labelled rows: accuracy with its exact 95% interval, and the paired
comparison of two sets of predictions on the same rows (McNemar's exact test).

Used for the holdout estimate of a run's fold ensemble (`predict`, `blend`, `report`, `compare`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest


def score(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, error count and Clopper-Pearson 95% interval of `probs` against labels `y`."""
    correct = int(np.sum(probs.argmax(1) == y))
    n = int(len(y))
    ci = binomtest(correct, n).proportion_ci(0.95, method="exact") if n else None
    return {"accuracy": correct / n if n else float("nan"), "errors": n - correct, "n": n,
            "ci95": [float(ci.low), float(ci.high)] if ci else None,
            "ci_method": "Clopper-Pearson (exact binomial)"}


def fold_scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation accuracy and log loss of a fold's (or a run's out-of-fold) predictions."""
    from sklearn.metrics import log_loss

    return {"val_accuracy": accuracy(probs, y),
            "val_loss": float(log_loss(y, probs, labels=list(range(10))))}


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The share of rows whose most probable class is the label."""
    return float(np.mean(np.asarray(probs).argmax(1) == y))


def paired(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray) -> dict[str, Any]:
    """Errors only A makes, only B makes, both make, and McNemar's exact two-sided p-value."""
    wrong_a, wrong_b = probs_a.argmax(1) != y, probs_b.argmax(1) != y
    only_a, only_b = int(np.sum(wrong_a & ~wrong_b)), int(np.sum(wrong_b & ~wrong_a))
    # Under "no difference" each discordant row is A's error or B's with probability 1/2.
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(len(y)), "only_a": only_a, "only_b": only_b,
            "both": int(np.sum(wrong_a & wrong_b)), "mcnemar_p": float(p)}


def paired_text(name_a: str, name_b: str, result: dict[str, Any]) -> str:
    """One sentence on a paired comparison, saying plainly when it is within the noise."""
    a, b, p = result["only_a"], result["only_b"], result["mcnemar_p"]
    verdict = (f"'{name_b if a > b else name_a}' is better (p < 0.05)" if p < 0.05 else
               "the difference is within the noise (p ≥ 0.05): do not pick on it")
    return (f"paired on the same {result['n']} held-out images: {a} errors only '{name_a}' makes, "
            f"{b} only '{name_b}', {result['both']} both; McNemar exact p = {p:.3g} — {verdict}")
