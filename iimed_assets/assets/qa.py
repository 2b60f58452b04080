"""Section 2: synthetic QA by rejection sampling.

    qa_seed_rows ─► qa_samples (n responses per prompt) ─► qa_verified (one correct response per prompt)

`qa_samples` holds every sampled response (one row per prompt × sample, with its finish reason and usage),
written by the `generator`. `qa_verified` reads each prompt's samples, verifies every one (MCQ letter,
yes/no/maybe, or the `judge`'s verdict against the reference for free-form questions), keeps the correct ones
its keep rule asks for (`shortest` | `all_correct` | `up_to_k`) as sample rows, and writes a verdict for every
sample to `qa_sample_verdicts` in the same transaction. Prompts with no correct sample go to the ledger as
`no_correct_sample`. The rules themselves (plans, verdicts, judge scheduling, keep rules) are in core.qa.
"""

import json
from collections import Counter
from dataclasses import dataclass, field

import dagster as dg
import pyarrow as pa
from pydantic import Field

from iimed_assets import checks
from iimed_assets.assets.common import (
    GPU_POOL,
    Progress,
    histogram_markdown,
    histogram_png_markdown,
    markdown_table,
    sample_column_schema,
    staged_partition,
    swap_checked,
)
from iimed_assets.assets.stage_records import record_stage_run
from iimed_assets.core import qa
from iimed_assets.core.llm import ChatRequest, UsageStats
from iimed_assets.core.schema import MESSAGE_TYPE
from iimed_assets.partitions import qa_seed_partitions
from iimed_assets.profiles import active_profile
from iimed_assets.resources.llm import LLMResource, usage_metadata
from iimed_assets.resources.llm.budget import StageBudget, stage_budget
from iimed_assets.resources.warehouse import Select, Staged, Swap, Warehouse

PROFILE = active_profile()

SAMPLES_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt_id", pa.string()), ("sample_index", pa.int32()), ("template", pa.string()),
    ("verify_method", pa.string()), ("reference", pa.string()), ("request", pa.list_(MESSAGE_TYPE)),
    ("response", pa.string()), ("finish_reason", pa.string()), ("error", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("generator", pa.string()),
    ("from_cache", pa.bool_()),
])
SAMPLES_COLUMNS = [
    dg.TableColumn("id", "VARCHAR", description="prompt id + ':' + sample index"),
    dg.TableColumn("prompt_id", "VARCHAR", description="id of the seed row in qa_seed_rows"),
    dg.TableColumn("source", "VARCHAR", description="seed source (= the partition key)"),
    dg.TableColumn("sample_index", "INTEGER", description="0..n-1"),
    dg.TableColumn("template", "VARCHAR", description="generation template: mcq | yes_no | yes_no_bare | free_form"),
    dg.TableColumn("verify_method", "VARCHAR", description="choice | label | judge"),
    dg.TableColumn("reference", "VARCHAR", description="what a correct answer must match: letter, label or text"),
    dg.TableColumn("request", "STRUCT(role VARCHAR, content VARCHAR)[]", description="the rendered chat request"),
    dg.TableColumn("response", "VARCHAR", description="the sampled response"),
    dg.TableColumn("finish_reason", "VARCHAR", description="stop | length | empty | error | ..."),
    dg.TableColumn("error", "VARCHAR", description="backend error when no response came back"),
    dg.TableColumn("prompt_tokens", "BIGINT", description="prompt tokens"),
    dg.TableColumn("completion_tokens", "BIGINT", description="completion tokens"),
    dg.TableColumn("generator", "VARCHAR", description="backend model id"),
    dg.TableColumn("from_cache", "BOOLEAN", description="answered by the LLM cache (no new tokens spent)"),
]
VERDICT_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt_id", pa.string()), ("sample_index", pa.int32()), ("verdict", pa.string()),
    ("extracted", pa.string()), ("judge_output", pa.string()), ("kept", pa.bool_()),
])
KEPT_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt_id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE)), ("prompt", pa.string()),
    ("verify_method", pa.string()), ("kept_sample_index", pa.int32()), ("samples_total", pa.int32()),
    ("samples_correct", pa.int32()), ("first_correct_index", pa.int32()), ("extracted_answer", pa.string()),
])
KEPT_COLUMNS = {
    "prompt_id": ("VARCHAR", "id of the seed row (= id under keep: shortest; id is prompt_id:sample otherwise)"),
    "verify_method": ("VARCHAR", "how the kept response was verified: choice | label | judge"),
    "kept_sample_index": ("INTEGER", "which sample this row keeps"),
    "samples_total": ("INTEGER", "responses sampled for this prompt"),
    "samples_correct": ("INTEGER", "responses verified correct"),
    "first_correct_index": ("INTEGER", "index of the first correct sample (in sampling order)"),
    "extracted_answer": ("VARCHAR", "the answer read from the kept response"),
    "generator": ("VARCHAR", "model that wrote the kept response"),
    "finish_reason": ("VARCHAR", "finish reason of the kept response"),
    "completion_tokens": ("BIGINT", "completion tokens of the kept response"),
}

