"""`failure_alerts`: one alert per failed asset check (any severity, blocking or not) and per failed run.

The sensor follows the runs that finished since its cursor, through Dagster's public instance API:
`fetch_run_status_changes` lists the runs that succeeded, failed or were canceled (it reads the cross-run
index, on every storage, including the default per-run SQLite shards), and `get_records_for_run` lists
each of those runs' check evaluations. A failed check is therefore alerted when its run ends (a blocking
ERROR ends it at once). Each failure is logged and posted to the webhook once: the cursor moves past a
run only after all its alerts went out, and within a run past each alert delivered, so a webhook outage
delays alerts (retried on the next tick, in order) instead of dropping or repeating them. With no webhook
configured the failures are logged only. On its very first tick the sensor starts from the current end of
the event log, like Dagster's own run-failure sensors, so turning it on does not replay history.

The webhook URL is a secret: an unusable one (no scheme, a space, no host) is reported on every tick by what is
wrong with it, never by its text, and its alerts wait (like an outage) until it is fixed; everything the sensor
logs, returns or raises is scrubbed of the URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg

from iimed_assets.core.alerts import Failure, check_failure, run_failure, slack_payload
from iimed_assets.resources.alerts import AlertDeliveryError, AlertWebhook

SENSOR_NAME = "failure_alerts"
BATCH = 100  # finished runs read per status per tick
FINISHED = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_CANCELED)


@dataclass
class AlertCursor:
    """Per run status, the storage id of the last finished run dealt with; `partial` is the run whose alerts
    were being delivered when the webhook refused one: {"run_id", "after": storage id of its last check sent}."""

    after: dict[str, int]
    partial: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor | None:
        if not raw:
            return None
        data = json.loads(raw)
        return cls({k: int(v) for k, v in data["after"].items()}, data.get("partial") or {})

    def dumps(self) -> str:
        return json.dumps({"after": self.after, "partial": self.partial})


def _metadata_values(metadata: dict) -> dict[str, object]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def _job_name(run) -> str:
    name = run.job_name if run else ""
    return "" if name.startswith("__") else name  # __ephemeral_asset_job__: an ad-hoc asset selection


def _finished_runs(instance: dg.DagsterInstance, status: dg.DagsterEventType, after: int) -> list:
    """Run status events of one kind after a storage id, oldest first."""
    return list(instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(status, after_storage_id=after), limit=BATCH, ascending=True).records)


def _latest_storage_id(instance: dg.DagsterInstance, status: dg.DagsterEventType) -> int:
    records = instance.fetch_run_status_changes(status, limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def _check_failures(instance: dg.DagsterInstance, run) -> list[tuple[int, Failure]]:
    """(storage id, failure) for every failed check evaluation of a run, oldest first."""
    out = []
    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is None or evaluation.passed:
            continue
        partition = getattr(evaluation, "partition", None) or run.tags.get("dagster/partition")
        out.append((record.storage_id, check_failure(
            key=f"check:{record.storage_id}", run_id=run.run_id, job=_job_name(run),
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


def _run_failure(record, run) -> Failure:
    event = record.event_log_entry.dagster_event
    data = event.event_specific_data if event else None
    message = _root_cause(getattr(data, "error", None)) or record.event_log_entry.user_message or \
        (event.message if event else "") or "run failed"
    assets = sorted(k.to_user_string() for k in (run.asset_selection or [])) if run else []
    return run_failure(key=f"run:{record.storage_id}", run_id=record.run_id, job=_job_name(run), message=message,
                       assets=assets, partition=run.tags.get("dagster/partition") if run else None)


def _alerts_of(instance: dg.DagsterInstance, record) -> list[tuple[int, Failure]]:
    """A finished run's alerts, in order: its failed checks, then the run failure itself (id 0: sent last)."""
    run = instance.get_run_by_id(record.run_id)
    alerts = _check_failures(instance, run) if run else []
    if record.event_log_entry.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE:
        alerts.append((0, _run_failure(record, run)))
    return alerts


def evaluate_alerts(context: dg.SensorEvaluationContext, alerts: AlertWebhook) -> dg.SkipReason:
    """One tick: alert on the failures of newly finished runs, advance the cursor past every alert dealt with."""
    instance = context.instance
    problem = alerts.problem()
    if problem:
        context.log.error(f"{problem}; alerts wait until it is fixed")
    cursor = AlertCursor.parse(context.cursor)
    if cursor is None:
        start = {s.value: _latest_storage_id(instance, s) for s in FINISHED}
        context.update_cursor(AlertCursor(start).dumps())
        return dg.SkipReason(f"started; alerting on runs that finish after events {start}"
                             + (f"; {problem}" if problem else ""))

    sent = logged = 0
    undelivered: str | None = None
    for status in FINISHED:
        for record in _finished_runs(instance, status, cursor.after.get(status.value, 0)):
            done_in_run = cursor.partial.get("after", -1) if cursor.partial.get("run_id") == record.run_id else -1
            for storage_id, failure in _alerts_of(instance, record):
                if 0 < storage_id <= done_in_run:
                    continue  # delivered on an earlier tick
                context.log.error(alerts.scrub(failure.log_line()))
                if alerts.configured():
                    try:
                        alerts.post(slack_payload(failure, ui_url=alerts.ui_url()))
                        sent += 1
                    except AlertDeliveryError as exc:
                        undelivered = f"{failure.key}: {exc}"
                        context.log.warning(alerts.scrub(f"alert {failure.key} not delivered ({exc}); retrying next tick"))
                        break
                else:
                    logged += 1
                if storage_id:
                    cursor.partial = {"run_id": record.run_id, "after": storage_id}
            if undelivered:
                break
            cursor.after[status.value] = record.storage_id
            cursor.partial = {}
        context.update_cursor(cursor.dumps())
        if undelivered:
            break
    summary = f"{sent} alerts posted, {logged} logged only" + \
        ("" if alerts.configured() else f" (set ${alerts.url_env} to post them)")
    if undelivered:
        summary += f"; waiting to deliver {undelivered}"
    return dg.SkipReason(summary)


@dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Posts every failed asset check (any severity) and every failed run to the webhook in "
                       "$IIMED_ALERT_WEBHOOK_URL (Slack-compatible JSON) and logs it; one alert per failure.")
def failure_alerts(context: dg.SensorEvaluationContext, alerts: AlertWebhook) -> dg.SkipReason:
    try:
        skip = evaluate_alerts(context, alerts)
    except Exception as exc:  # noqa: BLE001 - Dagster stores a tick's error (schedules.db): never with the URL
        raise RuntimeError(alerts.scrub(f"{type(exc).__name__}: {exc}")) from None
    return dg.SkipReason(alerts.scrub(skip.skip_message or ""))
