"""What drove the labels: per cell type, the genes that most often decided its cells' calls (from the pipeline's
`explain=True`), as a table and a dot plot."""

import numpy as np
import pandas as pd

from .optional import require
from .plots import save_figure


def driver_genes(adata, key_added: str = "scinterpreter") -> pd.DataFrame:
    """
    Per predicted cell type and gene: `fraction` (of the type's explained cells that have the gene among their
    explained genes), `mean_attribution` (its mean logit drop there) and `n_cells`; most frequent first. Reads
    `obs[key_added]` and `obsm[key_added + "_genes"]` as `annotate(adata, explain=True)` writes them.
    """
    table_key = f"{key_added}_genes"
    if table_key not in adata.obsm:
        from processing_scinterpreter import ScInterpreterInputError

        raise ScInterpreterInputError(f"adata.obsm has no {table_key!r}: annotate with explain=True "
                                      f"(and key_added={key_added!r}).")
    table = adata.obsm[table_key]
    n = sum(column.startswith("gene_") for column in table.columns)
    long = pd.DataFrame({
        "cell_type": np.repeat(adata.obs[key_added].astype(str).to_numpy(), n),
        "gene": table[[f"gene_{i + 1}" for i in range(n)]].to_numpy().ravel(),
        "attribution": table[[f"attribution_{i + 1}" for i in range(n)]].to_numpy(dtype=float).ravel(),
    })
    long = long[long["gene"] != ""]
    cells = adata.obs[key_added].astype(str).value_counts()
    summary = long.groupby(["cell_type", "gene"]).agg(n_cells=("attribution", "size"),
                                                      mean_attribution=("attribution", "mean")).reset_index()
    summary["fraction"] = summary["n_cells"] / summary["cell_type"].map(cells).to_numpy()
    return summary.sort_values(["cell_type", "fraction", "mean_attribution"], ascending=[True, False, False],
                               ignore_index=True)


def plot_driver_genes(summary: pd.DataFrame, path, genes_per_type: int = 3, title="Genes that drove each call"):
    """Dot plot: cell types (rows) x their most frequent driver genes (columns); dot size = fraction of the type's
    cells, colour = mean attribution. Writes a PNG and returns the axes."""
    require("plots", "plot_driver_genes", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = summary.groupby("cell_type", sort=True).head(genes_per_type)
    genes = list(dict.fromkeys(top["gene"]))
    types = sorted(top["cell_type"].unique())
    shown = summary[summary["gene"].isin(genes)]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(genes) + 2.5), max(3, 0.4 * len(types) + 1.5)))
    points = ax.scatter([genes.index(g) for g in shown["gene"]], [types.index(t) for t in shown["cell_type"]],
                        s=300 * shown["fraction"], c=shown["mean_attribution"], cmap="Reds", edgecolors="grey")
    ax.set_xticks(range(len(genes)), genes, rotation=60, ha="right")
    ax.set_yticks(range(len(types)), types)
    ax.set_xlim(-0.5, len(genes) - 0.5)
    ax.set_ylim(-0.5, len(types) - 0.5)
    ax.set_title(title)
    fig.colorbar(points, ax=ax, fraction=0.046, label="mean attribution (logit drop)")
    return save_figure(fig, ax, path)