SAMPLES_COMPLETE = "samples_complete"
KEPT_VERIFIED = "kept_samples_verified"
SAMPLES_ACCOUNTED = "samples_accounted_for"
YIELD_IN_BAND = "yield_in_band"


class QASamplesConfig(checks.LLMFailureBounds):
    n: int = Field(default=PROFILE.qa_n, description="responses sampled per prompt (the card: 6-10)")
    temperature: float = PROFILE.qa_temperature
    top_p: float = PROFILE.qa_top_p
    # A truncated sample is never accepted: a reasoning generator (Qwen3-235B-A22B on the card) needs thousands.
    max_tokens: int = Field(default=PROFILE.qa_max_tokens, description="generation budget per sample")
    seed: int = 0
    batch_prompts: int = 64


class QAVerifiedConfig(checks.LLMFailureBounds):
    keep: str = Field(default=PROFILE.qa_keep, description="which correct samples of a prompt become rows: "
                                                           "shortest | all_correct | up_to_k")
    keep_k: int = Field(default=PROFILE.qa_keep_k, description="up_to_k: the k shortest correct samples")
    judge_max_tokens: int = Field(default=PROFILE.verify_max_tokens, description="the judge's verdict budget")
    judge_rationale_chars: int = Field(default=PROFILE.verify_rationale_chars,
                                       description="structured verdicts: a reason of at most this many characters "
                                                   "first (0: the verdict only)")
    judge_strategy: str = Field(
        default="all", description="free-form prompts: 'all' judges every well-formed sample (exact statistics); "
                                   "'shortest_first' judges samples shortest first and stops once the keep rule "
                                   "has its samples (the same kept samples, fewer judge calls)")
    yield_min: float = Field(default=0.2, description="WARN below this share of prompts kept")
    yield_max: float = Field(default=1.0, description="WARN above this share of prompts kept")
    batch_prompts: int = 64


SEED_COLUMNS = ["id", "prompt", "gold_answer", "options", "meta"]


def _options(row) -> dict[str, str] | None:
    opts = row.get("options")
    if not opts:
        return None
    return dict(opts) if isinstance(opts, dict) else {k: v for k, v in opts}


def _meta(row) -> dict:
    try:
        return json.loads(row["meta"]) if row.get("meta") else {}
    except (TypeError, ValueError):
        return {}


def plan_row(row) -> qa.SeedPlan | str:
    """core.qa.plan_seed for a qa_seed_rows row."""
    return qa.plan_seed(row["prompt"], row.get("gold_answer"), _options(row), _meta(row))


def sample_request(plan: qa.SeedPlan, config: QASamplesConfig) -> ChatRequest:
    """The generator's request for one seed (qa_samples sends it; the spend plan counts it)."""
    return ChatRequest.of(plan.messages, n=config.n, temperature=config.temperature, top_p=config.top_p,
                          max_tokens=config.max_tokens, seed=config.seed)


def verification_request(question: str, reference: str, answer: str | None, structured: bool,
                         config: QAVerifiedConfig) -> ChatRequest:
    """The judge's request for one free-form sample (qa_verified sends it; the spend plan counts it)."""
    return ChatRequest.of(
        qa.verification_messages(question, reference, answer, structured, config.judge_rationale_chars),
        n=1, temperature=0.0, max_tokens=config.judge_max_tokens, seed=0,
        output=qa.verdict_spec(config.judge_rationale_chars) if structured else None)


# ---- qa_samples -------------------------------------------------------------------------------------------

