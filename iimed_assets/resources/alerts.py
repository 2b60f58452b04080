"""Where alerts go: a Slack-compatible incoming webhook whose URL is read from an environment variable.

The URL is a secret (a Slack webhook URL is its own credential): it is read at send time, never put in
config, logs or metadata. It is validated before any use (`problem()`: http(s), a host, no whitespace), and every
exception raised while sending is re-raised as an `AlertDeliveryError` whose message is scrubbed of the URL and
which carries no chained exception (Python's own messages quote the URL: "unknown url type: '<URL>'"). With no URL
set, alerts are only logged (by the sensor).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import dagster as dg
from pydantic import Field

from iimed_assets.core.alerts import scrub, webhook_url_problem

ENV_WEBHOOK_URL = "IIMED_ALERT_WEBHOOK_URL"


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept an alert (the sensor retries it on its next tick)."""


class AlertWebhook(dg.ConfigurableResource):
    url_env: str = Field(default=ENV_WEBHOOK_URL, description="env var holding the webhook URL (a secret)")
    ui_url_base: str = Field(default="http://127.0.0.1:3000", description="the Dagster UI's base URL, for links "
                                                                          "($IIMED_UI_URL)")
    timeout_s: float = Field(default=10.0, description="HTTP timeout per alert")

    def configured(self) -> bool:
        return bool(self._url())

    def _url(self) -> str:
        return os.environ.get(self.url_env, "").strip()

    def problem(self) -> str | None:
        """Why the configured URL cannot be used (never quoting it), or None (also when none is configured)."""
        url = self._url()
        problem = webhook_url_problem(url) if url else None
        return f"${self.url_env} is not a usable webhook URL: {problem}" if problem else None

    def scrub(self, text: str) -> str:
        """`text` without the configured URL or its tokens (for anything the sensor logs or returns)."""
        return scrub(text, self._url())

    def ui_url(self) -> str:
        return self.ui_url_base

    def post(self, payload: dict) -> None:
        """POST one alert. Raises AlertDeliveryError (its message scrubbed of the URL, nothing chained) when the
        URL is unusable or the alert is refused, whatever failed underneath."""
        url = self._url()
        if not url:
            raise AlertDeliveryError(f"no webhook configured (set ${self.url_env})")
        problem = self.problem()
        if problem:
            raise AlertDeliveryError(problem)
        try:
            self._send(url, payload)
        except AlertDeliveryError as exc:
            raise AlertDeliveryError(scrub(str(exc), url)) from None
        except Exception as exc:  # noqa: BLE001 - anything underneath may quote the URL; none of it may escape
            raise AlertDeliveryError(f"webhook not reached ({type(exc).__name__}: {scrub(str(exc), url)[:200]})"
                                     ) from None

    def _send(self, url: str, payload: dict) -> None:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise AlertDeliveryError(f"webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertDeliveryError(f"webhook unreachable ({type(reason).__name__})") from None
        if not 200 <= status < 300:
            raise AlertDeliveryError(f"webhook answered HTTP {status}")
