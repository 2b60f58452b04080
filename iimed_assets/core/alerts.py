"""Alert messages for failed asset checks and failed runs, as Slack-compatible webhook JSON.

Pure: the sensor (`iimed_assets.sensors`) reads the Dagster event log and hands plain values here.
The payload has a plain `text` (what Slack shows in notifications and what any generic receiver can
read) and `blocks` with the same content laid out; Mattermost, Discord's /slack endpoint, Rocket.Chat
and Teams' Slack-compatible connectors accept this shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

MAX_DETAIL_CHARS = 600
MAX_FACTS = 8


@dataclass(frozen=True)
class Failure:
    """One failure worth one alert. `key` is unique per failure (kind + event-log storage id)."""

    kind: str  # "check_failed" | "run_failed"
    key: str
    title: str
    run_id: str
    job: str = ""
    asset: str = ""
    partition: str | None = None
    check: str = ""
    severity: str = ""  # ERROR | WARN for checks
    blocking: bool = False
    description: str = ""
    facts: dict[str, str] = field(default_factory=dict)

    def log_line(self) -> str:
        where = f" [{self.partition}]" if self.partition else ""
        what = f"{self.asset}{where} check {self.check} ({self.severity}{', blocking' if self.blocking else ''})" \
            if self.kind == "check_failed" else f"run of {self.job or 'an ad-hoc selection'}"
        detail = f": {self.description}" if self.description else ""
        return f"ALERT {self.kind}: {what} in run {self.run_id[:8]}{detail}"


def _clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_failure(*, key: str, run_id: str, job: str, asset: str, partition: str | None, check: str,
                  severity: str, blocking: bool, description: str | None,
                  metadata: dict[str, object]) -> Failure:
    where = f"[{partition}]" if partition else ""
    facts = {str(k): _clip(str(v), 120) for k, v in list(metadata.items())[:MAX_FACTS]}
    return Failure(kind="check_failed", key=key, run_id=run_id, job=job, asset=asset, partition=partition,
                   check=check, severity=severity, blocking=blocking, description=_clip(description or ""),
                   facts=facts, title=f"Check failed: {asset}{where} · {check} ({severity})")


def run_failure(*, key: str, run_id: str, job: str, message: str, assets: list[str] | None = None,
                partition: str | None = None) -> Failure:
    facts = {}
    if assets:
        facts["assets"] = _clip(", ".join(assets), 200)
    if partition:
        facts["partition"] = partition
    return Failure(kind="run_failed", key=key, run_id=run_id, job=job, partition=partition,
                   description=_clip(message), facts=facts, title=f"Run failed: {job or 'asset run'}")


def ui_link(ui_url: str | None, failure: Failure) -> str | None:
    if not ui_url:
        return None
    base = ui_url.rstrip("/")
    if failure.kind == "check_failed" and failure.asset:
        return f"{base}/assets/{quote(failure.asset)}?view=checks"
    return f"{base}/runs/{quote(failure.run_id)}"


def slack_payload(failure: Failure, *, ui_url: str | None = None, source: str = "iimed_assets") -> dict:
    """Slack incoming-webhook JSON: `text` for notifications, `blocks` for the message body."""
    link = ui_link(ui_url, failure)
    icon = ":rotating_light:" if failure.kind == "run_failed" or failure.severity == "ERROR" else ":warning:"
    lines = [f"{icon} *{failure.title}*"]
    if failure.kind == "check_failed":
        lines.append(f"blocking: {'yes — downstream assets did not run' if failure.blocking else 'no'}")
    if failure.description:
        lines.append(failure.description)
    lines.append(f"run `{failure.run_id}`" + (f" · job `{failure.job}`" if failure.job else ""))
    if link:
        lines.append(f"<{link}|open in Dagster>")
    text = "\n".join(lines)
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if failure.facts:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in list(failure.facts.items())[:MAX_FACTS]]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"{source} · alert `{failure.key}`"}]})
    return {"text": text, "blocks": blocks}
