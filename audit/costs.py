"""What a model call costs, from the price table (LLM_PRICES, USD per million tokens)."""

from decimal import Decimal

from django.conf import settings

MILLION = Decimal(1_000_000)
# Costs are kept to the millionth of a cent.
COST_PLACES = Decimal("0.00000001")


def cost_usd(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """Return the cost in USD of the tokens on `model`, None when the model has no price."""
    price = settings.LLM_PRICES.get(model)
    if price is None:
        return None
    prompt_price, completion_price = price
    return ((prompt_tokens * prompt_price + completion_tokens * completion_price) / MILLION).quantize(COST_PLACES)
