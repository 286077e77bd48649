"""The `cell-annotation` pipeline: expression data in, one label per cell out."""

import logging

import numpy as np
import torch
from transformers import AutoProcessor, Pipeline
from transformers.utils.logging import tqdm

try:
    from .configuration_scinterpreter import ScInterpreterInputError
    from .loading_scinterpreter import select_backbone_dtype
except ImportError:  # imported as a top-level module rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError
    from loading_scinterpreter import select_backbone_dtype

logger = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"
# The options of a call, in this order, and their defaults.
CALL_DEFAULTS = {"gene_names": None, "layer": None, "batch_size": 64, "top_k": 3, "threshold": 0.0,
                 "key_added": "scinterpreter", "copy": True, "overwrite": False, "show_progress": None,
                 "compile_backbone": None, "explain": False, "majority_voting": False, "over_clustering": None,
                 "refit_reference": False}
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
    ```
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
        if self.model.base_model.backbone_dtype != select_backbone_dtype(self.device):
            self.model.set_backbone_dtype(select_backbone_dtype(self.device))
        self.model.eval()

    def _sanitize_parameters(self, **kwargs):
        # Options given to `pipeline(...)` become this pipeline's defaults; a call's own options override them.
        options = {key: value for key, value in kwargs.items() if key in CALL_DEFAULTS and value is not None}
        preprocess = {key: options.pop(key) for key in ("gene_names", "layer") if key in options}
        return preprocess, {}, options

    def preprocess(self, expression, gene_names=None, layer=None):
        return self.processor(expression, gene_names=gene_names, layer=layer, return_tensors="pt")

    def _forward(self, model_inputs):
        inputs = {name: model_inputs[name] for name in ("gene_ids", "gene_values", "gene_mask")}
        outputs = self.model(**inputs)
        return {"logits": outputs.logits, "cell_embeddings": outputs.cell_embeddings, "gene_mask": inputs["gene_mask"]}

    def _forward_batch(self, batch, batch_size):
        base_model = self.model.base_model
        n_cells = len(batch["gene_ids"])
        if not base_model.is_backbone_compiled:
            return self._forward(batch)
        # A compiled backbone is specialised to one batch shape: a short last batch is padded rather than compiled
        # again.
        rows = torch.arange(batch_size, device=batch["gene_ids"].device).clamp(max=n_cells - 1)
        try:
            outputs = self._forward({name: tensor[rows] for name, tensor in batch.items()})
        except Exception as error:  # Inductor compiles on first use: a missing C++ compiler surfaces here
            logger.warning(f"torch.compile of the backbone failed ({type(error).__name__}: {error}); "
                           "running uncompiled. Pass compile_backbone=False to skip trying.")
            base_model.compile_backbone(False)
            return self._forward(batch)
        return {name: tensor[:n_cells] for name, tensor in outputs.items()}

    def postprocess(self, model_outputs, top_k=3, threshold=0.0):
        logits = model_outputs["logits"]
        probabilities = self.model.probabilities(logits).cpu().numpy()
        if threshold == "auto":
            confidence = self.model.confidence(logits).cpu().numpy()
            threshold = self.model.config.unassigned_threshold
        else:
            confidence = probabilities.max(-1)
        empty = model_outputs["gene_mask"].sum(-1).cpu().numpy() == 0
        id2label = self.model.config.id2label
        k = min(top_k, probabilities.shape[-1])
        results = CellAnnotations()
        for cell_probabilities, cell_confidence, is_empty in zip(probabilities, confidence, empty):
            best = np.argsort(-cell_probabilities, kind="stable")[:k]
            top = [{"label": id2label[int(i)], "score": float(cell_probabilities[i])} for i in best]
            label = top[0]["label"] if cell_confidence >= threshold and not is_empty else UNASSIGNED
            results.append({"label": label, "score": top[0]["score"], "top_k": top})
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

    def __call__(
        self,
        expression,
        gene_names=None,
        layer=None,
        batch_size=None,
        top_k=None,
        threshold=None,
        key_added=None,
        copy=None,
        overwrite=None,
        show_progress=None,
        compile_backbone=None,
        explain=None,
        majority_voting=None,
        over_clustering=None,
        refit_reference=None,
    ):
        r"""
        Every option left out takes the value given to `pipeline("cell-annotation", ..., option=...)`, else the
        default below.

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
                `config.unassigned_score`; about 5% of known-type cells fall below it), to flag cell types the model
                was not trained on (docs/benchmarks/unknown_types.md).
            key_added (`str`, *optional*, defaults to `"scinterpreter"`): AnnData only: `obs[key_added]` (labels),
                `obs[key_added + "_score"]` (probability of the label), `obsm[key_added + "_probabilities"]`
                (cells x cell types, in the order of `uns[key_added]["labels"]`), `obsm["X_" + key_added]` (cell
                embeddings) and `uns[key_added]` (labels, model, threshold, calibration temperature, gene match,
                package version).
            copy (`bool`, *optional*, defaults to `True`): AnnData only: annotate a copy (returned as `.adata`)
                rather than the input.
            overwrite (`bool`, *optional*, defaults to `False`): AnnData only: allow replacing existing columns.
            compile_backbone (`bool`, *optional*): run the backbone under `torch.compile` (see
                `ScInterpreterModel.compile_backbone`); by default from `COMPILE_MIN_CELLS` (20,000) cells on, and
                for every later call once compiled. Where compiling fails (no C++ compiler), a warning says so and
                the cells run uncompiled.
            explain (`bool` or `int`, *optional*, defaults to `False`): also give, per cell, the genes that drove its
                label: `True` for the top 5, or how many. Each gene's attribution is the drop of the label's logit
                when that gene's soft token is left out (`gene_attributions`; one forward pass per gene, so about
                `n_top_genes` times the cost). Per cell as `"genes": [{"gene", "attribution"}, ...]`; for an AnnData
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
        given = {"gene_names": gene_names, "layer": layer, "batch_size": batch_size, "top_k": top_k,
                 "threshold": threshold, "key_added": key_added, "copy": copy, "overwrite": overwrite,
                 "show_progress": show_progress, "compile_backbone": compile_backbone, "explain": explain,
                 "majority_voting": majority_voting, "over_clustering": over_clustering,
                 "refit_reference": refit_reference}
        options = {**CALL_DEFAULTS, **self._preprocess_params, **self._postprocess_params,
                   **{key: value for key, value in given.items() if value is not None}}
        (gene_names, layer, batch_size, top_k, threshold, key_added, copy, overwrite, show_progress, compile_backbone,
         explain, majority_voting, over_clustering, refit_reference) = (options[key] for key in CALL_DEFAULTS)
        threshold = self._check_threshold(threshold)
        n_explained = 5 if explain is True else int(explain or 0)
        if n_explained < 0:
            raise ScInterpreterInputError(f"explain must be True, False or a number of genes >= 0, got {explain!r}.")
        is_anndata = hasattr(expression, "obs") and hasattr(expression, "obsm")
        if is_anndata:
            taken = [key for key in (key_added, f"{key_added}_score") if key in expression.obs.columns]
            taken += [f"obsm['{key}']" for key in (f"X_{key_added}", f"{key_added}_probabilities")
                      if key in expression.obsm]
            taken += [f"uns['{key_added}']"] if key_added in expression.uns else []
            if n_explained and f"{key_added}_genes" in expression.obsm:
                taken.append(f"obsm['{key_added}_genes']")
            if majority_voting:
                taken += [key for key in (f"{key_added}_majority_voting", f"{key_added}_over_clustering")
                          if key in expression.obs.columns]
            if taken and not overwrite:
                raise ScInterpreterInputError(
                    f"the AnnData already has {taken}: pass overwrite=True to replace them, or another key_added."
                )
        processor = self._refitted_processor(expression, gene_names, layer) if refit_reference else self.processor
        encoded = processor(expression, gene_names=gene_names, layer=layer, return_tensors="pt")
        n_cells = encoded["gene_ids"].shape[0]
        if majority_voting and over_clustering is not None:
            over_clustering = self._given_clusters(expression, over_clustering, n_cells, is_anndata)
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
        with torch.inference_mode():
            for start in starts:
                batch = {name: encoded[name][start : start + batch_size].to(self.device) for name in
                         ("gene_ids", "gene_values", "gene_mask")}
                outputs = self._forward_batch(batch, batch_size)
                annotated = self.postprocess(outputs, top_k=top_k, threshold=threshold)
                if n_explained:
                    self._explain(annotated, batch, n_explained)
                results.extend(annotated)
                probabilities.append(annotated.probabilities)
                embeddings.append(outputs["cell_embeddings"].float().cpu().numpy())
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
        if is_anndata:
            adata = expression.copy() if copy else expression
            adata.obs[key_added] = [result["label"] for result in results]
            adata.obs[key_added] = adata.obs[key_added].astype("category")
            adata.obs[f"{key_added}_score"] = np.array([result["score"] for result in results], dtype=np.float32)
            adata.obsm[f"{key_added}_probabilities"] = results.probabilities
            adata.obsm[f"X_{key_added}"] = results.embeddings
            adata.uns[key_added] = {
                "labels": results.labels,
                "model": str(self.model.name_or_path),
                "threshold": threshold,
                "unassigned_threshold": (float(self.model.config.unassigned_threshold) if threshold == "auto"
                                         else threshold),
                "unassigned_score": (self.model.config.unassigned_score if threshold == "auto"
                                     else "max_probability"),
                "calibration_temperature": float(getattr(self.model.config, "calibration_temperature", None) or 1.0),
                "gene_match": self.processor.match_genes(list(expression.var_names)).summary(),
                "reference": f"refitted on these {n_cells} cells" if refit_reference else "the training cells",
                "scinterpreter_version": getattr(self.model.config, "scinterpreter_version", None) or "unknown",
            }
            if majority_voting:
                adata.obs[f"{key_added}_over_clustering"] = np.asarray(over_clustering).astype(str)
                adata.obs[f"{key_added}_over_clustering"] = adata.obs[f"{key_added}_over_clustering"].astype("category")
                adata.obs[f"{key_added}_majority_voting"] = [result["majority_voting"] for result in results]
                adata.obs[f"{key_added}_majority_voting"] = adata.obs[f"{key_added}_majority_voting"].astype("category")
                adata.uns[key_added]["over_clustering"] = clustering
            if n_explained:
                columns = {f"gene_{i + 1}": [r["genes"][i]["gene"] if i < len(r["genes"]) else "" for r in results]
                           for i in range(n_explained)}
                columns.update({f"attribution_{i + 1}": np.array(
                    [r["genes"][i]["attribution"] if i < len(r["genes"]) else np.nan for r in results], np.float32)
                    for i in range(n_explained)})
                # The obs frame's own class (pandas) builds the table: this file imports no pandas.
                adata.obsm[f"{key_added}_genes"] = type(adata.obs)(columns, index=adata.obs_names)
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
    def _given_clusters(expression, over_clustering, n_cells, is_anndata):
        """The user's clusters, one per cell, from an `obs` column name or an array."""
        if isinstance(over_clustering, str):
            if not is_anndata or over_clustering not in expression.obs.columns:
                columns = list(expression.obs.columns) if is_anndata else "no obs: the input is not an AnnData"
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

    def _explain(self, annotated, batch, n_explained):
        """Adds each cell's `n_explained` genes of largest attribution to its result."""
        target = torch.as_tensor(annotated.probabilities.argmax(-1), device=batch["gene_ids"].device)
        attributions = self.model.gene_attributions(**batch, target=target).cpu().numpy()
        gene_ids, mask = batch["gene_ids"].cpu().numpy(), batch["gene_mask"].cpu().numpy().astype(bool)
        vocab = self.processor.gene_vocab
        for result, cell_attributions, cell_ids, cell_mask in zip(annotated, attributions, gene_ids, mask):
            order = [i for i in np.argsort(-cell_attributions, kind="stable") if cell_mask[i]][:n_explained]
            result["genes"] = [{"gene": vocab[cell_ids[i]], "attribution": float(cell_attributions[i])}
                               for i in order]


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


__all__ = ["CellAnnotationPipeline", "CellAnnotations", "UNASSIGNED", "majority_vote", "over_cluster"]
