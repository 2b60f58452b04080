"""Alert messages for failed asset checks and failed runs, as Slack-compatible webhook JSON.

Pure: the sensor (`iimed_assets.sensors`) reads the Dagster event log and hands plain values here.
The payload has a plain `text` (what Slack shows in notifications and what any generic receiver can
read) and `blocks` with the same content laid out; Mattermost, Discord's /slack endpoint, Rocket.Chat
and Teams' Slack-compatible connectors accept this shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

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


# ---- the webhook URL is a secret ------------------------------------------------------------------------------------

_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f]")
REDACTED = "<webhook URL>"


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook URL (in words that never quote it), or None when it can: http(s), a host, a
    valid port, no whitespace or control characters."""
    if not url:
        return "it is empty"
    if _NOT_IN_URL.search(url):
        return "it contains whitespace or a control character"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return f"it does not parse as a URL ({'bad port' if 'port' in str(exc).lower() else 'malformed host'})"
    if not parts.scheme:
        return "it has no scheme (expected https://...)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is not http or https ({len(parts.scheme)} characters before ':')"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "its port is 0"
    return None


def scrub(text: str, secret: str | None) -> str:
    """`text` with the secret URL, and every part of it that identifies the hook (the path with its tokens, the
    query, credentials in the netloc), replaced by `<webhook URL>`; also in %-encoded form."""
    if not secret or not text:
        return text
    pieces = {secret, secret.strip(), unquote(secret), quote(secret, safe="")}
    try:
        parts = urlsplit(secret.strip())
        pieces |= {parts.path, parts.query, parts.netloc if "@" in parts.netloc else "",
                   unquote(parts.path), unquote(parts.query)}
        # the path's own segments (Slack: /services/T…/B…/<token>): any long one is part of the credential
        pieces |= {seg for seg in parts.path.split("/") if len(seg) >= 8}
    except ValueError:
        pass
    # a URL without a scheme is all path to urlsplit; its long words are the tokens
    pieces |= {w for w in re.split(r"[/\s?&=#:@]+", secret) if len(w) >= 8}
    for piece in sorted((p for p in pieces if p and len(p) >= 4), key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text
