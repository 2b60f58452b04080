"""Section 2: synthetic QA by rejection sampling.

    qa_seed_rows ─► qa_samples (n responses per prompt) ─► qa_verified (one correct response per prompt)

`qa_samples` holds every sampled response (one row per prompt × sample, with its finish reason and usage).
`qa_verified` reads each prompt's samples, verifies every one (MCQ letter, yes/no/maybe, or a judge verdict
against the reference for free-form questions), keeps the shortest correct one as a sample row, and writes a
verdict for every sample to `qa_sample_verdicts` in the same transaction. Prompts with no correct sample go
to the ledger as `no_correct_sample`.
"""

import json
from collections import Counter

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
)
from iimed_assets.core import qa
from iimed_assets.core.llm import ChatRequest, UsageStats
from iimed_assets.core.schema import MESSAGE_TYPE
from iimed_assets.partitions import qa_seed_partitions
from iimed_assets.resources.llm import LLMResource, usage_metadata
from iimed_assets.resources.warehouse import Warehouse

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
    ("id", pa.string()), ("messages", pa.list_(MESSAGE_TYPE)), ("prompt", pa.string()),
    ("verify_method", pa.string()), ("kept_sample_index", pa.int32()), ("samples_total", pa.int32()),
    ("samples_correct", pa.int32()), ("first_correct_index", pa.int32()), ("extracted_answer", pa.string()),
])
KEPT_COLUMNS = {
    "verify_method": ("VARCHAR", "how the kept response was verified: choice | label | judge"),
    "kept_sample_index": ("INTEGER", "which sample was kept (the shortest correct one)"),
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


class QASamplesConfig(dg.Config):
    n: int = Field(default=2, description="responses sampled per prompt (the card: 6-10; 2 keeps the default run "
                                          "short on the embedded CPU model)")
    temperature: float = 0.7
    top_p: float = 0.95
    # Sized for the embedded 135M model on 2 CPU cores. A real generator (Qwen3-235B-A22B on the card)
    # needs 8192+: its reasoning is long, and a truncated sample is never accepted.
    max_tokens: int = 320
    seed: int = 0
    batch_prompts: int = 64


class QAVerifiedConfig(dg.Config):
    judge_max_tokens: int = 128
    judge_strategy: str = Field(
        default="all", description="free-form prompts: 'all' judges every well-formed sample (exact statistics); "
                                   "'shortest_first' judges samples shortest first and stops at the first correct one "
                                   "(the same kept sample, fewer judge calls)")
    yield_min: float = Field(default=0.2, description="WARN below this share of prompts kept")
    yield_max: float = Field(default=1.0, description="WARN above this share of prompts kept")
    batch_prompts: int = 64


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


def plan_seed(row) -> tuple[str, str, str, list[dict[str, str]]] | str:
    """(template, verify method, reference, request) for a seed row, or the ledger reason it cannot be used."""
    meta = _meta(row)
    options = _options(row)
    gold = (row.get("gold_answer") or "").strip()
    reference = gold or str(meta.get("long_answer") or "").strip()
    method = ("choice" if options and gold.upper() in options else
              "label" if gold.lower() in qa.YES_NO_LABELS else
              "judge" if reference else None)
    if method is None:
        return "no_reference"
    context = meta.get("context")
    question = meta.get("question") or row["prompt"]
    if context and question.startswith(context):  # the prompt column holds context + question
        question = question[len(context):].strip()
    if options:
        template = qa.MCQ
    elif context or method == "label":
        template = qa.YES_NO if context else "yes_no_bare"
    else:
        template = qa.FREE_FORM
    kind = qa.YES_NO if template == "yes_no_bare" else template
    messages = qa.generation_messages(kind, question, options=options, context=context)
    return template, method, reference.upper() if method == "choice" else reference, messages


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
    ],
)
def qa_samples(context: dg.AssetExecutionContext, config: QASamplesConfig, warehouse: Warehouse,
               llm: LLMResource) -> dg.MaterializeResult:
    """n sampled responses per seed prompt (rendered from the templates in core.qa), each stored with its
    finish reason and token usage; failed samples are stored too, with the error."""
    source = context.partition_key
    asset = "qa_samples"
    rows_in = 0
    prompts_sampled = 0
    templates: Counter = Counter()
    stats_total = UsageStats()
    total = warehouse.fetch_one("SELECT count(*) FROM qa_seed_rows WHERE source = ?", [source])[0]
    progress = Progress(context.log.info, f"qa_samples[{source}] prompts", total)
    with staged_partition(warehouse, asset, source, SAMPLES_SCHEMA) as stage:
        for batch in warehouse.iter_partition("qa_seed_rows", source,
                                              ["id", "prompt", "gold_answer", "options", "meta"], config.batch_prompts):
            rows_in += len(batch)
            planned = []
            for row in batch:
                plan = plan_seed(row)
                if isinstance(plan, str):
                    stage.ledger.add({"row_id": row["id"], "reason": plan,
                                      "detail": "no gold answer and no reference text: nothing can verify a response"})
                else:
                    planned.append((row, *plan))
            requests = [ChatRequest.of(msgs, n=config.n, temperature=config.temperature, top_p=config.top_p,
                                       max_tokens=config.max_tokens, seed=config.seed)
                        for _row, _t, _m, _ref, msgs in planned]
            results, stats = llm.generate(requests, cache=warehouse, log=context.log.info)
            stats_total.merge(stats)
            for (row, template, method, reference, msgs), completions in zip(planned, results):
                prompts_sampled += 1
                templates[template] += 1
                for i, c in enumerate(completions):
                    stage.rows.add({
                        "id": f"{row['id']}:{i}", "prompt_id": row["id"], "sample_index": i, "template": template,
                        "verify_method": method, "reference": reference, "request": msgs, "response": c.text,
                        "finish_reason": c.finish_reason, "error": c.error, "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens, "generator": llm.model_id, "from_cache": c.cached})
            progress(rows_in)
        stage.close()
        warehouse.replace_stage_partition(
            table=asset, asset=asset, partition=source, ledger_path=stage.ledger.path, run_id=context.run.run_id,
            select_sql="SELECT s.id, s.prompt_id, CAST(? AS VARCHAR) AS source, s.* EXCLUDE (id, prompt_id) "
                       "FROM read_parquet(?) s ORDER BY s.prompt_id, s.sample_index",
            params=[source, str(stage.rows.path)])

    with warehouse.connect() as con:
        written_prompts, bad_sets = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT ok) FROM ("
            "SELECT prompt_id, count(*) = ? AND min(sample_index) = 0 AND max(sample_index) = ? - 1 "
            "AND count(DISTINCT sample_index) = ? AS ok FROM qa_samples WHERE source = ? GROUP BY prompt_id)",
            [config.n, config.n, config.n, source]).fetchone()
        samples = con.execute("SELECT count(*) FROM qa_samples WHERE source = ?", [source]).fetchone()[0]
        finish = dict(con.execute("SELECT finish_reason, count(*) FROM qa_samples WHERE source = ? GROUP BY 1 "
                                  "ORDER BY 2 DESC", [source]).fetchall())
        p50, p90, longest = con.execute(
            "SELECT quantile_cont(completion_tokens, 0.5), quantile_cont(completion_tokens, 0.9), "
            "max(completion_tokens) FROM qa_samples WHERE source = ? AND finish_reason <> 'error'", [source]).fetchone()
        preview = con.execute("SELECT prompt_id, sample_index, request[len(request)].content, response, finish_reason "
                              "FROM qa_samples WHERE source = ? ORDER BY prompt_id, sample_index LIMIT 6",
                              [source]).fetchall()
    ledger = warehouse.ledger_counts(asset, source)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": samples,
            "dagster/column_schema": dg.TableSchema(columns=SAMPLES_COLUMNS),
            "prompts_in": rows_in,
            "prompts_sampled": written_prompts,
            "n": config.n,
            "sampling": dg.MetadataValue.json({"temperature": config.temperature, "top_p": config.top_p,
                                               "max_tokens": config.max_tokens, "seed": config.seed,
                                               "template_version": qa.TEMPLATE_VERSION}),
            "templates": dg.MetadataValue.json(dict(templates)),
            "finish_reasons": dg.MetadataValue.md(histogram_markdown(finish, "finish reason")),
            "completion_tokens_p50": p50 if p50 is not None else "none",
            "completion_tokens_p90": p90 if p90 is not None else "none",
            "completion_tokens_max": longest if longest is not None else "none",
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "preview": dg.MetadataValue.md(markdown_table(["prompt", "i", "request", "response", "finish"], preview, 160)),
            **usage_metadata(stats_total, llm),
        },
        check_results=[
            checks.rows_conserved(rows_in, written_prompts, sum(ledger.values())),
            dg.AssetCheckResult(check_name=SAMPLES_COMPLETE, passed=bad_sets == 0 and samples == written_prompts * config.n,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"prompts": written_prompts, "samples": samples, "n": config.n,
                                          "prompts_with_wrong_sample_set": bad_sets}),
        ],
    )


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