@dataclass
class _Sampling:
    """What qa_samples counts while it samples a partition."""

    source: str
    rows_in: int = 0
    templates: Counter = field(default_factory=Counter)
    stats: UsageStats = field(default_factory=UsageStats)
    budget: StageBudget | None = None

    def sample(self, batch: list[dict], stage, generator: LLMResource, config: QASamplesConfig,
               warehouse: Warehouse, log) -> None:
        self.rows_in += len(batch)
        planned = []
        for row in batch:
            plan = plan_row(row)
            if isinstance(plan, str):
                stage.ledger.add({"row_id": row["id"], "reason": plan,
                                  "detail": "no gold answer and no reference text: nothing can verify a response"})
            else:
                planned.append((row, plan))
        requests = [sample_request(plan, config) for _, plan in planned]
        results, stats = generator.generate(requests, cache=warehouse, log=log, budget=self.budget)
        self.stats.merge(stats)
        for (row, plan), completions in zip(planned, results):
            self.templates[plan.template] += 1
            for i, c in enumerate(completions):
                stage.rows.add({
                    "id": f"{row['id']}:{i}", "prompt_id": row["id"], "sample_index": i, "template": plan.template,
                    "verify_method": plan.verify_method, "reference": plan.reference, "request": plan.messages,
                    "response": c.text, "finish_reason": c.finish_reason, "error": c.error,
                    "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                    "generator": generator.model_id, "from_cache": c.cached})


@dg.asset(
    partitions_def=qa_seed_partitions,
    group_name="qa",
    kinds={"duckdb", "llm"},
    pool=GPU_POOL,
    deps=["qa_seed_rows"],
    check_specs=[
        dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="qa_samples", blocking=True,
                          description="Every seed prompt was sampled or is in the ledger (e.g. no reference)."),
        dg.AssetCheckSpec(SAMPLES_COMPLETE, asset="qa_samples", blocking=True,
                          description="Every sampled prompt has exactly n stored samples, indices 0..n-1."),
        checks.llm_failure_spec("qa_samples", "generator"),
    ],
)
def qa_samples(context: dg.AssetExecutionContext, config: QASamplesConfig, warehouse: Warehouse,
               generator: LLMResource) -> dg.MaterializeResult:
    """n sampled responses per seed prompt (rendered from the templates in core.qa) by the `generator`, each
    stored with its finish reason and token usage; failed samples are stored too, with the error."""
    source = context.partition_key
    asset = "qa_samples"
    run = _Sampling(source, budget=stage_budget(context, generator, warehouse, "generator"))
    total = warehouse.fetch_one("SELECT count(*) FROM qa_seed_rows WHERE source = ?", [source])[0]
    progress = Progress(context.log.info, f"qa_samples[{source}] prompts", total)
    with staged_partition(warehouse, asset, source, SAMPLES_SCHEMA) as stage:
        for batch in warehouse.iter_partition("qa_seed_rows", source, SEED_COLUMNS,
                                              generator.rows_per_call(config.batch_prompts)):
            run.sample(batch, stage, generator, config, warehouse, context.log.info)
            progress(run.rows_in)
        stage.close()
        results = swap_checked(context, warehouse, Swap(asset, Select(
            asset, "SELECT s.id, s.prompt_id, CAST(? AS VARCHAR) AS source, s.* EXCLUDE (id, prompt_id) "
                   "FROM read_parquet(?) s ORDER BY s.prompt_id, s.sample_index", [source, str(stage.rows.path)]),
            partition=source, ledger_path=stage.ledger.path),
            lambda staged: _samples_checks(warehouse, staged, source, config, run))
    record_stage_run(context, warehouse, settings=config.model_dump(exclude={"batch_prompts", *checks.FAILURE_BOUNDS}),
                     roles={"generator": generator}, usage={"generator": run.stats})
    return _samples_result(warehouse, source, config, run, generator, results)


def _sample_sets(warehouse: Warehouse, table: str, source: str, n: int) -> tuple[int, int, int]:
    """(prompts with samples, prompts whose samples are not exactly 0..n-1, samples) of `table`."""
    with warehouse.connect() as con:
        written_prompts, bad_sets = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT ok) FROM ("
            "SELECT prompt_id, count(*) = ? AND min(sample_index) = 0 AND max(sample_index) = ? - 1 "
            f"AND count(DISTINCT sample_index) = ? AS ok FROM {table} WHERE source = ? GROUP BY prompt_id)",
            [n, n, n, source]).fetchone()
        samples = con.execute(f"SELECT count(*) FROM {table} WHERE source = ?", [source]).fetchone()[0]
    return written_prompts, bad_sets, samples


