"""Stage records: what produced a stage's rows (backend, model, sampling, thresholds, K, template hash...), per
partition, with a hash of the settings so that a rerun with other settings is visible instead of averaged away.

The warehouse keeps every record (`stage_runs`); the current one of a partition is its latest. Pure: the
`Warehouse` stores and reads, this groups and compares.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

ALL = "all"  # the partition of an unpartitioned stage


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def settings_hash(params: Mapping[str, Any]) -> str:
    """12 hex digits over the canonical JSON of the settings: equal settings, equal hash."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()[:12]


def text_fingerprint(*parts: Any) -> str:
    """A short hash of prompt-template text (or anything rendered from it): a template edit changes it."""
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class StageRun:
    """One recorded materialization of a stage partition."""

    asset: str
    partition: str
    run_id: str | None
    settings_hash: str
    params: Mapping[str, Any]
    stats: Mapping[str, Any]
    recorded_at: datetime | None = None
    seq: int = 0


@dataclass(frozen=True)
class SettingsGroup:
    """Partitions of one stage whose current rows were produced with the same settings."""

    settings_hash: str
    params: Mapping[str, Any]
    partitions: tuple[str, ...]
    runs: tuple[StageRun, ...]

    def stat_total(self, key: str) -> float:
        return sum(float(r.stats.get(key) or 0) for r in self.runs if isinstance(r.stats.get(key), (int, float)))


@dataclass(frozen=True)
class Superseded:
    """A partition rerun with other settings: the settings of its earlier run and of its current one."""

    partition: str
    earlier: StageRun
    current: StageRun


@dataclass
class StageSettings:
    """Everything the card and the report say about one stage's settings."""

    asset: str
    groups: list[SettingsGroup] = field(default_factory=list)
    superseded: list[Superseded] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        """Partitions in the current table were produced with different settings."""
        return len(self.groups) > 1

    def differing_keys(self) -> list[str]:
        """The settings whose values differ between groups (what the card lists per group)."""
        if len(self.groups) < 2:
            return []
        keys = sorted({k for g in self.groups for k in g.params})
        return [k for k in keys if len({canonical_json(g.params.get(k)) for g in self.groups}) > 1]


def current_runs(history: Iterable[StageRun]) -> list[StageRun]:
    """The latest record of every (asset, partition)."""
    latest: dict[tuple[str, str], StageRun] = {}
    for run in sorted(history, key=lambda r: r.seq):
        latest[(run.asset, run.partition)] = run
    return sorted(latest.values(), key=lambda r: (r.asset, r.partition))


def stage_settings(history: Sequence[StageRun]) -> dict[str, StageSettings]:
    """Per stage: its current partitions grouped by settings, and the partitions whose earlier run had other
    settings than the current one (a rerun with other settings; the latest differing earlier run is named)."""
    out: dict[str, StageSettings] = {}
    current = current_runs(history)
    by_stage: dict[str, dict[str, list[StageRun]]] = defaultdict(lambda: defaultdict(list))
    for run in current:
        by_stage[run.asset][run.settings_hash].append(run)
    for asset, groups in by_stage.items():
        settings = out.setdefault(asset, StageSettings(asset))
        for h, runs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0].partition)):
            settings.groups.append(SettingsGroup(h, runs[-1].params, tuple(r.partition for r in runs), tuple(runs)))
    now = {(r.asset, r.partition): r for r in current}
    for run in sorted(history, key=lambda r: -r.seq):
        cur = now.get((run.asset, run.partition))
        if cur is None or run.seq >= cur.seq or run.settings_hash == cur.settings_hash:
            continue
        stage = out[run.asset]
        if not any(s.partition == run.partition for s in stage.superseded):
            stage.superseded.append(Superseded(run.partition, run, cur))
    for stage in out.values():
        stage.superseded.sort(key=lambda s: s.partition)
    return out


def flat_items(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as dotted keys (`generator.model`), for one-line display."""
    items: list[tuple[str, Any]] = []
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            items.extend(flat_items(v, key + "."))
        else:
            items.append((key, v))
    return items


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def settings_line(params: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """`k=v, k=v` over every setting (or only `keys`), dotted for nested ones."""
    items = flat_items(params)
    if keys is not None:
        wanted = set(keys)
        items = [(k, v) for k, v in items if k in wanted or k.split(".")[0] in wanted]
    return ", ".join(f"{k}={format_value(v)}" for k, v in items)
