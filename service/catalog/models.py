"""The model registry, kept as data: one ModelSpec (model_spec.py) per model name, and
which spec serves a name once its model has retired upstream.

`models.toml` beside this module holds the defaults; an operator's file
(AIGNE_HUB_MODELS_FILE) adds models or overrides fields of existing ones, so a new model or a
new shutdown date is a config entry, not code. An entry may name a `base` entry whose fields
it starts from. Prices are data too: `[prices.NAME]` tables (see pricing.py) attach to the
model of that name and to the entries based on it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from service.catalog.model_spec import Lifecycle, ModelSpec
from service.catalog.sizes import Size
from service.errors import NotFound

# Lifecycle, ModelSpec and Size are the registry's vocabulary: callers import them from here.
__all__ = ["DEFAULTS_FILE", "Lifecycle", "ModelRegistry", "ModelSpec", "Route", "Size",
           "lifecycle_on", "load_registry"]

DEFAULTS_FILE = Path(__file__).with_name("models.toml")


@dataclass(frozen=True)
class Route:
    """Which spec validates a request (`requested`) and which one serves it (`served`)."""

    requested: ModelSpec
    served: ModelSpec
    lifecycle: Lifecycle  # the requested model's, today

    @property
    def translated(self) -> bool:
        return self.requested.name != self.served.name


class ModelRegistry:
    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        for spec in self._specs.values():
            if spec.successor and spec.successor not in self._specs:
                raise ValueError(f"{spec.name}: successor {spec.successor} is not a model")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise NotFound(
                f"The model '{name}' does not exist here; GET /api/models lists the models.",
                param="model", reason="MODEL_NOT_FOUND",
            )
        return spec

    def route(self, name: str, today: date | None = None) -> Route:
        """The spec that validates `name` and the one that serves it (its successor if retired).

        A deprecated model whose shutdown date has come counts as retired: the registry needs
        no edit on the day."""
        today = today or datetime.now(UTC).date()
        requested = self.get(name)
        served = requested
        seen = {requested.name}
        while lifecycle_on(served, today) is Lifecycle.RETIRED:
            if not served.serve_retired or served.successor is None:
                raise NotFound(
                    f"The model '{name}' was retired upstream on {served.shutdown_on}; "
                    f"use '{served.successor}' instead.",
                    param="model", reason="MODEL_RETIRED",
                    metadata={"successor": served.successor or ""},
                )
            served = self.get(served.successor)
            if served.name in seen:
                raise ValueError(f"successor cycle at {served.name}")
            seen.add(served.name)
        return Route(requested, served, lifecycle_on(requested, today))


def lifecycle_on(spec: ModelSpec, today: date) -> Lifecycle:
    """Where `spec` stands upstream on `today`."""
    if (spec.lifecycle is Lifecycle.DEPRECATED and spec.shutdown_on is not None
            and spec.shutdown_on <= today and spec.successor):
        return Lifecycle.RETIRED
    return spec.lifecycle


def load_registry(extra_file: Path | None = None) -> ModelRegistry:
    """The default registry, with the entries and prices of `extra_file` merged over it.

    An entry of `extra_file` overrides the fields it names of the model it names, and
    nothing else: models whose defaults were based on it keep their own fields."""
    defaults, prices = _read(DEFAULTS_FILE)
    entries = _resolve(_priced(defaults, prices, {}), {})
    if extra_file is not None:
        extra_entries, extra_prices = _read(extra_file)
        entries = _resolve(_priced(extra_entries, extra_prices, entries), entries)
    return ModelRegistry(ModelSpec(name=name, **fields) for name, fields in entries.items())


def _priced(entries: dict[str, dict[str, Any]], prices: dict[str, Any],
            known: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`entries` with each price table set on its model, before bases are resolved: a default
    price then carries over to the entries based on its model."""
    priced = {name: dict(fields) for name, fields in entries.items()}
    for name, price in prices.items():
        if name in priced:
            priced[name]["price"] = price
        elif name in known:
            priced[name] = {"price": price}
    return priced


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    entries = {name: dict(fields) for name, fields in data.get("models", {}).items()}
    return entries, dict(data.get("prices", {}))


def _resolve(entries: dict[str, dict[str, Any]],
             known: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`known` with `entries` laid over it, each `base = "..."` replaced by that entry's fields."""
    resolved = dict(known)
    pending = dict(entries)

    def fields_of(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in chain:
            raise ValueError(f"models: base cycle {' -> '.join((*chain, name))}")
        if name in pending:
            entry = pending.pop(name)
            base = entry.pop("base", None)
            start = fields_of(base, (*chain, name)) if base else known.get(name, {})
            resolved[name] = {**start, **entry}
        if name not in resolved:
            raise ValueError(f"models: '{chain[-1]}' is based on unknown model '{name}'")
        return resolved[name]

    for name in list(entries):
        fields_of(name, ())
    return resolved
