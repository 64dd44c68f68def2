"""A typed Python client of orders.v1.OrdersService, and the `orders` CLI built on it.

from orders_client import OrdersClient

with OrdersClient.connect("127.0.0.1:50051") as client:
    for order in client.iter_orders(status="paid"):
        print(order.id, order.total_cents)
"""

from .channel import DEFAULT_TARGET, RetryPolicy, open_channel, service_config
from .client import Deadlines, OrderFilters, OrdersClient, SeedStream, parse_status
from .errors import FieldViolation, OrdersError

__all__ = [
    "DEFAULT_TARGET",
    "Deadlines",
    "FieldViolation",
    "OrderFilters",
    "OrdersClient",
    "OrdersError",
    "RetryPolicy",
    "SeedStream",
    "open_channel",
    "parse_status",
    "service_config",
]