def _samples_checks(warehouse: Warehouse, staged: Staged, source: str, config: QASamplesConfig,
                    run: _Sampling) -> list[dg.AssetCheckResult]:
    """qa_samples' checks on the staged partition, before the swap."""
    written_prompts, bad_sets, samples = _sample_sets(warehouse, staged.table, source, config.n)
    return [
        checks.rows_conserved(run.rows_in, written_prompts, sum(staged.ledger_counts(warehouse).values())),
        dg.AssetCheckResult(check_name=SAMPLES_COMPLETE, passed=bad_sets == 0 and samples == written_prompts * config.n,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"prompts": written_prompts, "samples": samples, "n": config.n,
                                      "prompts_with_wrong_sample_set": bad_sets}),
        checks.llm_failure_share(run.stats, config, "generator"),
    ]


def _samples_result(warehouse: Warehouse, source: str, config: QASamplesConfig, run: _Sampling,
                    generator: LLMResource, results: list[dg.AssetCheckResult]) -> dg.MaterializeResult:
    written_prompts, _, samples = _sample_sets(warehouse, "qa_samples", source, config.n)
    with warehouse.connect() as con:
        finish = dict(con.execute("SELECT finish_reason, count(*) FROM qa_samples WHERE source = ? GROUP BY 1 "
                                  "ORDER BY 2 DESC", [source]).fetchall())
        p50, p90, longest = con.execute(
            "SELECT quantile_cont(completion_tokens, 0.5), quantile_cont(completion_tokens, 0.9), "
            "max(completion_tokens) FROM qa_samples WHERE source = ? AND finish_reason <> 'error'", [source]).fetchone()
        preview = con.execute("SELECT prompt_id, sample_index, request[len(request)].content, response, finish_reason "
                              "FROM qa_samples WHERE source = ? ORDER BY prompt_id, sample_index LIMIT 6",
                              [source]).fetchall()
    ledger = warehouse.ledger_counts("qa_samples", source)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": samples,
            "dagster/column_schema": dg.TableSchema(columns=SAMPLES_COLUMNS),
            "profile": PROFILE.name,
            "prompts_in": run.rows_in,
            "prompts_sampled": written_prompts,
            "n": config.n,
            "sampling": dg.MetadataValue.json({"temperature": config.temperature, "top_p": config.top_p,
                                               "max_tokens": generator.budget(config.max_tokens), "seed": config.seed,
                                               "template_version": qa.TEMPLATE_VERSION}),
            "templates": dg.MetadataValue.json(dict(run.templates)),
            "finish_reasons": dg.MetadataValue.md(histogram_markdown(finish, "finish reason")),
            "completion_tokens_p50": p50 if p50 is not None else "none",
            "completion_tokens_p90": p90 if p90 is not None else "none",
            "completion_tokens_max": longest if longest is not None else "none",
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "preview": dg.MetadataValue.md(markdown_table(["prompt", "i", "request", "response", "finish"], preview, 160)),
            **usage_metadata(run.stats, generator, "generator"),
        },
        check_results=results,
    )


# ---- qa_verified ------------------------------------------------------------------------------------------

def _prompt_batches(warehouse: Warehouse, source: str, batch: int):
    """Seed rows that have samples, with their samples, `batch` prompts at a time (short connections)."""
    cols = ["id", "prompt", "gold_answer", "options", "meta", "language"]
    for rows in warehouse.iter_partition("qa_seed_rows", source, cols, batch):
        ids = [r["id"] for r in rows]
        with warehouse.connect() as con:
            cur = con.execute(
                "SELECT prompt_id, sample_index, verify_method, reference, request, response, finish_reason, "
                "completion_tokens FROM qa_samples WHERE source = ? AND prompt_id IN (SELECT unnest(?::VARCHAR[])) "
                "ORDER BY prompt_id, sample_index", [source, ids])
            names = [d[0] for d in cur.description]
            by_prompt: dict[str, list[dict]] = {}
            for r in cur.fetchall():
                s = dict(zip(names, r))
                by_prompt.setdefault(s["prompt_id"], []).append(s)
        yield [(r, by_prompt[r["id"]]) for r in rows if r["id"] in by_prompt]


