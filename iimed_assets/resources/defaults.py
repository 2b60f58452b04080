"""The default resources of the code location: the one home of what `definitions.py` binds, and of the
environment fallbacks behind them (the profile, the role overrides, the warehouse and catalog settings)."""

from __future__ import annotations

from iimed_assets.profiles import ROLES, Profile, active_profile
from iimed_assets.resources.alerts import AlertWebhook
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.embedder import Embedder
from iimed_assets.resources.llm import role_resource
from iimed_assets.resources.warehouse import Warehouse

# every resource key an asset of the graph asks for (the full_graph job passes these on to its runs)
GRAPH_RESOURCE_KEYS = ("warehouse", "catalog", "embedder", *ROLES)


def default_resources(profile: Profile | None = None) -> dict[str, object]:
    """Warehouse, catalog, embedder, and the three model roles (generator, classifier, judge) of the profile in
    force, each role with its IIMED_<ROLE>_* overrides applied."""
    profile = profile or active_profile()
    return {
        "warehouse": Warehouse(),
        "catalog": SourceCatalog(),
        "embedder": Embedder(),
        **{role: role_resource(role, profile.role(role)) for role in ROLES},
    }


def definitions_resources(profile: Profile | None = None) -> dict[str, object]:
    """default_resources plus the ones only sensors use."""
    return {**default_resources(profile), "alerts": AlertWebhook()}
