"""Materialize a list of assets partition by partition, in order, recording each as its own run.

Shared by the `iimed-assets materialize` CLI and the `full_graph` job. Dagster runs one partitions
definition per run, and this graph has one per section, so "the whole graph" is a sequence of runs:
every partition of every selected asset, in graph order. Each run lands in the given instance, so the
UI shows its metadata and checks and the alert sensor sees its failures.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import dagster as dg

from iimed_assets.run_health import HOST_TAG, release_dead_runs


@dataclass
class PartitionOutcome:
    asset: str
    partition: str | None
    status: str  # ok | warn | FAILED
    rows: object
    seconds: float
    failed_checks: list[str]
    warned_checks: list[str]
    run_id: str

    def line(self) -> str:
        notes = (" failed checks: " + ",".join(self.failed_checks) if self.failed_checks else "") + \
                (" warnings: " + ",".join(self.warned_checks) if self.warned_checks else "")
        return (f"{self.status:6} {self.asset:24} {self.partition or '':32} rows={self.rows!s:>7} "
                f"{self.seconds:6.1f}s{notes}")


def planned_steps(assets: Sequence[dg.AssetsDefinition],
                  partitions: Sequence[str] | None = None) -> list[tuple[dg.AssetsDefinition, str | None]]:
    steps = []
    for asset in assets:
        keys = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
        steps.extend((asset, key) for key in keys if not partitions or key is None or key in partitions)
    return steps


def materialize_in_order(assets: Sequence[dg.AssetsDefinition], *, instance: dg.DagsterInstance,
                         resources: dict, partitions: Sequence[str] | None = None,
                         log: Callable[[str], None] = print, tags: dict[str, str] | None = None,
                         config: Mapping[str, Mapping[str, Any]] | None = None) -> list[PartitionOutcome]:
    """Run every step in order. `config`: asset name -> config values that override that stage's defaults (the
    profile's) in its runs. First, pool slots held by dead runs of this instance are freed (a killed earlier run
    would block the `gpu` pool for good: there is no daemon here to notice). An interrupted run (SIGTERM, Ctrl-C)
    stops the sequence."""
    release_dead_runs(instance, log)
    steps = planned_steps(assets, partitions)
    config = config or {}
    outcomes: list[PartitionOutcome] = []
    started_all = time.perf_counter()
    run_tags = {**(tags or {}), HOST_TAG: socket.gethostname()}  # lets a later run judge whether this one died
    for i, (asset, key) in enumerate(steps, 1):
        name = asset.key.to_user_string()
        started = time.perf_counter()
        run_config = {"ops": {asset.op.name: {"config": dict(config[name])}}} if name in config else None
        result = dg.materialize([asset], partition_key=key, instance=instance, resources=resources,
                                raise_on_error=False, tags=run_tags, run_config=run_config)
        rows: object = "-"
        for event in result.get_asset_materialization_events():
            md = event.materialization.metadata
            if "dagster/row_count" in md:
                rows = md["dagster/row_count"].value
        failed = [e for e in _check_evaluations(instance, result.run_id) if not e.passed]
        failed_checks = [e.check_name for e in failed if e.severity == dg.AssetCheckSeverity.ERROR]
        warned = [e.check_name for e in failed if e.severity == dg.AssetCheckSeverity.WARN]
        status = "FAILED" if not result.success or failed_checks else ("warn" if warned else "ok")
        outcome = PartitionOutcome(name, key, status, rows, time.perf_counter() - started, failed_checks,
                                   warned, result.run_id)
        outcomes.append(outcome)
        elapsed = time.perf_counter() - started_all
        eta = elapsed / i * (len(steps) - i)
        log(f"{outcome.line()}   [{i}/{len(steps)}, elapsed {elapsed:,.0f}s, eta {eta:,.0f}s]")
        if _interrupted(result):
            log(f"interrupted: stopping after {name}[{key}] ({len(steps) - i} step(s) not run)")
            break
    return outcomes


def _check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    """Every check the run evaluated, from its event log: a blocked swap fails the step before there is a
    MaterializeResult, and its checks are only there."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [r.event_log_entry.dagster_event.event_specific_data for r in records]


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """The run ended on SIGTERM/SIGINT (Dagster records it as an unexpected termination)."""
    failure = result.get_run_failure_event() if not result.success else None
    reason = getattr(failure.event_specific_data, "failure_reason", None) if failure is not None else None
    return reason is not None and reason.value == "UNEXPECTED_TERMINATION"
