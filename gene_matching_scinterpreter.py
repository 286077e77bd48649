"""scInterpreter gene matching: a dataset's gene names -> rows of the model's gene vocabulary, and a report of how.

The processor matches names here before it normalises and ranks; numpy only, like the processor.
"""

import logging
import re
from dataclasses import dataclass, field

import numpy as np

try:
    from .configuration_scinterpreter import ScInterpreterInputError
except ImportError:  # imported as a top-level module (installed package, tests) rather than as Hub remote code
    from configuration_scinterpreter import ScInterpreterInputError

logger = logging.getLogger(__name__)

MATCH_RULES = ("exact", "case", "alias", "ensembl", "entrez", "ortholog")
# Orthologs are only for names in the other species' style, and for those they come before the upper-cased name:
# "Ins1" is INS, not a human "INS1".
SYMBOL_RULES = ("exact", "case", "alias", "ensembl", "entrez")
MOUSE_SYMBOL_RULES = ("exact", "ortholog", "case", "alias", "ensembl", "entrez")
ENSEMBL_ID = re.compile(r"ENS[A-Z]*G\d{6,}(\.\d+)?")


@dataclass
class GeneMatchReport:
    """How the data's gene names matched the model's gene vocabulary."""

    n_total: int
    n_matched: int
    by_rule: dict = field(default_factory=dict)
    unmatched: list = field(default_factory=list)
    n_duplicates: int = 0
    id_style: str = "symbols"

    @property
    def matched_fraction(self) -> float:
        return self.n_matched / self.n_total if self.n_total else 0.0

    def summary(self) -> str:
        rules = ", ".join(f"{rule} {count}" for rule, count in self.by_rule.items() if count)
        text = f"{self.n_matched}/{self.n_total} genes ({self.matched_fraction:.1%}) matched the model's vocabulary"
        if rules:
            text += f" ({rules})"
        if self.n_duplicates:
            text += f"; {self.n_duplicates} names mapped to an already matched gene and were summed into it"
        return text


@dataclass
class MatchedGenes:
    """Data columns -> vocabulary rows, ready for fast per-chunk gathering."""

    report: GeneMatchReport
    columns: np.ndarray  # data column of each matched gene, ordered by vocabulary row
    vocab_ids: np.ndarray  # vocabulary row of each matched gene, ascending
    extra_columns: np.ndarray  # further data columns mapped to an already matched gene ...
    extra_targets: np.ndarray  # ... and the position in `vocab_ids` they are summed into


def detect_gene_id_style(names) -> str:
    """What the gene names look like: "Ensembl IDs", "Entrez IDs", "mouse symbols", "symbols" or "unrecognised"."""
    sample = [name.strip() for name in names[:2000] if name.strip()]
    if not sample:
        return "unrecognised"
    share = lambda test: sum(map(test, sample)) / len(sample)  # noqa: E731
    if share(lambda n: ENSEMBL_ID.fullmatch(n.upper()) is not None) > 0.5:
        return "Ensembl IDs"
    if share(str.isdigit) > 0.5:
        return "Entrez IDs"
    if share(lambda n: n[:1].isupper() and any(c.islower() for c in n[1:])) > 0.5:
        return "mouse symbols"
    if share(lambda n: n[:1].isalpha() and len(n) <= 20) > 0.5:
        return "symbols"
    return "unrecognised"


