"""What model calls cost, from the price table (LLM_PRICES, USD per million tokens)."""

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Charge:
    """The tokens one model call used, by the model that answered it; `estimated` when the service sent no usage."""

    model: str
    prompt: int
    completion: int
    estimated: bool
    # What the call was for, when not the run's main work (a turn's "history_summary" call).
    purpose: str = ""


@dataclass
class Spend:
    """What a run of model calls used (a turn's rounds, a summary's asks), call by call."""

    charges: list[Charge] = field(default_factory=list)
    # The model that answered the last call (the spare's after a fallback).
    last_model: str = ""

    def add(
        self, *, model: str, prompt_tokens: int, completion_tokens: int, estimated: bool, purpose: str = ""
    ) -> Charge:
        """Note a call's tokens against the model that answered it (calls may differ: a fallback, the fast model)."""
        self.last_model = model
        charge = Charge(model, prompt_tokens, completion_tokens, estimated, purpose)
        if prompt_tokens or completion_tokens:
            self.charges.append(charge)
        return charge

    def tokens(self) -> tuple[int, int]:
        """Return every prompt and completion token used, reported or estimated."""
        return sum(c.prompt for c in self.charges), sum(c.completion for c in self.charges)

    def estimated(self, *, purpose: str = "") -> tuple[int, int]:
        """Return the prompt and completion tokens that are estimates, of the calls made for `purpose`."""
        charges = [c for c in self.charges if c.estimated and c.purpose == purpose]
        return sum(c.prompt for c in charges), sum(c.completion for c in charges)

    def counted_by_model(self) -> dict[str, tuple[int, int]]:
        """Return the tokens the models reported (not the estimates), by model."""
        counted: dict[str, tuple[int, int]] = {}
        for charge in self.charges:
            if not charge.estimated:
                prompt, completion = counted.get(charge.model, (0, 0))
                counted[charge.model] = (prompt + charge.prompt, completion + charge.completion)
        return counted

    def cost_by_model(self) -> tuple[dict[str, Decimal], list[str]]:
        """Return the cost in USD of each priced model's calls, and the models used that have no price (sorted)."""
        costs: dict[str, Decimal] = {}
        unpriced: set[str] = set()
        for charge in self.charges:
            price = cost_usd(model=charge.model, prompt_tokens=charge.prompt, completion_tokens=charge.completion)
            if price is None:
                unpriced.add(charge.model)
            else:
                costs[charge.model] = costs.get(charge.model, Decimal(0)) + price
        return costs, sorted(unpriced)

    def cost(self) -> Decimal | None:
        """Return the cost in USD of the priced calls, None when no call was priced."""
        costs, _ = self.cost_by_model()
        return sum(costs.values(), Decimal(0)) if costs else None
