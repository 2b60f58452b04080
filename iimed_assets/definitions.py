"""The one place the Dagster code location is assembled. Importing it is cheap: no model, engine or
dataset is loaded here (heavy imports live inside resource methods)."""

from __future__ import annotations

import dagster as dg

from iimed_assets.assets.cleaning import CLEANING
from iimed_assets.assets.instruct import instruct_judged, instruct_responses
from iimed_assets.assets.qa import qa_samples, qa_verified
from iimed_assets.assets.r1 import R1_ASSETS
from iimed_assets.assets.sources import SOURCE_ASSETS
from iimed_assets.jobs import full_graph, section_jobs
from iimed_assets.resources.alerts import AlertWebhook
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.embedder import Embedder
from iimed_assets.resources.llm_config import llm_from_env
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.sensors import failure_alerts


def default_resources() -> dict[str, object]:
    return {
        "warehouse": Warehouse(),
        "catalog": SourceCatalog(),
        "embedder": Embedder(),
        # Generation and judging are configured separately (the card used GPT-4o as the judge).
        "llm": llm_from_env("IIMED_LLM"),
        "judge": llm_from_env("IIMED_JUDGE"),
    }


STAGE_ASSETS = [qa_samples, qa_verified, *R1_ASSETS, instruct_responses, instruct_judged, *CLEANING]

defs = dg.Definitions(
    assets=[*SOURCE_ASSETS, *STAGE_ASSETS],
    jobs=[*section_jobs(), full_graph],
    sensors=[failure_alerts],
    resources={**default_resources(), "alerts": AlertWebhook()},
)

# Graph order for `iimed-assets materialize` and the full_graph job (sources first, then the stages).
MATERIALIZE_ORDER = [*SOURCE_ASSETS, *STAGE_ASSETS]
