"""The default resources of the code location: the one home of what `definitions.py` binds, and where the
environment becomes resource config (every variable is declared in `settings.py`). Resources themselves never
read the environment, except secrets, which are read by name at the moment of use."""

from __future__ import annotations

from typing import Mapping

from iimed_assets import settings
from iimed_assets.profiles import ROLES, Profile, active_profile
from iimed_assets.resources.alerts import AlertWebhook
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.embedder import Embedder
from iimed_assets.resources.llm import role_resource
from iimed_assets.resources.warehouse import Warehouse
from iimed_assets.sources.registry import SOURCES

# every resource key an asset of the graph asks for (the full_graph job passes these on to its runs)
GRAPH_RESOURCE_KEYS = ("warehouse", "catalog", "embedder", *ROLES)


def warehouse_from_env(environ: Mapping[str, str] | None = None) -> Warehouse:
    """$IIMED_WAREHOUSE, $IIMED_DUCKDB_MEMORY_LIMIT (unset: ./data/warehouse.duckdb, 2GB)."""
    return Warehouse(path=settings.value("IIMED_WAREHOUSE", environ),
                     memory_limit=settings.value("IIMED_DUCKDB_MEMORY_LIMIT", environ))


def catalog_from_env(environ: Mapping[str, str] | None = None, mode: str | None = None) -> SourceCatalog:
    """$IIMED_SOURCE_MODE (or `mode`), $IIMED_SOURCE_<NAME>, $IIMED_HUB_MIRROR, $IIMED_SOURCE_MAX_ROWS."""
    max_rows = settings.value("IIMED_SOURCE_MAX_ROWS", environ)
    return SourceCatalog(mode=mode or settings.value("IIMED_SOURCE_MODE", environ),
                         hub_mirror=settings.value("IIMED_HUB_MIRROR", environ),
                         overrides=settings.source_overrides([s.name for s in SOURCES], environ),
                         max_rows=int(max_rows) if max_rows else None)


def embedder_from_env(environ: Mapping[str, str] | None = None) -> Embedder:
    """$IIMED_EMBED_MODEL (unset: the packaged all-MiniLM-L6-v2)."""
    return Embedder(model_path=settings.value("IIMED_EMBED_MODEL", environ))


def alerts_from_env(environ: Mapping[str, str] | None = None) -> AlertWebhook:
    """$IIMED_UI_URL for links; the webhook URL itself is a secret, read when an alert is sent."""
    ui_url = settings.value("IIMED_UI_URL", environ)
    return AlertWebhook(**({"ui_url_base": ui_url} if ui_url else {}))


def default_resources(profile: Profile | None = None, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Warehouse, catalog, embedder, and the three model roles (generator, classifier, judge) of the profile in
    force, each role with its IIMED_<ROLE>_* overrides applied."""
    profile = profile or active_profile(environ)
    return {
        "warehouse": warehouse_from_env(environ),
        "catalog": catalog_from_env(environ),
        "embedder": embedder_from_env(environ),
        **{role: role_resource(role, profile.role(role), environ) for role in ROLES},
    }


def definitions_resources(profile: Profile | None = None, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """default_resources plus the ones only sensors use."""
    return {**default_resources(profile, environ), "alerts": alerts_from_env(environ)}
