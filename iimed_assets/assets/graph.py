"""The graph's assets in materialization order: the one home of that order (definitions.py, the full_graph
job and `iimed-assets materialize` all read it)."""

from __future__ import annotations

from iimed_assets.assets.cleaning import CLEANING
from iimed_assets.assets.instruct import instruct_judged, instruct_responses
from iimed_assets.assets.qa import qa_samples, qa_verified
from iimed_assets.assets.r1 import R1_ASSETS
from iimed_assets.assets.sources import SOURCE_ASSETS

STAGE_ASSETS = [qa_samples, qa_verified, *R1_ASSETS, instruct_responses, instruct_judged, *CLEANING]
# sources first, then the stages in graph order
MATERIALIZE_ORDER = [*SOURCE_ASSETS, *STAGE_ASSETS]
