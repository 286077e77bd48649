"""Gene description tables and the gene-embedding table built from them."""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .backbone import cache_dir

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DESCRIPTION_TABLES = {"human": DATA_DIR / "human_gene_descriptions.tsv.gz"}
ENCODERS = ("wordllama", "random")
TABLE_FORMAT_VERSION = "1"


@dataclass
class GeneTable:
    """A gene vocabulary and its frozen embedding table (row `i` embeds `vocab[i]`)."""

    vocab: list
    embeddings: np.ndarray
    encoder: str
    centered: bool
    content_hash: str
    species: str = "human"

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


def load_gene_descriptions(species: str = "human", path=None) -> pd.DataFrame:
    """
    A gene description table with columns `symbol` and `description` (more columns are kept).

    The built-in human table is derived from Debian's Bioconductor packages by
    `scripts/build_gene_descriptions.py`. Pass `path` to use your own tab-separated table (e.g. NCBI summaries,
    as the paper used) with at least those two columns.
    """
    if path is None:
        if species not in DESCRIPTION_TABLES:
            raise ValueError(f"no built-in gene descriptions for {species!r}; pass a table with `path`.")
        path = DESCRIPTION_TABLES[species]
    table = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)  # the gene `NA` exists
    missing = {"symbol", "description"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; it needs `symbol` and `description`.")
    return table.drop_duplicates("symbol").reset_index(drop=True)


def _encode(texts, encoder: str, seed: int) -> np.ndarray:
    if encoder == "wordllama":
        import wordllama
        from wordllama import WordLlama

        model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        return np.asarray(model.embed(list(texts), norm=True), dtype=np.float32)
    if encoder == "random":
        rng = np.random.default_rng(seed)
        return rng.standard_normal((len(texts), 256)).astype(np.float32)
    raise ValueError(f"unknown gene text encoder {encoder!r}; choose one of {ENCODERS}.")


def build_gene_table(
    descriptions: pd.DataFrame | None = None, encoder: str = "wordllama", center: bool = True, species: str = "human",
    seed: int = 0,
) -> GeneTable:
    """
    Embeds each gene's description with `encoder`. With `center`, the mean gene vector is subtracted and rows
    re-normalised: raw description vectors share one dominant direction, which would make every cell look alike.
    Cached under the content hash of (descriptions, encoder, centring).
    """
    if descriptions is None:
        descriptions = load_gene_descriptions(species)
    digest = hashlib.sha256()
    for part in (TABLE_FORMAT_VERSION, encoder, str(center), str(seed), species):
        digest.update(part.encode() + b"\0")
    for symbol, text in zip(descriptions["symbol"], descriptions["description"]):
        digest.update(symbol.encode() + b"\t" + text.encode() + b"\n")
    content_hash = digest.hexdigest()[:16]
    cached = cache_dir() / "gene_tables" / f"{content_hash}.safetensors"
    if cached.is_file():
        from safetensors.numpy import safe_open

        with safe_open(cached, framework="np") as handle:
            embeddings, vocab = handle.get_tensor("embeddings"), json.loads(handle.metadata()["vocab"])
    else:
        from safetensors.numpy import save_file

        logger.info(f"Embedding {len(descriptions)} gene descriptions with {encoder}")
        embeddings = _encode(descriptions["description"], encoder, seed)
        if center:
            embeddings = embeddings - embeddings.mean(0, keepdims=True)
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
        vocab = list(descriptions["symbol"])
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": np.ascontiguousarray(embeddings)}, cached, metadata={"vocab": json.dumps(vocab)})
    return GeneTable(vocab=vocab, embeddings=embeddings, encoder=encoder, centered=center, content_hash=content_hash,
                     species=species)
