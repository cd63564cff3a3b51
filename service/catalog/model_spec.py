"""What one model can do (ModelSpec) and where it stands upstream (Lifecycle).

The registry (models.py beside this module) holds one spec per model name, read from
models.toml and the operator's models file; service/generation/validation.py checks a
request against its spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.catalog.pricing import Price
from service.catalog.sizes import Size, SizeRule

# Models that take any WxH map it to their nearest aspect ratio and size class; the largest
# class any of them makes is 4K. A bigger ask would only be an upscale (or a memory bomb).
ASPECT_RATIO_MAX_EDGE = 4096


class Lifecycle(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


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
    # The `response_format` of a request that names none: the seed's `url`, or `b64_json`
    # for gpt-image models (OpenAI answers them in base64 only, and their clients read it).
    default_response_format: Literal["url", "b64_json"] = "url"
    edits: bool = False
    max_input_images: int = 0
    masks: bool = False  # edits take a `mask`
    input_fidelities: tuple[str, ...] = ()  # accepted `input_fidelity` values of edits
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
