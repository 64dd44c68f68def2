"""`orders`: the orders service from a terminal, over gRPC through OrdersClient.

Tables for people, `--json` (proto3 JSON, field names as in the proto) for scripts. The server
is `--target`, else ORDERS_TARGET, else 127.0.0.1:50051. Bearer tokens come from the
environment only (a command line shows in `ps`): ORDERS_TOKEN, an API token, and
ORDERS_ADMIN_TOKEN, sent to Seed (and to the rest when there is no API token). A failed call
prints one line, `error: CODE: message`, on stderr and exits 1; a bad command line exits 2;
Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from orders.v1 import orders_pb2 as pb
from rich.console import Console, RenderableType

from . import views
from .channel import DEFAULT_TARGET, TARGET_VARIABLE, resolve_target
from .client import Deadlines, OrderFilters, OrdersClient, parse_status
from .errors import OrdersError
from .progress import SeedProgress, seed_summary_table

__all__ = ["build_parser", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive id, got {value}")
    return value


def _status(text: str) -> pb.Order.Status.ValueType:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _item(text: str) -> pb.OrderItem:
    parts = text.rsplit(":", 2)  # from the right: a SKU may hold a colon
    try:
        sku, quantity, price = parts
        return pb.OrderItem(sku=sku, quantity=int(quantity), unit_price_cents=int(price))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an item is SKU:QUANTITY:UNIT_PRICE_CENTS, got {text!r}"
        ) from None


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--target, --json and --timeout, accepted before and after the command."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--target",
        default=default(None),
        help=f"host:port of the gRPC server (default: ${TARGET_VARIABLE} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print proto3 JSON (seed: one progress message a line) instead of tables",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each call, retries included (default: 10; seed: 3600)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orders",
        description="Call the orders service (orders.v1.OrdersService) over gRPC.",
        epilog="Tokens come from the environment: ORDERS_TOKEN (an API token) and"
        " ORDERS_ADMIN_TOKEN (Seed, or everything when there is no API token).",
    )
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
    ) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help)
        _common(sub, suppress=True)
        return sub

    seed = command(commands, "seed", "fill the database with generated data, showing progress")
    seed.add_argument("--customers", type=int, default=50)
    seed.add_argument("--orders-per-customer", type=int, default=5)
    seed.add_argument("--items-per-order", type=int, default=3)
    seed.set_defaults(run=_seed)

    listing = command(commands, "list", "list orders, newest first")
    listing.add_argument(
        "--status", type=_status, help="DRAFT, PAID, SHIPPED or CANCELLED (any case)"
    )
    listing.add_argument("--email", default="", help="substring of the customer's email")
    listing.add_argument("--customer-id", type=_positive_int, default=0)
    listing.add_argument("--include-archived", action="store_true")
    listing.add_argument("--page-size", type=int, default=0, help="default 50, at most 500")
    listing.add_argument("--page-token", default="", help="next_page_token of the last page")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.set_defaults(run=_list_orders)

    summary = command(commands, "summary", "customers ranked by their PAID, non-archived total")
    summary.add_argument("--limit", type=int, default=0, help="default 10, at most 1000")
    summary.set_defaults(run=_summary)

    get = command(commands, "get", "show one order")
    get.add_argument("id", type=_positive_int)
    get.set_defaults(run=_get_order)

    create = command(commands, "create", "create a DRAFT order")
    create.add_argument("--customer-id", type=_positive_int, required=True)
    create.add_argument(
        "--item",
        type=_item,
        action="append",
        required=True,
        metavar="SKU:QUANTITY:UNIT_PRICE_CENTS",
        help="one line of the order; repeat for more",
    )
    create.set_defaults(run=_create_order)

    transitions: dict[str, tuple[str, Callable[[OrdersClient, int], pb.Order]]] = {
        "pay": ("DRAFT -> PAID", OrdersClient.pay_order),
        "ship": ("PAID -> SHIPPED", OrdersClient.ship_order),
        "cancel": ("DRAFT or PAID -> CANCELLED", OrdersClient.cancel_order),
        "archive": ("hide it from lists and the summary", OrdersClient.archive_order),
    }
    for name, (what, call) in transitions.items():
        sub = command(commands, name, f"{name} an order: {what}")
        sub.add_argument("id", type=_positive_int)
        sub.set_defaults(run=_transition(call))

    customers = command(commands, "customers", "list, show or create customers")
    customer_commands = customers.add_subparsers(
        dest="customer_command", required=True, metavar="COMMAND"
    )
    c_list = command(customer_commands, "list", "list customers, newest first")
    c_list.add_argument("--page-size", type=int, default=0, help="default 50, at most 500")
    c_list.add_argument("--page-token", default="", help="next_page_token of the last page")
    c_list.add_argument("--all", action="store_true", help="every page, not only the first")
    c_list.set_defaults(run=_list_customers)
    c_get = command(customer_commands, "get", "show one customer")
    c_get.add_argument("id", type=_positive_int)
    c_get.set_defaults(run=_get_customer)
    c_create = command(customer_commands, "create", "create a customer")
    c_create.add_argument("--email", required=True)
    c_create.add_argument("--name", required=True)
    c_create.set_defaults(run=_create_customer)
    return parser


# --------------------------------------------------------------------------------------------
# Commands: each takes the parsed arguments, the client and the console, and returns an exit code.

Command = Callable[[argparse.Namespace, OrdersClient, Console], int]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _more(console: Console, command: str, token: str) -> None:
    if token:
        console.print(
            f"more: {command} --page-token {token}  (or --all)", style="dim", markup=False
        )


def _list_orders(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    filters: OrderFilters = {
        "status": args.status,
        "email": args.email,
        "customer_id": args.customer_id,
        "include_archived": args.include_archived,
    }
    if args.all:
        orders = list(client.iter_orders(page_size=args.page_size, **filters))
        page = pb.ListOrdersResponse(orders=orders)
    else:
        page = client.list_orders(page_size=args.page_size, page_token=args.page_token, **filters)
    if args.json:
        views.print_json(console, page)
        return 0
    console.print(views.orders_table(page.orders, title=_count(len(page.orders), "order")))
    _more(console, "orders list", page.next_page_token)
    return 0


def _summary(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    summary = client.get_summary(args.limit)
    return _show(args, console, summary, views.summary_table(summary.customers))


def _show(
    args: argparse.Namespace, console: Console, message: Message, table: RenderableType
) -> int:
    if args.json:
        views.print_json(console, message)
    else:
        console.print(table)
    return 0


def _show_order(args: argparse.Namespace, console: Console, order: pb.Order) -> int:
    return _show(args, console, order, views.order_view(order))


def _get_order(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    return _show_order(args, console, client.get_order(args.id))


def _create_order(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    order = client.create_order(args.customer_id, args.item)
    return _show_order(args, console, order)


def _transition(call: Callable[[OrdersClient, int], pb.Order]) -> Command:
    def run(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
        return _show_order(args, console, call(client, args.id))

    return run


def _show_customer(args: argparse.Namespace, console: Console, customer: pb.Customer) -> int:
    return _show(args, console, customer, views.customer_table(customer))


def _list_customers(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    if args.all:
        page = pb.ListCustomersResponse(
            customers=list(client.iter_customers(page_size=args.page_size))
        )
    else:
        page = client.list_customers(page_size=args.page_size, page_token=args.page_token)
    if args.json:
        views.print_json(console, page)
        return 0
    console.print(
        views.customers_table(page.customers, title=_count(len(page.customers), "customer"))
    )
    _more(console, "orders customers list", page.next_page_token)
    return 0


def _get_customer(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    return _show_customer(args, console, client.get_customer(args.id))


def _create_customer(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    customer = client.create_customer(args.email, args.name)
    return _show_customer(args, console, customer)


def _seed(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    stream = client.seed(args.customers, args.orders_per_customer, args.items_per_order)
    try:
        if args.json:
            for message in stream:
                console.file.write(views.to_json(message, indent=None) + "\n")
                console.file.flush()
            return 0
        # The bar starts with the first message: a seed refused outright prints only the error.
        first = next(stream, None)
        if first is None:
            return 0
        with SeedProgress(console) as view:
            view.update(first)
            for message in stream:
                view.update(message)
        if view.last is not None and view.last.phase == pb.SeedResponse.PHASE_DONE:
            console.print(seed_summary_table(view.last))
        return 0
    except KeyboardInterrupt:
        stream.cancel()
        _fail("seed cancelled; the server rolls it back, nothing of it is kept")
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _error_line(error: OrdersError, target: str) -> str:
    line = str(error)
    # No details from the server: it was never reached, or did not answer in time.
    if (
        error.reason is None
        and not error.violations
        and error.code.name
        in (
            "UNAVAILABLE",
            "DEADLINE_EXCEEDED",
        )
    ):
        line += f" (target {target})"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = resolve_target(args.target)
    deadlines = Deadlines() if args.timeout is None else Deadlines(args.timeout, args.timeout)
    console = Console(highlight=False)
    client = OrdersClient.connect(target, deadlines=deadlines)
    run: Command = args.run
    try:
        return run(args, client, console)
    except OrdersError as exc:
        _fail(_error_line(exc, target))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `orders list | head`: the reader left. Point stdout at /dev/null so that the flush
        # at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug of ours still gets one line, not a traceback
        _fail(f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
