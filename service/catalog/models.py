"""The model registry, kept as data.

`models.toml` beside this module holds the defaults; an operator's file
(AIGNE_HUB_MODELS_FILE) adds models or overrides fields of existing ones, so a new model or a
new shutdown date is a config entry, not code. An entry may name a `base` entry whose fields
it starts from. Prices are data too: `[prices.NAME]` tables (see pricing.py) attach to the
model of that name and to the entries based on it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.catalog.pricing import Price
from service.errors import NotFound

DEFAULTS_FILE = Path(__file__).with_name("models.toml")
_EDGE = re.compile(r"^[0-9]{1,6}$")  # an edge in pixels, as `size` writes it
# Models that take any WxH map it to their nearest aspect ratio and size class; the largest
# class any of them makes is 4K. A bigger ask would only be an upscale (or a memory bomb).
ASPECT_RATIO_MAX_EDGE = 4096


class Lifecycle(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


@dataclass(frozen=True, order=True)
class Size:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size | None:
        w, sep, h = text.partition("x")
        if not sep or not all(_EDGE.match(edge) for edge in (w, h)):
            return None
        return cls(int(w), int(h))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def ratio(self) -> float:
        return max(self.width, self.height) / min(self.width, self.height)


class SizeRule(BaseModel):
    """Free sizes `WxH` within bounds, for models that are not limited to a list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    multiple_of: int = 1
    min_edge: int = 1
    max_edge: int
    max_ratio: float = math.inf
    min_pixels: int = 0
    max_pixels: int | None = None

    def problem(self, size: Size) -> str | None:
        """Why `size` breaks this rule, or None when it fits."""
        if size.width % self.multiple_of or size.height % self.multiple_of:
            return f"both edges must be multiples of {self.multiple_of}"
        if min(size.width, size.height) < self.min_edge:
            return f"each edge must be at least {self.min_edge} pixels"
        if max(size.width, size.height) > self.max_edge:
            return f"the long edge must be at most {self.max_edge} pixels"
        if size.ratio > self.max_ratio:
            return f"the aspect ratio must be at most {self.max_ratio:g}:1"
        if size.pixels < self.min_pixels:
            return f"the image must have at least {self.min_pixels} pixels"
        if self.max_pixels is not None and size.pixels > self.max_pixels:
            return f"the image must have at most {self.max_pixels} pixels"
        return None

    def nearest(self, size: Size) -> Size:
        """The allowed size closest to `size` in aspect ratio first, then in pixel count."""
        landscape = size.width >= size.height
        m = self.multiple_of
        ratio = min(size.ratio, self.max_ratio)
        best: tuple[float, float, Size] | None = None
        for short in range(_ceil_to(self.min_edge, m), self.max_edge + 1, m):
            exact_long = short * ratio
            for long in {_ceil_to(int(exact_long), m), int(exact_long) // m * m}:
                candidate = Size(long, short) if landscape else Size(short, long)
                if long < short or self.problem(candidate):
                    continue
                score = (abs(math.log(candidate.ratio / ratio)),
                         abs(math.log(candidate.pixels / size.pixels)))
                if best is None or score < best[:2]:
                    best = (*score, candidate)
        if best is None:
            raise ValueError(f"no size satisfies {self}")
        return best[2]


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class ModelSpec(BaseModel):
    """What one model name can do, and where it stands upstream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    provider: str
    owned_by: str = ""
    description: str = ""
    upstream_name: str | None = Field(
        default=None, description="the name sent upstream; default: the entry's name"
    )
    # How the provider calls it: e.g. google's `generate_content` (default) or
    # `generate_images` (Imagen); extra parameters sent upstream as they are.
    api: str = ""
    upstream_params: Mapping[str, Any] = Field(default_factory=dict)
    # Sizes: a fixed list, or a rule for free sizes, or aspect ratios (any WxH maps to the
    # nearest one). `auto` in `sizes` lets the model choose.
    sizes: tuple[str, ...] = ()
    size_rule: SizeRule | None = None
    aspect_ratios: tuple[str, ...] = ()
    image_sizes: Mapping[str, int] = Field(
        default_factory=dict,
        description="upstream size classes by the longest edge they cover, e.g. {1K = 1024}")
    default_size: str = "1024x1024"
    max_n_per_call: int = Field(default=1, ge=1)
    qualities: tuple[str, ...] = ("standard",)
    default_quality: str = "standard"
    styles: tuple[str, ...] = ()
    default_style: str | None = None
    output_formats: tuple[str, ...] = ("png",)
    backgrounds: tuple[str, ...] = ()
    moderations: tuple[str, ...] = ()
    edits: bool = False
    max_input_images: int = 0
    prompt_limit: int = 1000
    token_usage: bool = False
    partial_images: bool = False  # streams send previews (`partial_images`) when asked
    # Lifecycle upstream. A retired model is served by its successor, translated, unless
    # `serve_retired` is false; then it answers 404 model_retired.
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    deprecated_on: date | None = None
    shutdown_on: date | None = None
    successor: str | None = None
    serve_retired: bool = True
    quality_map: Mapping[str, str] = Field(default_factory=dict)
    style_hints: Mapping[str, str] = Field(default_factory=dict)
    price: Price | None = None  # from [prices.NAME]; None: requests cost nothing

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.default_quality not in self.qualities:
            raise ValueError(f"{self.name}: default_quality must be one of qualities")
        if self.lifecycle is Lifecycle.RETIRED and not self.successor and self.serve_retired:
            raise ValueError(f"{self.name}: a retired model served on needs a successor")
        if not (self.sizes or self.size_rule or self.aspect_ratios):
            raise ValueError(f"{self.name}: give sizes, size_rule or aspect_ratios")
        return self

    @property
    def upstream(self) -> str:
        return self.upstream_name or self.name

    def nearest_aspect_ratio(self, size: Size) -> str:
        """The supported `W:H` closest to `size`'s shape (compared on a log scale)."""
        def distance(ratio: str) -> float:
            w, h = (int(x) for x in ratio.split(":"))
            return abs(math.log((w / h) / (size.width / size.height)))
        return min(self.aspect_ratios, key=distance)

    def image_size_class(self, size: Size | None) -> str | None:
        """The smallest upstream size class (`1K`, `2K`, ...) that covers `size`'s long edge."""
        if not self.image_sizes:
            return None
        classes = sorted(self.image_sizes.items(), key=lambda item: item[1])
        long_edge = max(size.width, size.height) if size else 0
        return next((name for name, edge in classes if edge >= long_edge), classes[-1][0])

    def size_problem(self, size: Size) -> str | None:
        """Why this model cannot make `size`, or None when it can."""
        if str(size) in self.sizes:
            return None
        if self.size_rule is not None:
            return self.size_rule.problem(size)
        if self.aspect_ratios:
            if size.width <= 0 or size.height <= 0:
                return "edges must be positive"
            if max(size.width, size.height) > ASPECT_RATIO_MAX_EDGE:
                return f"the long edge must be at most {ASPECT_RATIO_MAX_EDGE} pixels"
            return None
        return "supported sizes: " + ", ".join(self.sizes)


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
