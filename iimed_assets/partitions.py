"""One StaticPartitionsDefinition per section; keys are the registry's source names."""

from __future__ import annotations

import dagster as dg

from iimed_assets.sources.registry import sources_in


def _partitions(section: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([s.name for s in sources_in(section)])


public_reasoning_partitions = _partitions("public_reasoning")
qa_seed_partitions = _partitions("qa_seed")
r1_trace_partitions = _partitions("r1_traces")
instruct_partitions = _partitions("instruct")
eval_partitions = _partitions("eval")

PARTITIONS_BY_SECTION = {
    "public_reasoning": public_reasoning_partitions,
    "qa_seed": qa_seed_partitions,
    "r1_traces": r1_trace_partitions,
    "instruct": instruct_partitions,
    "eval": eval_partitions,
}
