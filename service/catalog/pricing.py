"""What a request cost, in US dollars and in credits, from its model's price table.

A price is per image, by quality and size, or per million tokens by kind (text input,
image input, text output, image output) for models whose provider reports tokens. The
tables live in the registry's data (`[prices.NAME]` in models.toml, overridable by the
operator's models file); a retired model is priced as the successor that served it.

Amounts are exact decimals; they are stored as billionths (nanos) so that sums are exact on
every database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field

NANOS = Decimal(10) ** 9
MILLION = Decimal(10) ** 6
ANY = "*"


@dataclass(frozen=True)
class TokenUsage:
    """Tokens a token-billed model reports for one call."""

    input_text: int = 0
    input_image: int = 0
    output_text: int = 0
    output_image: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_text + other.input_text,
            self.input_image + other.input_image,
            self.output_text + other.output_text,
            self.output_image + other.output_image,
        )

    @property
    def inputs(self) -> int:
        return self.input_text + self.input_image

    @property
    def outputs(self) -> int:
        return self.output_text + self.output_image


class TokenRates(BaseModel):
    """US dollars per million tokens of each kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_input: Decimal = Field(default=Decimal(0), ge=0)
    image_input: Decimal = Field(default=Decimal(0), ge=0)
    text_output: Decimal = Field(default=Decimal(0), ge=0)
    image_output: Decimal = Field(default=Decimal(0), ge=0)

    def usd(self, tokens: TokenUsage) -> Decimal:
        return (tokens.input_text * self.text_input + tokens.input_image * self.image_input
                + tokens.output_text * self.text_output
                + tokens.output_image * self.image_output) / MILLION


class Price(BaseModel):
    """A model's price table. `per_image` maps quality, then size (`WxH` or `auto`), to US
    dollars per image; `*` matches any quality or size. A size missing from the table is
    priced from the listed size nearest in pixels, in proportion to the pixels (token-billed
    models cost about that); `auto` as the dearest listed size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_image: Mapping[str, Mapping[str, Decimal]] = Field(default_factory=dict)
    per_million_tokens: TokenRates | None = None

    def image_usd(self, quality: str | None, size: str | None) -> Decimal | None:
        """The price of one image, or None when this table has no per-image prices."""
        table = self.per_image.get(quality or ANY) or self.per_image.get(ANY)
        if not table:
            return None
        size = size or "auto"
        if size in table:
            return table[size]
        if ANY in table:
            return table[ANY]
        return _nearest(table, size)


def _nearest(table: Mapping[str, Decimal], size: str) -> Decimal:
    pixels = _pixels(size)
    listed = [(p, usd) for name, usd in table.items() if (p := _pixels(name))]
    if pixels is None or not listed:
        return max(table.values())
    near_pixels, usd = min(listed, key=lambda item: abs(math.log(item[0] / pixels)))
    return usd * pixels / near_pixels


def _pixels(size: str) -> int | None:
    width, sep, height = size.partition("x")
    if sep and width.isdigit() and height.isdigit() and int(width) and int(height):
        return int(width) * int(height)
    return None


@dataclass(frozen=True)
class Cost:
    """A cost in billionths of a US dollar and of a credit."""

    usd_nanos: int = 0
    credits_nanos: int = 0

    @property
    def usd(self) -> float:
        return self.usd_nanos / 1e9

    @property
    def credits(self) -> float:
        return self.credits_nanos / 1e9


def cost(price: Price | None, *, quality: str | None, size: str | None, images: int,
         tokens: TokenUsage | None, credits_per_usd: Decimal) -> Cost:
    """What a request cost: by the tokens the provider reported where the model is priced
    per token, else per image returned; nothing for a model without a price."""
    usd = Decimal(0)
    if price is not None:
        image_usd = price.image_usd(quality, size)
        if price.per_million_tokens is not None and tokens is not None:
            usd = price.per_million_tokens.usd(tokens)
        elif image_usd is not None:
            usd = image_usd * images
    usd_nanos = _nanos(usd)
    return Cost(usd_nanos, _nanos(Decimal(usd_nanos) * credits_per_usd / NANOS))


def _nanos(amount: Decimal) -> int:
    return int((amount * NANOS).to_integral_value(rounding=ROUND_HALF_UP))
