"""scInterpreter processor: expression data in, each cell's top genes out as model inputs.

`ScInterpreterProcessor` holds the settings and the fitted reference profile, and runs the steps chunk by chunk:
gene-name matching (`gene_matching_scinterpreter.py`), then normalisation, the reference profile and ranking
(`features_scinterpreter.py`); the model never sees gene names. Like those files, this module needs nothing but
numpy and transformers.
"""

import logging

import numpy as np
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.utils.logging import tqdm

try:
    from .configuration_scinterpreter import ScInterpreterInputError
    from .features_scinterpreter import (
        EXCLUDE_PRESETS, GENE_SELECTIONS, INPUT_KINDS, LINEAR_GENE_SELECTIONS, TOKEN_VALUES, as_matrix, check_matrix,
        dense_chunk, exclude_pattern, excluded_rows, normalize, reference_vector, resolve_input_kind, top_genes,
        variable_gene_panel,
    )
    from .gene_matching_scinterpreter import GeneMatcher, GeneMatchReport, detect_gene_id_style
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError
    from features_scinterpreter import (
        EXCLUDE_PRESETS, GENE_SELECTIONS, INPUT_KINDS, LINEAR_GENE_SELECTIONS, TOKEN_VALUES, as_matrix, check_matrix,
        dense_chunk, exclude_pattern, excluded_rows, normalize, reference_vector, resolve_input_kind, top_genes,
        variable_gene_panel,
    )
    from gene_matching_scinterpreter import GeneMatcher, GeneMatchReport, detect_gene_id_style

logger = logging.getLogger(__name__)

MIN_MATCHED_GENES = 10
CHUNK_SIZE = 512


# What the processor may return and the model reads: the soft tokens' genes, then the linear gene scores' longer list.
MODEL_INPUT_NAMES = ("gene_ids", "gene_values", "gene_mask", "linear_gene_ids", "linear_gene_values", "linear_gene_mask")


