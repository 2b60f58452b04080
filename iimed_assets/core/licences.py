"""Licence terms of the sources, read from the registry's licence text, and the card's YAML `license` derived
from the sources that contribute rows. Pure.

The registry writes each licence as found (e.g. "CC BY-NC 4.0 (research use; UNVERIFIED tag)"): this module maps
that text to a Hub licence identifier where one applies and to the restriction that matters to a user of the
merged set. A merged set carries every contributing source's terms, row by row, so one identifier can describe
it only when every contributing source has that identifier; otherwise the card says `license: other` and lists
the terms per source, most restrictive first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

# Restrictions, most restrictive first (a card lists them in this order).
RESEARCH_ONLY = "research use only"
NOT_PUBLIC = "not public (your own copy: its terms)"
NOT_STATED = "licence not stated (no rights granted by default)"
NON_COMMERCIAL_SHARE_ALIKE = "non-commercial, share-alike"
NON_COMMERCIAL = "non-commercial"
SHARE_ALIKE = "share-alike"
ATTRIBUTION = "attribution"
PERMISSIVE = "permissive"
RESTRICTION_ORDER = (RESEARCH_ONLY, NOT_PUBLIC, NOT_STATED, NON_COMMERCIAL_SHARE_ALIKE, NON_COMMERCIAL, SHARE_ALIKE,
                     ATTRIBUTION, PERMISSIVE)


@dataclass(frozen=True)
class Licence:
    text: str                 # as the registry writes it
    hub_id: str | None        # a Hub licence identifier, or None when none applies
    restriction: str          # one of RESTRICTION_ORDER
    recognised: bool = True   # False: no rule matched the text (treated as not stated)

    @property
    def rank(self) -> int:
        return RESTRICTION_ORDER.index(self.restriction)


# (pattern, hub id, restriction), tried in order: the first match decides. "Research" and "not stated" come first
# because such texts often name another licence as a reading ("not stated on the card (m1 code: Apache-2.0)").
_RULES: tuple[tuple[str, str | None, str], ...] = (
    (r"research", None, RESEARCH_ONLY),
    (r"not public", None, NOT_PUBLIC),
    (r"not stated|unknown licen", None, NOT_STATED),
    (r"by-nc-sa", "cc-by-nc-sa-4.0", NON_COMMERCIAL_SHARE_ALIKE),
    (r"by-nc-nd", "cc-by-nc-nd-4.0", NON_COMMERCIAL),
    (r"by-nc", "cc-by-nc-4.0", NON_COMMERCIAL),
    (r"by-sa", "cc-by-sa-4.0", SHARE_ALIKE),
    (r"cc[ -]by", "cc-by-4.0", ATTRIBUTION),
    (r"cc0", "cc0-1.0", PERMISSIVE),
    (r"apache", "apache-2.0", PERMISSIVE),
    (r"\bmit\b", "mit", PERMISSIVE),
)


def classify(text: str) -> Licence:
    """The registry's licence text as a Hub identifier and a restriction; unrecognised text is `not stated`."""
    low = re.sub(r"\s+", " ", text.lower()).replace("cc by ", "cc-by ").replace("cc by-", "cc-by-")
    for pattern, hub_id, restriction in _RULES:
        if re.search(pattern, low):
            return Licence(text, hub_id, restriction)
    return Licence(text, None, NOT_STATED, recognised=False)


@dataclass(frozen=True)
class CardLicence:
    """The card's YAML licence fields and the sentence that explains them."""

    license: str
    license_name: str | None
    license_link: str | None
    summary: str                                   # one line: the most restrictive terms present, by source
    restrictive: tuple[tuple[str, tuple[str, ...]], ...]   # (restriction, sources), most restrictive first


def card_licence(contributing: Sequence[tuple[str, str]], link: str = "README.md") -> CardLicence:
    """`contributing`: (source, registry licence text) of every source with rows in the set.

    One Hub identifier shared by every contributing source becomes `license: <id>`. Otherwise `license: other`
    with `license_name: mixed-source-licences` and a link to the card's own licence table (`link`), because the
    set's rows keep their sources' terms and no single identifier states them."""
    by_restriction: dict[str, list[str]] = {}
    ids = set()
    for source, text in contributing:
        lic = classify(text)
        by_restriction.setdefault(lic.restriction, []).append(source)
        ids.add(lic.hub_id)
    restrictive = tuple((r, tuple(sorted(by_restriction[r]))) for r in RESTRICTION_ORDER
                        if r in by_restriction and r not in (PERMISSIVE, ATTRIBUTION))
    if not contributing:
        return CardLicence("unknown", None, None, "no source contributed rows", ())
    if len(ids) == 1 and None not in ids:
        (only,) = ids
        summary = (f"every contributing source is {only}" + ("" if not restrictive else
                   "; " + "; ".join(f"{r}: {', '.join(s)}" for r, s in restrictive)))
        return CardLicence(only, None, None, summary, restrictive)
    parts = [f"{r}: {', '.join(s)}" for r, s in restrictive]
    summary = ("mixed: each row keeps its source's terms. Most restrictive first — " + "; ".join(parts)
               if parts else "mixed permissive/attribution licences: each row keeps its source's terms")
    return CardLicence("other", "mixed-source-licences", link, summary, restrictive)


def languages_present(counts: Iterable[tuple[str | None, int]]) -> list[str]:
    """ISO 639-1 codes with at least one row, most rows first (the card's `language`)."""
    totals: dict[str, int] = {}
    for lang, n in counts:
        if lang and n > 0 and re.fullmatch(r"[a-z]{2,3}", lang):
            totals[lang] = totals.get(lang, 0) + n
    return [lang for lang, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
