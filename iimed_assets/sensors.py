"""`failure_alerts`: one alert per failed asset check (any severity, blocking or not) and per failed run.

The sensor reads the instance event log from its cursor: the storage id of the last check-evaluation
event and of the last run-failure event it has dealt with. Each failure is logged and posted to the
webhook once; the cursor moves past an event only after its alert went out, so a webhook outage delays
alerts (they are retried on the next tick, in order) instead of dropping them. With no webhook
configured the failures are logged only. On its very first tick the sensor starts from the current
end of the event log, like Dagster's own run-failure sensors, so turning it on does not replay history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

from iimed_assets.core.alerts import Failure, check_failure, run_failure, slack_payload
from iimed_assets.resources.alerts import AlertDeliveryError, AlertWebhook

SENSOR_NAME = "failure_alerts"
BATCH = 200


@dataclass
class AlertCursor:
    check_after: int
    run_after: int

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor | None:
        if not raw:
            return None
        data = json.loads(raw)
        return cls(int(data["check_after"]), int(data["run_after"]))

    def dumps(self) -> str:
        return json.dumps({"check_after": self.check_after, "run_after": self.run_after})


def _metadata_values(metadata: dict) -> dict[str, object]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def _index_records(instance: dg.DagsterInstance, event_type: DagsterEventType, after: int) -> list:
    """Events of one type after a storage id, oldest first, from the cross-run index.

    Dagster's default SQLite storage shards events per run, but mirrors check evaluations and run
    status changes into its index shard, whose ids are global. Read there, as Dagster's own
    fetch_run_status_changes does; other storages (Postgres, consolidated SQLite) have one table.
    """
    records_filter = dg.EventRecordsFilter(event_type, after_cursor=after)
    storage = instance.event_log_storage
    if storage.is_run_sharded and isinstance(storage, SqlEventLogStorage):
        return list(SqlEventLogStorage.get_event_records(storage, records_filter, limit=BATCH, ascending=True))
    return list(instance.get_event_records(records_filter, limit=BATCH, ascending=True))


def _job_name(run) -> str:
    name = run.job_name if run else ""
    return "" if name.startswith("__") else name  # __ephemeral_asset_job__: an ad-hoc asset selection


def _check_failures(instance: dg.DagsterInstance, after: int) -> list[tuple[int, Failure | None]]:
    """(storage id, failure or None for a passed check) for check evaluations after `after`."""
    records = _index_records(instance, DagsterEventType.ASSET_CHECK_EVALUATION, after)
    out: list[tuple[int, Failure | None]] = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is None or evaluation.passed:
            out.append((record.storage_id, None))
            continue
        run = instance.get_run_by_id(record.run_id)
        partition = getattr(evaluation, "partition", None) or (run.tags.get("dagster/partition") if run else None)
        out.append((record.storage_id, check_failure(
            key=f"check:{record.storage_id}", run_id=record.run_id, job=_job_name(run),
            asset=evaluation.asset_key.to_user_string(), partition=partition,
            check=evaluation.check_name, severity=evaluation.severity.value,
            blocking=bool(getattr(evaluation, "blocking", False)), description=evaluation.description,
            metadata=_metadata_values(evaluation.metadata))))
    return out


def _root_cause(error) -> str:
    """The innermost error of a chain (the op's own exception, not Dagster's step wrapper)."""
    if error is None:
        return ""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return f"{error.cls_name}: {error.message.strip()}" if error.cls_name else error.message.strip()


def _run_failures(instance: dg.DagsterInstance, after: int) -> list[tuple[int, Failure]]:
    records = _index_records(instance, DagsterEventType.RUN_FAILURE, after)
    out = []
    for record in records:
        event = record.event_log_entry.dagster_event
        run = instance.get_run_by_id(record.run_id)
        data = event.event_specific_data if event else None
        message = _root_cause(getattr(data, "error", None)) or record.event_log_entry.user_message or \
            (event.message if event else "") or "run failed"
        assets = sorted(k.to_user_string() for k in (run.asset_selection or [])) if run else []
        out.append((record.storage_id, run_failure(
            key=f"run:{record.storage_id}", run_id=record.run_id, job=_job_name(run),
            message=message, assets=assets, partition=run.tags.get("dagster/partition") if run else None)))
    return out


def evaluate_alerts(context: dg.SensorEvaluationContext, alerts: AlertWebhook) -> dg.SkipReason:
    """One tick: alert on new failures, advance the cursor past every event dealt with."""
    instance = context.instance
    cursor = AlertCursor.parse(context.cursor)
    if cursor is None:
        start = instance.event_log_storage.get_maximum_record_id() or 0
        context.update_cursor(AlertCursor(start, start).dumps())
        return dg.SkipReason(f"started; alerting on failures after event {start}")

    sent = logged = 0
    undelivered: str | None = None
    for kind, items in (("check", _check_failures(instance, cursor.check_after)),
                        ("run", _run_failures(instance, cursor.run_after))):
        for storage_id, failure in items:
            if failure is not None:
                context.log.error(failure.log_line())
                if alerts.configured():
                    try:
                        alerts.post(slack_payload(failure, ui_url=alerts.ui_url()))
                        sent += 1
                    except AlertDeliveryError as exc:
                        undelivered = f"{failure.key}: {exc}"
                        context.log.warning(f"alert {failure.key} not delivered ({exc}); retrying next tick")
                        break
                else:
                    logged += 1
            if kind == "check":
                cursor.check_after = storage_id
            else:
                cursor.run_after = storage_id
        context.update_cursor(cursor.dumps())
    summary = f"{sent} alerts posted, {logged} logged only" + \
        ("" if alerts.configured() else f" (set ${alerts.url_env} to post them)")
    if undelivered:
        summary += f"; waiting to deliver {undelivered}"
    return dg.SkipReason(summary)


@dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Posts every failed asset check (any severity) and every failed run to the webhook in "
                       "$IIMED_ALERT_WEBHOOK_URL (Slack-compatible JSON) and logs it; one alert per failure.")
def failure_alerts(context: dg.SensorEvaluationContext, alerts: AlertWebhook) -> dg.SkipReason:
    return evaluate_alerts(context, alerts)