@dataclass
class _Verification:
    """qa_verified's state over a partition: verdict counts, examples, and the judge's usage."""

    config: QAVerifiedConfig
    rows_in: int = 0
    samples_in: int = 0
    stats: UsageStats = field(default_factory=UsageStats)
    first_correct: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    examples_kept: list[tuple] = field(default_factory=list)
    examples_rejected: list[tuple] = field(default_factory=list)
    budget: StageBudget | None = None

    def judge_batch(self, batch, checked: dict[str, dict[int, qa.SampleCheck]], judge: LLMResource,
                    warehouse: Warehouse, log) -> dict[tuple[str, int], str]:
        """Free-form samples: the judge's verdicts, round by round (core.qa.JudgeScheduler); returns what the
        judge wrote per (prompt, sample)."""
        rows = {row["id"]: row for row, _ in batch}
        scheduler = qa.JudgeScheduler(self.config.judge_strategy, {
            pid: [s for s in samples if checked[pid][s["sample_index"]].verdict == qa.Verdict.TO_JUDGE]
            for pid, samples in ((row["id"], samples) for row, samples in batch)},
            qa.keep_limit(self.config.keep, self.config.keep_k))
        said: dict[tuple[str, int], str] = {}
        while items := scheduler.next_round():
            answers = judge.ask(lambda structured: [verification_request(
                rows[pid]["prompt"], s["reference"], checked[pid][s["sample_index"]].extracted, structured, self.config)
                for pid, s in items], cache=warehouse, log=log, budget=self.budget)
            self.stats.merge(answers.stats)
            for (pid, s), c, structured in zip(items, answers.completions, answers.structured):
                si = s["sample_index"]
                said[(pid, si)] = c.text if c.ok else (c.error or "")
                verdict = (qa.Verdict.JUDGE_FAILED if not c.ok else
                           {True: qa.Verdict.CORRECT, False: qa.Verdict.JUDGE_INCORRECT,
                            None: qa.Verdict.JUDGE_UNPARSABLE}[qa.parse_verdict(c.text, structured)])
                checked[pid][si] = qa.SampleCheck(verdict, checked[pid][si].extracted)
                for skipped in scheduler.record(pid, verdict == qa.Verdict.CORRECT):
                    checked[pid][skipped["sample_index"]] = qa.SampleCheck(qa.Verdict.NOT_JUDGED)
        return said

    def settle(self, row: dict, samples: list[dict], checked: dict[int, qa.SampleCheck],
               said: dict[tuple[str, int], str], stage, vstage) -> None:
        """One prompt: its kept rows (or its ledger row) and every sample's verdict."""
        pid = row["id"]
        self.samples_in += len(samples)
        kept = qa.choose_kept([(s["sample_index"], s["response"] or "", checked[s["sample_index"]].verdict)
                               for s in samples], self.config.keep, self.config.keep_k)
        correct = [s["sample_index"] for s in samples if checked[s["sample_index"]].verdict == qa.Verdict.CORRECT]
        for s in samples:
            si = s["sample_index"]
            self.verdicts[checked[si].verdict] += 1
            judged = said.get((pid, si))
            vstage.rows.add({"id": f"{pid}:{si}", "prompt_id": pid, "sample_index": si, "verdict": checked[si].verdict,
                             "extracted": checked[si].extracted, "judge_output": judged[-1000:] if judged else None,
                             "kept": si in kept})
        if not kept:
            self.first_correct["none"] += 1
            reasons = Counter(checked[s["sample_index"]].verdict for s in samples)
            stage.ledger.add({"row_id": pid, "reason": "no_correct_sample",
                              "detail": f"0/{len(samples)} correct: " + ", ".join(
                                  f"{k}×{v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))})
            if len(self.examples_rejected) < 3:
                s0 = samples[0]
                c0 = checked.get(s0["sample_index"], qa.SampleCheck(""))
                self.examples_rejected.append((s0["reference"], c0.verdict, c0.extracted, s0["response"]))
            return
        self.first_correct[min(correct)] += 1
        by_index = {s["sample_index"]: s for s in samples}
        for si in kept:
            s = by_index[si]
            request = list(s["request"])
            stage.rows.add({
                "id": qa.kept_row_id(pid, si, self.config.keep), "prompt_id": pid,
                "messages": [*request, {"role": "assistant", "content": (s["response"] or "").strip()}],
                "prompt": request[-1]["content"], "verify_method": s["verify_method"], "kept_sample_index": si,
                "samples_total": len(samples), "samples_correct": len(correct), "first_correct_index": min(correct),
                "extracted_answer": checked[si].extracted})
        if len(self.examples_kept) < 3:
            s = by_index[kept[0]]
            self.examples_kept.append((s["reference"], checked[kept[0]].extracted, s["response"]))


@dg.asset(
    partitions_def=qa_seed_partitions,
    group_name="qa",
    kinds={"duckdb", "llm"},
    pool=GPU_POOL,
    deps=["qa_samples"],
    check_specs=[
        dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="qa_verified", blocking=True,
                          description="Every sampled prompt has kept rows or is in the ledger (no_correct_sample)."),
        dg.AssetCheckSpec(KEPT_VERIFIED, asset="qa_verified", blocking=True,
                          description="Every kept response re-verifies as correct (letter / label re-extracted; "
                                      "judge verdict stored as correct)."),
        dg.AssetCheckSpec(SAMPLES_ACCOUNTED, asset="qa_verified", blocking=True,
                          description="Every sample has one verdict: kept, or rejected with a reason."),
        dg.AssetCheckSpec(YIELD_IN_BAND, asset="qa_verified",
                          description="Prompts kept / prompts sampled lies in the configured band."),
        checks.llm_failure_spec("qa_verified", "judge"),
    ],
)
def qa_verified(context: dg.AssetExecutionContext, config: QAVerifiedConfig, warehouse: Warehouse,
                judge: LLMResource) -> dg.MaterializeResult:
    """Verified-correct responses (the keep rule's choice among each prompt's correct samples; free-form
    answers judged by the `judge`). Verdicts for every sample are in `qa_sample_verdicts`."""
    try:
        qa.keep_limit(config.keep, config.keep_k)
        qa.JudgeScheduler(config.judge_strategy, {})
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    source = context.partition_key
    asset = "qa_verified"
    run = _Verification(config, budget=stage_budget(context, judge, warehouse, "judge"))
    with staged_partition(warehouse, asset, source, KEPT_SCHEMA) as stage, \
            staged_partition(warehouse, "qa_sample_verdicts", source, VERDICT_SCHEMA) as vstage:
        for batch in _prompt_batches(warehouse, source, judge.rows_per_call(config.batch_prompts)):
            run.rows_in += len(batch)
            checked = {row["id"]: qa.check_samples(samples, _options(row)) for row, samples in batch}
            said = run.judge_batch(batch, checked, judge, warehouse, context.log.info)
            for row, samples in batch:
                run.settle(row, samples, checked[row["id"]], said, stage, vstage)
        stage.close()
        vstage.close()
        results = swap_checked(context, warehouse, Swap(asset, Select(
            asset, "SELECT k.id, q.source, q.section, k.prompt, k.messages, q.gold_answer, q.options, q.language, "
                   "q.meta, k.prompt_id, k.verify_method, k.kept_sample_index, k.samples_total, k.samples_correct, "
                   "k.first_correct_index, k.extracted_answer, s.generator, s.finish_reason, s.completion_tokens "
                   "FROM qa_seed_rows q JOIN read_parquet(?) k ON q.id = k.prompt_id "
                   "JOIN qa_samples s ON s.prompt_id = k.prompt_id AND s.sample_index = k.kept_sample_index "
                   "AND s.source = q.source WHERE q.source = ? ORDER BY k.id", [str(stage.rows.path), source]),
            partition=source, ledger_path=stage.ledger.path,
            side_tables=[Select("qa_sample_verdicts",
                                "SELECT v.id, v.prompt_id, CAST(? AS VARCHAR) AS source, v.* EXCLUDE (id, prompt_id) "
                                "FROM read_parquet(?) v ORDER BY v.prompt_id, v.sample_index",
                                [source, str(vstage.rows.path)])]),
            lambda staged: _verified_checks(warehouse, source, run, staged))
    record_stage_run(context, warehouse, settings=config.model_dump(exclude={"batch_prompts", *checks.FAILURE_BOUNDS}),
                     roles={"judge": judge}, usage={"judge": run.stats})
    return _verified_result(warehouse, source, run, judge, results)


def recheck_kept(warehouse: Warehouse, source: str, verified: str = "qa_verified",
                 verdicts: str = "qa_sample_verdicts") -> tuple[int, int, list[str]]:
    """Re-verify every kept row from the tables alone: (kept rows, failures, failing ids). `verified`/`verdicts`:
    the tables to read (the staged copies before a swap).

    Choice and label rows are re-extracted from the kept response against the seed's gold answer; judged rows
    must have a stored verdict of `correct`. Every kept row must also pass the format gate again.
    """
    rows = warehouse.fetch(
        "SELECT v.id, v.verify_method, v.messages[len(v.messages)].content, s.finish_reason, s.reference, v.options, "
        f"d.verdict FROM {verified} v "
        "JOIN qa_samples s ON s.prompt_id = v.prompt_id AND s.sample_index = v.kept_sample_index AND s.source = v.source "
        f"LEFT JOIN {verdicts} d ON d.prompt_id = v.prompt_id AND d.sample_index = v.kept_sample_index "
        "AND d.source = v.source WHERE v.source = ?", [source])
    failing = []
    for rid, method, response, finish, reference, options, stored in rows:
        opts = dict(options) if options else None
        if method == "judge":
            ok = stored == qa.Verdict.CORRECT and qa.format_gate(response, finish) is None
        else:
            ok = qa.check_sample(qa.KIND_BY_METHOD[method], response, finish, gold=reference,
                                 options=opts).verdict == qa.Verdict.CORRECT
        if not ok:
            failing.append(rid)
    return len(rows), len(failing), failing[:10]


@dataclass
class _VerifiedTables:
    """qa_verified's partition as stored: the counts its checks and metadata need."""

    written: int
    prompts_kept: int
    samples_total: int
    verdicts: int
    null_verdicts: int
    kept_flags: int
    by_method: list
    finish: dict
    gen_tokens: tuple

    @staticmethod
    def read(warehouse: Warehouse, source: str, verified: str = "qa_verified",
             verdicts_table: str = "qa_sample_verdicts") -> "_VerifiedTables":
        """The counts of `verified` and `verdicts_table` (the staged copies before a swap)."""
        with warehouse.connect() as con:
            written, prompts_kept = con.execute(f"SELECT count(*), count(DISTINCT prompt_id) FROM {verified} "
                                                "WHERE source = ?", [source]).fetchone()
            samples_total, verdicts, null_verdicts, kept_flags = con.execute(
                "SELECT (SELECT count(*) FROM qa_samples WHERE source = ?), count(*), "
                "count(*) FILTER (WHERE verdict IS NULL), count(*) FILTER (WHERE kept) "
                f"FROM {verdicts_table} WHERE source = ?", [source, source]).fetchone()
            by_method = con.execute(
                "SELECT s.verify_method, count(DISTINCT s.prompt_id), count(DISTINCT v.prompt_id), count(DISTINCT v.id) "
                f"FROM qa_samples s LEFT JOIN {verified} v ON v.prompt_id = s.prompt_id AND v.source = s.source "
                "WHERE s.source = ? GROUP BY 1 ORDER BY 1", [source]).fetchall()
            finish = dict(con.execute("SELECT finish_reason, count(*) FROM qa_samples WHERE source = ? GROUP BY 1 "
                                      "ORDER BY 2 DESC", [source]).fetchall())
            gen_tokens = con.execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
                                     "FROM qa_samples WHERE source = ? AND NOT from_cache", [source]).fetchone()
        return _VerifiedTables(written, prompts_kept, samples_total, verdicts, null_verdicts, kept_flags, by_method,
                               finish, gen_tokens)


def _verified_result(warehouse: Warehouse, source: str, run: _Verification, judge: LLMResource,
                     results: list[dg.AssetCheckResult]) -> dg.MaterializeResult:
    t = _VerifiedTables.read(warehouse, source)
    ledger = warehouse.ledger_counts("qa_verified", source)
    yield_ = t.prompts_kept / run.rows_in if run.rows_in else 0.0
    return dg.MaterializeResult(
        metadata={**_verified_metadata(run, t, ledger, yield_, source), **usage_metadata(run.stats, judge, "judge")},
        check_results=results)


def _verified_checks(warehouse: Warehouse, source: str, run: _Verification,
                     staged: Staged) -> list[dg.AssetCheckResult]:
    """qa_verified's checks on the staged rows and verdicts, before the swap."""
    config = run.config
    verdicts = staged.side["qa_sample_verdicts"]
    t = _VerifiedTables.read(warehouse, source, staged.table, verdicts)
    ledger = staged.ledger_counts(warehouse)
    kept_rows, kept_failures, failing_ids = recheck_kept(warehouse, source, staged.table, verdicts)
    yield_ = t.prompts_kept / run.rows_in if run.rows_in else 0.0
    accounted = (t.verdicts == t.samples_total == run.samples_in and t.null_verdicts == 0
                 and t.kept_flags == t.written)
    return [
        checks.rows_conserved(run.rows_in, t.prompts_kept, sum(ledger.values())),
        dg.AssetCheckResult(check_name=KEPT_VERIFIED, passed=kept_failures == 0, severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"kept_rows": kept_rows, "failing_rows": kept_failures,
                                      "failing_ids": dg.MetadataValue.json(failing_ids)}),
        dg.AssetCheckResult(check_name=SAMPLES_ACCOUNTED, passed=accounted, severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"samples": t.samples_total, "samples_read": run.samples_in,
                                      "verdicts": t.verdicts, "null_verdicts": t.null_verdicts,
                                      "kept_flags": t.kept_flags, "kept_rows": t.written}),
        dg.AssetCheckResult(check_name=YIELD_IN_BAND, passed=config.yield_min <= yield_ <= config.yield_max,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"yield": round(yield_, 4), "band_min": config.yield_min,
                                      "band_max": config.yield_max}),
        checks.llm_failure_share(run.stats, config, "judge"),
    ]


