"""Report figures: one function per picture, each drawing a matplotlib `Figure` and saving a PNG.

No pyplot: every figure is a `matplotlib.figure.Figure` rendered by the Agg canvas, so nothing
here changes matplotlib's global backend or opens a window (the Optuna plots, which need pyplot,
are drawn in `pipeline.tuning.plots`). Functions take plain arrays and tables,
know nothing of the run folder layout, and return the path of the PNG they wrote.

    figures.confusion_matrix(y, probs.argmax(1), Path("runs/demo/figures/confusion_matrix.png"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.files import write_png
from pipeline.prediction.evaluate import DIGITS, confusion_counts

DPI = 110
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
RIGHT_COLOR = "#1a7f37"
WRONG_COLOR = "#cf222e"
UNSURE_COLOR = "#bc4c00"


def _save(fig: Figure, out: Path, **savefig: Any) -> Path:
    """Render `fig` to PNG and write it atomically."""
    return write_png(out, fig, dpi=DPI, **savefig)


def _digit(ax: Axes, image: np.ndarray) -> None:
    """Show one 28×28 digit, ink dark on white, without axes."""
    ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mosaic(images: Sequence[np.ndarray], labels: Sequence[str], colors: Sequence[str],
            cols: int, cell_inches: float, title: str, row_labels: Sequence[str] | None = None,
            fontsize: float = 8.5) -> Figure:
    """Digits tiled into one image with a label above each: one axes, so it draws fast."""
    n = len(images)
    rows = max(1, -(-n // cols))
    lines = max((label.count("\n") + 1 for label in labels), default=0)
    units = cell_inches / 34.0  # inches per image pixel; a cell is 28 px plus padding
    label_h = int(np.ceil(lines * 1.3 * fontsize / 72 / units)) + 1 if lines else 2
    cell_w, cell_h = 34, 28 + label_h + 3
    canvas = np.zeros((rows * cell_h, cols * cell_w), dtype=np.float32)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        y0, x0 = r * cell_h + label_h, c * cell_w + 3
        canvas[y0:y0 + 28, x0:x0 + 28] = np.asarray(image, dtype=np.float32).reshape(28, 28)
    title_in = 0.45
    left_in = 0.35 if row_labels else 0.0
    width, height = cols * cell_w * units + left_in, rows * cell_h * units
    fig = Figure(figsize=(width, height + title_in))
    ax = fig.add_axes((left_in / width, 0, 1 - left_in / width, height / (height + title_in)))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for k, (label, color) in enumerate(zip(labels, colors)):
        r, c = divmod(k, cols)
        ax.text(c * cell_w + 17, r * cell_h + label_h - 1, label, ha="center", va="bottom",
                fontsize=fontsize, color=color, linespacing=1.15)
    for r, label in enumerate(row_labels or []):
        fig.text(left_in / width / 2, 1 - (title_in + (r * cell_h + label_h + 14) * units)
                 / (height + title_in), label, ha="center", va="center", fontsize=14)
    fig.text(0.5, 1 - 0.5 * title_in / (height + title_in), title, ha="center", va="center",
             fontsize=11)
    return fig


def _plain_log_ticks(ax: Axes) -> None:
    """Label a log-scale y axis with plain numbers (0.3, 1) instead of 3×10⁻¹."""
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: Any) -> str:
        # Label only the 2s, 3s and 5s of each decade: every minor tick labelled is unreadable.
        mantissa = round(v / 10 ** np.floor(np.log10(v))) if v > 0 else 0
        return f"{v:.3g}" if mantissa in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _accuracy_floor(values: Sequence[float]) -> float:
    """A lower y-limit that shows the interesting top of accuracy curves, not epoch 1's low."""
    vals = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if vals.size == 0:
        return 0.0
    low = float(np.percentile(vals, 10)) if vals.size > 4 else float(vals.min())
    return max(0.0, low - 0.02)


# --- training -------------------------------------------------------------------------------

