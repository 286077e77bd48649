"""The `cell-annotation` pipeline: expression data in, one label per cell out."""

import difflib
import logging

import numpy as np
import torch
from transformers import AutoProcessor, Pipeline
from transformers.utils.logging import tqdm

try:
    from .configuration_scinterpreter import ScInterpreterInputError
    from .features_scinterpreter import is_anndata
    from .loading_scinterpreter import select_backbone_dtype
except ImportError:  # imported as a top-level module rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError
    from features_scinterpreter import is_anndata
    from loading_scinterpreter import select_backbone_dtype

logger = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"
# The options of a call and their defaults, by the step they steer: encoding the cells, running the model over them,
# making results of its outputs.
PREPROCESS_DEFAULTS = {"gene_names": None, "layer": None, "refit_reference": False}
FORWARD_DEFAULTS = {"batch_size": 64, "compile_backbone": None, "show_progress": None, "explain": False}
POSTPROCESS_DEFAULTS = {"top_k": 3, "threshold": 0.0, "key_added": "scinterpreter", "copy": True, "overwrite": False,
                        "majority_voting": False, "over_clustering": None}
CALL_DEFAULTS = {**PREPROCESS_DEFAULTS, **FORWARD_DEFAULTS, **POSTPROCESS_DEFAULTS}
PROGRESS_MIN_CELLS = 1024
# Fewer cells than this make a noisy reference profile: refit_reference refuses them.
REFIT_MIN_CELLS = 50
# From about here on, compiling the backbone (~15 s once) costs less than the ~15% it saves.
COMPILE_MIN_CELLS = 20_000
# Leiden resolution of the over-clustering by number of cells, as CellTypist chooses it: (up to n cells, resolution).
OVER_CLUSTERING_RESOLUTIONS = ((5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25))


class CellAnnotations(list):
    """
    One `{"label", "score", "top_k"}` dict per cell; `.probabilities` holds every cell's probability of every cell
    type (cells x `.labels`, calibrated where the model carries a temperature), `.embeddings` the cell embeddings
    (cells x hidden size) and `.adata` the annotated AnnData when one was given.
    """

    adata = None
    embeddings = None
    probabilities = None
    labels = None


