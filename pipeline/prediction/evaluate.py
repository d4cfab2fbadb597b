"""Scores of predictions on labelled rows: accuracy with its exact 95% interval, per-digit
scores and confusions, and the paired comparison of two sets of predictions on the same rows
(McNemar's exact test).

One interval everywhere: the Clopper-Pearson (exact binomial) 95% interval of `score`, for the
out-of-fold accuracy (`report`, `compare`) and the holdout estimate of a run's fold ensemble
(`predict`, `blend`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

DIGITS = list(range(10))  # the classes
CI_METHOD = "Clopper-Pearson (exact binomial)"


def score(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, error count and Clopper-Pearson 95% interval of `probs` against labels `y`."""
    correct = int(np.sum(probs.argmax(1) == y))
    n = int(len(y))
    return {"accuracy": correct / n if n else float("nan"), "errors": n - correct, "n": n,
            "ci95": exact_ci(correct, n) if n else None, "ci_method": CI_METHOD}


def exact_ci(correct: int, n: int) -> list[float]:
    """The Clopper-Pearson 95% interval of `correct` right out of `n` (n > 0)."""
    ci = binomtest(correct, n).proportion_ci(0.95, method="exact")
    return [float(ci.low), float(ci.high)]


def fold_scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation accuracy and log loss of a fold's (or a run's out-of-fold) predictions."""
    from sklearn.metrics import log_loss

    return {"val_accuracy": accuracy(probs, y),
            "val_loss": float(log_loss(y, probs, labels=DIGITS))}


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The share of rows whose most probable class is the label."""
    return float(np.mean(np.asarray(probs).argmax(1) == y))


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """10×10 counts: rows are true digits, columns predicted digits."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, pred, labels=DIGITS)


def top_confusions(cm: list[list[int]] | np.ndarray, n: int = 3) -> list[tuple[int, int, int]]:
    """The `n` largest off-diagonal cells as (true, predicted, count)."""
    cm = np.asarray(cm)
    cells = [(int(cm[i, j]), i, j) for i in DIGITS for j in DIGITS if i != j and cm[i, j]]
    return [(i, j, c) for c, i, j in sorted(cells, key=lambda t: (-t[0], t[1], t[2]))[:n]]


def per_digit(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and support per digit and averaged (scikit-learn's report as a dict)."""
    from sklearn.metrics import classification_report

    return classification_report(y, pred, labels=DIGITS, target_names=[str(d) for d in DIGITS],
                                 output_dict=True, zero_division=0)


def paired(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray) -> dict[str, Any]:
    """Errors only A makes, only B makes, both make, and McNemar's exact two-sided p-value."""
    return paired_errors(probs_a.argmax(1) != y, probs_b.argmax(1) != y)


def paired_errors(wrong_a: np.ndarray, wrong_b: np.ndarray) -> dict[str, Any]:
    """`paired` from the rows each gets wrong (boolean, one per held-out row)."""
    only_a, only_b = int(np.sum(wrong_a & ~wrong_b)), int(np.sum(wrong_b & ~wrong_a))
    # Under "no difference" each discordant row is A's error or B's with probability 1/2.
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(len(wrong_a)), "only_a": only_a, "only_b": only_b,
            "both": int(np.sum(wrong_a & wrong_b)), "mcnemar_p": float(p)}


def paired_text(name_a: str, name_b: str, result: dict[str, Any]) -> str:
    """One sentence on a paired comparison, saying plainly when it is within the noise."""
    a, b, p = result["only_a"], result["only_b"], result["mcnemar_p"]
    verdict = (f"'{name_b if a > b else name_a}' is better (p < 0.05)" if p < 0.05 else
               "the difference is within the noise (p ≥ 0.05): do not pick on it")
    return (f"paired on the same {result['n']} held-out images: {a} errors only '{name_a}' makes, "
            f"{b} only '{name_b}', {result['both']} both; McNemar exact p = {p:.3g} — {verdict}")
