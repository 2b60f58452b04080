"""The one place the Dagster code location is assembled. Importing it is cheap: no model, engine or
dataset is loaded here (heavy imports live inside resource methods).

The profile in force (`IIMED_PROFILE`, default laptop; see profiles.py) is resolved once, here: it chose the
stage configs' defaults when the asset modules loaded, it builds the role resources, and the UI shows it in
every asset's definition metadata (`recipe/profile`, `recipe/roles`) and in the job descriptions.
"""

from __future__ import annotations

import dagster as dg

from iimed_assets.assets.graph import MATERIALIZE_ORDER
from iimed_assets.assets.spend import SPEND_ASSETS
from iimed_assets.jobs import full_graph, section_jobs, spend_plan_job
from iimed_assets.profiles import active_profile
from iimed_assets.resources.defaults import definitions_resources
from iimed_assets.sensors import failure_alerts

PROFILE = active_profile()
RESOURCES = definitions_resources(PROFILE)


def _show_profile(spec: dg.AssetSpec) -> dg.AssetSpec:
    roles = {role: RESOURCES[role].describe() for role in ("generator", "classifier", "judge")}
    return spec.merge_attributes(metadata={
        "recipe/profile": f"{PROFILE.name}: {PROFILE.description}",
        "recipe/roles": dg.MetadataValue.json(roles),
    })


defs = dg.Definitions(
    assets=dg.map_asset_specs(_show_profile, [*MATERIALIZE_ORDER, *SPEND_ASSETS]),
    jobs=[*section_jobs(PROFILE), full_graph, spend_plan_job(PROFILE)],
    sensors=[failure_alerts],
    resources=RESOURCES,
)

__all__ = ["defs", "MATERIALIZE_ORDER", "PROFILE", "RESOURCES"]  # MATERIALIZE_ORDER lives in assets/graph.py
