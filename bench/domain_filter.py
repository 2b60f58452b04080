"""Quality of the section-3 domain filter on real labelled prompts.

Real prompts from ../shared/data (all 57 MMLU subjects, GSM8K, MATH-500, MBPP, HumanEval, ARC, and the
medical sets MedQA, MedMCQA, PubMedQA, MedXpertQA, MedQuAD) are put in a stand-in r1_trace_rows table and
run through the real assets: r1_prompt_embeddings (all-MiniLM-L6-v2), r1_clusters (faiss K-means, the
default ~40 prompts per cluster), r1_cluster_domains (10 nearest prompts vote), r1_medical_traces.
The clusters are computed once; the vote runs twice:
  1. with a classifier that knows each prompt's true domain: measures what clustering alone loses;
  2. with the laptop profile's embedded classifier (MiniLM nearest exemplars, `EmbeddingClassifier`): the
     default run's real quality; `--classifier llamacpp` measures the embedded SmolLM2-135M LLM vote instead
     (grammar-constrained to the label list).
Medical/biology = the medical sets + the MMLU subjects in core.domains.MMLU_MEDICAL_BIOLOGY.

Mixed clusters (voters split between Medical/Biology and other) get every prompt classified within the
budget `--per-prompt-budget` (extra calls per voter call; 0 = the recipe's pure majority).

    python bench/domain_filter.py [--per-set 150] [--per-mmlu-subject 20] [--per-cluster 20] [--skip-llm]
                                  [--per-prompt-budget 1.0] [--classifier embedding|llamacpp]

Final line: prompts=… medical_kept=… other_kept=… llm_calls=… llm_medical_kept=… llm_other_kept=…
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _texts import labelled_domain_prompts  # noqa: E402

import dagster as dg  # noqa: E402

from iimed_assets.assets.r1 import r1_cluster_domains, r1_clusters, r1_medical_traces, r1_prompt_embeddings  # noqa: E402
from iimed_assets.core.domains import KEEP_DOMAINS  # noqa: E402
from iimed_assets.core.llm import Completion  # noqa: E402
from iimed_assets.resources.embedder import Embedder  # noqa: E402
from iimed_assets.resources.llm import EmbeddingClassifier, LlamaCppLLM, LLMResource  # noqa: E402
from iimed_assets.resources.defaults import warehouse_from_env  # noqa: E402
from iimed_assets.resources.warehouse import Warehouse  # noqa: E402

PARTITION = "general_thought_r1"
_QUESTION = re.compile(r"<question>\n(.*)\n</question>", re.DOTALL)


def _key(text: str) -> str:
    return " ".join(text.split())[:300]


class TrueLabelClassifier(LLMResource):
    """Answers every classification request with the prompt's true domain (looked up by its text)."""

    labels: dict[str, str]

    @property
    def model_id(self) -> str:
        return "true-label-classifier"

    @property
    def backend(self) -> str:
        return "scripted"

    def _run(self, work, on_done, stats) -> None:
        for item in work:
            question = _QUESTION.search(item.request.messages[-1][1]).group(1).removesuffix(" …")
            label = self.labels.get(_key(question)) or next(
                (v for k, v in self.labels.items() if k.startswith(_key(question)[:200])), "Other")
            answer = json.dumps({"domain": label}) if item.request.output else f"Domain: {label}"
            for si in item.sample_indices:
                on_done(item.index, si, Completion(answer, "stop"))


def _shares(warehouse: Warehouse) -> tuple[float, float, int, int]:
    med_total, med_kept, other_total, other_kept = warehouse.fetch_one(
        "SELECT count(*) FILTER (WHERE t.medical), count(m.id) FILTER (WHERE t.medical), "
        "count(*) FILTER (WHERE NOT t.medical), count(m.id) FILTER (WHERE NOT t.medical) "
        "FROM r1_trace_rows t LEFT JOIN r1_medical_traces m ON m.id = t.id")
    return med_kept / med_total, other_kept / other_total, med_total, other_total