def learning_curves(histories: Sequence[pd.DataFrame], out: Path,
                    best_epochs: Sequence[int] | None = None) -> Path:
    """Loss, accuracy and learning rate per epoch: all folds overlaid, then one row per fold."""
    k = len(histories)
    fig = Figure(figsize=(12.5, 3.0 * (1 + k)), layout="constrained")
    grid = fig.add_gridspec(1 + k, 6)
    colors = [f"C{i % 10}" for i in range(k)]

    loss_ax = fig.add_subplot(grid[0, 0:2])
    acc_ax = fig.add_subplot(grid[0, 2:4])
    lr_ax = fig.add_subplot(grid[0, 4:6])
    accs: list[float] = []
    for i, h in enumerate(histories):
        ep = h["epoch"] if "epoch" in h else np.arange(1, len(h) + 1)
        for col, ax, style in (("val_loss", loss_ax, "-"), ("loss", loss_ax, "--"),
                               ("val_accuracy", acc_ax, "-"), ("accuracy", acc_ax, "--")):
            if col in h:
                ax.plot(ep, h[col], style, color=colors[i], lw=1.6 if style == "-" else 1.0,
                        alpha=1.0 if style == "-" else 0.6,
                        label=f"fold {i + 1}" if col in ("val_loss", "val_accuracy") else None)
        accs += [*h.get("val_accuracy", []), *h.get("accuracy", [])][1:]
        if "learning_rate" in h:
            lr_ax.plot(ep, h["learning_rate"], color=colors[i], lw=1.4, label=f"fold {i + 1}")
    loss_ax.set(title="All folds: loss (validation solid, training dashed)", xlabel="epoch",
                ylabel="loss", yscale="log")
    acc_ax.set(title="All folds: accuracy (validation solid, training dashed)", xlabel="epoch",
               ylabel="accuracy", ylim=(_accuracy_floor(accs), 1.002))
    lr_ax.set(title="Learning rate schedule", xlabel="epoch", ylabel="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    _plain_log_ticks(loss_ax)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
    if k <= 10:
        acc_ax.legend(loc="lower right", fontsize=8, ncols=2)

    for i, h in enumerate(histories):
        ep = h["epoch"] if "epoch" in h else np.arange(1, len(h) + 1)
        best = best_epochs[i] if best_epochs is not None and i < len(best_epochs) else None
        la = fig.add_subplot(grid[1 + i, 0:3])
        aa = fig.add_subplot(grid[1 + i, 3:6])
        for col, ax, color, label in (("loss", la, TRAIN_COLOR, "training"),
                                      ("val_loss", la, VAL_COLOR, "validation"),
                                      ("accuracy", aa, TRAIN_COLOR, "training"),
                                      ("val_accuracy", aa, VAL_COLOR, "validation")):
            if col in h:
                ax.plot(ep, h[col], "-o", color=color, ms=3, lw=1.5, label=label)
        fold_accs = [*h.get("val_accuracy", []), *h.get("accuracy", [])]
        title = f"Fold {i + 1}"
        if "val_accuracy" in h and len(h):
            title += f" — final val accuracy {float(h['val_accuracy'].iloc[-1]):.4f}"
        if best:
            title += f", best epoch {best}"
            for ax in (la, aa):
                ax.axvline(best, color="0.5", ls=":", lw=1)
        la.set(title=f"{title}: loss", xlabel="epoch", ylabel="loss", yscale="log")
        aa.set(title=f"{title}: accuracy", xlabel="epoch", ylabel="accuracy",
               ylim=(_accuracy_floor(fold_accs[1:] or fold_accs), 1.002))
        _plain_log_ticks(la)
        for ax in (la, aa):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    return _save(fig, out)


def fold_accuracy(fold_accs: Sequence[float], cv_accuracy: float, ci: Sequence[float],
                  out: Path) -> Path:
    """Validation accuracy of each fold with the mean ± std band and the out-of-fold CI."""
    accs = np.asarray(fold_accs, dtype=float)
    mean, std = float(accs.mean()), float(accs.std())
    k = len(accs)
    folds = np.arange(1, k + 1)
    fig = Figure(figsize=(max(7.5, 0.9 * k + 5), 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between([0.6, k + 0.4], mean - std, mean + std, color="C1", alpha=0.2,
                    label=f"mean ± std ({std:.4f})")
    ax.hlines(mean, 0.6, k + 0.4, color="C1", lw=2, label=f"fold mean {mean:.4f}")
    ax.plot(folds, accs, "o", color="C0", ms=10, label="fold validation accuracy")
    ax.errorbar([k + 1], [cv_accuracy], yerr=[[cv_accuracy - ci[0]], [ci[1] - cv_accuracy]],
                fmt="D", color="C3", capsize=8, ms=8, label="out-of-fold accuracy, 95% CI")
    for f, a in zip(folds, accs):
        ax.annotate(f"{a:.4f}", (f, a), ha="left", va="center", fontsize=9,
                    xytext=(9, 0), textcoords="offset points")
    ax.annotate(f"{cv_accuracy:.4f}\n[{ci[0]:.4f}, {ci[1]:.4f}]", (k + 1, cv_accuracy),
                ha="left", va="center", fontsize=9, xytext=(10, 0), textcoords="offset points")
    spread = max(std, (ci[1] - ci[0]) / 2, 0.001)
    low = max(0.0, min(float(accs.min()), ci[0]) - 1.5 * spread)
    high = min(1.0, max(float(accs.max()), ci[1]) + 1.5 * spread)
    ax.set(xlim=(0.4, k + 1.9), ylim=(low, high), xticks=[*folds, k + 1],
           xticklabels=[*(f"fold {f}" for f in folds), "all (OOF)"], ylabel="accuracy",
           title=f"Fold accuracy {mean:.4f} ± {std:.4f} (std over {k} folds)\n"
                 f"out-of-fold accuracy {cv_accuracy:.4f}, 95% CI {ci[0]:.4f}–{ci[1]:.4f}")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8.5)
    return _save(fig, out)


# --- where the model is wrong ----------------------------------------------------------------

def confusion_matrix(y: np.ndarray, pred: np.ndarray, out: Path) -> Path:
    """Out-of-fold confusion matrix: counts, and row-normalised with errors coloured."""
    cm = confusion_counts(y, pred)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig = Figure(figsize=(12.5, 5.9), layout="constrained")
    left, right = fig.subplots(1, 2)

    left.imshow(cm, cmap="Blues", norm=_log_norm(cm))
    for (i, j), v in np.ndenumerate(cm):
        if v or i == j:
            dark = v > np.sqrt(max(1, cm.max()))
            left.text(j, i, str(v), ha="center", va="center", fontsize=9,
                      color="white" if dark else "black", fontweight="bold" if i == j else None)
    left.set_title(f"Counts ({int(cm.sum())} out-of-fold predictions, {int(cm.trace())} right)")

    errors = np.where(np.eye(10, dtype=bool), np.nan, norm)
    cmap = _cmap("Reds").with_extremes(bad="#e8f0e8")
    vmax = max(float(np.nanmax(errors)) if np.isfinite(errors).any() else 0.0, 1e-3)
    right.imshow(errors, cmap=cmap, vmin=0, vmax=vmax)
    for (i, j), v in np.ndenumerate(norm):
        if cm[i, j] or i == j:
            pct = 100 * v
            text = "100" if pct >= 99.95 else f"{pct:.2f}" if pct < 1 else f"{pct:.1f}"
            strong = i != j and v > 0.6 * vmax
            right.text(j, i, text, ha="center", va="center", fontsize=8,
                       color="white" if strong else "black", fontweight="bold" if i == j else None)
    right.set_title("Row-normalised % of each true digit (diagonal = recall; red = error rate)")
    for ax in (left, right):
        ax.set(xticks=DIGITS, yticks=DIGITS, xlabel="predicted digit", ylabel="true digit")
    return _save(fig, out)


def _log_norm(cm: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm, Normalize

    positive = cm[cm > 0]
    if positive.size == 0 or positive.max() == positive.min():
        return Normalize(vmin=0, vmax=max(1, int(cm.max())))
    return LogNorm(vmin=max(1, int(positive.min())), vmax=int(positive.max()), clip=True)


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].copy()


def per_class_metrics(report: dict[str, Any], out: Path) -> Path:
    """Precision, recall and F1 per digit from `sklearn.metrics.classification_report(output_dict=True)`."""
    names = [str(d) for d in DIGITS if str(d) in report]
    width = 0.27
    x = np.arange(len(names))
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax = fig.add_subplot()
    values = []
    for k, (key, color) in enumerate((("precision", "C0"), ("recall", "C2"), ("f1-score", "C3"))):
        vals = np.array([report[n][key] for n in names], dtype=float)
        values.append(vals)
        ax.bar(x + (k - 1) * width, vals, width, color=color, label=key)
    f1 = values[2]
    for xi, v in zip(x, f1):
        ax.annotate(f"{v:.3f}", (xi + width, v), ha="center", va="bottom", fontsize=7.5,
                    xytext=(0, 2), textcoords="offset points", rotation=90)
    low = float(np.min(values)) if values and np.size(values) else 0.0
    bottom = max(0.0, low - max(0.02, (1 - low) * 0.4))
    macro = report.get("macro avg", {}).get("f1-score")
    title = "Per-digit precision, recall and F1 (out-of-fold)"
    if macro is not None:
        title += f"; macro F1 {macro:.4f}"
    ax.set(xticks=x, xticklabels=[f"digit {n}\n(n={int(report[n]['support'])})" for n in names],
           ylim=(bottom, 1.0 + (1 - bottom) * 0.12), ylabel="score", title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=9)
    return _save(fig, out)


def confidence(y: np.ndarray, probs: np.ndarray, out: Path, bins: int = 10) -> Path:
    """How sure the model is: confidence of right vs wrong predictions, and calibration."""
    from sklearn.calibration import calibration_curve

    conf = probs.max(1)
    right = probs.argmax(1) == y
    fig = Figure(figsize=(12.5, 4.6), layout="constrained")
    hist_ax, cal_ax = fig.subplots(1, 2)
    edges = np.linspace(0, 1, 21)
    hist_ax.hist([conf[right], conf[~right]], bins=edges, color=[RIGHT_COLOR, WRONG_COLOR],
                 label=[f"right ({int(right.sum())})", f"wrong ({int((~right).sum())})"])
    hist_ax.set(yscale="log", xlabel="confidence (top softmax probability)", ylabel="images",
                title="Confidence of out-of-fold predictions (log scale)")
    hist_ax.legend(fontsize=9, loc="upper left")
    hist_ax.grid(alpha=0.3)

    # calibration_curve gives each non-empty bin's accuracy and mean confidence but not its size,
    # which the labels and ECE need: counted here in its bins (uniform edges, searchsorted).
    accs, centers = calibration_curve(right, np.clip(conf, 0, 1), n_bins=bins)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], conf), minlength=bins)
    counts = counts[counts > 0]
    ece = float(np.sum(counts / len(conf) * np.abs(accs - centers)))
    cal_ax.plot([0, 1], [0, 1], ls="--", color="0.5", label="perfectly calibrated")
    cal_ax.plot(centers, accs, "-o", color="C0", label="model")
    for c, a, n in zip(centers, accs, counts):
        cal_ax.annotate(str(n), (c, a), fontsize=7.5, xytext=(4, -10), textcoords="offset points")
    cal_ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="mean confidence in bin",
               ylabel="accuracy in bin",
               title=f"Calibration (numbers: images per bin); ECE {ece:.4f}")
    cal_ax.legend(fontsize=9, loc="upper left")
    cal_ax.grid(alpha=0.3)
    return _save(fig, out)