class CellAnnotationPipeline(Pipeline):
    """
    Annotates cells with a scInterpreter model.

    ```python
    >>> from transformers import pipeline
    >>> annotate = pipeline("cell-annotation", model="path/or/hub-id", trust_remote_code=True)
    >>> annotate(adata)                     # AnnData: also writes obs["scinterpreter"], obs["scinterpreter_score"],
    ...                                     # obsm["scinterpreter_probabilities"], obsm["X_scinterpreter"],
    ...                                     # uns["scinterpreter"] on a copy (result.adata)
    >>> annotate(matrix, gene_names=genes)  # numpy / scipy.sparse, cells x genes
    >>> annotate({"CD3E": 5, "CD3D": 3})    # one cell
    >>> annotate = pipeline("cell-annotation", model="path/or/hub-id", trust_remote_code=True, threshold="auto")
    ```

    Options given at construction are the defaults of every call; a call's own options win (see `__call__`).
    """

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    compile_min_cells = COMPILE_MIN_CELLS

    def __init__(self, model, processor=None, **kwargs):
        if processor is None:
            processor = AutoProcessor.from_pretrained(model.name_or_path, trust_remote_code=True)
        super().__init__(model=model, processor=processor, **kwargs)
        # The base class sets batch_size aside for the DataLoader of its __call__, which this pipeline replaces.
        if self._batch_size is not None:
            self._forward_params["batch_size"] = self._batch_size
        if self.model.base_model.backbone_dtype != select_backbone_dtype(self.device):
            self.model.set_backbone_dtype(select_backbone_dtype(self.device))
        self.model.eval()

    def _sanitize_parameters(self, **kwargs):
        unknown = [key for key in kwargs if key not in CALL_DEFAULTS]
        if unknown:
            named = [f"{key!r}" + "".join(f" (did you mean {guess!r}?)" for guess in
                                          difflib.get_close_matches(key, CALL_DEFAULTS, n=1)) for key in unknown]
            raise ScInterpreterInputError(
                f"unknown option {', '.join(named)}: the cell-annotation pipeline takes {', '.join(CALL_DEFAULTS)}."
            )
        # None stands for an option not given, as in transformers' pipelines: the construction's value or the default.
        options = {key: value for key, value in kwargs.items() if value is not None}
        if "threshold" in options:
            options["threshold"] = self._check_threshold(options["threshold"])
        if "explain" in options:
            options["explain"] = self._check_explain(options["explain"])
        return tuple({key: value for key, value in options.items() if key in defaults}
                     for defaults in (PREPROCESS_DEFAULTS, FORWARD_DEFAULTS, POSTPROCESS_DEFAULTS))

    def preprocess(self, expression, gene_names=None, layer=None, refit_reference=False):
        processor = self._refitted_processor(expression, gene_names, layer) if refit_reference else self.processor
        encoded = processor(expression, gene_names=gene_names, layer=layer, return_tensors="pt")
        return dict(encoded)  # the soft tokens' genes, and the linear gene scores' longer list where the processor has one

    def get_inference_context(self):
        # Lighter than the base class's no_grad: nothing here is ever differentiated.
        return torch.inference_mode

    def _forward(self, model_inputs, batch_size=None, explain=False):
        logits, cell_embeddings = self._run_model(model_inputs, batch_size)
        # Taken here, on the model's device, since `forward` moves what this returns to the CPU.
        probabilities = self.model.probabilities(logits)
        model_outputs = {"logits": logits, "probabilities": probabilities,
                         "confidence": self.model.confidence(logits, cell_embeddings),
                         "cell_embeddings": cell_embeddings, "gene_mask": model_inputs["gene_mask"]}
        if explain:
            model_outputs["gene_ids"] = model_inputs["gene_ids"]
            target = probabilities.argmax(-1)
            model_outputs["attributions"] = self.model.gene_attributions(**model_inputs, target=target)
            if "linear_gene_ids" in model_inputs and self.model.gene_score_weights is not None:
                # The genes that only the linear gene scores read (a panel's other genes) are explained too.
                model_outputs["linear_gene_ids"] = model_inputs["linear_gene_ids"]
                model_outputs["linear_attributions"] = self.model.linear_gene_attributions(**model_inputs,
                                                                                           target=target)
        return model_outputs

    def _run_model(self, model_inputs, batch_size=None):
        """The logits and cell embeddings of a batch, padded to `batch_size` cells where the backbone is compiled."""
        base_model = self.model.base_model
        if base_model.is_backbone_compiled:
            # A compiled backbone is specialised to one batch shape: a short last batch is padded rather than compiled
            # again.
            n_cells = len(model_inputs["gene_ids"])
            rows = torch.arange(batch_size or n_cells, device=model_inputs["gene_ids"].device).clamp(max=n_cells - 1)
            try:
                outputs = self.model(**{name: tensor[rows] for name, tensor in model_inputs.items()})
                return outputs.logits[:n_cells], outputs.cell_embeddings[:n_cells]
            except Exception as error:  # Inductor compiles on first use: a missing C++ compiler surfaces here
                logger.warning(f"torch.compile of the backbone failed ({type(error).__name__}: {error}); "
                               "running uncompiled. Pass compile_backbone=False to skip trying.")
                base_model.compile_backbone(False)
        outputs = self.model(**model_inputs)
        return outputs.logits, outputs.cell_embeddings

    def postprocess(self, model_outputs, top_k=3, threshold=0.0, explain=0):
        probabilities = model_outputs["probabilities"].numpy()
        if threshold == "auto":
            confidence = model_outputs["confidence"].numpy()
            threshold = self.model.config.unassigned_threshold
        else:
            confidence = probabilities.max(-1)
        empty = model_outputs["gene_mask"].sum(-1).numpy() == 0
        id2label = self.model.config.id2label
        k = min(top_k, probabilities.shape[-1])
        results = CellAnnotations()
        for cell_probabilities, cell_confidence, is_empty in zip(probabilities, confidence, empty):
            best = np.argsort(-cell_probabilities, kind="stable")[:k]
            top = [{"label": id2label[int(i)], "score": float(cell_probabilities[i])} for i in best]
            label = top[0]["label"] if cell_confidence >= threshold and not is_empty else UNASSIGNED
            results.append({"label": label, "score": top[0]["score"], "top_k": top})
        if explain:
            self._explain(results, model_outputs, explain)
        results.probabilities = probabilities
        return results

    def _check_threshold(self, threshold):
        """The threshold as given, after checking that it is a number or `"auto"` with a fitted threshold."""
        if threshold == "auto":
            if getattr(self.model.config, "unassigned_threshold", None) is None:
                raise ScInterpreterInputError(
                    "threshold='auto' needs the Unassigned threshold that training fits on validation cells, and this "
                    "model has none (trained without validation cells or before scInterpreter 0.3): pass a number "
                    "(cells whose best probability is below it are Unassigned), or retrain."
                )
            return threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ScInterpreterInputError(
                f"threshold must be a probability between 0 and 1 or 'auto', got {threshold!r}."
            )
        return float(threshold)

    @staticmethod
    def _check_explain(explain):
        """The number of genes to explain each cell by: 5 for `True`, 0 for `False`."""
        n_explained = 5 if explain is True else int(explain or 0)
        if n_explained < 0:
            raise ScInterpreterInputError(f"explain must be True, False or a number of genes >= 0, got {explain!r}.")
        return n_explained

    def __call__(self, expression, **kwargs):
        r"""
        Every option can also be given to `pipeline("cell-annotation", ..., option=...)`, where it becomes the
        default of every call; a call's own options win (`None` counts as not given). Unknown options are refused.

        Args:
            expression: an AnnData, a numpy array or scipy.sparse matrix (cells x genes, with `gene_names`),
                a pandas DataFrame (cells x genes), or one cell as a dict or Series (gene -> value).
            gene_names (`list[str]`, *optional*): column names of a bare matrix.
            layer (`str`, *optional*): AnnData layer to read instead of `X`.
            batch_size (`int`, *optional*, defaults to 64): cells per forward pass.
            top_k (`int`, *optional*, defaults to 3): labels listed per cell.
            threshold (`float` or `"auto"`, *optional*, defaults to 0.0): cells whose best (calibrated) probability
                is below it are labelled `"Unassigned"`, as are cells with no expressed vocabulary gene. `"auto"`:
                the threshold fitted on the validation cells at training (`config.unassigned_threshold`, on
                `config.unassigned_score`: the calibrated best probability, the energy, the cosine similarity to
                the nearest cell-type centroid, or both the probability and the similarity, each with its own
                threshold; about 5% of known-type cells fall below), to flag uncertain cells and cell types the
                model was not trained on (docs/benchmarks/unknown_types.md).
            key_added (`str`, *optional*, defaults to `"scinterpreter"`): AnnData only: `obs[key_added]` (labels),
                `obs[key_added + "_score"]` (probability of the label), `obsm[key_added + "_probabilities"]`
                (cells x cell types, in the order of `uns[key_added]["labels"]`), `obsm["X_" + key_added]` (cell
                embeddings) and `uns[key_added]` (labels, model, threshold, calibration temperature, gene match,
                package version: see `annotation_record`).
            copy (`bool`, *optional*, defaults to `True`): AnnData only: annotate a copy (returned as `.adata`)
                rather than the input.
            overwrite (`bool`, *optional*, defaults to `False`): AnnData only: allow replacing existing columns.
            compile_backbone (`bool`, *optional*): run the backbone under `torch.compile` (see
                `ScInterpreterModel.compile_backbone`); by default from `COMPILE_MIN_CELLS` (20,000) cells on, and
                for every later call once compiled. Where compiling fails (no C++ compiler), a warning says so and
                the cells run uncompiled.
            explain (`bool` or `int`, *optional*, defaults to `False`): also give, per cell, the genes that drove its
                label: `True` for the top 5, or how many. Each gene's attribution is the drop of the label's logit
                when that gene is left out (`gene_attributions`; one forward pass per gene, so about
                `n_top_genes` times the cost). The genes ranked are the soft tokens' (each leaves with its linear
                gene score) and, where the linear gene scores read a longer list (a panel), that list's other genes,
                whose drop is exactly their term of the linear read (no extra pass). Per cell as
                `"genes": [{"gene", "attribution"}, ...]`; for an AnnData
                also `obsm[key_added + "_genes"]` (a table: gene_1..gene_n, attribution_1..attribution_n).
            majority_voting (`bool`, *optional*, defaults to `False`): also give each cell the most frequent label
                of its cluster in an over-clustering of the cells (as CellTypist does): per cell as
                `"majority_voting"`, for an AnnData in `obs[key_added + "_majority_voting"]`, with the clusters in
                `obs[key_added + "_over_clustering"]`.
            over_clustering (`str` or array, *optional*): the clusters to vote in: an `obs` column of the AnnData or
                one cluster id per cell. By default scanpy's Leiden on a 15-neighbour graph of the cell embeddings,
                at a resolution that grows with the number of cells (5 below 5,000 cells, up to 30); this needs
                `scanpy` and `igraph`.
            refit_reference (`bool`, *optional*, defaults to `False`): choose each cell's genes by their excess over
                the mean profile of the cells given to this call (at least 50), instead of the training cells' one:
                for another batch, lab or species than the model was trained on. Measured: held-out PBMC batches
                .646 -> .678 macro-F1, mouse -> human pancreas .463 -> .636, human -> mouse .688 -> .664
                (docs/experiments.md). The model's own processor is not changed.

        Returns:
            `CellAnnotations`: a list with one `{"label", "score", "top_k": [{"label", "score"}, ...]}` per cell, and
            `.probabilities` (cells x cell types, in the order of `.labels`) and `.embeddings`.
        """
        # The base class's __call__ runs preprocess -> forward -> postprocess on one item, or on each item of a list
        # through a DataLoader. Here one item is a whole matrix or AnnData: it is encoded at once (a refitted reference
        # needs all its cells), run through forward and postprocess batch by batch, voted on and written back into the
        # AnnData. So of the base's __call__ only the merge of options is kept: the call's over the construction's.
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        options = {**CALL_DEFAULTS, **self._preprocess_params, **self._forward_params, **self._postprocess_params,
                   **preprocess_params, **forward_params, **postprocess_params}
        (gene_names, layer, refit_reference, batch_size, compile_backbone, show_progress, n_explained, top_k, threshold,
         key_added, copy, overwrite, majority_voting, over_clustering) = (options[key] for key in CALL_DEFAULTS)
        given_anndata = is_anndata(expression)
        keys = annotation_keys(key_added, explain=bool(n_explained), majority_voting=majority_voting)
        if given_anndata:
            taken = taken_annotation_keys(keys, expression.obs.columns, expression.obsm, expression.uns)
            if taken and not overwrite:
                raise ScInterpreterInputError(
                    f"the AnnData already has {', '.join(taken)}: pass overwrite=True to replace them, "
                    "or another key_added."
                )
        encoded = self.preprocess(expression, gene_names=gene_names, layer=layer, refit_reference=refit_reference)
        n_cells = encoded["gene_ids"].shape[0]
        if majority_voting and over_clustering is not None:
            over_clustering = self._given_clusters(expression, over_clustering, n_cells, given_anndata)
        starts = range(0, n_cells, batch_size)
        if show_progress or (show_progress is None and n_cells >= PROGRESS_MIN_CELLS):
            starts = tqdm(starts, desc="Annotating cells", unit="batch", total=len(starts))
        base_model = self.model.base_model
        if compile_backbone is None:
            compile_backbone = base_model.is_backbone_compiled or n_cells >= self.compile_min_cells
        if n_explained and compile_backbone:
            logger.info("explain=True runs the backbone uncompiled (its passes change shape from cell to cell)")
            compile_backbone = False
        base_model.compile_backbone(compile_backbone)
        results, embeddings, probabilities = CellAnnotations(), [], []
        for start in starts:
            batch = {name: tensor[start : start + batch_size] for name, tensor in encoded.items()}
            outputs = self.forward(batch, batch_size=batch_size, explain=bool(n_explained))
            annotated = self.postprocess(outputs, top_k=top_k, threshold=threshold, explain=n_explained)
            results.extend(annotated)
            probabilities.append(annotated.probabilities)
            embeddings.append(outputs["cell_embeddings"].float().numpy())
        results.embeddings = np.concatenate(embeddings)
        results.probabilities = np.concatenate(probabilities).astype(np.float32)
        results.labels = [self.model.config.id2label[i] for i in range(results.probabilities.shape[1])]
        if majority_voting:
            clustering = "given"
            if over_clustering is None:
                over_clustering, resolution = over_cluster(results.embeddings)
                clustering = f"leiden on the cell embeddings, resolution {resolution}"
            voted = majority_vote([result["label"] for result in results], over_clustering)
            for result, label in zip(results, voted):
                result["majority_voting"] = label
        n_empty = int((encoded["gene_mask"].sum(-1) == 0).sum())
        if n_empty:
            logger.warning(f"{n_empty} cells express none of the model's genes and are labelled {UNASSIGNED!r}.")
        if given_anndata:
            adata = expression.copy() if copy else expression
            obs, obsm = keys["obs"], keys["obsm"]
            adata.obs[obs["label"]] = [result["label"] for result in results]
            adata.obs[obs["label"]] = adata.obs[obs["label"]].astype("category")
            adata.obs[obs["score"]] = np.array([result["score"] for result in results], dtype=np.float32)
            adata.obsm[obsm["probabilities"]] = results.probabilities
            adata.obsm[obsm["embeddings"]] = results.embeddings
            adata.uns[keys["uns"]["settings"]] = annotation_record(
                self.model, self.processor, expression.var_names, threshold,
                reference=f"refitted on these {n_cells} cells" if refit_reference else "the training cells",
            )
            if majority_voting:
                adata.obs[obs["over_clustering"]] = np.asarray(over_clustering).astype(str)
                adata.obs[obs["over_clustering"]] = adata.obs[obs["over_clustering"]].astype("category")
                adata.obs[obs["majority_voting"]] = [result["majority_voting"] for result in results]
                adata.obs[obs["majority_voting"]] = adata.obs[obs["majority_voting"]].astype("category")
                adata.uns[keys["uns"]["settings"]]["over_clustering"] = clustering
            if n_explained:
                columns = {f"gene_{i + 1}": [r["genes"][i]["gene"] if i < len(r["genes"]) else "" for r in results]
                           for i in range(n_explained)}
                columns.update({f"attribution_{i + 1}": np.array(
                    [r["genes"][i]["attribution"] if i < len(r["genes"]) else np.nan for r in results], np.float32)
                    for i in range(n_explained)})
                # The obs frame's own class (pandas) builds the table: this file imports no pandas.
                adata.obsm[obsm["genes"]] = type(adata.obs)(columns, index=adata.obs_names)
            results.adata = adata
        return results

    def _refitted_processor(self, expression, gene_names, layer):
        """A copy of the processor whose reference profile is fitted on `expression`'s cells."""
        import copy

        if self.processor.selection != "excess":
            raise ScInterpreterInputError(
                f"refit_reference=True changes the reference profile that excess gene selection ranks genes by, but "
                f"this model chooses genes by {self.processor.selection!r}: leave refit_reference out."
            )
        if hasattr(expression, "n_obs"):
            n_cells = expression.n_obs
        elif isinstance(expression, dict) or getattr(expression, "ndim", 2) == 1:
            n_cells = 1
        else:
            n_cells = expression.shape[0]
        if n_cells < REFIT_MIN_CELLS:
            raise ScInterpreterInputError(
                f"refit_reference=True fits a mean expression profile on the given cells, and {n_cells} cells are too "
                f"few (at least {REFIT_MIN_CELLS}): annotate the whole batch in one call, or leave refit_reference out."
            )
        return copy.deepcopy(self.processor).fit(expression, gene_names=gene_names, layer=layer)

    @staticmethod
    def _given_clusters(expression, over_clustering, n_cells, given_anndata):
        """The user's clusters, one per cell, from an `obs` column name or an array."""
        if isinstance(over_clustering, str):
            if not given_anndata or over_clustering not in expression.obs.columns:
                columns = list(expression.obs.columns) if given_anndata else "no obs: the input is not an AnnData"
                raise ScInterpreterInputError(
                    f"over_clustering={over_clustering!r} is not an obs column (columns: {columns}); pass one of them, "
                    "one cluster id per cell, or None to cluster the cell embeddings."
                )
            over_clustering = expression.obs[over_clustering]
        clusters = np.asarray(over_clustering)
        if clusters.ndim != 1 or len(clusters) != n_cells:
            raise ScInterpreterInputError(
                f"over_clustering holds {clusters.shape} values for {n_cells} cells: give one cluster id per cell."
            )
        return clusters

    def _explain(self, results, model_outputs, n_explained):
        """Adds each cell's `n_explained` genes of largest attribution to its result."""
        attributions = model_outputs["attributions"].numpy()
        gene_ids, mask = model_outputs["gene_ids"].numpy(), model_outputs["gene_mask"].numpy().astype(bool)
        if "linear_attributions" in model_outputs:
            # Candidates: the soft tokens, and the genes only the linear read weighs (0 marks the others: soft
            # tokens, whose drop is already counted, padding, and genes without a weight).
            linear_attributions = model_outputs["linear_attributions"].numpy()
            attributions = np.concatenate([attributions, linear_attributions], axis=1)
            gene_ids = np.concatenate([gene_ids, model_outputs["linear_gene_ids"].numpy()], axis=1)
            mask = np.concatenate([mask, linear_attributions != 0], axis=1)
        vocab = self.processor.gene_vocab
        for result, cell_attributions, cell_ids, cell_mask in zip(results, attributions, gene_ids, mask):
            order = [i for i in np.argsort(-cell_attributions, kind="stable") if cell_mask[i]][:n_explained]
            result["genes"] = [{"gene": vocab[cell_ids[i]], "attribution": float(cell_attributions[i])}
                               for i in order]


