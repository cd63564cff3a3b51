"""The API keys the configuration gives (AIGNE_HUB_API_KEYS, AIGNE_HUB_ADMIN_API_KEYS), kept
in the database like any key: made at start-up, their admin flag following the setting, and
revoked once they are no longer configured."""

from __future__ import annotations

from service.accounting.keys import KeyStore
from service.config import Settings


async def ensure_configured_keys(keys: KeyStore, settings: Settings) -> None:
    """The keys of AIGNE_HUB_API_KEYS and AIGNE_HUB_ADMIN_API_KEYS, in the database (so they
    have ids, usage and limits like any key); a key's admin flag follows the setting. Keys
    that came from these settings and are no longer in them are revoked."""
    configured = []
    for variable, tokens, admin in (("AIGNE_HUB_API_KEYS", settings.static_api_keys, False),
                                    ("AIGNE_HUB_ADMIN_API_KEYS",
                                     settings.static_admin_api_keys, True)):
        for token in tokens:
            key = await keys.ensure(token, f"from {variable} ({token[:8]}…)", admin=admin,
                                    source="env")
            configured.append(key.id)
    await keys.revoke_unconfigured(configured)
