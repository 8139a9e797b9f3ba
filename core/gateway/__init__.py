"""The gateway: what the exchange routes with.

Models and their deployments (:class:`Router`), the planning of an upstream
request (and its translation between the OpenAI and Anthropic APIs), the mock
provider, and what an answer used and cost (:class:`Usage`, the price table).
It knows the protocol (``core``'s events, errors, headers, JSON) and nothing of
the exchange or of any policy.
"""

from ._prices import AS_OF as PRICES_AS_OF
from ._prices import PRICES, Price, price_for
from ._prices import SOURCE as PRICES_SOURCE
from ._routing import Deployment, Provider, Router
from ._usage import Usage, cost_usd, usage_from_anthropic, usage_from_openai

__all__ = [
    "PRICES",
    "PRICES_AS_OF",
    "PRICES_SOURCE",
    "Deployment",
    "Price",
    "Provider",
    "Router",
    "Usage",
    "cost_usd",
    "price_for",
    "usage_from_anthropic",
    "usage_from_openai",
]
