"""Figures people look at: written as PNG files."""

from pathlib import Path

import numpy as np


def plot_confusion_matrix(references, predictions, classes, path, title="Confusion matrix"):
    """Row-normalised confusion matrix (rows: reference cell types) with cell counts; returns the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(references, predictions, labels=list(range(len(classes))))
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of reference cells")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ax