def _verified_metadata(run: _Verification, t: _VerifiedTables, ledger: dict, yield_: float, source: str) -> dict:
    fc = {k: run.first_correct[k] for k in sorted(k for k in run.first_correct if k != "none")}
    if run.first_correct.get("none"):
        fc["none"] = run.first_correct["none"]
    rejected = {k: v for k, v in run.verdicts.most_common() if k != qa.Verdict.CORRECT}
    return {
        "dagster/row_count": t.written,
        "dagster/column_schema": sample_column_schema(KEPT_COLUMNS),
        "profile": PROFILE.name,
        "keep_rule": run.config.keep if run.config.keep != "up_to_k" else f"up_to_k (k={run.config.keep_k})",
        "prompts_in": run.rows_in,
        "prompts_kept": t.prompts_kept,
        "rows_per_kept_prompt": round(t.written / t.prompts_kept, 3) if t.prompts_kept else 0.0,
        "samples_in": run.samples_in,
        "yield": round(yield_, 4),
        "yield_by_verify_method": dg.MetadataValue.md(markdown_table(
            ["method", "prompts", "kept prompts", "rows", "yield"],
            [(m, p, k, r, f"{k / p:.1%}" if p else "-") for m, p, k, r in t.by_method])),
        "first_correct_sample_index": dg.MetadataValue.md(
            histogram_markdown(fc, "first correct sample") + "\n\n" +
            (histogram_png_markdown(fc, f"first correct sample: {source}", "sample index") if fc else "")),
        "sample_verdicts": dg.MetadataValue.md(histogram_markdown(dict(run.verdicts.most_common()), "verdict")),
        "sample_rejections": dg.MetadataValue.json(rejected),
        "finish_reasons": dg.MetadataValue.json(t.finish),
        "generation_tokens_in": int(t.gen_tokens[0]),
        "generation_tokens_out": int(t.gen_tokens[1]),
        "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
        "examples_kept": dg.MetadataValue.md(markdown_table(["reference", "extracted", "response"],
                                                            run.examples_kept, 200)),
        "examples_rejected": dg.MetadataValue.md(markdown_table(["reference", "verdict (sample 0)", "extracted",
                                                                 "response"], run.examples_rejected, 200)),
    }