def annotation_keys(key_added=CALL_DEFAULTS["key_added"], explain=False, majority_voting=False) -> dict:
    """
    Where an AnnData's annotation goes, by slot: `{"obs": {...}, "obsm": {...}, "uns": {...}}`, each mapping what is
    stored to its key: `obs` `label` (`key_added`) and `score`, `obsm` `embeddings` (`"X_" + key_added`) and
    `probabilities`, `uns` `settings` (`key_added`); with `explain`, `obsm` `genes`; with `majority_voting`, `obs`
    `majority_voting` and `over_clustering`. The pipeline and `scinterpreter.annotate`'s `.h5ad` writer use these.
    """
    keys = {"obs": {"label": key_added, "score": f"{key_added}_score"},
            "obsm": {"embeddings": f"X_{key_added}", "probabilities": f"{key_added}_probabilities"},
            "uns": {"settings": key_added}}
    if explain:
        keys["obsm"]["genes"] = f"{key_added}_genes"
    if majority_voting:
        keys["obs"].update(majority_voting=f"{key_added}_majority_voting",
                           over_clustering=f"{key_added}_over_clustering")
    return keys


def annotation_record(model, processor, gene_names, threshold, reference="the training cells") -> dict:
    """
    What `uns[key_added]` records of an annotation: `labels` (the order of the probability columns), `model`,
    `threshold` (as given) with the `unassigned_threshold` and `unassigned_score` it resolved to (and
    `centroid_similarity_threshold`, where that score has one),
    `calibration_temperature` and `calibrated` (False: the model carries no temperature, so the probabilities are the
    plain softmax and the temperature reads 1.0), `gene_match`, `reference` and `scinterpreter_version`. The pipeline
    and `scinterpreter.annotate`'s `.h5ad` writer both write this, so that the two records are the same.
    """
    config = model.config
    auto = threshold == "auto"
    temperature = getattr(config, "calibration_temperature", None)
    # None only where "auto" meets a model without a fitted threshold, which the pipeline refuses before any cell.
    applied = getattr(config, "unassigned_threshold", None) if auto else threshold
    record = {
        "labels": [config.id2label[i] for i in range(len(config.id2label))],
        "model": str(model.name_or_path),
        "threshold": threshold if auto else float(threshold),
        "unassigned_threshold": None if applied is None else float(applied),
        "unassigned_score": getattr(config, "unassigned_score", "max_probability") if auto else "max_probability",
        "calibration_temperature": float(temperature or 1.0),
        "calibrated": temperature is not None,
        "gene_match": processor.match_genes(list(gene_names)).summary(),
        "reference": reference,
        "scinterpreter_version": getattr(config, "scinterpreter_version", None) or "unknown",
    }
    if auto and getattr(config, "centroid_similarity_threshold", None) is not None:
        record["centroid_similarity_threshold"] = float(config.centroid_similarity_threshold)
    return record


