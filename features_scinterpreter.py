"""scInterpreter feature extraction: expression values of the matched genes -> each cell's top genes.

Small numpy functions that `ScInterpreterProcessor` applies in this order: read and check the input once
(`as_matrix`, `check_matrix`), then chunk by chunk (`dense_chunk`), tell raw counts from log-normalised data (`resolve_input_kind`),
normalise the matched genes (`normalize`), and keep each cell's `n_top_genes` (`top_genes`), by expression or by
their excess over the reference profile (`reference_vector`), never one of the `excluded_rows`. AnnData, pandas and
scipy.sparse inputs are recognised by what they offer, not imported.
"""

import re

import numpy as np

try:
    from .configuration_scinterpreter import ScInterpreterInputError
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError

INPUT_KINDS = ("auto", "counts", "log1p")
# How each cell's genes are chosen: by normalised expression, or (after `fit`) by their excess over the reference
# profile of the training cells, which keeps genes every cell expresses from crowding out the cell's markers.
GENE_SELECTIONS = ("expression", "excess")
# The number each chosen gene's soft token is weighted by.
TOKEN_VALUES = ("expression", "excess")
# What the linear gene scores read per cell: its first genes by the soft tokens' ranking, or its values on one
# panel of variable genes that `fit` picks.
LINEAR_GENE_SELECTIONS = ("top", "variable")
# Ribosomal protein genes (RPS*/RPL* and their X/Y/like copies, not kinases such as RPS6KA1) and mitochondrial
# genes: the most expressed genes of most cells, whatever their type.
EXCLUDE_PRESETS = {"ribosomal_mitochondrial": r"^(RP[SL]\d+(A|L|X|AL|Y\d?)?|RPLP[0-2]|MT-.+)$"}


def exclude_pattern(exclude_genes: str) -> re.Pattern:
    """`exclude_genes` (a name in `EXCLUDE_PRESETS` or a regular expression) as a case-insensitive pattern."""
    try:
        return re.compile(EXCLUDE_PRESETS.get(exclude_genes, exclude_genes), re.IGNORECASE)
    except re.error as error:
        raise ScInterpreterInputError(
            f"exclude_genes must be a regular expression or one of {list(EXCLUDE_PRESETS)}, got "
            f"{exclude_genes!r} ({error})."
        ) from None


def is_anndata(data) -> bool:
    return hasattr(data, "obs") and hasattr(data, "var_names") and hasattr(data, "X")


def is_sparse(matrix) -> bool:
    return hasattr(matrix, "tocsr") and hasattr(matrix, "nnz")


def as_matrix(expression, gene_names=None, layer=None):
    """Returns `(matrix, gene_names)` for any supported input; the matrix is not copied."""
    if is_anndata(expression):
        if layer is not None and layer not in expression.layers:
            raise ScInterpreterInputError(
                f"layer {layer!r} is not in this AnnData; it has layers {list(expression.layers.keys())}. "
                "Pass layer=None to use adata.X."
            )
        matrix = expression.X if layer is None else expression.layers[layer]
        return matrix, list(expression.var_names) if gene_names is None else list(gene_names)
    if hasattr(expression, "columns") and hasattr(expression, "index") and hasattr(expression, "to_numpy"):
        return expression.to_numpy(), list(expression.columns) if gene_names is None else list(gene_names)
    if isinstance(expression, dict) or (hasattr(expression, "index") and hasattr(expression, "to_numpy")):
        names = list(expression.keys()) if isinstance(expression, dict) else list(expression.index)
        values = list(expression.values()) if isinstance(expression, dict) else expression.to_numpy()
        return np.asarray(values)[None, :], names
    if gene_names is None:
        raise ScInterpreterInputError(
            "gene_names is required for a bare matrix: pass gene_names=[...] with one name per column, "
            "or pass an AnnData or a pandas DataFrame whose columns are gene names."
        )
    if hasattr(expression, "detach"):
        expression = expression.detach().cpu().numpy()
    matrix = expression if is_sparse(expression) else np.asarray(expression)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    return matrix, list(gene_names)


