"""scInterpreter processor: expression data in, each cell's top genes out as model inputs.

Normalisation, the reference profile and ranking live here, gene-name matching beside it in
`gene_matching_scinterpreter.py`; the model never sees gene names. This module needs nothing but numpy and
transformers: AnnData, pandas and scipy.sparse inputs are recognised by what they offer, not imported.
"""

import logging
import re

import numpy as np
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.utils.logging import tqdm

try:
    from .configuration_scinterpreter import ScInterpreterInputError
    from .gene_matching_scinterpreter import GeneMatcher, GeneMatchReport, MatchedGenes, detect_gene_id_style
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError
    from gene_matching_scinterpreter import GeneMatcher, GeneMatchReport, MatchedGenes, detect_gene_id_style

logger = logging.getLogger(__name__)

INPUT_KINDS = ("auto", "counts", "log1p")
# How each cell's genes are chosen: by normalised expression, or (after `fit`) by their excess over the reference
# profile of the training cells, which keeps genes every cell expresses from crowding out the cell's markers.
GENE_SELECTIONS = ("expression", "excess")
# The number each chosen gene's soft token is weighted by.
TOKEN_VALUES = ("expression", "excess")
# Ribosomal protein genes (RPS*/RPL* and their X/Y/like copies, not kinases such as RPS6KA1) and mitochondrial
# genes: the most expressed genes of most cells, whatever their type.
EXCLUDE_PRESETS = {"ribosomal_mitochondrial": r"^(RP[SL]\d+(A|L|X|AL|Y\d?)?|RPLP[0-2]|MT-.+)$"}
MIN_MATCHED_GENES = 10
CHUNK_SIZE = 512


def _exclude_pattern(exclude_genes: str) -> re.Pattern:
    """`exclude_genes` (a preset name or a regular expression) as a case-insensitive pattern."""
    return re.compile(EXCLUDE_PRESETS.get(exclude_genes, exclude_genes), re.IGNORECASE)


def _is_anndata(data) -> bool:
    return hasattr(data, "obs") and hasattr(data, "var_names") and hasattr(data, "X")


def _is_sparse(matrix) -> bool:
    return hasattr(matrix, "tocsr") and hasattr(matrix, "nnz")


def _as_matrix(expression, gene_names=None, layer=None):
    """Returns `(matrix, gene_names)` for any supported input; the matrix is not copied."""
    if _is_anndata(expression):
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
    matrix = expression if _is_sparse(expression) else np.asarray(expression)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    return matrix, list(gene_names)


def _check_matrix(matrix, gene_names):
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


def _dense_chunk(matrix, start, stop) -> np.ndarray:
    """Cells `start:stop` as a dense float32 array, whatever the matrix (sparse, backed, integer)."""
    chunk = matrix[start:stop]
    chunk = chunk.toarray() if _is_sparse(chunk) else np.asarray(chunk)
    return chunk.astype(np.float32, copy=False)