def mistakes(y: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` wrong predictions made with the highest confidence, most confident first."""
    wrong = np.flatnonzero(probs.argmax(1) != y)
    order = np.argsort(-probs[wrong].max(1), kind="stable")
    return wrong[order[:n]]


def runner_up(probs: np.ndarray) -> np.ndarray:
    """The second most probable class of each row."""
    return np.argsort(-probs, axis=1, kind="stable")[:, 1]


def error_gallery(x: np.ndarray, y: np.ndarray, probs: np.ndarray, out: Path, n: int = 24,
                  cols: int = 8) -> Path:
    """The most confident out-of-fold mistakes: true label, prediction, confidence, runner-up."""
    idx = mistakes(y, probs, n)
    second = runner_up(probs[idx]) if len(idx) else np.array([], dtype=int)
    labels = []
    for k, i in enumerate(idx):
        p, pred = probs[i], int(probs[i].argmax())
        labels.append(f"true {int(y[i])} → {pred} ({p[pred]:.2f})\n"
                      f"2nd {int(second[k])} ({p[second[k]]:.2f}) · row {i + 2}")
    title = (f"The {len(idx)} most confident out-of-fold mistakes (row = train.csv row, header is row 1)"
             if len(idx) else "No out-of-fold mistakes")
    return gallery([x[i] for i in idx], labels, out, title, cols)


def gallery(images: Sequence[np.ndarray], labels: Sequence[str], out: Path, title: str,
            cols: int = 8) -> Path:
    """Mistakes tiled with a caption each (the error gallery's layout), as one PNG."""
    return _save(_mosaic(images, labels, [WRONG_COLOR] * len(images), cols, 1.65, title), out)


def oof_predictions(x: np.ndarray, y: np.ndarray, probs: np.ndarray, out: Path, n: int = 40,
                    cols: int = 10, seed: int = 0) -> Path:
    """A random grid of training images with actual vs out-of-fold predicted label."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(y), size=min(n, len(y)), replace=False))
    pred = probs[idx].argmax(1)
    ok = pred == y[idx]
    labels = [f"actual {int(y[i])}\npred {int(p)} ({probs[i, p]:.2f})" for i, p in zip(idx, pred)]
    fig = _mosaic([x[i] for i in idx], labels, [RIGHT_COLOR if o else WRONG_COLOR for o in ok],
                  cols, 1.3, f"Actual vs predicted: {len(idx)} random training images, "
                  f"out-of-fold predictions ({int((~ok).sum())} wrong, in red)")
    return _save(fig, out)


# --- test set --------------------------------------------------------------------------------

def test_predictions(x: np.ndarray, probs: np.ndarray, out: Path, n: int = 40, cols: int = 10,
                     seed: int = 0, unsure_below: float = 0.9) -> Path:
    """A random grid of test images with the ensemble's predicted label and confidence."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), size=min(n, len(x)), replace=False))
    return _test_grid(x, probs, idx, out, cols, unsure_below,
                      f"Predictions on {len(idx)} random test images (ImageId, label, confidence; "
                      f"orange: below {unsure_below:.0%})")


def test_least_confident(x: np.ndarray, probs: np.ndarray, out: Path, n: int = 20,
                         cols: int = 10) -> Path:
    """The test images the ensemble is least sure about, with its top two guesses."""
    idx = np.argsort(probs.max(1), kind="stable")[:n]
    return _test_grid(x, probs, idx, out, cols, 1.01,
                      f"The {len(idx)} least confident test predictions (top two guesses)",
                      show_second=True)


def _test_grid(x: np.ndarray, probs: np.ndarray, idx: np.ndarray, out: Path, cols: int,
               unsure_below: float, title: str, show_second: bool = False) -> Path:
    second = runner_up(probs[idx]) if len(idx) else []
    labels, colors = [], []
    for k, i in enumerate(idx):
        pred = int(probs[i].argmax())
        text = f"#{i + 1}: {pred} ({probs[i, pred]:.2f})"
        if show_second:
            text += f"\n2nd {int(second[k])} ({probs[i, second[k]]:.2f})"
        labels.append(text)
        colors.append(UNSURE_COLOR if probs[i, pred] < unsure_below else "black")
    return _save(_mosaic([x[i] for i in idx], labels, colors, cols, 1.3, title), out)


# --- data overview ---------------------------------------------------------------------------

def class_distribution(y: np.ndarray, out: Path, test_pred: np.ndarray | None = None) -> Path:
    """How many training images each digit has (and the share predicted on test, if given)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=10)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax = fig.add_subplot()
    share = counts / counts.sum()
    if test_pred is None:
        bars = ax.bar(DIGITS, counts, color="C0")
        for b, c, s in zip(bars, counts, share):
            ax.annotate(f"{c}\n{s:.1%}", (b.get_x() + b.get_width() / 2, c), ha="center",
                        va="bottom", fontsize=8.5, xytext=(0, 2), textcoords="offset points")
        ax.axhline(counts.mean(), color="0.4", ls="--", lw=1, label=f"mean {counts.mean():.0f}")
        ax.set(ylabel="training images", ylim=(0, counts.max() * 1.22))
    else:
        test_share = np.bincount(np.asarray(test_pred, dtype=np.int64), minlength=10) / len(test_pred)
        w = 0.4
        ax.bar(np.array(DIGITS) - w / 2, share, w, color="C0", label=f"train labels ({counts.sum()})")
        ax.bar(np.array(DIGITS) + w / 2, test_share, w, color="C1",
               label=f"test predictions ({len(test_pred)})")
        for d, (s, c) in enumerate(zip(share, counts)):
            ax.annotate(f"{c}", (d - w / 2, s), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.axhline(0.1, color="0.4", ls="--", lw=1, label="uniform 10%")
        ax.set(ylabel="share of images", ylim=(0, max(share.max(), test_share.max()) * 1.2))
        ax.yaxis.set_major_formatter(_percent())
    ax.set(xticks=DIGITS, xlabel="digit",
           title=f"Class distribution: {counts.sum()} training images, "
                 f"smallest class {int(counts.argmin())} ({counts.min()}), "
                 f"largest {int(counts.argmax())} ({counts.max()})")
    fig.legend(loc="outside lower center", ncols=3, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def class_examples(x: np.ndarray, y: np.ndarray, out: Path, per_class: int = 10,
                   seed: int = 0) -> Path:
    """A few random training images of each digit, one row per digit."""
    rng = np.random.default_rng(seed)
    images = []
    for d in DIGITS:
        pool = np.flatnonzero(y == d)
        pick = np.sort(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
        images += [x[i] for i in pick] + [np.zeros((28, 28))] * (per_class - len(pick))
    fig = _mosaic(images, [], [], per_class, 1.0, f"{per_class} random training images per digit",
                  row_labels=[str(d) for d in DIGITS])
    return _save(fig, out)


def mean_images(x: np.ndarray, y: np.ndarray, out: Path) -> Path:
    """The average image of each digit (top) and its pixel standard deviation (bottom)."""
    fig = Figure(figsize=(12.5, 3.1), layout="constrained")
    axes = fig.subplots(2, 10, squeeze=False)
    for d in DIGITS:
        members = x[y == d].reshape(-1, 28, 28).astype(np.float32)
        mean = members.mean(0) if len(members) else np.zeros((28, 28))
        std = members.std(0) if len(members) else np.zeros((28, 28))
        _digit(axes[0, d], mean)
        axes[0, d].set_title(f"{d} (n={len(members)})", fontsize=9)
        axes[1, d].imshow(std, cmap="magma", interpolation="nearest")
        axes[1, d].set_xticks([])
        axes[1, d].set_yticks([])
    axes[0, 0].set_ylabel("mean", fontsize=10)
    axes[1, 0].set_ylabel("std", fontsize=10)
    fig.suptitle("Mean image per digit (top) and where digits vary most: pixel std (bottom)",
                 fontsize=11)
    return _save(fig, out)