def _per_set(warehouse: Warehouse) -> list[tuple]:
    return warehouse.fetch("SELECT t.bench_set, t.medical, count(*), count(m.id) FROM r1_trace_rows t "
                           "LEFT JOIN r1_medical_traces m ON m.id = t.id GROUP BY 1, 2 ORDER BY 2 DESC, 1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-set", type=int, default=150)
    parser.add_argument("--per-mmlu-subject", type=int, default=20)
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--per-cluster", type=int, default=None,
                        help="prompts per cluster for K (default: the asset's rule, 40; the full recipe is ~20)")
    parser.add_argument("--classifier", choices=["embedding", "llamacpp"], default="embedding",
                        help="the embedded default to measure: MiniLM nearest exemplars (the laptop profile) or the "
                             "SmolLM2-135M LLM vote")
    parser.add_argument("--per-prompt-budget", type=float, default=1.0,
                        help="extra per-prompt calls for mixed clusters, per voter call (0: majority only, the recipe)")
    args = parser.parse_args()

    prompts = labelled_domain_prompts(args.per_set, args.per_mmlu_subject)
    seen, rows = set(), []
    for bench_set, domain, text in prompts:
        if _key(text) in seen:
            continue
        seen.add(_key(text))
        rows.append((hashlib.sha1(f"{bench_set}:{text}".encode()).hexdigest()[:16], bench_set, domain, text))
    labels = {_key(text): domain for _, _, domain, text in rows}
    print(f"{len(rows)} labelled prompts, {sum(d in KEEP_DOMAINS for _, _, d, _ in rows)} medical/biology", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IIMED_WAREHOUSE"] = str(Path(tmp) / "bench.duckdb")
        warehouse = warehouse_from_env()
        with warehouse.connect() as con:
            con.execute("CREATE TABLE r1_trace_rows (id VARCHAR, source VARCHAR, section VARCHAR, prompt VARCHAR, "
                        "bench_set VARCHAR, true_domain VARCHAR, medical BOOLEAN)")
            con.executemany("INSERT INTO r1_trace_rows VALUES (?, ?, 'r1_traces', ?, ?, ?, ?)",
                            [(i, PARTITION, text, s, d, d in KEEP_DOMAINS) for i, s, d, text in rows])
        with dg.instance_for_test() as instance:
            def run(assets, resources, **kw):
                started = time.perf_counter()
                result = dg.materialize(assets, instance=instance, resources={"warehouse": warehouse, **resources}, **kw)
                md = result.asset_materializations_for_node(assets[0].op.name)[0].metadata
                print(f"  {assets[0].key.to_user_string()}: {time.perf_counter() - started:.1f}s", flush=True)
                return md

            md = run([r1_prompt_embeddings], {"embedder": Embedder()}, partition_key=PARTITION)
            print(f"  embeddings: {md['prompts_per_s'].value} prompts/s ({md['precision'].value})", flush=True)
            cluster_config = {"prompts_per_cluster": args.per_cluster} if args.per_cluster else {}
            md = run([r1_clusters], {}, run_config={"ops": {"r1_clusters": {"config": cluster_config}}})
            k = md["k"].value
            print(f"  K={k} ({md['method'].value}), objective {md['objective_mean_sq_distance'].value}", flush=True)

            # the recipe's pure cluster-majority labels first, then with per-prompt labels for mixed clusters
            run([r1_cluster_domains], {"classifier": TrueLabelClassifier(labels=labels)},
                run_config={"ops": {"r1_cluster_domains": {"config": {"per_prompt_budget": 0.0}}}})
            run([r1_medical_traces], {})
            majority_med, majority_other, _, _ = _shares(warehouse)
            print(f"true-label classifier, cluster majority only (the recipe): medical/biology kept "
                  f"{majority_med:.1%}, others kept {majority_other:.1%}", flush=True)
            domain_config = {"ops": {"r1_cluster_domains": {"config": {"per_prompt_budget": args.per_prompt_budget}}}}
            md = run([r1_cluster_domains], {"classifier": TrueLabelClassifier(labels=labels)}, run_config=domain_config)
            calls = md["classified_prompts"].value + md["per_prompt_calls"].value
            print(f"  {md['mixed_clusters'].value} mixed clusters, {md['per_prompt_clusters'].value} classified per "
                  f"prompt: {calls} LLM calls ({md['classified_prompts'].value} voters + "
                  f"{md['per_prompt_calls'].value} per-prompt)", flush=True)
            run([r1_medical_traces], {})
            med, other, n_med, n_other = _shares(warehouse)
            print(f"true-label classifier: medical/biology kept {med:.1%} of {n_med}, others kept {other:.1%} "
                  f"of {n_other}", flush=True)
            for s, m, n, kept in _per_set(warehouse):
                if (m and kept < n) or (not m and kept):
                    print(f"    {s:40} {'medical' if m else 'other':8} kept {kept}/{n}")
            line = (f"prompts={len(rows)} medical_prompts={n_med} other_prompts={n_other} k={k} "
                    f"majority_medical_kept={majority_med:.4f} majority_other_kept={majority_other:.4f} "
                    f"medical_kept={med:.4f} other_kept={other:.4f} llm_calls={calls} mixed_clusters="
                    f"{md['mixed_clusters'].value} per_prompt_clusters={md['per_prompt_clusters'].value}")

            if not args.skip_llm:
                embedded = EmbeddingClassifier() if args.classifier == "embedding" else LlamaCppLLM()
                started = time.perf_counter()
                md = run([r1_cluster_domains], {"classifier": embedded}, run_config=domain_config)
                vote_s = time.perf_counter() - started
                run([r1_medical_traces], {})
                llm_med, llm_other, _, _ = _shares(warehouse)
                print(f"embedded classifier {embedded.model_id}: medical/biology kept {llm_med:.1%}, others kept "
                      f"{llm_other:.1%}; "
                      f"median agreement {md['median_agreement'].value}, unknown answers "
                      f"{md['unknown_answers'].value}", flush=True)
                for s_, m, n, kept in _per_set(warehouse):
                    if (m and kept < n) or (not m and kept):
                        print(f"    {s_:40} {'medical' if m else 'other':8} kept {kept}/{n}")
                line += (f" llm_medical_kept={llm_med:.4f} llm_other_kept={llm_other:.4f} "
                         f"llm_median_agreement={md['median_agreement'].value} "
                         f"llm_unknown={md['unknown_answers'].value} classifier={args.classifier} "
                         f"vote_seconds={vote_s:.1f}")
    print(line)


if __name__ == "__main__":
    main()