class ScInterpreterProcessor(FeatureExtractionMixin):
    r"""
    Turns expression data into scInterpreter inputs: per cell, the `n_top_genes` matched genes of highest normalised
    expression (most expressed first, ties broken by vocabulary order) as `gene_ids`, `gene_values`, `gene_mask`.

    Args:
        gene_vocab (`list[str]`): the model's gene symbols; row `i` of the model's gene table is `gene_vocab[i]`.
        n_top_genes (`int`, *optional*, defaults to 64): genes kept per cell.
        target_sum (`float`, *optional*, defaults to 1e4): per-cell total that raw counts are scaled to before log1p.
        input_kind (`str`, *optional*, defaults to `"auto"`): `"counts"` (raw counts: normalise and log1p),
            `"log1p"` (already log-normalised: use as is) or `"auto"` (integers are counts, anything else log1p).
        gene_selection (`str`, *optional*): how each cell's genes are ranked: `"expression"` (normalised expression,
            the paper's rule) or `"excess"` (expression minus the gene's mean over the training cells, the reference
            that `fit` learns; only expressed genes the reference knows are chosen). Defaults to `"excess"` once
            fitted, else `"expression"`.
        token_value (`str`, *optional*, defaults to `"expression"`): the value returned as `gene_values`, which
            weighs each soft token: the gene's normalised expression, or its excess over the reference.
        reference_gene_ids, reference_means (`list`, *optional*): the fitted reference profile (vocabulary rows and
            their mean log-normalised expression over the training cells), as written by `fit`.
        exclude_genes (`str`, *optional*): vocabulary genes never chosen as a cell's top genes: a regular expression
            on their symbols (case-insensitive) or a name in `EXCLUDE_PRESETS` (`"ribosomal_mitochondrial"`). They
            still count in each cell's library size.
        species (`str`, *optional*, defaults to `"human"`): species of the vocabulary.
        alias_map, ensembl_map, entrez_map, ortholog_map (`dict[str, str]`, *optional*): aliases and previous
            symbols, Ensembl gene IDs (no version), Entrez IDs, and other-species symbols (mouse MGI) -> a symbol of
            the vocabulary, for matching the data's gene names (`GeneMatcher`, whose docstring gives the rules).
    """

    model_input_names = ["gene_ids", "gene_values", "gene_mask"]

    def __init__(
        self,
        gene_vocab=None,
        n_top_genes=64,
        target_sum=1e4,
        input_kind="auto",
        gene_selection=None,
        token_value="expression",
        reference_gene_ids=None,
        reference_means=None,
        exclude_genes=None,
        species="human",
        alias_map=None,
        ensembl_map=None,
        entrez_map=None,
        ortholog_map=None,
        **kwargs,
    ):
        # `gene_ranking` was `gene_selection`'s name until `fit` came (processor folders of then may hold it): its
        # "expression" is today's; its "standardized" was removed, and a kept key would be ignored without a word.
        gene_ranking = kwargs.pop("gene_ranking", None)
        if gene_ranking not in (None, "expression"):
            raise ScInterpreterInputError(
                f"gene_ranking={gene_ranking!r} was removed: genes are chosen by gene_selection, one of "
                f"{GENE_SELECTIONS}."
            )
        gene_selection = gene_selection or gene_ranking
        super().__init__(**kwargs)
        if input_kind not in INPUT_KINDS:
            raise ScInterpreterInputError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}.")
        if gene_selection is not None and gene_selection not in GENE_SELECTIONS:
            raise ScInterpreterInputError(f"gene_selection must be one of {GENE_SELECTIONS}, got {gene_selection!r}.")
        if token_value not in TOKEN_VALUES:
            raise ScInterpreterInputError(f"token_value must be one of {TOKEN_VALUES}, got {token_value!r}.")
        self.gene_vocab = list(gene_vocab or [])
        self.n_top_genes = int(n_top_genes)
        self.target_sum = float(target_sum)
        self.input_kind = input_kind
        self.gene_selection = gene_selection
        self.token_value = token_value
        self.reference_gene_ids = [int(row) for row in reference_gene_ids] if reference_gene_ids is not None else None
        self.reference_means = [float(mean) for mean in reference_means] if reference_means is not None else None
        self.exclude_genes = exclude_genes
        if exclude_genes is not None:
            try:
                _exclude_pattern(exclude_genes)
            except re.error as error:
                raise ScInterpreterInputError(
                    f"exclude_genes must be a regular expression or one of {list(EXCLUDE_PRESETS)}, got "
                    f"{exclude_genes!r} ({error})."
                ) from None
        self.species = species
        self.alias_map = dict(alias_map or {})
        self.ensembl_map = dict(ensembl_map or {})
        self.entrez_map = dict(entrez_map or {})
        self.ortholog_map = dict(ortholog_map or {})

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has learnt the reference profile."""
        return self.reference_gene_ids is not None

    @property
    def selection(self) -> str:
        """The gene-selection rule in force: `gene_selection`, or its default (`"excess"` once fitted)."""
        return self.gene_selection or ("excess" if self.is_fitted else "expression")

    def to_dict(self):
        output = super().to_dict()
        return {key: value for key, value in output.items() if not key.startswith("_")}

    @property
    def matcher(self) -> GeneMatcher:
        """The gene-name matcher for `gene_vocab` and the name maps, built again whenever one of them is replaced."""
        sources = (self.gene_vocab, self.alias_map, self.ensembl_map, self.entrez_map, self.ortholog_map)
        key = (len(self.gene_vocab), self.species, *map(id, sources))
        if getattr(self, "_matcher", None) is None or self._matcher[0] != key:
            # The sources are cached with their ids, so that no other object can take one of those ids meanwhile.
            self._matcher = (key, GeneMatcher(self.gene_vocab, self.species, *sources[1:]), sources)
        return self._matcher[1]

    def match_genes(self, gene_names) -> GeneMatchReport:
        """Matches gene names to the vocabulary and reports how (`n_matched`, `matched_fraction`, `by_rule`, ...)."""
        return self.matcher.match(gene_names).report

    def _resolve_input_kind(self, sample: np.ndarray) -> str:
        sample = sample[np.isfinite(sample)]
        integers = bool(np.all(sample == np.round(sample)))
        if self.input_kind == "auto":
            return "counts" if integers else "log1p"
        # A declared kind is trusted, unless the data plainly contradicts it.
        if self.input_kind == "log1p" and integers and sample.size and sample.max() > 30:
            raise ScInterpreterInputError(
                f"the data was declared log-normalised (input_kind='log1p') but holds integers up to {sample.max():g}, "
                "which look like raw counts: pass input_kind='counts' (or 'auto') to normalise them."
            )
        if self.input_kind == "counts" and not integers:
            raise ScInterpreterInputError(
                "the data was declared raw counts (input_kind='counts') but holds non-integer values, which look "
                "log-normalised already: pass input_kind='log1p' (or 'auto'), or give the counts layer (layer=...)."
            )
        return self.input_kind

    def _normalize_chunk(self, chunk, matched: MatchedGenes, input_kind: str, first_row: int) -> np.ndarray:
        """Checked, log-normalised expression of the matched genes (columns in vocabulary order)."""
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
            values = np.log1p(values * (self.target_sum / np.maximum(totals, 1e-12)))
        return values

    def excluded_vocab_rows(self) -> np.ndarray:
        """Boolean mask over the vocabulary: the genes `exclude_genes` keeps out of every cell's top genes."""
        key = (self.exclude_genes, len(self.gene_vocab))
        if getattr(self, "_excluded", None) is None or self._excluded[0] != key:
            excluded = np.zeros(len(self.gene_vocab), dtype=bool)
            if self.exclude_genes is not None:
                pattern = _exclude_pattern(self.exclude_genes)
                excluded[[row for row, symbol in enumerate(self.gene_vocab) if pattern.search(symbol)]] = True
            self._excluded = (key, excluded)
        return self._excluded[1]

    def reference_profile(self) -> np.ndarray:
        """The fitted reference as a vector over the vocabulary: mean log-normalised expression, NaN where unknown."""
        key = (len(self.gene_vocab), id(self.reference_gene_ids), id(self.reference_means))
        if getattr(self, "_reference", None) is None or self._reference[0] != key:
            profile = np.full(len(self.gene_vocab), np.nan, dtype=np.float32)
            profile[np.asarray(self.reference_gene_ids, dtype=np.int64)] = self.reference_means
            self._reference = (key, profile)
        return self._reference[1]

    def _rank_chunk(self, chunk, matched: MatchedGenes, input_kind: str, first_row: int):
        values = self._normalize_chunk(chunk, matched, input_kind, first_row)
        score = values
        if self.selection == "excess" or self.token_value == "excess":
            excess = values - self.reference_profile()[matched.vocab_ids]
        if self.selection == "excess":
            # Genes the training cells never measured have no reference (NaN): they are never chosen.
            score = np.where((values > 0) & ~np.isnan(excess), excess, -np.inf)
        if self.exclude_genes is not None:
            score = np.where(self.excluded_vocab_rows()[matched.vocab_ids], -np.inf, score)
        # A stable sort on the negated score keeps ties in vocabulary order, so results do not depend on the
        # order of the data's columns.
        order = np.argsort(-score, axis=1, kind="stable")[:, : self.n_top_genes]
        top_values = np.take_along_axis(values, order, axis=1)
        mask = (top_values > 0) & (np.take_along_axis(score, order, axis=1) > -np.inf)
        if self.token_value == "excess":
            top_values = np.nan_to_num(np.take_along_axis(excess, order, axis=1))
        gene_ids = np.where(mask, matched.vocab_ids[order], 0)
        k = self.n_top_genes
        pad = k - gene_ids.shape[1]
        if pad > 0:
            gene_ids = np.pad(gene_ids, ((0, 0), (0, pad)))
            top_values = np.pad(top_values, ((0, 0), (0, pad)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        return gene_ids, np.where(mask, top_values, 0.0).astype(np.float32), mask

    def _map_chunks(self, function, expression, gene_names, layer, min_matched_genes, show_progress):
        """Checks and matches the input once, then applies `function` to each chunk of cells (dense)."""
        matrix, names = _as_matrix(expression, gene_names, layer)
        _check_matrix(matrix, names)
        matched = self.matcher.match(names)
        self.matcher.check(matched, names, min_matched_genes)
        n_cells = matrix.shape[0]
        first = _dense_chunk(matrix, 0, min(n_cells, CHUNK_SIZE))
        input_kind = self._resolve_input_kind(first)
        starts = range(0, n_cells, CHUNK_SIZE)
        if show_progress and n_cells > CHUNK_SIZE:
            starts = tqdm(starts, desc="Selecting top genes", unit="chunk")
        return [
            function(first if start == 0 else _dense_chunk(matrix, start, start + CHUNK_SIZE), matched,
                     input_kind, start)
            for start in starts
        ], matched

    def normalize(self, expression, gene_names=None, layer=None, min_matched_genes=MIN_MATCHED_GENES):
        """
        Log-normalised expression of every matched gene, the way the model sees it, before the top-gene cut.

        Returns:
            `(values, gene_ids)`: a float32 array `(n_cells, n_matched_genes)` and the vocabulary row of each column.
        """
        parts, matched = self._map_chunks(self._normalize_chunk, expression, gene_names, layer, min_matched_genes,
                                          show_progress=False)
        return np.concatenate(parts), matched.vocab_ids

    def fit(self, expression, gene_names=None, layer=None, min_matched_genes=MIN_MATCHED_GENES,
            show_progress=False):
        """
        Learns the reference profile from training cells: each matched gene's mean log-normalised expression.
        From then on each cell's genes are chosen by their excess over it (`gene_selection="excess"`, unless set
        otherwise), and the profile is saved with the processor (`save_pretrained`, JSON). Takes the same inputs
        as calling the processor; returns the processor.
        """

        def sums(chunk, matched, input_kind, first_row):
            return self._normalize_chunk(chunk, matched, input_kind, first_row).sum(0, dtype=np.float64), len(chunk)

        parts, matched = self._map_chunks(sums, expression, gene_names, layer, min_matched_genes, show_progress)
        totals = np.sum([part[0] for part in parts], axis=0)
        n_cells = sum(part[1] for part in parts)
        self.reference_gene_ids = matched.vocab_ids.tolist()
        self.reference_means = np.round(totals / n_cells, 5).tolist()
        logger.info(f"reference profile fitted on {n_cells} cells and {len(matched.vocab_ids)} genes")
        return self

    def __call__(
        self,
        expression,
        gene_names=None,
        layer=None,
        return_tensors="pt",
        min_matched_genes=MIN_MATCHED_GENES,
        show_progress=False,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            expression: an AnnData (its `X` or `layers[layer]`), a numpy array or scipy.sparse matrix (cells x genes,
                with `gene_names`), a pandas DataFrame (cells x genes), or one cell as a dict or Series (gene -> value).
            gene_names (`list[str]`, *optional*): column names; required for a bare matrix.
            layer (`str`, *optional*): AnnData layer to read instead of `X`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"`, `"np"` or None (lists).

        Returns:
            [`BatchFeature`] with `gene_ids` (long), `gene_values` (float) and `gene_mask` (long), each of shape
            `(n_cells, n_top_genes)`.
        """
        if (self.selection == "excess" or self.token_value == "excess") and not self.is_fitted:
            raise ScInterpreterInputError(
                "gene_selection='excess' and token_value='excess' need the reference profile of the training cells: "
                "call processor.fit(training_cells) first (train.py does), or load a fitted processor."
            )
        parts, _ = self._map_chunks(self._rank_chunk, expression, gene_names, layer, min_matched_genes, show_progress)
        gene_ids, gene_values, gene_mask = (np.concatenate(p) for p in zip(*parts))
        if not gene_mask.any():
            raise ScInterpreterInputError(
                f"no cell expresses any of the model's genes (all {len(gene_mask)} cells are zero on the matched "
                "genes): check that the matrix holds expression values and that cells are rows."
            )
        data = {"gene_ids": gene_ids.astype(np.int64), "gene_values": gene_values, "gene_mask": gene_mask.astype(np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)


# GeneMatchReport and detect_gene_id_style are re-exported: they lived here before gene_matching_scinterpreter.py.
__all__ = ["GeneMatchReport", "ScInterpreterInputError", "ScInterpreterProcessor", "detect_gene_id_style"]
