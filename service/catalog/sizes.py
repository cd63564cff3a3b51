"""Image sizes: a `WxH` size, and the rule a model's free sizes follow (edge bounds,
multiples, aspect ratio, pixel count), with the allowed size nearest a wanted one."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

_EDGE = re.compile(r"^[0-9]{1,6}$")  # an edge in pixels, as `size` writes it


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
