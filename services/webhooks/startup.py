"""Refuse to start with a WEBHOOK_URL that cannot be used, like any bad setting (exit status 2)."""
from __future__ import annotations


from services.config import SettingsError
from services.errors import AppError
from services.net.policy import FetchPolicy


def check_settings(settings) -> None:
    """Raise SettingsError when WEBHOOK_URL has no secret to be signed with (webhooks are never
    sent unsigned) or names an address the fetch policy refuses (a name's addresses are checked
    at each delivery)."""
    if not settings.webhook_url:
        return
    if not settings.webhook_secret:
        raise SettingsError("WEBHOOK_URL is set but WEBHOOK_SECRET is empty: webhooks are always signed; "
                            "set WEBHOOK_SECRET (whsec_<base64>)")
    try:
        FetchPolicy.from_settings(settings).target(settings.webhook_url)
    except AppError as exc:
        raise SettingsError(f"WEBHOOK_URL is refused by the fetch policy ({exc.code}): {exc.detail}") from None

