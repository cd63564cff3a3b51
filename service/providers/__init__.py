"""The provider modules, by deployment kind.

Adding a provider: write one module with a class that implements providers.base.Provider
and a `build(deployment, secret, deps)` that makes one (one SDK client per deployment and
credential); then add one entry to BUILDERS, and the registry's provider name it serves to
service.catalog.deployments.KINDS, and a line to SETUP_HINTS saying how to configure it.
"""

from __future__ import annotations

from collections.abc import Callable

from service.catalog.deployments import Deployment
from service.providers import google, local, openai
from service.providers.base import Provider, ProviderDeps

BUILDERS: dict[str, Callable[[Deployment, str, ProviderDeps], Provider]] = {
    "local": lambda deployment, secret, deps: local.LocalProvider.build(deployment, secret),
    "openai": openai.OpenAIProvider.build,
    "azure": openai.OpenAIProvider.build,
    "gemini": google.GoogleProvider.build,
    "vertex": google.GoogleProvider.build,
}

# What to set so that a registry provider has a deployment, by its name in models.toml.
SETUP_HINTS = {
    "local": "nothing: it is built in",
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible upstream), or add an "
              "openai or azure deployment",
    "google": "set GEMINI_API_KEY (or GOOGLE_API_KEY), or add a gemini deployment",
    "vertex": "set AIGNE_HUB_VERTEX_API_KEY, or GOOGLE_CLOUD_PROJECT with application default "
              "credentials, or add a vertex deployment",
}
