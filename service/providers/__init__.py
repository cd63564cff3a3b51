"""The providers, by the name the model registry uses in `provider = "..."`.

Adding a provider: write one module with a class that implements providers.base.Provider
and a `from_settings(settings)` that returns it, or None when its credentials are not set;
then add one entry to PROVIDERS with the hint that says what to set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.config import Settings
from service.errors import ProviderNotConfigured
from service.models import ModelSpec
from service.providers import google, local, openai
from service.providers.base import Provider


@dataclass(frozen=True)
class ProviderEntry:
    from_settings: Callable[[Settings], Provider | None]
    setup_hint: str


PROVIDERS: dict[str, ProviderEntry] = {
    "local": ProviderEntry(lambda settings: local.LocalProvider(), "nothing: it is built in"),
    "openai": ProviderEntry(openai.OpenAIProvider.from_settings,
                            "set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible upstream)"),
    "google": ProviderEntry(google.GoogleProvider.gemini_from_settings,
                            "set GEMINI_API_KEY (or GOOGLE_API_KEY)"),
    "vertex": ProviderEntry(google.GoogleProvider.vertex_from_settings,
                            "set AIGNE_HUB_VERTEX_API_KEY, or GOOGLE_CLOUD_PROJECT with "
                            "application default credentials"),
}


class Providers:
    """The configured providers of this server, looked up by model."""

    def __init__(self, settings: Settings,
                 instrument: Callable[[Provider], Provider] | None = None) -> None:
        """`instrument` wraps each configured provider once (metrics)."""
        self._configured: dict[str, Provider] = {}
        for name, entry in PROVIDERS.items():
            provider = entry.from_settings(settings)
            if provider is not None:
                self._configured[name] = instrument(provider) if instrument else provider

    def is_configured(self, provider: str) -> bool:
        return provider in self._configured

    def for_model(self, spec: ModelSpec) -> Provider:
        provider = self._configured.get(spec.provider)
        if provider is None:
            entry = PROVIDERS.get(spec.provider)
            hint = entry.setup_hint if entry else "add the provider module"
            raise ProviderNotConfigured(
                f"The model '{spec.name}' is served by the {spec.provider} provider, which is "
                f"not configured on this server: {hint}.", param="model")
        return provider

    async def aclose(self) -> None:
        for provider in self._configured.values():
            await provider.aclose()