def _judge(judge: LLMResource, warehouse: Warehouse, context, items, max_tokens: int, stats_total: UsageStats):
    """items: (row, sample, answer) -> the judge's Completion for each."""
    requests = [ChatRequest.of(qa.verification_messages(row["prompt"], sample["reference"], answer), n=1,
                               temperature=0.0, max_tokens=max_tokens, seed=0) for row, sample, answer in items]
    if not requests:
        return []
    results, stats = judge.generate(requests, cache=warehouse, log=context.log.info)
    stats_total.merge(stats)
    return [r[0] for r in results]


def verify_prompt_samples(row: dict, samples: list[dict]) -> dict[int, qa.SampleCheck]:
    """Deterministic verdicts for every sample of one prompt; free-form samples come back as 'to_judge'."""
    out = {}
    for s in samples:
        out[s["sample_index"]] = qa.check_sample(qa.KIND_BY_METHOD[s["verify_method"]], s["response"] or "", s["finish_reason"], gold=s["reference"],
                                                 options=_options(row))
    return out


@dg.asset(
    partitions_def=qa_seed_partitions,
    group_name="qa",
    kinds={"duckdb", "llm"},
    pool=GPU_POOL,
    deps=["qa_samples"],
    check_specs=[
        dg.AssetCheckSpec(checks.ROWS_CONSERVED, asset="qa_verified", blocking=True,
                          description="Every sampled prompt is kept or in the ledger (no_correct_sample)."),
        dg.AssetCheckSpec(KEPT_VERIFIED, asset="qa_verified", blocking=True,
                          description="Every kept response re-verifies as correct (letter / label re-extracted; "
                                      "judge verdict stored as correct)."),
        dg.AssetCheckSpec(SAMPLES_ACCOUNTED, asset="qa_verified", blocking=True,
                          description="Every sample has one verdict: kept, or rejected with a reason."),
        dg.AssetCheckSpec(YIELD_IN_BAND, asset="qa_verified",
                          description="Prompts kept / prompts sampled lies in the configured band."),
    ],
)
def qa_verified(context: dg.AssetExecutionContext, config: QAVerifiedConfig, warehouse: Warehouse,
                judge: LLMResource) -> dg.MaterializeResult:
    """One verified-correct response per prompt (the shortest correct sample). Verdicts for every sample are
    in `qa_sample_verdicts`."""
    if config.judge_strategy not in ("all", "shortest_first"):
        raise dg.Failure(f"judge_strategy must be 'all' or 'shortest_first', not {config.judge_strategy!r}")
    source = context.partition_key
    asset = "qa_verified"
    stats_total = UsageStats()
    rows_in = samples_in = 0
    first_correct: Counter = Counter()
    verdicts_count: Counter = Counter()
    examples_kept: list[tuple] = []
    examples_rejected: list[tuple] = []
    with staged_partition(warehouse, asset, source, KEPT_SCHEMA) as stage, \
            staged_partition(warehouse, "qa_sample_verdicts", source, VERDICT_SCHEMA) as vstage:
        for batch in _prompt_batches(warehouse, source, config.batch_prompts):
            rows_in += len(batch)
            checks_by_prompt = {row["id"]: verify_prompt_samples(row, samples) for row, samples in batch}
            judge_out: dict[tuple[str, int], str] = {}
            # Free-form: ask the judge. 'all' in one call; 'shortest_first' in rounds, shortest sample first.
            pending = {row["id"]: sorted((s for s in samples if checks_by_prompt[row["id"]][s["sample_index"]].verdict
                                          == "to_judge"), key=lambda s: (len(s["response"] or ""), s["sample_index"]))
                       for row, samples in batch}
            rows_by_id = {row["id"]: row for row, _ in batch}
            while any(pending.values()):
                take = {pid: (q if config.judge_strategy == "all" else q[:1]) for pid, q in pending.items() if q}
                items = [(rows_by_id[pid], s, checks_by_prompt[pid][s["sample_index"]].extracted)
                         for pid, q in take.items() for s in q]
                for (row, s, answer), c in zip(items, _judge(judge, warehouse, context, items,
                                                              config.judge_max_tokens, stats_total)):
                    pid, si = row["id"], s["sample_index"]
                    judge_out[(pid, si)] = c.text if c.ok else (c.error or "")
                    verdict = (qa.Verdict.JUDGE_FAILED if not c.ok else
                               {True: qa.Verdict.CORRECT, False: qa.Verdict.JUDGE_INCORRECT,
                                None: qa.Verdict.JUDGE_UNPARSABLE}[qa.parse_verdict(c.text)])
                    checks_by_prompt[pid][si] = qa.SampleCheck(verdict, answer)
                for pid, q in take.items():
                    done = set(id(s) for s in q)
                    rest = [s for s in pending[pid] if id(s) not in done]
                    solved = any(checks_by_prompt[pid][s["sample_index"]].verdict == qa.Verdict.CORRECT for s in q)
                    if solved and config.judge_strategy == "shortest_first":
                        for s in rest:
                            checks_by_prompt[pid][s["sample_index"]] = qa.SampleCheck(qa.Verdict.NOT_JUDGED)
                        rest = []
                    pending[pid] = rest

            for row, samples in batch:
                pid = row["id"]
                checked = checks_by_prompt[pid]
                samples_in += len(samples)
                kept_index = qa.choose_kept([(s["sample_index"], s["response"] or "", checked[s["sample_index"]].verdict)
                                             for s in samples])
                correct = [s["sample_index"] for s in samples if checked[s["sample_index"]].verdict == qa.Verdict.CORRECT]
                for s in samples:
                    si = s["sample_index"]
                    verdicts_count[checked[si].verdict] += 1
                    vstage.rows.add({"id": f"{pid}:{si}", "prompt_id": pid, "sample_index": si,
                                     "verdict": checked[si].verdict, "extracted": checked[si].extracted,
                                     "judge_output": (judge_out.get((pid, si)) or None) and judge_out[(pid, si)][-1000:],
                                     "kept": si == kept_index})
                if kept_index is None:
                    first_correct["none"] += 1
                    reasons = Counter(checked[s["sample_index"]].verdict for s in samples)
                    stage.ledger.add({"row_id": pid, "reason": "no_correct_sample",
                                      "detail": f"0/{len(samples)} correct: " +
                                                ", ".join(f"{k}×{v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))})
                    if len(examples_rejected) < 3:
                        s0 = samples[0]
                        examples_rejected.append((s0["reference"], checked[0].verdict if 0 in checked else "",
                                                  checked[0].extracted if 0 in checked else "", s0["response"]))
                    continue
                kept = next(s for s in samples if s["sample_index"] == kept_index)
                first_correct[min(correct)] += 1
                request = list(kept["request"])
                stage.rows.add({
                    "id": pid,
                    "messages": [*request, {"role": "assistant", "content": (kept["response"] or "").strip()}],
                    "prompt": request[-1]["content"], "verify_method": kept["verify_method"],
                    "kept_sample_index": kept_index, "samples_total": len(samples), "samples_correct": len(correct),
                    "first_correct_index": min(correct), "extracted_answer": checked[kept_index].extracted,
                })
                if len(examples_kept) < 3:
                    examples_kept.append((kept["reference"], checked[kept_index].extracted, kept["response"]))
        stage.close()
        vstage.close()
        warehouse.replace_stage_partition(
            table=asset, asset=asset, partition=source, ledger_path=stage.ledger.path, run_id=context.run.run_id,
            select_sql="SELECT q.id, q.source, q.section, k.prompt, k.messages, q.gold_answer, q.options, q.language, "
                       "q.meta, k.verify_method, k.kept_sample_index, k.samples_total, k.samples_correct, "
                       "k.first_correct_index, k.extracted_answer, s.generator, s.finish_reason, s.completion_tokens "
                       "FROM qa_seed_rows q JOIN read_parquet(?) k ON q.id = k.id "
                       "JOIN qa_samples s ON s.prompt_id = k.id AND s.sample_index = k.kept_sample_index "
                       "AND s.source = q.source WHERE q.source = ? ORDER BY q.id",
            params=[str(stage.rows.path), source],
            side_tables=[("qa_sample_verdicts",
                          "SELECT v.id, v.prompt_id, CAST(? AS VARCHAR) AS source, v.* EXCLUDE (id, prompt_id) "
                          "FROM read_parquet(?) v ORDER BY v.prompt_id, v.sample_index",
                          [source, str(vstage.rows.path)])])

    return _verified_result(context, config, warehouse, judge, source, rows_in, samples_in, stats_total,
                            first_correct, verdicts_count, examples_kept, examples_rejected)


def recheck_kept(warehouse: Warehouse, source: str) -> tuple[int, int, list[str]]:
    """Re-verify every kept row from the tables alone: (kept rows, failures, failing ids).

    Choice and label rows are re-extracted from the kept response against the seed's gold answer; judged rows
    must have a stored verdict of `correct`. Every kept row must also pass the format gate again.
    """
    rows = warehouse.fetch(
        "SELECT v.id, v.verify_method, v.messages[len(v.messages)].content, s.finish_reason, s.reference, v.options, "
        "d.verdict FROM qa_verified v "
        "JOIN qa_samples s ON s.prompt_id = v.id AND s.sample_index = v.kept_sample_index AND s.source = v.source "
        "LEFT JOIN qa_sample_verdicts d ON d.prompt_id = v.id AND d.sample_index = v.kept_sample_index "
        "AND d.source = v.source WHERE v.source = ?", [source])
    failing = []
    for rid, method, response, finish, reference, options, stored in rows:
        opts = dict(options) if options else None
        if method == "judge":
            ok = stored == qa.Verdict.CORRECT and qa.format_gate(response, finish) is None
        else:
            ok = qa.check_sample(qa.KIND_BY_METHOD[method], response, finish, gold=reference, options=opts).verdict == qa.Verdict.CORRECT
        if not ok:
            failing.append(rid)
    return len(rows), len(failing), failing[:10]


def _verified_result(context, config: QAVerifiedConfig, warehouse: Warehouse, judge: LLMResource, source: str,
                     rows_in: int, samples_in: int, stats_total: UsageStats, first_correct: Counter,
                     verdicts_count: Counter, examples_kept: list, examples_rejected: list) -> dg.MaterializeResult:
    asset = "qa_verified"
    ledger = warehouse.ledger_counts(asset, source)
    with warehouse.connect() as con:
        written = con.execute(f"SELECT count(*) FROM {asset} WHERE source = ?", [source]).fetchone()[0]
        samples_total, verdicts, null_verdicts, kept_flags = con.execute(
            "SELECT (SELECT count(*) FROM qa_samples WHERE source = ?), count(*), "
            "count(*) FILTER (WHERE verdict IS NULL), count(*) FILTER (WHERE kept) "
            "FROM qa_sample_verdicts WHERE source = ?", [source, source]).fetchone()
        by_method = con.execute(
            "SELECT s.verify_method, count(DISTINCT s.prompt_id), count(DISTINCT v.id) FROM qa_samples s "
            "LEFT JOIN qa_verified v ON v.id = s.prompt_id AND v.source = s.source WHERE s.source = ? GROUP BY 1 "
            "ORDER BY 1", [source]).fetchall()
        finish = dict(con.execute("SELECT finish_reason, count(*) FROM qa_samples WHERE source = ? GROUP BY 1 "
                                  "ORDER BY 2 DESC", [source]).fetchall())
        gen_tokens = con.execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
                                 "FROM qa_samples WHERE source = ? AND NOT from_cache", [source]).fetchone()
    kept_rows, kept_failures, failing_ids = recheck_kept(warehouse, source)
    yield_ = written / rows_in if rows_in else 0.0
    accounted = (verdicts == samples_total == samples_in and null_verdicts == 0 and kept_flags == written)
    fc = {k: first_correct[k] for k in sorted((k for k in first_correct if k != "none"))}
    if first_correct.get("none"):
        fc["none"] = first_correct["none"]
    rejected = {k: v for k, v in verdicts_count.most_common() if k != qa.Verdict.CORRECT}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "dagster/column_schema": sample_column_schema(KEPT_COLUMNS),
            "prompts_in": rows_in,
            "samples_in": samples_in,
            "yield": round(yield_, 4),
            "yield_by_verify_method": dg.MetadataValue.md(markdown_table(
                ["method", "prompts", "kept", "yield"],
                [(m, p, k, f"{k / p:.1%}" if p else "-") for m, p, k in by_method])),
            "first_correct_sample_index": dg.MetadataValue.md(
                histogram_markdown(fc, "first correct sample") + "\n\n" +
                (histogram_png_markdown(fc, f"first correct sample: {source}", "sample index") if fc else "")),
            "sample_verdicts": dg.MetadataValue.md(histogram_markdown(dict(verdicts_count.most_common()), "verdict")),
            "sample_rejections": dg.MetadataValue.json(rejected),
            "finish_reasons": dg.MetadataValue.json(finish),
            "generation_tokens_in": int(gen_tokens[0]),
            "generation_tokens_out": int(gen_tokens[1]),
            "rejected_by_reason": dg.MetadataValue.md(histogram_markdown(ledger, "reason")),
            "examples_kept": dg.MetadataValue.md(markdown_table(["reference", "extracted", "response"], examples_kept, 200)),
            "examples_rejected": dg.MetadataValue.md(markdown_table(["reference", "verdict (sample 0)", "extracted",
                                                                     "response"], examples_rejected, 200)),
            **usage_metadata(stats_total, judge, prefix="judge"),
        },
        check_results=[
            checks.rows_conserved(rows_in, written, sum(ledger.values())),
            dg.AssetCheckResult(check_name=KEPT_VERIFIED, passed=kept_failures == 0, severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"kept_rows": kept_rows, "failing_rows": kept_failures,
                                          "failing_ids": dg.MetadataValue.json(failing_ids)}),
            dg.AssetCheckResult(check_name=SAMPLES_ACCOUNTED, passed=accounted, severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"samples": samples_total, "samples_read": samples_in, "verdicts": verdicts,
                                          "null_verdicts": null_verdicts, "kept_flags": kept_flags,
                                          "kept_rows": written}),
            dg.AssetCheckResult(check_name=YIELD_IN_BAND, passed=config.yield_min <= yield_ <= config.yield_max,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"yield": round(yield_, 4), "band_min": config.yield_min,
                                          "band_max": config.yield_max}),
        ],
    )