class ScInterpreterProcessor(FeatureExtractionMixin):
    r"""
    Turns expression data into scInterpreter inputs: per cell, the `n_top_genes` matched genes of highest normalised
    expression (most expressed first, ties broken by vocabulary order) as `gene_ids`, `gene_values`, `gene_mask`.

    Args:
        gene_vocab (`list[str]`): the model's gene symbols; row `i` of the model's gene table is `gene_vocab[i]`.
        n_top_genes (`int`, *optional*, defaults to 64): genes kept per cell.
        n_linear_genes (`int`, *optional*, defaults to 0): where above 0, each cell's first `n_linear_genes` genes by
            the same ranking are also returned, as `linear_gene_ids`, `linear_gene_values` and `linear_gene_mask`,
            for the model's linear gene scores (which read the soft tokens' genes where these are absent). The first
            `n_top_genes` of them are the soft tokens' genes (`linear_gene_selection="top"`).
        linear_gene_selection (`str`, *optional*, defaults to `"top"`): what the longer list holds: `"top"`, each cell's
            first `n_linear_genes` genes by the soft tokens' ranking; `"variable"`, the cell's expressed genes of one
            panel of about `n_linear_genes` highly variable genes of the training cells (`fit` picks it), most expressed
            first, carrying their normalised expression.
        linear_gene_panel (`list[int]`, *optional*): the panel's vocabulary rows, as written by `fit`.
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

    model_input_names = list(MODEL_INPUT_NAMES)

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
        n_linear_genes=0,
        linear_gene_selection="top",
        linear_gene_panel=None,
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
        self.n_linear_genes = int(n_linear_genes or 0)
        if self.n_linear_genes and self.n_linear_genes < self.n_top_genes:
            raise ScInterpreterInputError(
                f"n_linear_genes must be 0 (the linear gene scores read the soft tokens' genes) or at least n_top_genes "
                f"({self.n_top_genes}), got {n_linear_genes}."
            )
        if linear_gene_selection not in LINEAR_GENE_SELECTIONS:
            raise ScInterpreterInputError(
                f"linear_gene_selection must be one of {LINEAR_GENE_SELECTIONS}, got {linear_gene_selection!r}."
            )
        self.linear_gene_selection = linear_gene_selection
        self.linear_gene_panel = [int(row) for row in linear_gene_panel] if linear_gene_panel is not None else None
        self.target_sum = float(target_sum)
        self.input_kind = input_kind
        self.gene_selection = gene_selection
        self.token_value = token_value
        self.reference_gene_ids = [int(row) for row in reference_gene_ids] if reference_gene_ids is not None else None
        self.reference_means = [float(mean) for mean in reference_means] if reference_means is not None else None
        self.exclude_genes = exclude_genes
        if exclude_genes is not None:
            exclude_pattern(exclude_genes)  # raises, with what to do, for an invalid expression
        self.species = species
        self.alias_map = dict(alias_map or {})
        self.ensembl_map = dict(ensembl_map or {})
        self.entrez_map = dict(entrez_map or {})
        self.ortholog_map = dict(ortholog_map or {})

    @property
    def reads_panel(self) -> bool:
        """Whether the linear list is each cell's genes of the fitted panel (`linear_gene_selection="variable"`)."""
        return self.linear_gene_selection == "variable" and self.n_linear_genes > 0

    @property
    def linear_list_width(self) -> int:
        """The most genes the linear list can hold (its width varies with the cells where a panel is read)."""
        if self.reads_panel and self.linear_gene_panel is not None:
            return len(self.linear_gene_panel)
        return self.n_linear_genes

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

    def outside_panel_rows(self) -> np.ndarray:
        """Boolean mask over the vocabulary: the genes outside the linear gene panel (kept until the panel changes)."""

        def build():
            outside = np.ones(len(self.gene_vocab), dtype=bool)
            outside[self.linear_gene_panel] = False
            return outside

        key = (len(self.gene_vocab), id(self.linear_gene_panel))
        return self._cached("_outside_panel", key, build, (self.linear_gene_panel,))

    def _cached(self, name: str, key: tuple, build, keep=()):
        """`build()`, kept in the attribute `name` (unsaved: `to_dict` skips `_` names) until `key` changes."""
        # Keys hold ids: `keep` holds those objects with the value, so that no other object can take one meanwhile.
        cached = getattr(self, name, None)
        if cached is None or cached[0] != key:
            cached = (key, build(), keep)
            setattr(self, name, cached)
        return cached[1]

    @property
    def matcher(self) -> GeneMatcher:
        """The gene-name matcher for `gene_vocab` and the name maps, built again whenever one of them is replaced."""
        sources = (self.gene_vocab, self.alias_map, self.ensembl_map, self.entrez_map, self.ortholog_map)
        key = (len(self.gene_vocab), self.species, *map(id, sources))
        return self._cached("_matcher", key, lambda: GeneMatcher(self.gene_vocab, self.species, *sources[1:]), sources)

    def match_genes(self, gene_names) -> GeneMatchReport:
        """Matches gene names to the vocabulary and reports how (`n_matched`, `matched_fraction`, `by_rule`, ...)."""
        return self.matcher.match(gene_names).report

    def excluded_vocab_rows(self) -> np.ndarray:
        """Boolean mask over the vocabulary: the genes `exclude_genes` keeps out of every cell's top genes."""
        key = (self.exclude_genes, len(self.gene_vocab), id(self.gene_vocab))
        return self._cached("_excluded", key, lambda: excluded_rows(self.gene_vocab, self.exclude_genes),
                            (self.gene_vocab,))

    def reference_profile(self) -> np.ndarray:
        """The fitted reference as a vector over the vocabulary: mean log-normalised expression, NaN where unknown."""
        sources = (self.reference_gene_ids, self.reference_means)
        key = (len(self.gene_vocab), *map(id, sources))
        return self._cached("_reference", key, lambda: reference_vector(len(self.gene_vocab), *sources), sources)

    def _map_chunks(self, function, expression, gene_names, layer, min_matched_genes, show_progress):
        """
        Checks and matches the input once, then normalises it a chunk of cells at a time and applies
        `function(values, vocab_ids)` to each chunk. Returns the results and the `MatchedGenes`.
        """
        matrix, names = as_matrix(expression, gene_names, layer)
        check_matrix(matrix, names)
        matched = self.matcher.match(names)
        self.matcher.check(matched, names, min_matched_genes)
        n_cells = matrix.shape[0]
        first = dense_chunk(matrix, 0, min(n_cells, CHUNK_SIZE))
        input_kind = resolve_input_kind(first, self.input_kind)
        starts = range(0, n_cells, CHUNK_SIZE)
        if show_progress and n_cells > CHUNK_SIZE:
            starts = tqdm(starts, desc="Selecting top genes", unit="chunk")
        parts = []
        for start in starts:
            chunk = first if start == 0 else dense_chunk(matrix, start, start + CHUNK_SIZE)
            values = normalize(chunk, matched, input_kind, self.target_sum, first_row=start)
            parts.append(function(values, matched.vocab_ids))
        return parts, matched

    def normalize(self, expression, gene_names=None, layer=None, min_matched_genes=MIN_MATCHED_GENES):
        """
        Log-normalised expression of every matched gene, the way the model sees it, before the top-gene cut.

        Returns:
            `(values, gene_ids)`: a float32 array `(n_cells, n_matched_genes)` and the vocabulary row of each column.
        """
        parts, matched = self._map_chunks(lambda values, _: values, expression, gene_names, layer,
                                          min_matched_genes, show_progress=False)
        return np.concatenate(parts), matched.vocab_ids

    def fit(self, expression, gene_names=None, layer=None, min_matched_genes=MIN_MATCHED_GENES,
            show_progress=False):
        """
        Learns the reference profile from training cells: each matched gene's mean log-normalised expression.
        From then on each cell's genes are chosen by their excess over it (`gene_selection="excess"`, unless set
        otherwise), and the profile is saved with the processor (`save_pretrained`, JSON). With
        `linear_gene_selection="variable"`, also picks the panel of the `n_linear_genes` most variable genes
        (scanpy's `highly_variable_genes`, on the log-normalised values; every matched gene where there are no more);
        a panel already picked is kept, because a model's linear gene scores were fitted on it (refitting the
        reference on another batch leaves it). Takes the same inputs as calling the processor; returns the processor.
        """
        wants_panel = self.reads_panel and self.linear_gene_panel is None
        if wants_panel:
            # In a try block: transformers checks a remote-code file's other imports before it loads it, and only
            # training picks a panel.
            try:
                from scipy import sparse
            except ImportError as error:
                raise ImportError("picking the linear gene panel (linear_gene_selection='variable') needs scipy and "
                                  "scanpy: pip install 'scinterpreter[train]'") from error

        def sums(values, _):
            return values.sum(0, dtype=np.float64), len(values), sparse.csr_matrix(values) if wants_panel else None

        parts, matched = self._map_chunks(sums, expression, gene_names, layer, min_matched_genes, show_progress)
        totals = np.sum([part[0] for part in parts], axis=0)
        n_cells = sum(part[1] for part in parts)
        self.reference_gene_ids = matched.vocab_ids.tolist()
        self.reference_means = np.round(totals / n_cells, 5).tolist()
        logger.info(f"reference profile fitted on {n_cells} cells and {len(matched.vocab_ids)} genes")
        if wants_panel:
            self.linear_gene_panel = variable_gene_panel(sparse.vstack([part[2] for part in parts]),
                                                         matched.vocab_ids, self.n_linear_genes)
            logger.info(f"linear gene panel: {len(self.linear_gene_panel)} variable genes")
        return self

    def __call__(self, expression, gene_names=None, layer=None, return_tensors="pt",
                 min_matched_genes=MIN_MATCHED_GENES, show_progress=False, **kwargs) -> BatchFeature:
        r"""
        Args:
            expression: an AnnData (its `X` or `layers[layer]`), a numpy array or scipy.sparse matrix (cells x genes,
                with `gene_names`), a pandas DataFrame (cells x genes), or one cell as a dict or Series (gene -> value).
            gene_names (`list[str]`, *optional*): column names; required for a bare matrix.
            layer (`str`, *optional*): AnnData layer to read instead of `X`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"`, `"np"` or None (lists).

        Returns:
            [`BatchFeature`] with `gene_ids` (long), `gene_values` (float) and `gene_mask` (long), each of shape
            `(n_cells, n_top_genes)`; where `n_linear_genes`, also `linear_gene_ids` (int32), `linear_gene_values` and
            `linear_gene_mask` (int8), each of shape `(n_cells, n_linear_genes)`.
        """
        needs_reference = "excess" in (self.selection, self.token_value)
        if needs_reference and not self.is_fitted:
            raise ScInterpreterInputError(
                "gene_selection='excess' and token_value='excess' need the reference profile of the training cells: "
                "call processor.fit(training_cells) first (train.py does), or load a fitted processor."
            )
        reference = self.reference_profile() if needs_reference else None
        excluded = self.excluded_vocab_rows() if self.exclude_genes is not None else None
        panel = self.reads_panel
        if panel and self.linear_gene_panel is None:
            raise ScInterpreterInputError(
                "linear_gene_selection='variable' reads a panel of variable genes of the training cells: call "
                "processor.fit(training_cells) first (train.py does), or load a fitted processor."
            )
        outside_panel = self.outside_panel_rows() if panel else None

        # One ranking for both lists: a stable sort makes the first `n_top_genes` of the longer list the top genes.
        n_ranked = self.n_top_genes if panel else max(self.n_top_genes, self.n_linear_genes)

        def rank(values, vocab_ids):
            ids, ranked_values, mask = top_genes(values, vocab_ids, n_ranked, self.selection, self.token_value,
                                                 reference, excluded)
            tokens = (ids[:, : self.n_top_genes].astype(np.int64), ranked_values[:, : self.n_top_genes].copy(),
                      mask[:, : self.n_top_genes].astype(np.int64))
            if not self.n_linear_genes:
                return tokens
            if panel:  # the cell's expressed panel genes: as wide as the chunk's cell that expresses most of them
                ids, ranked_values, mask = top_genes(values, vocab_ids, len(self.linear_gene_panel), "expression",
                                                     "expression", excluded=outside_panel)
                width = max(1, int(mask.sum(1).max()))
                ids, ranked_values, mask = ids[:, :width], ranked_values[:, :width], mask[:, :width]
            # Narrower integers than the soft tokens': this list is 30 times longer, and a pipeline holds it for every
            # cell it annotates.
            return tokens + (ids.astype(np.int32), ranked_values, mask.astype(np.int8))

        parts, _ = self._map_chunks(rank, expression, gene_names, layer, min_matched_genes, show_progress)
        if panel:  # chunks of different widths: padded to the widest
            width = max(part[3].shape[1] for part in parts)
            parts = [part[:3] + tuple(np.pad(array, ((0, 0), (0, width - array.shape[1]))) for array in part[3:])
                     for part in parts]
        gene_ids, gene_values, gene_mask, *linear = (np.concatenate(p) for p in zip(*parts))
        if not gene_mask.any():
            raise ScInterpreterInputError(
                f"no cell expresses any of the model's genes (all {len(gene_mask)} cells are zero on the matched "
                "genes): check that the matrix holds expression values and that cells are rows."
            )
        data = {"gene_ids": gene_ids, "gene_values": gene_values, "gene_mask": gene_mask}
        data.update(zip(("linear_gene_ids", "linear_gene_values", "linear_gene_mask"), linear))
        return BatchFeature(data=data, tensor_type=return_tensors)


# Re-exported where they lived before gene_matching_scinterpreter.py and features_scinterpreter.py.
__all__ = ["EXCLUDE_PRESETS", "GENE_SELECTIONS", "GeneMatchReport", "INPUT_KINDS", "MODEL_INPUT_NAMES",
           "ScInterpreterInputError",
           "ScInterpreterProcessor", "TOKEN_VALUES", "detect_gene_id_style"]