def check_matrix(matrix, gene_names):
    """Raises, with what to do, unless `matrix` is a non-empty numeric cells x genes matrix with one name per column."""
    if matrix.ndim != 2:
        raise ScInterpreterInputError(f"expression must be 2-D (cells x genes), got shape {matrix.shape}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ScInterpreterInputError(f"expression is empty (shape {matrix.shape}): it needs cells and genes.")
    if matrix.shape[1] != len(gene_names):
        raise ScInterpreterInputError(
            f"expression has {matrix.shape[1]} columns but {len(gene_names)} gene names were given: "
            "pass exactly one gene name per column (cells are rows)."
        )
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ScInterpreterInputError(
            f"expression has non-numeric dtype {dtype}: convert it to numbers (e.g. `.astype('float32')`)."
        )


def dense_chunk(matrix, start, stop) -> np.ndarray:
    """Cells `start:stop` as a dense float32 array, whatever the matrix (sparse, backed, integer)."""
    chunk = matrix[start:stop]
    chunk = chunk.toarray() if is_sparse(chunk) else np.asarray(chunk)
    return chunk.astype(np.float32, copy=False)


def resolve_input_kind(sample: np.ndarray, declared: str) -> str:
    """
    `"counts"` or `"log1p"` for data whose first cells are `sample`: under `declared="auto"`, integers are counts and
    anything else log1p; a declared kind is trusted, unless the sample plainly contradicts it (then it raises).
    """
    sample = sample[np.isfinite(sample)]
    integers = bool(np.all(sample == np.round(sample)))
    if declared == "auto":
        return "counts" if integers else "log1p"
    if declared == "log1p" and integers and sample.size and sample.max() > 30:
        raise ScInterpreterInputError(
            f"the data was declared log-normalised (input_kind='log1p') but holds integers up to {sample.max():g}, "
            "which look like raw counts: pass input_kind='counts' (or 'auto') to normalise them."
        )
    if declared == "counts" and not integers:
        raise ScInterpreterInputError(
            "the data was declared raw counts (input_kind='counts') but holds non-integer values, which look "
            "log-normalised already: pass input_kind='log1p' (or 'auto'), or give the counts layer (layer=...)."
        )
    return declared


def normalize(chunk: np.ndarray, matched, input_kind: str, target_sum: float, first_row: int = 0) -> np.ndarray:
    """
    Checked, log-normalised expression of the matched genes of a dense chunk of cells.

    Args:
        chunk (`np.ndarray`): float32 cells x data columns.
        matched (`MatchedGenes`): the data columns of the vocabulary's genes (`GeneMatcher.match`); the result's
            columns are `matched.vocab_ids`, and further columns matched to the same gene are summed into it.
        input_kind (`str`): `"counts"` (scaled to `target_sum` per cell, all columns counting, then log1p) or
            `"log1p"` (used as is).
        target_sum (`float`): per-cell total of the scaled counts.
        first_row (`int`, *optional*): the chunk's first cell in the whole input, for the cells errors name.
    """
    if not np.all(np.isfinite(chunk)):
        rows = first_row + np.flatnonzero(~np.all(np.isfinite(chunk), axis=1))[:5]
        raise ScInterpreterInputError(
            f"expression holds NaN or infinite values (cells {rows.tolist()} ...): remove or impute them first."
        )
    if chunk.size and chunk.min() < 0:
        rows = first_row + np.flatnonzero(chunk.min(axis=1) < 0)[:5]
        raise ScInterpreterInputError(
            f"expression holds negative values (cells {rows.tolist()} ...): scInterpreter expects raw counts "
            "or log-normalised expression, not scaled or centred data (use adata.raw or a counts layer)."
        )
    values = chunk[:, matched.columns]
    if len(matched.extra_columns):
        np.add.at(values.T, matched.extra_targets, chunk[:, matched.extra_columns].T)
    if input_kind == "counts":
        totals = chunk.sum(axis=1, keepdims=True)
        values = np.log1p(values * (target_sum / np.maximum(totals, 1e-12)))
    return values


def excluded_rows(gene_vocab, exclude_genes: str | None) -> np.ndarray:
    """Boolean mask over `gene_vocab`: the symbols `exclude_genes` matches (none when it is None)."""
    excluded = np.zeros(len(gene_vocab), dtype=bool)
    if exclude_genes is not None:
        pattern = exclude_pattern(exclude_genes)
        excluded[[row for row, symbol in enumerate(gene_vocab) if pattern.search(symbol)]] = True
    return excluded


def reference_vector(n_vocab: int, gene_ids, means) -> np.ndarray:
    """The reference profile over a vocabulary of `n_vocab` genes: `means` at rows `gene_ids`, NaN elsewhere."""
    profile = np.full(n_vocab, np.nan, dtype=np.float32)
    profile[np.asarray(gene_ids, dtype=np.int64)] = means
    return profile


def top_genes(values, matched_vocab_ids, n_top_genes, selection="expression", token_value="expression",
              reference=None, excluded=None):
    """
    Each cell's `n_top_genes` best genes, best first.

    Args:
        values (`np.ndarray`): normalised expression (`normalize`), cells x matched genes.
        matched_vocab_ids (`np.ndarray`): the vocabulary row of each column of `values`, ascending.
        n_top_genes (`int`): genes kept per cell; cells with fewer candidates are padded.
        selection (`str`, *optional*, defaults to `"expression"`): rank by `"expression"`, or by `"excess"` over
            `reference` (then only expressed genes with a reference value are candidates).
        token_value (`str`, *optional*, defaults to `"expression"`): return the chosen genes' expression, or their
            `"excess"` over `reference` (0 where it has none).
        reference (`np.ndarray`, *optional*): the reference profile over the vocabulary (`reference_vector`);
            required when `selection` or `token_value` is `"excess"`.
        excluded (`np.ndarray`, *optional*): boolean mask over the vocabulary (`excluded_rows`): never chosen.

    Returns:
        `(gene_ids, gene_values, gene_mask)`, each `(n_cells, n_top_genes)`: vocabulary rows (0 where masked), float32
        values (0 where masked), and whether the slot holds a chosen, expressed gene.
    """
    score = values
    if selection == "excess" or token_value == "excess":
        if reference is None:
            raise ValueError("selection='excess' and token_value='excess' need the reference profile.")
        excess = values - reference[matched_vocab_ids]
    if selection == "excess":
        # Genes the training cells never measured have no reference (NaN): they are never chosen.
        score = np.where((values > 0) & ~np.isnan(excess), excess, -np.inf)
    if excluded is not None:
        score = np.where(excluded[matched_vocab_ids], -np.inf, score)
    # A stable sort on the negated score keeps ties in vocabulary order, so results do not depend on the
    # order of the data's columns.
    order = np.argsort(-score, axis=1, kind="stable")[:, :n_top_genes]
    top_values = np.take_along_axis(values, order, axis=1)
    mask = (top_values > 0) & (np.take_along_axis(score, order, axis=1) > -np.inf)
    if token_value == "excess":
        top_values = np.nan_to_num(np.take_along_axis(excess, order, axis=1))
    gene_ids = np.where(mask, matched_vocab_ids[order], 0)
    pad = n_top_genes - gene_ids.shape[1]
    if pad > 0:
        gene_ids = np.pad(gene_ids, ((0, 0), (0, pad)))
        top_values = np.pad(top_values, ((0, 0), (0, pad)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
    return gene_ids, np.where(mask, top_values, 0.0).astype(np.float32), mask


def variable_gene_panel(values, matched_vocab_ids, n_genes: int) -> list:
    """
    The vocabulary rows of the `n_genes` most variable of the matched genes (scanpy's `highly_variable_genes`, its
    default flavour, on `values`: log-normalised training cells x matched genes, sparse; a few more where genes tie at
    its cut, which scanpy keeps), ascending; every matched gene where there are no more. Needs scanpy (the `train`
    extra): only training picks a panel.
    """
    if values.shape[1] <= n_genes:
        return sorted(int(row) for row in matched_vocab_ids)
    try:
        import anndata
        import scanpy as sc
    except ImportError as error:
        raise ImportError("picking the linear gene panel (linear_gene_selection='variable') needs scanpy: "
                          "pip install 'scinterpreter[train]'") from error
    variable = sc.pp.highly_variable_genes(anndata.AnnData(values), n_top_genes=n_genes, inplace=False)
    return sorted(int(row) for row in np.asarray(matched_vocab_ids)[variable["highly_variable"].to_numpy()])
