"""Domain labels for R1-trace clusters: the classification prompt, a robust answer parser, and the
majority vote over a cluster's nearest prompts. Pure (no Dagster, no model).

The recipe keeps the R1 traces whose prompts fall in clusters labelled Medical or Biology. Each cluster is
labelled by classifying the 10 prompts nearest its centroid into one domain of a fixed list and taking
the majority.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from iimed_assets.core.llm import UNKNOWN_LABEL, ChoiceTask, OutputSpec, parse_json_answer

DOMAINS = (
    "Medical", "Biology", "Chemistry", "Physics", "Mathematics", "Computer Science", "Engineering",
    "Economics", "Law", "Psychology", "History", "Philosophy", "Literature", "Other",
)
KEEP_DOMAINS = frozenset({"Medical", "Biology"})
UNKNOWN = UNKNOWN_LABEL
VOTERS_PER_CLUSTER = 10
MAX_PROMPT_CHARS = 600  # the opening of a question shows its domain

# Words a model writes instead of the exact label; matched as whole words, case-insensitive.
SYNONYMS = {
    "medicine": "Medical", "medical science": "Medical", "health": "Medical", "healthcare": "Medical",
    "clinical": "Medical", "clinical medicine": "Medical", "pharmacology": "Medical", "nursing": "Medical",
    "anatomy": "Medical", "physiology": "Medical", "pathology": "Medical", "dentistry": "Medical",
    "biological": "Biology", "biological sciences": "Biology", "genetics": "Biology", "biochemistry": "Biology",
    "molecular biology": "Biology", "ecology": "Biology", "microbiology": "Biology",
    "chemical": "Chemistry", "organic chemistry": "Chemistry",
    "math": "Mathematics", "maths": "Mathematics", "mathematical": "Mathematics", "algebra": "Mathematics",
    "geometry": "Mathematics", "calculus": "Mathematics", "statistics": "Mathematics", "arithmetic": "Mathematics",
    "programming": "Computer Science", "coding": "Computer Science", "computer": "Computer Science",
    "software": "Computer Science", "computing": "Computer Science", "cs": "Computer Science",
    "economic": "Economics", "finance": "Economics", "business": "Economics", "accounting": "Economics",
    "legal": "Law", "jurisprudence": "Law", "psychological": "Psychology", "historical": "History",
    "philosophical": "Philosophy", "ethics": "Philosophy", "literary": "Literature", "physical": "Physics",
    "engineering": "Engineering",
}
_ALL_NAMES = sorted({**{d.lower(): d for d in DOMAINS}, **SYNONYMS}.items(), key=lambda kv: -len(kv[0]))
_NAME_RE = re.compile(r"\b(" + "|".join(re.escape(name) for name, _ in _ALL_NAMES) + r")\b", re.IGNORECASE)
_NAME_TO_LABEL = {name: label for name, label in _ALL_NAMES}
_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_RE = re.compile(r"(?:domain|answer|label|category)\s*(?:is)?\s*[:：\-]\s*\**\s*([^\n]*)", re.IGNORECASE)

SYSTEM = "You classify questions by academic domain. Reply with the domain name only."
SYSTEM_STRUCTURED = "You classify questions by academic domain. Reply with a JSON object only."
# The constrained answer: one label of the list, nothing else.
DOMAIN_SPEC = OutputSpec.of("domain", {
    "type": "object", "properties": {"domain": {"type": "string", "enum": list(DOMAINS)}},
    "required": ["domain"], "additionalProperties": False})


def _clip(prompt: str) -> str:
    text = " ".join(prompt.split())
    return text[:MAX_PROMPT_CHARS] + " …" if len(text) > MAX_PROMPT_CHARS else text


def classification_messages(prompt: str, structured: bool = False) -> list[dict[str, str]]:
    """Chat messages asking for one domain of DOMAINS; the prompt is clipped and fenced. `structured`: the
    answer is the JSON object of DOMAIN_SPEC (the backend enforces it)."""
    options = ", ".join(DOMAINS)
    # Question first, instructions last: small models (SmolLM2-135M) answer the question itself when the
    # instructions come first (measured: 0/8 vs 6/8 MedQA questions labelled Medical).
    form = '{"domain": "<name>"}' if structured else '"Domain: <name>"'
    return [
        {"role": "system", "content": SYSTEM_STRUCTURED if structured else SYSTEM},
        {"role": "user", "content": f"<question>\n{_clip(prompt)}\n</question>\n\nWhich domain does the question "
                                    f"above belong to? Choose exactly one of: {options}. Answer in the form {form}."},
    ]


def parse_domain(text: str | None, structured: bool = False) -> str:
    """The domain an answer names, or UNKNOWN.

    Reasoning in <think> is ignored. Structured: the answer must be DOMAIN_SPEC's JSON object with a label of
    the list. Free text: an explicit "Domain: X" wins; otherwise the first domain name or synonym in the answer
    counts. An answer naming nothing on the list is UNKNOWN.
    """
    if not text:
        return UNKNOWN
    if structured:
        value = (parse_json_answer(text) or {}).get("domain")
        return value if value in DOMAINS else UNKNOWN
    body = _THINK_RE.sub(" ", text).strip()
    for candidate in [m.group(1) for m in _ANSWER_RE.finditer(body)] + [body]:
        match = _NAME_RE.search(candidate)
        if match:
            return _NAME_TO_LABEL[match.group(1).lower()]
    return UNKNOWN


@dataclass(frozen=True)
class Vote:
    label: str
    votes: dict[str, int]  # label -> count, unknown included
    agreement: float  # share of voters that chose the winning label
    voters: int
    tie_break: str  # "" when there was no tie


def majority_vote(labels_nearest_first: list[str]) -> Vote:
    """The most frequent known label. A tie goes to the tied label held by the prompt nearest the centroid
    (labels arrive nearest first); the tie and how it was broken are recorded. All unknown → UNKNOWN."""
    votes = Counter(labels_nearest_first)
    voters = len(labels_nearest_first)
    known = {label: n for label, n in votes.items() if label != UNKNOWN}
    if not known:
        return Vote(UNKNOWN, dict(votes), 0.0, voters, "")
    top = max(known.values())
    tied = [label for label, n in known.items() if n == top]
    tie_break = ""
    if len(tied) == 1:
        winner = tied[0]
    else:
        winner = next(label for label in labels_nearest_first if label in tied)
        tie_break = f"tie {'/'.join(sorted(tied))} at {top} votes → {winner} (nearest prompt)"
    return Vote(winner, dict(votes), top / voters, voters, tie_break)


def keep(label: str) -> bool:
    return label in KEEP_DOMAINS


# MMLU subjects that count as medical/biology in the quality benchmark (everything else is "other").
MMLU_MEDICAL_BIOLOGY = frozenset({
    "anatomy", "clinical_knowledge", "college_medicine", "professional_medicine", "medical_genetics",
    "nutrition", "virology", "human_aging", "college_biology", "high_school_biology",
})


# ---- mixed clusters: per-prompt labels -------------------------------------------------------------------------

def keep_share(labels: list[str]) -> float | None:
    """Share of the known votes that are Medical/Biology; None when no vote is known."""
    known = [label for label in labels if label != UNKNOWN]
    return sum(keep(label) for label in known) / len(known) if known else None


def is_mixed(labels: list[str]) -> bool:
    """The voters disagree on keep vs drop: at least one known Medical/Biology vote and one known other vote.
    The cluster's majority label then decides wrongly for part of its prompts."""
    share = keep_share(labels)
    return share is not None and 0.0 < share < 1.0


