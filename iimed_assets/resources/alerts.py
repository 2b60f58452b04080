"""Where alerts go: a Slack-compatible incoming webhook whose URL is read from an environment variable.

The URL is a secret (a Slack webhook URL is its own credential): it is read at send time, never put in
config, logs or metadata. With no URL set, alerts are only logged (by the sensor).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import dagster as dg
from pydantic import Field

ENV_WEBHOOK_URL = "IIMED_ALERT_WEBHOOK_URL"
ENV_UI_URL = "IIMED_UI_URL"


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept an alert (the sensor retries it on its next tick)."""


class AlertWebhook(dg.ConfigurableResource):
    url_env: str = Field(default=ENV_WEBHOOK_URL, description="env var holding the webhook URL (a secret)")
    ui_url_env: str = Field(default=ENV_UI_URL, description="env var with the Dagster UI base URL for links")
    default_ui_url: str = Field(default="http://127.0.0.1:3000", description="UI base URL when the env var is unset")
    timeout_s: float = Field(default=10.0, description="HTTP timeout per alert")

    def configured(self) -> bool:
        return bool(os.environ.get(self.url_env, "").strip())

    def ui_url(self) -> str:
        return os.environ.get(self.ui_url_env, "").strip() or self.default_ui_url

    def post(self, payload: dict) -> None:
        """POST one alert. Raises AlertDeliveryError (with no URL in the message) when it is refused."""
        url = os.environ.get(self.url_env, "").strip()
        if not url:
            raise AlertDeliveryError(f"no webhook configured (set ${self.url_env})")
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
