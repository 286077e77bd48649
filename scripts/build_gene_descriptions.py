"""Build the human gene description and alias tables from Debian's Bioconductor packages.

The tables are derived from ``r-bioc-org.hs.eg.db`` (NCBI Entrez Gene symbols, full names,
aliases, Ensembl IDs and GO annotations) and ``r-bioc-go.db`` (GO term names). Both are SQLite
databases inside the ``.deb`` files, so no R is needed::

    python scripts/build_gene_descriptions.py            # downloads the .debs with apt-get
    python scripts/build_gene_descriptions.py --deb-dir /path/with/debs

Writes ``scinterpreter/data/human_gene_descriptions.tsv.gz`` (symbol, entrez_id, gene_type,
full_name, description) and ``scinterpreter/data/human_gene_aliases.tsv.gz`` (alias, symbol,
kind) next to the package. Each description reads like the header of an NCBI Gene page::

    Official Symbol: CD19. Official Full Name: CD19 molecule. Gene type: protein coding.
    Also known as: B4, CVID3. Gene Ontology: enables ...; involved in ...; located in ...
"""

import argparse
import collections
import gzip
import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path

PACKAGES = {"org.Hs.eg.db": "r-bioc-org.hs.eg.db", "GO.db": "r-bioc-go.db"}
KEPT_GENE_TYPES = {"protein-coding", "ncRNA", "other", "snRNA", "snoRNA", "scRNA", "rRNA", "tRNA"}
# Experimental and curated evidence first: it is what NCBI's own summaries lean on.
EVIDENCE_RANK = {code: rank for rank, code in enumerate(
    ["EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HDA", "HMP", "HEP", "TAS", "IC", "IBA", "ISS", "NAS", "IEA"])}
GO_VERBS = {"go_mf": "enables", "go_bp": "involved in", "go_cc": "located in"}
MAX_GO_TERMS_PER_ASPECT = 4
OUT_DIR = Path(__file__).resolve().parent.parent / "scinterpreter" / "data"


def extract_sqlite(deb_dir: Path, package: str, workdir: Path) -> Path:
    debs = sorted(deb_dir.glob(f"{PACKAGES[package]}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", PACKAGES[package]], cwd=deb_dir, check=True)
        debs = sorted(deb_dir.glob(f"{PACKAGES[package]}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(workdir)], check=True)
    return next(workdir.rglob(f"{package}/extdata/*.sqlite"))


def go_term_names(go_sqlite: Path) -> dict:
    with sqlite3.connect(go_sqlite) as db:
        return dict(db.execute("SELECT go_id, term FROM go_term"))


def build(org_sqlite: Path, go_terms: dict):
    db = sqlite3.connect(org_sqlite)
    genes = db.execute(
        "SELECT g._id, g.gene_id, i.symbol, i.gene_name, t.gene_type FROM genes g "
        "JOIN gene_info i ON g._id = i._id JOIN genetype t ON g._id = t._id"
    ).fetchall()
    aliases = collections.defaultdict(list)
    for _id, alias in db.execute("SELECT _id, alias_symbol FROM alias"):
        aliases[_id].append(alias)
    ensembl = collections.defaultdict(list)
    for _id, ensembl_id in db.execute("SELECT _id, ensembl_id FROM ensembl"):
        ensembl[_id].append(ensembl_id)
    go = collections.defaultdict(lambda: collections.defaultdict(dict))
    for table in GO_VERBS:
        for _id, go_id, evidence in db.execute(f"SELECT _id, go_id, evidence FROM {table}"):
            rank = EVIDENCE_RANK.get(evidence, len(EVIDENCE_RANK))
            best = go[_id][table].get(go_id, rank)
            go[_id][table][go_id] = min(best, rank)
    db.close()

    description_rows, alias_rows = [], []
    for _id, entrez_id, symbol, full_name, gene_type in sorted(genes, key=lambda row: row[2]):
        has_go = bool(go.get(_id))
        if gene_type not in KEPT_GENE_TYPES and not has_go:
            continue
        gene_aliases = [a for a in aliases.get(_id, []) if a != symbol]
        parts = [f"Official Symbol: {symbol}.", f"Official Full Name: {full_name}.",
                 f"Gene type: {gene_type.replace('-', ' ')}."]
        if gene_aliases:
            parts.append(f"Also known as: {', '.join(gene_aliases)}.")
        go_phrases = []
        for table, verb in GO_VERBS.items():
            ranked = sorted(go[_id][table].items(), key=lambda item: (item[1], item[0]))
            names = [go_terms[g] for g, _ in ranked if g in go_terms][:MAX_GO_TERMS_PER_ASPECT]
            if names:
                go_phrases.append(f"{verb} {', '.join(names)}")
        if go_phrases:
            parts.append(f"Gene Ontology: {'; '.join(go_phrases)}.")
        description_rows.append((symbol, entrez_id, gene_type, full_name, " ".join(parts)))
        alias_rows.append((entrez_id, symbol, "entrez"))
        alias_rows.extend((a, symbol, "alias") for a in gene_aliases)
        alias_rows.extend((e, symbol, "ensembl") for e in ensembl.get(_id, []))
    return description_rows, alias_rows


def write_tsv(path: Path, header, rows):
    # mtime=0 keeps the gzip bytes reproducible, so rebuilding does not dirty the repo.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("\t".join(header) + "\n").encode())
        for row in rows:
            gz.write(("\t".join(str(v).replace("\t", " ") for v in row) + "\n").encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb-dir", type=Path, default=None, help="folder holding (or receiving) the .deb files")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        deb_dir = args.deb_dir or Path(tmp)
        org_sqlite = extract_sqlite(deb_dir, "org.Hs.eg.db", Path(tmp) / "org")
        go_sqlite = extract_sqlite(deb_dir, "GO.db", Path(tmp) / "go")
        descriptions, aliases = build(org_sqlite, go_term_names(go_sqlite))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out_dir / "human_gene_descriptions.tsv.gz",
              ["symbol", "entrez_id", "gene_type", "full_name", "description"], descriptions)
    write_tsv(args.out_dir / "human_gene_aliases.tsv.gz", ["alias", "symbol", "kind"], aliases)
    stats = {"genes": len(descriptions), "aliases": len(aliases),
             "sources": {"org.Hs.eg.db": "Debian r-bioc-org.hs.eg.db (Entrez Gene 2022-Sep12, GO 2022-07-01)",
                         "GO.db": "Debian r-bioc-go.db"}}
    (args.out_dir / "human_gene_tables.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