class GeneMatcher:
    r"""
    Matches gene names to a vocabulary by these rules in turn: exact symbol, case, alias or previous symbol, Ensembl
    ID (any version suffix), Entrez ID, and ortholog (tried right after exact for mouse-style symbols).

    Args:
        gene_vocab (`list[str]`): the model's gene symbols; a name matched to `gene_vocab[i]` becomes row `i`.
        species (`str`, *optional*, defaults to `"human"`): species of the vocabulary, named in error messages.
        alias_map, ensembl_map, entrez_map, ortholog_map (`dict[str, str]`, *optional*): aliases and previous
            symbols, Ensembl gene IDs (no version), Entrez IDs, and other-species symbols (mouse MGI) -> a symbol of
            the vocabulary.
    """

    def __init__(self, gene_vocab, species="human", alias_map=None, ensembl_map=None, entrez_map=None,
                 ortholog_map=None):
        self.gene_vocab = gene_vocab
        self.species = species
        self.alias_map = alias_map or {}
        self.ensembl_map = ensembl_map or {}
        self.entrez_map = entrez_map or {}
        self.ortholog_map = ortholog_map or {}
        self._exact, self._upper = {}, {}
        for row, symbol in enumerate(gene_vocab):
            self._exact.setdefault(symbol, row)
            self._upper.setdefault(symbol.upper(), row)
        self._upper_alias = {alias.upper(): symbol for alias, symbol in self.alias_map.items()}
        self._upper_ortholog = {other.upper(): symbol for other, symbol in self.ortholog_map.items()}

    def _match_one(self, name: str, rules):
        exact, key = self._exact, name.strip().upper()
        for rule in rules:
            if rule == "exact":
                row = exact.get(name)
            elif rule == "case":
                row = self._upper.get(key)
            elif rule == "alias":
                row = exact.get(self._upper_alias.get(key))
            elif rule == "ensembl":
                row = exact.get(self.ensembl_map.get(key.split(".")[0])) if key.startswith("ENS") else None
            elif rule == "entrez":
                row = exact.get(self.entrez_map.get(key)) if key.isdigit() else None
            else:  # ortholog: the human ortholog's symbol, itself matched by symbol or alias
                human = self._upper_ortholog.get(key)
                row = None if human is None else exact.get(human, exact.get(self._upper_alias.get(human.upper())))
            if row is not None:
                return row, rule
        return None, None

    def match(self, gene_names) -> MatchedGenes:
        """Each name's vocabulary row; names that reach an already matched row are kept to be summed into it."""
        names = [str(name) for name in gene_names]
        style = detect_gene_id_style(names)
        rules = MOUSE_SYMBOL_RULES if style == "mouse symbols" else SYMBOL_RULES
        by_rule = dict.fromkeys(MATCH_RULES, 0)
        targets, unmatched = np.full(len(names), -1, dtype=np.int64), []
        for column, name in enumerate(names):
            row, rule = self._match_one(name, rules)
            if row is None:
                unmatched.append(name)
                continue
            targets[column] = row
            by_rule[rule] += 1
        matched_columns = np.flatnonzero(targets >= 0)
        vocab_ids, first = np.unique(targets[matched_columns], return_index=True)
        columns = matched_columns[first]
        extra = np.setdiff1d(matched_columns, columns, assume_unique=True)
        report = GeneMatchReport(
            n_total=len(names), n_matched=len(matched_columns), by_rule=by_rule, unmatched=unmatched,
            n_duplicates=len(extra), id_style=style,
        )
        return MatchedGenes(
            report=report, columns=columns, vocab_ids=vocab_ids, extra_columns=extra,
            extra_targets=np.searchsorted(vocab_ids, targets[extra]),
        )

    def check(self, matched: MatchedGenes, gene_names, min_matched_genes: int):
        """Raises unless `min_matched_genes` names matched (or all of them); logs the match and any duplicates."""
        report = matched.report
        if report.n_matched < min(min_matched_genes, report.n_total):
            raise ScInterpreterInputError(self._too_few_matches_message(report))
        logger.info(report.summary())
        if report.n_duplicates:
            examples = [f"{gene_names[column]} -> {self.gene_vocab[matched.vocab_ids[target]]}"
                        for column, target in zip(matched.extra_columns[:5], matched.extra_targets[:5])]
            logger.warning(
                f"{report.n_duplicates} gene names appear more than once or map to a gene already matched "
                f"(e.g. {', '.join(examples)}); their values are summed into one gene."
            )

    def _too_few_matches_message(self, report: GeneMatchReport) -> str:
        understood = ["{} symbols (e.g. {})".format(self.species, ", ".join(self.gene_vocab[:2]))]
        if self.alias_map:
            understood.append("their aliases and previous symbols")
        if self.ensembl_map:
            understood.append("Ensembl gene IDs (e.g. ENSG00000105383, any version suffix)")
        if self.entrez_map:
            understood.append("Entrez IDs")
        if self.ortholog_map:
            understood.append("mouse symbols (e.g. Cd3e), through orthologs")
        return (
            f"only {report.n_matched} of {report.n_total} gene names match the model's gene vocabulary. The names "
            f"look like {report.id_style} (e.g. {', '.join(report.unmatched[:4])}); the model understands "
            f"{'; '.join(understood)}. Pass gene names of one of those kinds: for an AnnData, e.g. "
            "adata.var_names = adata.var['gene_symbols'], or gene_names=... for a matrix."
        )


__all__ = ["GeneMatchReport", "GeneMatcher", "MatchedGenes", "detect_gene_id_style"]