def taken_annotation_keys(keys, obs, obsm, uns) -> list:
    """
    Those of `keys` (`annotation_keys`) already present, as `"obs['name']"`, `"obsm['name']"`, `"uns['name']"`.
    `obs`, `obsm` and `uns` need only support `in`: an AnnData's `obs.columns`, `obsm` and `uns`, or an `.h5ad`
    file's groups.
    """
    present = {"obs": obs, "obsm": obsm, "uns": uns}
    return [f"{slot}['{key}']" for slot, named in keys.items() for key in named.values() if key in present[slot]]


def majority_vote(labels, clusters):
    """Each cell's cluster's most frequent label (ties: the label met first in the cluster)."""
    labels, clusters = np.asarray(labels, dtype=object), np.asarray(clusters)
    voted = np.empty(len(labels), dtype=object)
    for cluster in np.unique(clusters):
        members = clusters == cluster
        names, first, counts = np.unique(labels[members], return_index=True, return_counts=True)
        voted[members] = names[np.lexsort((first, -counts))[0]]
    return voted.tolist()


def over_cluster(embeddings, seed=0):
    """Leiden clusters of the cells on a neighbour graph of `embeddings`, and the resolution used."""
    n_cells = len(embeddings)
    resolution = next((value for limit, value in OVER_CLUSTERING_RESOLUTIONS if n_cells < limit), 30)
    if n_cells < 3:
        return np.arange(n_cells).astype(str), resolution
    try:
        import anndata
        import igraph  # noqa: F401 (scanpy's Leiden runs on it)
        import scanpy
    except ImportError as error:
        # This file runs as Hub remote code without the scinterpreter package, so the message is written out here.
        raise ScInterpreterInputError(
            f"majority_voting clusters the cells with scanpy's Leiden, which needs scanpy and igraph ({error}): "
            "pip install 'scinterpreter[plots]' (or scanpy igraph), or pass over_clustering (an obs column or one "
            "cluster id per cell)."
        ) from None
    graph = anndata.AnnData(np.asarray(embeddings, dtype=np.float32))
    scanpy.pp.neighbors(graph, n_neighbors=min(15, n_cells - 1), use_rep="X", random_state=seed)
    scanpy.tl.leiden(graph, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                     random_state=seed)
    return graph.obs["leiden"].to_numpy().astype(str), resolution


__all__ = [
    "CALL_DEFAULTS",
    "CellAnnotationPipeline",
    "CellAnnotations",
    "UNASSIGNED",
    "annotation_keys",
    "annotation_record",
    "majority_vote",
    "over_cluster",
    "taken_annotation_keys",
]
