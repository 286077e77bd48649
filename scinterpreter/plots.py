"""Figures people look at: written as PNG files."""

from pathlib import Path

import numpy as np

from .optional import require


def save_figure(fig, ax, path):
    """Writes `fig` as a PNG at `path` (folders made as needed), closes it and returns `ax`."""
    require("plots", "save_figure", "matplotlib")
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ax


def plot_confusion_matrix(references, predictions, classes, path, title="Confusion matrix"):
    """Row-normalised confusion matrix (rows: reference cell types) with cell counts; returns the axes."""
    require("plots", "plot_confusion_matrix", "matplotlib", "sklearn")
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
    return save_figure(fig, ax, path)


def plot_reliability(logits, references, temperature, path, title="Reliability"):
    """Reliability diagram (accuracy against confidence, 15 bins) before and after temperature scaling."""
    require("plots", "plot_reliability", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .calibration import expected_calibration_error, reliability_bins, softmax

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for scale, name, colour in ((1.0, "raw", "tab:orange"), (temperature, f"temperature {temperature:.2f}", "tab:blue")):
        probabilities = softmax(logits, scale)
        bins = reliability_bins(probabilities, references)
        ece = expected_calibration_error(probabilities, references)
        ax.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", color=colour, label=f"{name}: ECE {ece:.3f}")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper left")
    return save_figure(fig, ax, path)


def genept_w(values, gene_ids, gene_embeddings):
    """GenePT-w cell embeddings: expression-weighted mean of the cells' gene text embeddings, L2-normalised."""
    cells = values @ gene_embeddings[gene_ids] / np.maximum(values.sum(1, keepdims=True), 1e-8)
    return cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-8)


def plot_umaps(embeddings: dict, labels, path, title="Test cells", seed=0):
    """
    One UMAP panel per embedding (name -> `(n_cells, dim)` array), cells coloured by `labels`, as the paper's
    Fig. 3 compares the initial expression, GenePT-w and scInterpreter. Uses scanpy's neighbours + UMAP.
    """
    require("plots", "plot_umaps", "matplotlib", "scanpy")
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(classes), 2)))
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings) + 2.5, 5), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], embeddings.items()):
        cells = anndata.AnnData(np.asarray(matrix, dtype=np.float32))
        if cells.n_vars > 50:
            sc.pp.pca(cells, n_comps=min(50, cells.n_obs - 1, cells.n_vars - 1), random_state=seed)
            sc.pp.neighbors(cells, random_state=seed)
        else:
            sc.pp.neighbors(cells, use_rep="X", random_state=seed)
        sc.tl.umap(cells, random_state=seed)
        coordinates = cells.obsm["X_umap"]
        for colour, label in zip(colours, classes):
            where = labels == label
            ax.scatter(*coordinates[where].T, s=6, color=colour, label=f"{label} ({where.sum()})")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False)
    fig.suptitle(title)
    return save_figure(fig, axes, path)
