"""The source registry: one entry per source named on the II-Medical-Reasoning-SFT card, plus the
evaluation sets used for decontamination. Partition keys are the entry names.

Each entry says where the source lives on the Hugging Face hub (id, config, split, `data_files`, or the
files our own readers stream), how a native hub record becomes sample rows (an optional record adapter
from `core.adapters`, then a `FieldMap`), which recipe section it feeds, its licence, its real size, which
share of rows must carry reasoning / options / a gold answer / a response (`expects`), and which slices of
the bundled sample stand in for it offline (with their own layouts and `sample_expects`).

Every hub layout was read from the dataset's card, its file tree or the code that built it; the hub itself
is not reachable from the build machine. `evidence` cites the source of each schema next to the entry, with
a confidence (VERIFIED = read in the card / file tree / generating code; INFERRED = consistent with several
users of the set but not read in the card). Each hub entry has a fixture that reproduces its file tree
(iimed_assets_tests/fixtures/hub), loaded through the same code as the hub, and `iimed-assets sources
--probe` reads the first rows of the real thing before a long run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from iimed_assets.core.normalize import FieldMap


@dataclass(frozen=True)
class SampleSlice:
    """Rows [start, stop) of one bundled JSONL file, read with its own field map."""

    path: str  # relative to iimed_assets/sources/sample/
    fields: FieldMap
    start: int = 0
    stop: int | None = None


READERS = ("datasets", "json_array", "jsonl")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    section: str
    title: str
    hf_id: str | None
    fields: FieldMap  # the hub record (after `adapter`) -> sample row
    licence: str
    evidence: str  # where the hub layout comes from (card / generating code / file tree), with a confidence
    config: str | tuple[str, ...] | None = None
    split: str = "train"
    # reader "datasets": load_dataset(hf_id, config, data_files=..., split=...); data_files is a pattern, a
    # tuple of patterns, or {split: pattern}. Readers "json_array" / "jsonl": our own streaming readers over
    # `files` (repo paths), for files `datasets` cannot read as records or whose types vary row to row.
    reader: str = "datasets"
    data_files: str | tuple[str, ...] | Mapping[str, str] | None = None
    files: tuple[str, ...] = ()
    adapter: str | None = None  # a core.adapters name: native record -> record(s) for `fields`
    sample: tuple[SampleSlice, ...] = ()
    sample_note: str = ""
    # Real size on the hub (after the entry's own `where` filter), the basis of that number, and the
    # tolerance of the row-count check. None = unknown, said in `expected_rows_basis`.
    expected_rows: int | None = None
    expected_rows_basis: str = ""
    rows_tolerance: float = 0.1
    # What the card published for this source (prompts used), for comparison with a run (issue 18).
    published_rows: int | None = None
    # Minimum share of written rows carrying each coverage field (core.coverage.FIELDS), for the hub layout
    # (hub, hub mirror, local file in the hub layout) and for the bundled stand-ins.
    expects: tuple[tuple[str, float], ...] = ()
    sample_expects: tuple[tuple[str, float], ...] = ()
    # Exact copies are ledgered either way; a share above this means the id key is wrong (MedReason's
    # id_in_dataset repeats across its 7 source sets), so the partition is blocked.
    max_duplicate_share: float = 0.05
    notes: str = ""

    @property
    def configs(self) -> tuple[str | None, ...]:
        if isinstance(self.config, tuple):
            return self.config
        return (self.config,)

    def expectations(self, hub_layout: bool) -> dict[str, float]:
        return dict(self.expects if hub_layout else self.sample_expects)


def expect(**shares: float) -> tuple[tuple[str, float], ...]:
    """`expect(reasoning=0.9, gold=0.95)` -> the frozen form SourceSpec keeps."""
    return tuple(shares.items())


# Declared floors. An R1-trace set whose reasoning share is below 0.9, or an MCQ set whose options or gold
# share is below 0.95, is mapped wrong (or truncated), not just noisy.
R1_TRACE = expect(reasoning=0.9, response=0.9)
MCQ = expect(options=0.95, gold=0.95)

# The card's published figures (II-Medical-Reasoning-SFT dataset card, "Dataset Curation", read at
# https://huggingface.co/datasets/Intelligent-Internet/II-Medical-Reasoning-SFT/blob/main/README.md):
# the total, the sections that have a count, and per-source prompt counts in `SourceSpec.published_rows`.
# Sections 1 and 3 have no published count; together they are 2,197,741 - 873,497 - 1,025,903 = 298,341.
PUBLISHED_TOTAL = 2_197_741
PUBLISHED_SECTIONS: dict[str, int | None] = {
    "public_reasoning": None,
    "qa_seed": 873_497,  # "Synthetic Medical QA Data with Qwen3-235B-A22B (873,497 samples)"
    "r1_traces": None,
    "instruct": 1_025_903,  # "General Medical & Instruction Following Dataset (1,025,903 samples)"
}
PUBLISHED_SECTIONS_1_AND_3 = PUBLISHED_TOTAL - 873_497 - 1_025_903
PUBLISHED_CITATION = ("Intelligent-Internet/II-Medical-Reasoning-SFT dataset card: 'The training dataset comprises "
                      "2,197,741 samples'; section counts and per-source prompt counts from its 'Dataset Curation' "
                      "section (https://huggingface.co/datasets/Intelligent-Internet/II-Medical-Reasoning-SFT)")

# Shared maps for the bundled files (their native layout, see each folder's SOURCE.md).
_O1_TRACE = FieldMap(prompt="Question", reasoning="Complex_CoT", response="Response",
                     gold_answer="Ground-True Answer", meta=("answer_idx",))
_R1_TRACE = FieldMap(id="realidx", prompt="question", options="options", response="completion",
                     gold_answer="answer_idx", gold_format="letter", meta=("predicted_answer", "subject"))
_GSM8K = FieldMap(prompt="question", response="answer")
_MATH500 = FieldMap(id="unique_id", prompt="problem", response="solution", gold_answer="answer",
                    meta=("subject", "level"))
_MBPP = FieldMap(id="task_id", prompt="text", response="code")
_HUMANEVAL = FieldMap(id="task_id", prompt="prompt", response="canonical_solution")
_ARC = FieldMap(id="id", prompt="question.stem", options="question.choices", gold_answer="answerKey",
                gold_format="letter")
_MMLU_FLAT = FieldMap(prompt="question", options=("A", "B", "C", "D"), gold_answer="answer",
                      gold_format="letter", meta=("subject",))
_CHATDOCTOR = FieldMap(prompt="input", system="instruction", gold_answer="output")
_MEDQUAD = FieldMap(id="qid", prompt="question", gold_answer="answer", meta=("source", "focus", "qtype", "url"))
# Self-BioRAG's `id` is a task id shared by every row, not a row id: rows are keyed by file line.
_SELFBIORAG_MEDQA = FieldMap(prompt="instances.input", labeled_prompt=True, options_in_prompt=True,
                             gold_answer="instances.output", gold_format="option_text")
_SELFBIORAG_MEDMCQA = FieldMap(prompt="instances.input", labeled_prompt=True, options_in_prompt=True,
                               gold_answer="instances.output", gold_format="answer_tag",
                               meta=("gpt4_explanation",))
_SELFBIORAG_PUBMEDQA = FieldMap(prompt="instances.input", labeled_prompt=True,
                                gold_answer="instances.output", meta=("gpt4_explanation",))
_SELFBIORAG_OPEN = FieldMap(prompt="instances.input", labeled_prompt=True,
                            gold_answer="instances.output", meta=("title",))
_MCQ_DICT = FieldMap(id="realidx", prompt="question", options="options", options_in_prompt=True,
                     gold_answer="answer_idx", gold_format="letter", meta=("subject", "meta_info", "category", "src"))
_MEDBULLETS = FieldMap(id="link", prompt="question", options=("opa", "opb", "opc", "opd", "ope"),
                       gold_answer="answer_idx", gold_format="letter")

# Hub-side maps shared by several entries.
_APOLLO_PAIR = FieldMap(id="pair_id", conversation="messages", gold_answer="answer", meta=("pair", "pairs"))
_MEDBULLETS_HUB = FieldMap(id="id", prompt="question", options="options", gold_answer="answer_idx", gold_format="letter")
_MEDBULLETS_EVIDENCE = ("zou-lab/BioMed-R1-Eval commit fbbbc9c VERIFIED: configs medbullets_op4 / medbullets_op5 -> "
                        "<config>/test-* parquet, 308 rows each; columns id, question, answer, options (a string), "
                        "answer_idx, dataset_name, ... (hub file tree and viewer at that commit). The exact options "
                        "string format is not quoted anywhere: parsed as JSON / Python literal / 'A. …' lines. "
                        "Confidence: medium.")

R1 = "r1_medical_traces/"


def _s(path: str, fm: FieldMap, start: int = 0, stop: int | None = None) -> SampleSlice:
    return SampleSlice(path=path, fields=fm, start=start, stop=stop)


_GT_FIELDS = dict(prompt="question", reasoning="model_reasoning", response="model_answer", gold_answer="reference_answer",
                  meta=("question_id", "task", "question_source", "model_name"))
# GeneralThought's `task` is a fine-grained subject label ("General Chemistry", "Engineering", ...); its full value
# list is not published. The medical part is selected by subject words, case-insensitive; every other value is
# ledgered as out_of_scope with the value in the detail, so the first probe shows what was left out.
_GT_MEDICAL_TASKS = re.compile(
    r"\b(medic|health|clinic|anatom|physiol|patholog|pharmac|nurs|surg|diagnos|disease|immun|neuro|cardio|oncol|"
    r"psychiat|dent|epidemiol|nutrition|biolog|genetic|biochem|microbio|virol)", re.I)
_GT_EVIDENCE = ("columns VERIFIED from code that reads GeneralReasoning/GeneralThought-430K (allenai open-instruct "
                "convert_general_thought_to_tulu_thinker.py: question, model_reasoning, model_answer, reference_answer; "
                "marin PR #876: model_reasoning = the text inside <think>); one default config, split train (VERIFIED "
                "from load_dataset(..., split='train') calls); `task` values UNKNOWN beyond 'Engineering', "
                "'General Chemistry' (INFERRED fine-grained subjects). Repo reportedly renamed to "
                "RJT1990/GeneralThoughtArchive (hub redirects). Confidence: medium.")
_M_R1 = "FreedomIntelligence/Medical-R1-Distill-Data"
_MEDQA_MIRROR = ("fzkuji/MedQA: a parquet conversion of bigbio/med_qa with the same config names (PR #1 'Convert dataset "
                 "to Parquet', files <config>/{train,validation,test}-00000-of-00001.parquet, VERIFIED "
                 "https://huggingface.co/datasets/fzkuji/MedQA/discussions/1); `source` schema from the bigbio script "
                 "(question, answer, answer_idx, meta_info, options = list of {key, value}, VERIFIED "
                 "bigscience-workshop/biomedical bigbio/hub/hub_repos/med_qa/med_qa.py). bigbio/med_qa itself is a "
                 "loading-script repo that datasets >= 4 refuses. Confidence: high for the schema, medium for the "
                 "mirror (one maintainer: pin a revision).")
_APOLLO = "FreedomIntelligence/ApolloCorpus"
_APOLLO_EVIDENCE = ("file tree VERIFIED https://huggingface.co/datasets/FreedomIntelligence/ApolloCorpus/tree/main/train "
                    "(pretrain/medicalBook_en_qa.json 916 MB, pretrain/medicalGuideline_en_qa.json 164 MB, "
                    "sft/medicalPatient_en.json 487 MB; no train/qa/ folder); item shape VERIFIED from the Apollo "
                    "README ('data_type==qa: list of qa pairs (list of string)') and its trainer "
                    "(src/process/prepare/data_process_train_qwen.py: even index = user, odd = assistant, one "
                    "conversation per item); the card's configs cover only *_text.json ('the Viewer doesn't support "
                    "JSON with lists of lists'), so the files are read by our streaming JSON-array reader. "
                    "Confidence: high.")
_AM_R1_EVIDENCE = ("card VERIFIED (a copy of the README: configs am_0.5M -> am_0.5M.jsonl.zst, am_0.9M -> "
                   "am_0.9M.jsonl.zst, with messages: [{role, content, info: {answer_content, reference_answer, "
                   "source, test_case: {test_code, test_entry_point}, think_content}}]; 'content: Follows <think> "
                   "reasoning process </think> <answer> solution </answer> format'; the 0.9M file's responses are "
                   "source am-0309). The nested types vary row to row (test_case null / struct; a hub discussion "
                   "'error loading the 0.9M subset'), so the zstd JSONL is read line by line by our reader (5.3 GB "
                   "instead of the 34 GB plain copies). Confidence: high.")

SOURCES: tuple[SourceSpec, ...] = (
    # ---- section 1: public medical reasoning sets, taken as they are -------------------------------
    SourceSpec(
        name="general_thought_medical", section="public_reasoning", title="GeneralThought-430K (medical part)",
        hf_id="GeneralReasoning/GeneralThought-430K", licence="MIT",
        fields=FieldMap(**_GT_FIELDS, where=(("task", _GT_MEDICAL_TASKS),)),
        evidence=_GT_EVIDENCE,
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 0, 50),),
        sample_note="HuatuoGPT-o1 demo traces (question -> Complex_CoT -> Response)",
        expected_rows=None, expected_rows_basis="unknown: the medical share of 430,788 rows depends on the `task` values",
        expects=expect(reasoning=0.9, response=0.9), sample_expects=R1_TRACE,
        notes="Only rows whose `task` names a medical or biological subject are in scope; the rest are ledgered as "
              "out_of_scope with their task. One question appears once per model (question_id is not a row id).",
    ),
    SourceSpec(
        name="medical_r1_distill", section="public_reasoning", title="Medical-R1-Distill-Data",
        hf_id=_M_R1, config="en", licence="Apache-2.0",
        fields=FieldMap(prompt="question", reasoning="reasoning (reasoning_content)", response="response (content)"),
        evidence=("card YAML VERIFIED (huggingface.co/datasets/FreedomIntelligence/Medical-R1-Distill-Data README: "
                  "configs: en -> medical_r1_distill_sft.json); one JSON array of {question, 'reasoning "
                  "(reasoning_content)', 'response (content)'} VERIFIED by >= 5 independent loaders. Confidence: high."),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 50, 100),),
        sample_note="HuatuoGPT-o1 demo traces (same authors, same shape)",
        expected_rows=22_000, expected_rows_basis="hub listing '22k' (rounded)",
        expects=R1_TRACE, sample_expects=R1_TRACE,
    ),
    SourceSpec(
        name="medical_r1_distill_zh", section="public_reasoning", title="Medical-R1-Distill-Data-Chinese",
        hf_id=_M_R1 + "-Chinese", config="zh", licence="Apache-2.0",
        fields=FieldMap(prompt="question", reasoning="reasoning (reasoning_content)", response="response (content)",
                        language="zh"),
        evidence=("card YAML VERIFIED (commit 52c8236: configs: zh -> medical_r1_distill_sft_Chinese.json); same three "
                  "keys as the English set VERIFIED from a loader of the Chinese repo. Confidence: high."),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 100, 150),),
        sample_note="no Chinese medical traces are available offline: English HuatuoGPT-o1 demo traces stand in",
        expected_rows=17_000, expected_rows_basis="hub listing '17k' (rounded)",
        expects=R1_TRACE, sample_expects=R1_TRACE,
    ),
    SourceSpec(
        name="m23k", section="public_reasoning", title="UCSC-VLAA/m23k-tokenized",
        hf_id="UCSC-VLAA/m23k-tokenized", licence="not stated on the card (m1 code: Apache-2.0)",
        fields=FieldMap(prompt="prompt", options_in_prompt=True, reasoning="reasoning",
                        response="distilled_answer_string", gold_answer="answer_letter", gold_format="letter",
                        meta=("source", "answer_string")),
        evidence=("columns VERIFIED from UCSC-VLAA/m1 src/analyse/stats_data_source_domain.ipynb output ('answer_idx', "
                  "'source', 'metadata', 'prompt', 'answer_letter', 'answer_string', 'reasoning', "
                  "'distilled_answer_string', 'text'; num_rows 23493); prompt = question + '\\n' + 'A. …' option lines "
                  "(m1 src/collect_data/*.py); pushed with push_to_hub (default config, split train). Confidence: high."),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 150, None),),
        sample_note="HuatuoGPT-o1 demo traces",
        expected_rows=23_493, expected_rows_basis="m1 notebook output num_rows", rows_tolerance=0.02,
        expects=expect(reasoning=0.9, response=0.9, options=0.95, gold=0.95), sample_expects=expect(reasoning=0.9, response=0.9, gold=0.95),
        notes="answer_letter refers to m1's own shuffled options in `prompt`, not to the original set's letters.",
    ),
    # ---- section 2: seeds for rejection sampling ---------------------------------------------------
    SourceSpec(
        name="medmcqa", section="qa_seed", title="MedMCQA (train)", hf_id="openlifescienceai/medmcqa",
        licence="Apache-2.0 (hub card)",
        fields=FieldMap(id="id", prompt="question", options=("opa", "opb", "opc", "opd"), gold_answer="cop",
                        gold_format="index0", meta=("subject_name", "topic_name", "exp")),
        evidence=("card YAML VERIFIED (huggingface.co/datasets/openlifescienceai/medmcqa README: id, question, opa-opd, "
                  "cop ClassLabel a-d (0-based), choice_type, exp, subject_name, topic_name; data/train-*, "
                  "data/validation-*, data/test-*; train 182,822 / validation 4,183 / test 6,150 with cop = -1). "
                  "Confidence: high."),
        sample=(_s("selfbiorag/medmc_qa_train_gpt4.jsonl", _SELFBIORAG_MEDMCQA, 0, 6),),
        sample_note="Self-BioRAG's MedMCQA train rows (instruction format; options parsed from the text)",
        expected_rows=182_822, expected_rows_basis="card num_examples (train)", rows_tolerance=0.02,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medqa", section="qa_seed", title="MedQA USMLE (train, 5 options)", hf_id="fzkuji/MedQA",
        config="med_qa_en_source", licence="MIT (MedQA GitHub); 'unknown' on the mirror's card",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter",
                        meta=("meta_info",)),
        evidence=_MEDQA_MIRROR + " The card links bigbio/med_qa without a config: its default config is "
                 "med_qa_en_source (5 options), which this entry reads.",
        sample=(_s("selfbiorag/med_qa_train.jsonl", _SELFBIORAG_MEDQA, 0, 6),),
        sample_note="Self-BioRAG's MedQA train rows (gold answer given as option text)",
        expected_rows=10_178, expected_rows_basis="bigbio/med_qa en train (MedQA paper; mirror bigbio_qa card)",
        rows_tolerance=0.02, expects=MCQ, sample_expects=MCQ,
        notes="bigbio/med_qa (the card's link) is a loading script; fzkuji/MedQA is its parquet conversion.",
    ),
    SourceSpec(
        name="pubmedqa_unlabeled", section="qa_seed", title="PubMedQA pqa_unlabeled", hf_id="qiaojin/PubMedQA",
        config="pqa_unlabeled", licence="MIT",
        fields=FieldMap(id="pubid", prompt="question", context="context", meta=("long_answer",)),
        evidence=("card YAML VERIFIED (configs pqa_labeled / pqa_unlabeled / pqa_artificial -> <config>/train-*, "
                  "parquet since HF commit 5494201); context = struct of lists {contexts, labels, meshes} VERIFIED "
                  "(m1 src/collect_data/pubmedqa.py joins x['context']['contexts']); pqa_unlabeled has no "
                  "final_decision; 61,249 rows VERIFIED. Confidence: high."),
        sample=(_s("selfbiorag/pubmed_qa_train_gpt4.jsonl", _SELFBIORAG_PUBMEDQA, 0, 6),),
        sample_note="Self-BioRAG's PubMedQA train-style rows (CONTEXT/QUESTION text, yes/no/maybe label)",
        expected_rows=61_249, expected_rows_basis="card num_examples", rows_tolerance=0.02,
        expects=expect(context=0.95), sample_expects=expect(context=0.95, gold=0.95),
        notes="No gold label: the seed's reference is `long_answer` (kept in meta, never in the prompt).",
    ),
    SourceSpec(
        name="medreason", section="qa_seed", title="MedReason", hf_id="UCSC-VLAA/MedReason", licence="Apache-2.0",
        data_files="ours_quality_33000.jsonl", adapter="medreason",
        fields=FieldMap(id=("dataset_name", "id_in_dataset"), prompt="question", options="options",
                        gold_answer="answer", meta=("dataset_name", "answer_text")),
        evidence=("card VERIFIED (license apache-2.0, no configs; one file ours_quality_33000.jsonl read by "
                  "load_dataset(..., split='train'); 32,682 pairs); columns dataset_name, id_in_dataset, question, "
                  "answer, reasoning, options VERIFIED from UCSC-VLAA/MedReason "
                  "src/data_generation/data/utils.py::failed_data_filtering; options = one 'Answer Choices:\\nA. …' "
                  "string and per-source answer formats (MedMCQA '. Explanation: …' tail, PubMedQA 'The final "
                  "decision is: …', MedXpertQA '(X) …') VERIFIED from src/data_generation/data/dataset.py. "
                  "Confidence: high."),
        sample=(_s("medical_o1_demo/demo_data.jsonl",
                   FieldMap(prompt="Open-ended Verifiable Question", gold_answer="Ground-True Answer"), 0, 6),),
        sample_note="HuatuoGPT-o1 open-ended verifiable questions with ground-true answers (free-form)",
        expected_rows=32_682, expected_rows_basis="card ('a dataset of 32,682 question-answer pairs')",
        rows_tolerance=0.02, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
        notes="id_in_dataset repeats across its source sets: rows are keyed by dataset_name + id_in_dataset. Rows "
              "derived from MMLU / MedXpertQA test items are eval contamination by construction (decontam drops them).",
    ),
    # ---- section 3: public R1 traces, to be filtered to medical/biology ----------------------------
    SourceSpec(
        name="synthetic_1", section="r1_traces", title="PrimeIntellect SYNTHETIC-1 (SFT)",
        hf_id="PrimeIntellect/SYNTHETIC-1-SFT-Data", licence="Apache-2.0",
        fields=FieldMap(id="response_id", conversation="messages", meta=("problem_id", "task_type", "score")),
        evidence=("card YAML VERIFIED (aifasthub mirror of the README, rev e8d30e7: default config data/train-*, 17 "
                  "parquet shards; response_id, problem_id, task_type, score, messages list<{content, role}>; 894,086 "
                  "rows); reasoning inline in the assistant turn (INFERRED; genesys may omit the opening <think>, "
                  "which the normaliser accepts). Confidence: high for columns, medium for the think format."),
        sample=(_s("gsm8k/test.jsonl", _GSM8K, 0, 60), _s(R1 + "DeepSeek-R1-medqa-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="GSM8K math with worked solutions + DeepSeek-R1 MedQA traces",
        expected_rows=894_086, expected_rows_basis="card num_examples", rows_tolerance=0.02,
        expects=R1_TRACE, sample_expects=expect(reasoning=0.35, response=0.9),
    ),
    SourceSpec(
        name="general_thought_r1", section="r1_traces", title="GeneralThought-430K (all)",
        hf_id="GeneralReasoning/GeneralThought-430K", licence="MIT",
        fields=FieldMap(**_GT_FIELDS), evidence=_GT_EVIDENCE,
        sample=(_s("mmlu_all/test_other.jsonl", _MMLU_FLAT, 0, 120), _s("mmlu_all/test_stem.jsonl", _MMLU_FLAT, 0, 60)),
        sample_note="MMLU 'other' (incl. medical subjects) and STEM questions, labelled by subject",
        expected_rows=430_788, expected_rows_basis="third-party registry count (INFERRED); the card says 430K",
        expects=expect(reasoning=0.8, response=0.9), sample_expects=expect(options=0.95, gold=0.95),
        notes="Some rows hold only an o3-mini final answer (no reasoning): hence 0.8, not 0.9.",
    ),
    SourceSpec(
        name="am_deepseek_r1_distilled", section="r1_traces", title="AM-DeepSeek-R1-Distilled-1.4M",
        hf_id="a-m-team/AM-DeepSeek-R1-Distilled-1.4M", licence="CC BY-NC 4.0 (research use; UNVERIFIED tag)",
        reader="jsonl", files=("am_0.5M.jsonl.zst", "am_0.9M.jsonl.zst"), adapter="am_messages",
        fields=FieldMap(conversation="messages", gold_answer="reference_answer", meta=("source",)),
        evidence=_AM_R1_EVIDENCE,
        sample=(_s("mbpp/mbpp.jsonl", _MBPP, 0, 60), _s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 60, 100)),
        sample_note="MBPP code tasks + HuatuoGPT-o1 medical traces",
        expected_rows=1_400_000, expected_rows_basis="paper (arXiv 2503.19633: 0.5M + 0.9M), rounded",
        expects=R1_TRACE, sample_expects=expect(reasoning=0.35, response=0.9),
        notes="Both configs (am_0.5M + am_0.9M = the 1.4M set); answer tags are stripped.",
    ),
    SourceSpec(
        name="openthoughts2", section="r1_traces", title="OpenThoughts2-1M", hf_id="open-thoughts/OpenThoughts2-1M",
        licence="Apache-2.0", fields=FieldMap(conversation="conversations", meta=("source",)),
        evidence=("file tree VERIFIED (huggingface.co/datasets/open-thoughts/OpenThoughts2-1M/tree/main: data/"
                  "train-000NN-of-00038.parquet); conversations = [{from: user, value}, {from: assistant, value}] with "
                  "inline <think> VERIFIED from downstream cleaners; 1,143,205 rows (two downstream counts). "
                  "Confidence: high."),
        sample=(_s("math500/test.jsonl", _MATH500, 0, 60), _s(R1 + "DeepSeek-R1-mmlu-test_hard-zero_shot.jsonl", _R1_TRACE)),
        sample_note="MATH-500 problems with solutions + DeepSeek-R1 MMLU-medical traces",
        expected_rows=1_143_205, expected_rows_basis="two downstream counts", rows_tolerance=0.02,
        expects=R1_TRACE, sample_expects=expect(reasoning=0.5, response=0.9),
    ),
    SourceSpec(
        name="nemotron_science", section="r1_traces", title="Llama-Nemotron post-training (science)",
        hf_id="nvidia/Llama-Nemotron-Post-Training-Dataset", config="SFT", split="science", licence="CC BY 4.0",
        fields=FieldMap(conversation="input", response="output", meta=("generator", "reasoning", "version"),
                        where=(("reasoning", ("on",)),)),
        evidence=("card YAML VERIFIED (huggingface.co/datasets/nvidia/Llama-Nemotron-Post-Training-Dataset README: "
                  "config SFT, split science -> SFT/science/*.jsonl); columns input (list of {role, content}), output "
                  "(<think>…</think> answer), category, license, reasoning ('on'/'off'), generator, used_in_training, "
                  "version, system_prompt VERIFIED from a profiling report of SFT/science/science.jsonl; 708,920 rows "
                  "VERIFIED three ways. Confidence: high."),
        sample=(_s("arc/ARC-Challenge-Test.jsonl", _ARC, 0, 60),
                _s(R1 + "DeepSeek-R1-medxpertqa-r-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="ARC-Challenge science questions + DeepSeek-R1 MedXpertQA traces",
        expected_rows=708_920, expected_rows_basis="card / hub discussion #9 (all rows; 'reasoning off' rows are "
                                                   "ledgered as out_of_scope)",
        expects=R1_TRACE, sample_expects=expect(reasoning=0.35, options=0.95, gold=0.95),
        notes="Rows with reasoning 'off' carry no trace: ledgered as out_of_scope.",
    ),
    SourceSpec(
        name="dolphin_r1", section="r1_traces", title="dolphin-r1 (DeepSeek reasoning)",
        hf_id="cognitivecomputations/dolphin-r1", config="reasoning-deepseek", licence="Apache-2.0",
        fields=FieldMap(conversation="messages", reasoning="reasoning", response="answer", meta=("model",)),
        evidence=("card YAML VERIFIED (configs nonreasoning / reasoning-deepseek / reasoning-flash -> "
                  "dolphin-r1-<config>.jsonl); messages (prompt side only) + reasoning (no tags) + answer VERIFIED "
                  "from downstream readers of the raw JSONL. Confidence: high for columns, count rounded."),
        sample=(_s(R1 + "DeepSeek-R1-medmcqa-test_hard-zero_shot.jsonl", _R1_TRACE),
                _s(R1 + "QwQ-32B-medqa-test_hard-zero_shot.jsonl", _R1_TRACE)),
        sample_note="DeepSeek-R1 MedMCQA and QwQ-32B MedQA traces (incl. cut-off traces)",
        expected_rows=300_000, expected_rows_basis="card ('300k reasoning samples from DeepSeek-R1'), rounded",
        expects=R1_TRACE, sample_expects=expect(reasoning=0.9, response=0.65, options=0.95, gold=0.95),
    ),
    SourceSpec(
        name="r1_distill_sft", section="r1_traces", title="ServiceNow R1-Distill-SFT",
        hf_id="ServiceNow-AI/R1-Distill-SFT", config="v1", licence="CC BY-NC-SA 4.0",
        fields=FieldMap(id="id", conversation="reannotated_messages", meta=("source", "source_dataset")),
        evidence=("card YAML VERIFIED (rev 16e851e: configs v0 -> v0/train-*, v1 -> v1/train-* (52 shards); v1 columns id, "
                  "reannotated_assistant_content, source, reannotated_messages, messages, source_dataset, verified, "
                  "quality_metrics; v1 1,679,162 rows). reannotated_messages is the R1 conversation; `messages` is the "
                  "original one without reasoning. Confidence: high."),
        sample=(_s("humaneval/HumanEval.jsonl", _HUMANEVAL, 0, 60),
                _s(R1 + "DeepSeek-R1-pubmedqa-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40),
                _s(R1 + "DeepSeek-R1-medbullets-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="HumanEval code prompts + DeepSeek-R1 PubMedQA and MedBullets traces",
        expected_rows=1_679_162, expected_rows_basis="card num_examples (v1)", rows_tolerance=0.02,
        expects=R1_TRACE, sample_expects=expect(reasoning=0.5, response=0.9),
    ),
    # ---- section 4: general medical instructions (judged against the reference answer) -------------
    SourceSpec(
        name="apollo_textbook_qa", section="instruct", title="ApolloCorpus text-book QA",
        hf_id=_APOLLO, reader="json_array", files=("train/pretrain/medicalBook_en_qa.json",), licence="Apache-2.0",
        adapter="apollo_qa_pairs", fields=_APOLLO_PAIR, evidence=_APOLLO_EVIDENCE,
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 0, 6),),
        sample_note="MedQuAD (CancerGov) question/answer pairs",
        expected_rows=None, expected_rows_basis="unknown: the file's pair count is unpublished (the card used "
                                                "229,433 prompts)",
        published_rows=229_433, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
        notes="One item = one conversation [q1, a1, q2, a2, ...]: each pair is a row whose messages carry the turns "
              "before it.",
    ),
    SourceSpec(
        name="apollo_patient_qa", section="instruct", title="ApolloCorpus patient QA",
        hf_id=_APOLLO, reader="json_array", files=("train/sft/medicalPatient_en.json",), licence="Apache-2.0",
        adapter="apollo_qa_pairs", fields=_APOLLO_PAIR, evidence=_APOLLO_EVIDENCE,
        sample=(_s("chatdoctor/chatdoctor5k.jsonl", _CHATDOCTOR, 0, 6),),
        sample_note="ChatDoctor GenMedGPT-5k patient dialogues",
        expected_rows=None, expected_rows_basis="unknown: the file's pair count is unpublished (the card used "
                                                "276,079 prompts)",
        published_rows=276_079, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
        notes="GPT-written patient/doctor dialogues (Apollo src/process/openai_rewrite/patient_en): a pair's row keeps "
              "the earlier turns of its dialogue.",
    ),
    SourceSpec(
        name="apollo_guideline_qa", section="instruct", title="ApolloCorpus guideline QA",
        hf_id=_APOLLO, reader="json_array", files=("train/pretrain/medicalGuideline_en_qa.json",),
        licence="Apache-2.0", adapter="apollo_qa_pairs", fields=_APOLLO_PAIR, evidence=_APOLLO_EVIDENCE,
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 600, 606),),
        sample_note="MedQuAD guideline-style NIH answers",
        expected_rows=None, expected_rows_basis="unknown: the file's pair count is unpublished (the card used "
                                                "142,927 prompts)",
        published_rows=142_927, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
    ),
    SourceSpec(
        name="healthcaremagic", section="instruct", title="ChatDoctor HealthCareMagic-100k",
        hf_id="lavita/ChatDoctor-HealthCareMagic-100k", data_files="data/train-*",
        licence="not stated on the hub; ChatDoctor: academic research only",
        fields=FieldMap(prompt="input", system="instruction", gold_answer="output"),
        evidence=("file tree VERIFIED (commit 880de71: data/train-00000-of-00001-5e7cb295b9cff0bf.parquet, default "
                  "config, split train); columns instruction / input / output VERIFIED from downstream code; 112,165 "
                  "rows VERIFIED (hub viewer '112k', two downstream counts). Confidence: high."),
        sample=(_s("chatdoctor/chatdoctor5k.jsonl", _CHATDOCTOR, 100, 106),),
        sample_note="ChatDoctor GenMedGPT-5k (HealthCareMagic itself is not available offline)",
        expected_rows=112_165, expected_rows_basis="hub viewer / downstream counts", rows_tolerance=0.05,
        published_rows=215_647, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
        notes="The card's 215,647 is more than the set's 112,165 rows (no public 200k copy exists: the '200k' name "
              "was the same file); it cannot be unique prompts of this repo.",
    ),
    SourceSpec(
        name="evol_instruct_medical", section="instruct", title="Evol-Instruct medical (local file)",
        hf_id=None, licence="not public: supply your own copy",
        fields=FieldMap(prompt="instruction", gold_answer="output"),
        evidence=("not public: the card says '74,190 prompts from our Evol-Instruct medical dataset' with no link; no "
                  "Intelligent-Internet hub set matches (VERIFIED collection page). Layout expected of a local file: "
                  "JSONL/Parquet with instruction/output."),
        sample=(_s("selfbiorag/med_qa_train.jsonl",
                   FieldMap(prompt=("instruction", "instances.input"), gold_answer="instances.output"), 400, 406),),
        sample_note="Self-BioRAG MedQA instruction rows",
        expected_rows=None, expected_rows_basis="unknown: not public (the card used 74,190)",
        published_rows=74_190, expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
        notes="Not on the hub: set IIMED_SOURCE_EVOL_INSTRUCT_MEDICAL to a local JSONL/Parquet with instruction/output.",
    ),
    SourceSpec(
        name="am_qwen3_instruction_following", section="instruct", title="AM-Qwen3-Distilled (instruction following)",
        hf_id="a-m-team/AM-Qwen3-Distilled", licence="research use only (CC BY-NC 4.0 reading; UNVERIFIED tag)",
        reader="jsonl", files=("if.jsonl",), adapter="am_messages",
        fields=FieldMap(conversation="messages", gold_answer="reference_answer",
                        meta=("source", "category", "instruction_constrain")),
        evidence=("files code/if/math/multiturn/other/science.jsonl at the repo root VERIFIED from two downstream "
                  "download scripts; record {system, conversations: [{from: human|assistant, value, info}]} with "
                  "'<think>…</think><answer>…</answer>' and info.think_content / answer_content VERIFIED from the "
                  "shared-format card of a-m-team/AM-Thinking-v1-Distilled ('The datasets share the same format'). "
                  "if.jsonl's row count is UNKNOWN. Confidence: medium."),
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 1200, 1203),
                _s("selfbiorag/pubmed_qa_train_gpt4.jsonl", _SELFBIORAG_PUBMEDQA, 500, 503)),
        sample_note="MedQuAD answers + Self-BioRAG PubMedQA rows",
        expected_rows=None, expected_rows_basis="unknown: if.jsonl's size is unpublished (the card used 87,627)",
        published_rows=87_627, expects=R1_TRACE, sample_expects=expect(gold=0.95),
        notes="Only the instruction-following file (if.jsonl); the repo's other files are code/math/chat.",
    ),
    # ---- evaluation sets: decontamination references, never training rows -------------------------
    SourceSpec(
        name="medmcqa_validation", section="eval", title="MedMCQA validation", hf_id="openlifescienceai/medmcqa",
        split="validation", licence="Apache-2.0 (hub card)",
        fields=FieldMap(id="id", prompt="question", options=("opa", "opb", "opc", "opd"), gold_answer="cop",
                        gold_format="index0", meta=("subject_name",)),
        evidence="see medmcqa (same repo, split validation: 4,183 rows, card num_examples). Confidence: high.",
        sample=(_s("medmcqa/dev.jsonl", FieldMap(id="id", prompt="question", options_in_prompt=True,
                                                 gold_answer="label", gold_format="letter",
                                                 meta=("subject_name", "topic_name"))),),
        sample_note="complete dev set", expected_rows=4_183, expected_rows_basis="card num_examples",
        rows_tolerance=0.01, expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medqa_usmle_4opt", section="eval", title="MedQA USMLE test (4 options)", hf_id="fzkuji/MedQA",
        config="med_qa_en_4options_source", split="test", licence="MIT (MedQA GitHub)",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter"),
        evidence=_MEDQA_MIRROR,
        sample=(_s("medqa/test_4options.jsonl", _MCQ_DICT),), sample_note="complete test set", expected_rows=1_273,
        expected_rows_basis="MedQA US test (4_options), VERIFIED in the bigbio_qa config card", rows_tolerance=0.01,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medqa_usmle_5opt", section="eval", title="MedQA USMLE test (5 options)", hf_id="fzkuji/MedQA",
        config="med_qa_en_source", split="test", licence="MIT (MedQA GitHub)",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter"),
        evidence=_MEDQA_MIRROR,
        sample=(_s("medqa/test_5options.jsonl", _MCQ_DICT),), sample_note="complete test set", expected_rows=1_273,
        expected_rows_basis="MedQA US test", rows_tolerance=0.01, expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="pubmedqa_labeled", section="eval", title="PubMedQA PQA-L (incl. the 500-item test split)",
        hf_id="qiaojin/PubMedQA", config="pqa_labeled", licence="MIT",
        fields=FieldMap(id="pubid", prompt="question", context="context", gold_answer="final_decision"),
        evidence="see pubmedqa_unlabeled (pqa_labeled: 1,000 rows, adds final_decision). Confidence: high.",
        sample=(_s("pubmedqa/ori_pqal.jsonl", FieldMap(id="pmid", prompt="QUESTION", context="CONTEXTS",
                                                       gold_answer="final_decision", meta=("YEAR",))),),
        sample_note="all 1000 expert-labelled items", expected_rows=1_000, expected_rows_basis="card num_examples",
        rows_tolerance=0.01, expects=expect(context=0.95, gold=0.95), sample_expects=expect(context=0.95, gold=0.95),
    ),
    SourceSpec(
        name="mmlu_medical", section="eval", title="MMLU medical subjects (test)", hf_id="cais/mmlu",
        config=("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine"),
        split="test", licence="MIT",
        fields=FieldMap(prompt="question", options="choices", gold_answer="answer", gold_format="index0",
                        meta=("subject",)),
        evidence=("per-subject configs with test/validation/dev; question, subject, choices (list), answer ClassLabel "
                  "A-D (an int once loaded) VERIFIED from the schema-identical hails/mmlu_no_train card; test sizes "
                  "135+265+144+173+100+272 = 1,089 VERIFIED (MultiMedQA table). Confidence: high."),
        sample=(_s("mmlu_medical/test_released_1089.jsonl", _MCQ_DICT),), sample_note="released test (1089)",
        expected_rows=1_089, expected_rows_basis="sum of the six subjects' test splits", rows_tolerance=0.01,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="mmlu_pro_health", section="eval", title="MMLU-Pro health", hf_id="TIGER-Lab/MMLU-Pro", split="test",
        licence="MIT",
        fields=FieldMap(id="question_id", prompt="question", options="options", gold_answer="answer",
                        gold_format="letter", meta=("src",), where=(("category", ("health",)),)),
        evidence=("card YAML VERIFIED (rev 3b1f6c4: default config data/test-*, data/validation-*; question_id, "
                  "question, options list (up to 10), answer letter, answer_index, cot_content, category, src). The "
                  "test split changed size across revisions (12,187 -> 12,032). Confidence: high."),
        sample=(_s("mmlu_pro_health/test.jsonl", _MCQ_DICT),), sample_note="complete health category",
        expected_rows=818, expected_rows_basis="health category of the bundled copy (current revision UNVERIFIED)",
        rows_tolerance=0.05, expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medxpertqa_text", section="eval", title="MedXpertQA Text (test)", hf_id="TsinghuaC3I/MedXpertQA",
        config="Text", split="test", licence="MIT",
        fields=FieldMap(id="id", prompt="question", options="options", options_in_prompt=True, gold_answer="label",
                        gold_format="letter", meta=("medical_task", "body_system", "question_type")),
        evidence=("card YAML VERIFIED (rev f4e6fe7: config Text -> dev Text/dev.jsonl, test Text/test.jsonl); columns "
                  "id, question (with an 'Answer Choices: (A) …' block), options (dict A-J), label, medical_task, "
                  "body_system, question_type VERIFIED from MedReason's parser and the simwit/medxpertqa-text card "
                  "(test 2,450). Confidence: high."),
        sample=(_s("medxpertqa/text_reasoning_test.jsonl", _MCQ_DICT),
                _s("medxpertqa/text_understanding_test.jsonl", _MCQ_DICT)),
        sample_note="complete Text test set (Reasoning + Understanding)", expected_rows=2_450,
        expected_rows_basis="card / simwit copy num_examples", rows_tolerance=0.01, expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medbullets_op4", section="eval", title="MedBullets (4 options)", hf_id="zou-lab/BioMed-R1-Eval",
        config="medbullets_op4", split="test", licence="not stated (HanjieChen/ChallengeClinicalQA)",
        fields=_MEDBULLETS_HUB, evidence=_MEDBULLETS_EVIDENCE,
        sample=(_s("medbullets/medbullets_op4.jsonl", _MEDBULLETS),), sample_note="complete",
        expected_rows=308, expected_rows_basis="ChallengeClinicalQA (Chen et al. 2024); zou-lab card", rows_tolerance=0.01,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="medbullets_op5", section="eval", title="MedBullets (5 options)", hf_id="zou-lab/BioMed-R1-Eval",
        config="medbullets_op5", split="test", licence="not stated (HanjieChen/ChallengeClinicalQA)",
        fields=_MEDBULLETS_HUB, evidence=_MEDBULLETS_EVIDENCE,
        sample=(_s("medbullets/medbullets_op5.jsonl", _MEDBULLETS),), sample_note="complete",
        expected_rows=308, expected_rows_basis="ChallengeClinicalQA (Chen et al. 2024); zou-lab card", rows_tolerance=0.01,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="afrimedqa", section="eval", title="AfriMed-QA MCQ", hf_id="intronhealth/afrimedqa_v2",
        split="train", licence="CC BY-NC-SA 4.0 (hub; gated: accept the terms and set HF_TOKEN)",
        fields=FieldMap(id="sample_id", prompt="question_clean", options="answer_options", gold_answer="correct_answer",
                        gold_format="option_key", meta=("specialty", "tier", "country", "split"),
                        where=(("question_type", ("mcq",)),)),
        evidence=("card VERIFIED ('Number of Questions: 15,275'; Data Description: sample_id, question_type, question, "
                  "question_clean, answer_options = JSON string {option1..option5}, correct_answer 'optionN' or "
                  "'option1,option3', tier, split, ...; Expert MCQ 3,910 + crowdsourced MCQ 129); one CSV "
                  "afri_med_qa_15k_v2.4_phase_2_15275.csv (VERIFIED from a consumer script). Confidence: high."),
        sample=(_s("afrimedqa/test.jsonl", _MCQ_DICT),), sample_note="expert MCQ test sample",
        expected_rows=4_039, expected_rows_basis="card: MCQ 3,910 expert + 129 crowdsourced", rows_tolerance=0.05,
        expects=MCQ, sample_expects=MCQ,
    ),
    SourceSpec(
        name="liveqa_med", section="eval", title="LiveQA-Med (TREC 2017 test)",
        hf_id="hyesunyun/liveqa_medical_trec2017", split="test", licence="not stated",
        data_files={"test": "test.jsonl"},
        adapter="liveqa_trec2017",
        fields=FieldMap(id="QUESTION_ID", prompt="question", gold_answer="answer", meta=("original_question",)),
        evidence=("viewer VERIFIED: config default, split test = 104 rows from test.jsonl (tree at 51d1e3b); columns "
                  "QUESTION_ID, ORIGINAL_QUESTION_MESSAGE, NIST_PARAPHRASE (empty in 3 rows), NLM_SUMMARY, "
                  "REFERENCE_ANSWERS (list of {ANSWER, ...}) VERIFIED from loaders. truehealth/liveqa (the old entry) "
                  "holds the ~635 TREC training pairs in a `message` column, not the test set. Confidence: high."),
        sample=(_s("selfbiorag/live_qa_test.jsonl", _SELFBIORAG_OPEN),), sample_note="complete", expected_rows=104,
        expected_rows_basis="viewer (test: 104 rows)", rows_tolerance=0.01,
        expects=expect(gold=0.95), sample_expects=expect(gold=0.95),
    ),
    SourceSpec(
        name="medicationqa", section="eval", title="MedicationQA", hf_id="truehealth/medicationqa", split="train",
        data_files="data/train-*", licence="not stated", fields=FieldMap(prompt="Question", gold_answer="Answer",
                                              meta=("Focus (Drug)", "Question Type")),
        evidence=("file tree VERIFIED (data/train-00000-of-00001-7427a10e891759be.parquet); columns Question, Focus "
                  "(Drug), Question Type, Answer, Section Title, URL VERIFIED from a loader; 690 rows (INFERRED). "
                  "Confidence: high."),
        sample=(_s("selfbiorag/medication_qa_test.jsonl", _SELFBIORAG_OPEN),), sample_note="complete",
        expected_rows=690, expected_rows_basis="loader docstring + bundled copy", rows_tolerance=0.05,
        expects=expect(gold=0.9), sample_expects=expect(gold=0.95),
    ),
    SourceSpec(
        name="gpqa_diamond", section="eval", title="GPQA diamond", hf_id="Idavidrein/gpqa", config="gpqa_diamond",
        licence="CC BY 4.0 (gated: accept the terms on the hub and set HF_TOKEN)",
        fields=FieldMap(id="Record ID", prompt="Question", gold_answer="Correct Answer",
                        meta=("High-level domain", "Subdomain")),
        evidence=("configs gpqa_diamond / gpqa_main / gpqa_extended / gpqa_experts over gpqa_<config>.csv, split train "
                  "(VERIFIED: ungated mirrors list the same files; loaders call load_dataset('Idavidrein/gpqa', "
                  "'gpqa_diamond', split='train')); 198 rows VERIFIED. Confidence: high."),
        sample=(), sample_note="not available offline: materializes 0 rows in sample mode", expected_rows=198,
        expected_rows_basis="GPQA paper / loaders", rows_tolerance=0.01, expects=expect(gold=0.95),
    ),
)

BY_NAME: dict[str, SourceSpec] = {s.name: s for s in SOURCES}
if len(BY_NAME) != len(SOURCES):  # pragma: no cover - a registry typo
    raise RuntimeError("duplicate source names in the registry")


def sources_in(section: str) -> tuple[SourceSpec, ...]:
    return tuple(s for s in SOURCES if s.section == section)


def get_source(name: str) -> SourceSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(BY_NAME))}") from None
