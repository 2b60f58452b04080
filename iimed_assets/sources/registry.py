"""The source registry: one entry per source named on the II-Medical-Reasoning-SFT card, plus the
evaluation sets used for decontamination.

Each entry says where the source lives on the Hugging Face hub (id, config, split), how its fields map
into the sample row, which recipe section it feeds, its licence, and which slices of the bundled
sample stand in for it offline. Partition keys are the entry names.

Hub field maps follow the dataset cards; they could not be checked against the hub from the build
machine (no network). The loader checks the first record of every source against its map and fails
with the list of fields it found, so a changed upstream schema is a clear error, not silent loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iimed_assets.core.normalize import FieldMap


@dataclass(frozen=True)
class SampleSlice:
    """Rows [start, stop) of one bundled JSONL file, read with its own field map."""

    path: str  # relative to iimed_assets/sources/sample/
    fields: FieldMap
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class SourceSpec:
    name: str
    section: str
    title: str
    hf_id: str | None
    fields: FieldMap
    licence: str
    config: str | tuple[str, ...] | None = None
    split: str = "train"
    data_files: str | None = None
    sample: tuple[SampleSlice, ...] = ()
    sample_note: str = ""
    # Expected row count on the hub (the card's number or the dataset's size), for the bounds check.
    expected_rows: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def configs(self) -> tuple[str | None, ...]:
        if isinstance(self.config, tuple):
            return self.config
        return (self.config,)


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

R1 = "r1_medical_traces/"


def _s(path: str, fm: FieldMap, start: int = 0, stop: int | None = None) -> SampleSlice:
    return SampleSlice(path=path, fields=fm, start=start, stop=stop)


SOURCES: tuple[SourceSpec, ...] = (
    # ---- section 1: public medical reasoning sets, taken as they are -------------------------------
    SourceSpec(
        name="general_thought_medical", section="public_reasoning", title="GeneralThought-430K (medical part)",
        hf_id="GeneralReasoning/GeneralThought-430K", licence="MIT",
        fields=FieldMap(id="question_id", prompt="question", reasoning="model_reasoning", response="model_answer",
                        gold_answer="reference_answer", meta=("task", "question_source", "model_name"),
                        where=(("task", ("Medicine", "Medical", "Health", "Biology")),)),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 0, 50),),
        sample_note="HuatuoGPT-o1 demo traces (question -> Complex_CoT -> Response)",
        expected_rows=None,
        notes="Only rows whose `task` is a medical category are in scope; the rest are ledgered as out_of_scope.",
    ),
    SourceSpec(
        name="medical_r1_distill", section="public_reasoning", title="Medical-R1-Distill-Data",
        hf_id="FreedomIntelligence/Medical-R1-Distill-Data", licence="Apache-2.0",
        fields=FieldMap(prompt="question", reasoning="reasoning (reasoning_content)", response="response (content)"),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 50, 100),),
        sample_note="HuatuoGPT-o1 demo traces (same authors, same shape)", expected_rows=22_000,
    ),
    SourceSpec(
        name="medical_r1_distill_zh", section="public_reasoning", title="Medical-R1-Distill-Data-Chinese",
        hf_id="FreedomIntelligence/Medical-R1-Distill-Data-Chinese", licence="Apache-2.0",
        fields=FieldMap(prompt="question", reasoning="reasoning (reasoning_content)", response="response (content)",
                        language="zh"),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 100, 150),),
        sample_note="no Chinese medical traces are available offline: English HuatuoGPT-o1 demo traces stand in",
        expected_rows=17_000,
    ),
    SourceSpec(
        name="m23k", section="public_reasoning", title="UCSC-VLAA/m23k-tokenized",
        hf_id="UCSC-VLAA/m23k-tokenized", licence="Apache-2.0",
        fields=FieldMap(prompt="question", options="options", reasoning="reasoning",
                        response="distilled_answer_string", gold_answer="answer_letter", gold_format="letter"),
        sample=(_s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 150, None),),
        sample_note="HuatuoGPT-o1 demo traces", expected_rows=23_000,
    ),
    # ---- section 2: seeds for rejection sampling ---------------------------------------------------
    SourceSpec(
        name="medmcqa", section="qa_seed", title="MedMCQA (train)", hf_id="openlifescienceai/medmcqa",
        licence="Apache-2.0",
        fields=FieldMap(id="id", prompt="question", options=("opa", "opb", "opc", "opd"), gold_answer="cop",
                        gold_format="index0", meta=("subject_name", "topic_name", "exp")),
        sample=(_s("selfbiorag/medmc_qa_train_gpt4.jsonl", _SELFBIORAG_MEDMCQA, 0, 6),),
        sample_note="Self-BioRAG's MedMCQA train rows (instruction format; options parsed from the text)",
        expected_rows=182_822,
    ),
    SourceSpec(
        name="medqa", section="qa_seed", title="MedQA USMLE (train, 4 options)", hf_id="bigbio/med_qa",
        config="med_qa_en_4options_source", licence="MIT",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter",
                        meta=("meta_info",)),
        sample=(_s("selfbiorag/med_qa_train.jsonl", _SELFBIORAG_MEDQA, 0, 6),),
        sample_note="Self-BioRAG's MedQA train rows (gold answer given as option text)", expected_rows=10_178,
    ),
    SourceSpec(
        name="pubmedqa_unlabeled", section="qa_seed", title="PubMedQA pqa_unlabeled", hf_id="qiaojin/PubMedQA",
        config="pqa_unlabeled", licence="MIT",
        fields=FieldMap(id="pubid", prompt="question", context="context", meta=("long_answer",)),
        sample=(_s("selfbiorag/pubmed_qa_train_gpt4.jsonl", _SELFBIORAG_PUBMEDQA, 0, 6),),
        sample_note="Self-BioRAG's PubMedQA train-style rows (CONTEXT/QUESTION text, yes/no/maybe label)",
        expected_rows=61_249,
    ),
    SourceSpec(
        name="medreason", section="qa_seed", title="MedReason", hf_id="UCSC-VLAA/MedReason", licence="Apache-2.0",
        fields=FieldMap(id="id_in_dataset", prompt="question", gold_answer="answer", meta=("dataset_name",)),
        sample=(_s("medical_o1_demo/demo_data.jsonl",
                   FieldMap(prompt="Open-ended Verifiable Question", gold_answer="Ground-True Answer"), 0, 6),),
        sample_note="HuatuoGPT-o1 open-ended verifiable questions with ground-true answers (free-form)",
        expected_rows=32_682,
    ),
    # ---- section 3: public R1 traces, to be filtered to medical/biology ----------------------------
    SourceSpec(
        name="synthetic_1", section="r1_traces", title="PrimeIntellect SYNTHETIC-1 (SFT)",
        hf_id="PrimeIntellect/SYNTHETIC-1-SFT-Data", licence="Apache-2.0",
        fields=FieldMap(conversation="messages"),
        sample=(_s("gsm8k/test.jsonl", _GSM8K, 0, 60), _s(R1 + "DeepSeek-R1-medqa-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="GSM8K math with worked solutions + DeepSeek-R1 MedQA traces", expected_rows=894_086,
    ),
    SourceSpec(
        name="general_thought_r1", section="r1_traces", title="GeneralThought-430K (all)",
        hf_id="GeneralReasoning/GeneralThought-430K", licence="MIT",
        fields=FieldMap(id="question_id", prompt="question", reasoning="model_reasoning", response="model_answer",
                        gold_answer="reference_answer", meta=("task", "question_source", "model_name")),
        sample=(_s("mmlu_all/test_other.jsonl", _MMLU_FLAT, 0, 120), _s("mmlu_all/test_stem.jsonl", _MMLU_FLAT, 0, 60)),
        sample_note="MMLU 'other' (incl. medical subjects) and STEM questions, labelled by subject", expected_rows=430_000,
    ),
    SourceSpec(
        name="am_deepseek_r1_distilled", section="r1_traces", title="AM-DeepSeek-R1-Distilled-1.4M",
        hf_id="a-m-team/AM-DeepSeek-R1-Distilled-1.4M", config="am_0.9M", licence="CC BY-NC 4.0",
        fields=FieldMap(conversation="messages"),
        sample=(_s("mbpp/mbpp.jsonl", _MBPP, 0, 60), _s("medical_o1_demo/demo_data.jsonl", _O1_TRACE, 60, 100)),
        sample_note="MBPP code tasks + HuatuoGPT-o1 medical traces", expected_rows=1_400_000,
    ),
    SourceSpec(
        name="openthoughts2", section="r1_traces", title="OpenThoughts2-1M", hf_id="open-thoughts/OpenThoughts2-1M",
        licence="Apache-2.0", fields=FieldMap(conversation="conversations"),
        sample=(_s("math500/test.jsonl", _MATH500, 0, 60), _s(R1 + "DeepSeek-R1-mmlu-test_hard-zero_shot.jsonl", _R1_TRACE)),
        sample_note="MATH-500 problems with solutions + DeepSeek-R1 MMLU-medical traces", expected_rows=1_143_205,
    ),
    SourceSpec(
        name="nemotron_science", section="r1_traces", title="Llama-Nemotron post-training (science)",
        hf_id="nvidia/Llama-Nemotron-Post-Training-Dataset", config="SFT", split="science", licence="CC BY 4.0",
        fields=FieldMap(conversation="input", response="output", meta=("reasoning", "generator")),
        sample=(_s("arc/ARC-Challenge-Test.jsonl", _ARC, 0, 60),
                _s(R1 + "DeepSeek-R1-medxpertqa-r-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="ARC-Challenge science questions + DeepSeek-R1 MedXpertQA traces", expected_rows=708_920,
    ),
    SourceSpec(
        name="dolphin_r1", section="r1_traces", title="dolphin-r1 (DeepSeek reasoning)",
        hf_id="cognitivecomputations/dolphin-r1", config="reasoning-deepseek", licence="Apache-2.0",
        fields=FieldMap(conversation="messages", reasoning="reasoning", response="answer"),
        sample=(_s(R1 + "DeepSeek-R1-medmcqa-test_hard-zero_shot.jsonl", _R1_TRACE),
                _s(R1 + "QwQ-32B-medqa-test_hard-zero_shot.jsonl", _R1_TRACE)),
        sample_note="DeepSeek-R1 MedMCQA and QwQ-32B MedQA traces (incl. cut-off traces)", expected_rows=300_000,
    ),
    SourceSpec(
        name="r1_distill_sft", section="r1_traces", title="ServiceNow R1-Distill-SFT",
        hf_id="ServiceNow-AI/R1-Distill-SFT", config="v1", licence="CC BY-NC-SA 4.0",
        fields=FieldMap(id="id", conversation="reannotated_messages", meta=("source",)),
        sample=(_s("humaneval/HumanEval.jsonl", _HUMANEVAL, 0, 60),
                _s(R1 + "DeepSeek-R1-pubmedqa-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40),
                _s(R1 + "DeepSeek-R1-medbullets-test_hard-zero_shot.jsonl", _R1_TRACE, 0, 40)),
        sample_note="HumanEval code prompts + DeepSeek-R1 PubMedQA and MedBullets traces", expected_rows=1_680_000,
    ),
    # ---- section 4: general medical instructions (judged against the reference answer) -------------
    SourceSpec(
        name="apollo_textbook_qa", section="instruct", title="ApolloCorpus text-book QA",
        hf_id="FreedomIntelligence/ApolloCorpus", data_files="train/qa/medicalBook_en_qa.json", licence="Apache-2.0",
        fields=FieldMap(prompt="0", gold_answer="1"),
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 0, 6),),
        sample_note="MedQuAD (CancerGov) question/answer pairs", expected_rows=229_433,
        notes="ApolloCorpus QA files hold [question, answer] pairs.",
    ),
    SourceSpec(
        name="apollo_patient_qa", section="instruct", title="ApolloCorpus patient QA",
        hf_id="FreedomIntelligence/ApolloCorpus", data_files="train/qa/medicalPatient_en_qa.json", licence="Apache-2.0",
        fields=FieldMap(prompt="0", gold_answer="1"),
        sample=(_s("chatdoctor/chatdoctor5k.jsonl", _CHATDOCTOR, 0, 6),),
        sample_note="ChatDoctor GenMedGPT-5k patient dialogues", expected_rows=276_079,
    ),
    SourceSpec(
        name="apollo_guideline_qa", section="instruct", title="ApolloCorpus guideline QA",
        hf_id="FreedomIntelligence/ApolloCorpus", data_files="train/qa/medicalGuideline_en_qa.json",
        licence="Apache-2.0", fields=FieldMap(prompt="0", gold_answer="1"),
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 600, 606),),
        sample_note="MedQuAD guideline-style NIH answers", expected_rows=142_927,
    ),
    SourceSpec(
        name="healthcaremagic", section="instruct", title="ChatDoctor HealthCareMagic-100k",
        hf_id="lavita/ChatDoctor-HealthCareMagic-100k", licence="Apache-2.0",
        fields=FieldMap(prompt="input", system="instruction", gold_answer="output"),
        sample=(_s("chatdoctor/chatdoctor5k.jsonl", _CHATDOCTOR, 100, 106),),
        sample_note="ChatDoctor GenMedGPT-5k (HealthCareMagic itself is not available offline)",
        expected_rows=215_647,
    ),
    SourceSpec(
        name="evol_instruct_medical", section="instruct", title="Evol-Instruct medical (local file)",
        hf_id=None, licence="not public: supply your own copy",
        fields=FieldMap(prompt="instruction", gold_answer="output"),
        sample=(_s("selfbiorag/med_qa_train.jsonl",
                   FieldMap(prompt=("instruction", "instances.input"), gold_answer="instances.output"), 400, 406),),
        sample_note="Self-BioRAG MedQA instruction rows", expected_rows=74_190,
        notes="Not on the hub: set IIMED_SOURCE_EVOL_INSTRUCT_MEDICAL to a local JSONL/Parquet with instruction/output.",
    ),
    SourceSpec(
        name="am_qwen3_instruction_following", section="instruct", title="AM-Qwen3-Distilled (instruction following)",
        hf_id="a-m-team/AM-Qwen3-Distilled", licence="CC BY-NC 4.0",
        fields=FieldMap(conversation="conversations", meta=("info",)),
        sample=(_s("medquad/medquad_first200_per_source.jsonl", _MEDQUAD, 1200, 1203),
                _s("selfbiorag/pubmed_qa_train_gpt4.jsonl", _SELFBIORAG_PUBMEDQA, 500, 503)),
        sample_note="MedQuAD answers + Self-BioRAG PubMedQA rows", expected_rows=87_627,
    ),
    # ---- evaluation sets: decontamination references, never training rows -------------------------
    SourceSpec(
        name="medmcqa_validation", section="eval", title="MedMCQA validation", hf_id="openlifescienceai/medmcqa",
        split="validation", licence="Apache-2.0",
        fields=FieldMap(id="id", prompt="question", options=("opa", "opb", "opc", "opd"), gold_answer="cop",
                        gold_format="index0", meta=("subject_name",)),
        sample=(_s("medmcqa/dev.jsonl", FieldMap(id="id", prompt="question", options_in_prompt=True,
                                                 gold_answer="label", gold_format="letter",
                                                 meta=("subject_name", "topic_name"))),),
        sample_note="complete dev set", expected_rows=4_183,
    ),
    SourceSpec(
        name="medqa_usmle_4opt", section="eval", title="MedQA USMLE test (4 options)", hf_id="bigbio/med_qa",
        config="med_qa_en_4options_source", split="test", licence="MIT",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter"),
        sample=(_s("medqa/test_4options.jsonl", _MCQ_DICT),), sample_note="complete test set", expected_rows=1_273,
    ),
    SourceSpec(
        name="medqa_usmle_5opt", section="eval", title="MedQA USMLE test (5 options)", hf_id="bigbio/med_qa",
        config="med_qa_en_source", split="test", licence="MIT",
        fields=FieldMap(prompt="question", options="options", gold_answer="answer_idx", gold_format="letter"),
        sample=(_s("medqa/test_5options.jsonl", _MCQ_DICT),), sample_note="complete test set", expected_rows=1_273,
    ),
    SourceSpec(
        name="pubmedqa_labeled", section="eval", title="PubMedQA PQA-L (incl. the 500-item test split)",
        hf_id="qiaojin/PubMedQA", config="pqa_labeled", licence="MIT",
        fields=FieldMap(id="pubid", prompt="question", context="context", gold_answer="final_decision"),
        sample=(_s("pubmedqa/ori_pqal.jsonl", FieldMap(id="pmid", prompt="QUESTION", context="CONTEXTS",
                                                       gold_answer="final_decision", meta=("YEAR",))),),
        sample_note="all 1000 expert-labelled items", expected_rows=1_000,
    ),
    SourceSpec(
        name="mmlu_medical", section="eval", title="MMLU medical subjects (test)", hf_id="cais/mmlu",
        config=("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine"),
        split="test", licence="MIT",
        fields=FieldMap(prompt="question", options="choices", gold_answer="answer", gold_format="index0",
                        meta=("subject",)),
        sample=(_s("mmlu_medical/test_released_1089.jsonl", _MCQ_DICT),), sample_note="released test (1089)",
        expected_rows=1_089,
    ),
    SourceSpec(
        name="mmlu_pro_health", section="eval", title="MMLU-Pro health", hf_id="TIGER-Lab/MMLU-Pro", split="test",
        licence="MIT",
        fields=FieldMap(id="question_id", prompt="question", options="options", gold_answer="answer",
                        gold_format="letter", meta=("src",), where=(("category", ("health",)),)),
        sample=(_s("mmlu_pro_health/test.jsonl", _MCQ_DICT),), sample_note="complete health category",
        expected_rows=818,
    ),
    SourceSpec(
        name="medxpertqa_text", section="eval", title="MedXpertQA Text (test)", hf_id="TsinghuaC3I/MedXpertQA",
        config="Text", split="test", licence="MIT",
        fields=FieldMap(id="id", prompt="question", options="options", options_in_prompt=True, gold_answer="label",
                        gold_format="letter", meta=("medical_task", "body_system", "question_type")),
        sample=(_s("medxpertqa/text_reasoning_test.jsonl", _MCQ_DICT),
                _s("medxpertqa/text_understanding_test.jsonl", _MCQ_DICT)),
        sample_note="complete Text test set (Reasoning + Understanding)", expected_rows=2_450,
    ),
    SourceSpec(
        name="medbullets_op4", section="eval", title="MedBullets (4 options)", hf_id=None, licence="not stated",
        fields=_MEDBULLETS, sample=(_s("medbullets/medbullets_op4.jsonl", _MEDBULLETS),),
        sample_note="complete", expected_rows=308,
        notes="No hub copy is registered: point IIMED_SOURCE_MEDBULLETS_OP4 at a local file in hub mode.",
    ),
    SourceSpec(
        name="medbullets_op5", section="eval", title="MedBullets (5 options)", hf_id=None, licence="not stated",
        fields=_MEDBULLETS, sample=(_s("medbullets/medbullets_op5.jsonl", _MEDBULLETS),),
        sample_note="complete", expected_rows=308,
        notes="No hub copy is registered: point IIMED_SOURCE_MEDBULLETS_OP5 at a local file in hub mode.",
    ),
    SourceSpec(
        name="afrimedqa", section="eval", title="AfriMed-QA expert MCQ", hf_id="intronhealth/afrimedqa_v2",
        split="train", licence="CC BY-NC-SA 4.0 (hub); MIT (bundled copy's holder repo)",
        fields=FieldMap(id="sample_id", prompt="question_clean", options="answer_options", gold_answer="correct_answer",
                        where=(("question_type", ("mcq",)),)),
        sample=(_s("afrimedqa/test.jsonl", _MCQ_DICT),), sample_note="expert MCQ test sample", expected_rows=3_000,
    ),
    SourceSpec(
        name="liveqa_med", section="eval", title="LiveQA-Med", hf_id="truehealth/liveqa", split="train",
        licence="not stated", fields=FieldMap(prompt="question", gold_answer="answer"),
        sample=(_s("selfbiorag/live_qa_test.jsonl", _SELFBIORAG_OPEN),), sample_note="complete", expected_rows=104,
    ),
    SourceSpec(
        name="medicationqa", section="eval", title="MedicationQA", hf_id="truehealth/medicationqa", split="train",
        licence="not stated", fields=FieldMap(prompt="Question", gold_answer="Answer"),
        sample=(_s("selfbiorag/medication_qa_test.jsonl", _SELFBIORAG_OPEN),), sample_note="complete",
        expected_rows=690,
    ),
    SourceSpec(
        name="gpqa_diamond", section="eval", title="GPQA diamond", hf_id="Idavidrein/gpqa", config="gpqa_diamond",
        licence="CC BY 4.0 (gated: accept the terms on the hub and set HF_TOKEN)",
        fields=FieldMap(id="Record ID", prompt="Question", gold_answer="Correct Answer",
                        meta=("High-level domain", "Subdomain")),
        sample=(), sample_note="not available offline: materializes 0 rows in sample mode", expected_rows=198,
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