def select_mixed_for_per_prompt(mixed: list[tuple[int, float, int, int]], budget_calls: float) -> list[int]:
    """Which mixed clusters get every prompt classified, within a budget of extra LLM calls.

    mixed: (cluster_id, keep_share, size, voters). The most evenly split clusters come first (their majority
    is wrong for the most prompts), then the smaller ones (cheaper); a cluster is taken only if its extra calls
    (size - voters) still fit in the budget, so the budget is never exceeded."""
    order = sorted(mixed, key=lambda m: (-min(m[1], 1 - m[1]), m[2], m[0]))
    chosen, spent = [], 0
    for cluster_id, _, size, voters in order:
        extra = max(0, size - voters)
        if spent + extra <= budget_calls:
            chosen.append(cluster_id)
            spent += extra
    return sorted(chosen)


# ---- the task, for any classifier -------------------------------------------------------------------------------

def _domain_task() -> ChoiceTask:
    from iimed_assets.core.domain_exemplars import EXEMPLARS

    return ChoiceTask(name="domain", labels=DOMAINS, spec=DOMAIN_SPEC, render=classification_messages,
                      parse=parse_domain, exemplars=EXEMPLARS)


DOMAIN_TASK = _domain_task()


def vote_clusters(labels_by_cluster: dict[int, list[str]], sizes: dict[int, int],
                  per_prompt_budget_calls: float) -> tuple[list[dict], set[int], int]:
    """Label every cluster from its voters' labels (nearest first).

    Returns (one row per cluster: domain, keep, agreement, voters, votes, tie_break, size, mixed, per_prompt;
    the mixed clusters chosen for per-prompt labels within the budget; how many clusters were mixed)."""
    mixed = [(cid, keep_share(labels), int(sizes.get(cid, 0)), len(labels))
             for cid, labels in sorted(labels_by_cluster.items()) if is_mixed(labels)]
    refined = set(select_mixed_for_per_prompt(mixed, per_prompt_budget_calls))
    mixed_ids = {m[0] for m in mixed}
    rows = []
    for cluster_id, labels in sorted(labels_by_cluster.items()):
        vote = majority_vote(labels)
        rows.append({"cluster_id": cluster_id, "domain": vote.label, "keep": keep(vote.label),
                     "agreement": vote.agreement, "voters": vote.voters, "votes": vote.votes,
                     "tie_break": vote.tie_break, "size": int(sizes.get(cluster_id, 0)),
                     "mixed": cluster_id in mixed_ids, "per_prompt": cluster_id in refined})
    return rows, refined, len(mixed)
