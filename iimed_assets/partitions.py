"""One StaticPartitionsDefinition per section; keys are the registry's source names."""

from __future__ import annotations

import dagster as dg

from iimed_assets.core.schema import EVAL, INSTRUCT, PUBLIC_REASONING, QA_SEED, R1_TRACES, SECTIONS
from iimed_assets.sources.registry import sources_in

PARTITIONS_BY_SECTION = {
    section: dg.StaticPartitionsDefinition([s.name for s in sources_in(section)]) for section in SECTIONS
}
public_reasoning_partitions = PARTITIONS_BY_SECTION[PUBLIC_REASONING]
qa_seed_partitions = PARTITIONS_BY_SECTION[QA_SEED]
r1_trace_partitions = PARTITIONS_BY_SECTION[R1_TRACES]
instruct_partitions = PARTITIONS_BY_SECTION[INSTRUCT]
eval_partitions = PARTITIONS_BY_SECTION[EVAL]
