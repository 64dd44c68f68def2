"""`orders`: the orders service from a terminal, over gRPC through OrdersClient.

Tables for people, `--json` (proto3 JSON, field names as in the proto) for scripts. The server
is `--target`, else ORDERS_TARGET, else 127.0.0.1:50051. Bearer tokens come from the
environment only (a command line shows in `ps`): ORDERS_TOKEN, an API token, and
ORDERS_ADMIN_TOKEN, sent to Seed (and to the rest when there is no API token). A failed call
prints one line, `error: CODE: message`, on stderr and exits 1; a bad command line (an option out
of its range, an unknown command) is one line too, `error: argument ...`, and exits 2;
Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

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


# The largest values the wire carries: ids are int64, sizes and counts int32.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# The bounds the service's contract (docs/contract.md) sets on a seed and on an order's items:
# refused here, the error names the option, not the request's field.
SEED_CUSTOMERS = (1, 100_000)
SEED_ORDERS_PER_CUSTOMER = (0, 1_000)
SEED_ITEMS_PER_ORDER = (0, 100)
ITEM_QUANTITY = (1, 1_000_000)
ITEM_UNIT_PRICE_CENTS = (0, 10_000_000_000)
# Longer than any call needs (a seed of the largest size takes minutes), short enough for the
# deadline to stay a date gRPC can compute.
MAX_TIMEOUT_SECONDS = 86_400.0


def _whole_number(text: str, low: int, high: int, what: str = "a whole number") -> int:
    """`text` as an int within [low, high], or the argparse error that says the range."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"must be {what} from {low:,} to {high:,}, got {text!r}"
        ) from None
    return value


@dataclass(frozen=True)
class IntRange:
    """An argparse type: a whole number from `low` to `high`, else an error that says so."""

    low: int
    high: int
    what: str = "a whole number"

    def __call__(self, text: str) -> int:
        return _whole_number(text, self.low, self.high, self.what)


# An id of a customer or an order: positive, and an int64 on the wire.
_positive_int = IntRange(1, INT64_MAX, "an id")
# page_size and limit: 0 asks for the server's default; the server caps what is above its
# maximum rather than refusing it, so anything up to the int32 wire limit is allowed.
_size = IntRange(0, INT32_MAX)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT_SECONDS:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS:,.0f},"
            f" got {text!r}"
        )
    return value


def _text(text: str) -> str:
    """Protobuf strings are UTF-8: bytes of another encoding in argv cannot be sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"must be UTF-8 text, got {text!r}") from None
    return text


def _status(text: str) -> pb.Order.Status.ValueType:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _item(text: str) -> pb.OrderItem:
    parts = text.rsplit(":", 2)  # from the right: a SKU may hold a colon
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"an item is SKU:QUANTITY:UNIT_PRICE_CENTS, got {text!r}")
    sku, quantity, price = parts
    part = "SKU"
    try:
        sku = _text(sku)
        part = "QUANTITY"
        count = _whole_number(quantity, *ITEM_QUANTITY)
        part = "UNIT_PRICE_CENTS"
        cents = _whole_number(price, *ITEM_UNIT_PRICE_CENTS)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {part} {exc}") from None
    return pb.OrderItem(sku=sku, quantity=count, unit_price_cents=cents)


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--target, --json and --timeout, accepted before and after the command."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--target",
        type=_text,
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
        type=_seconds,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each call, retries included (default: 10; seed: 3600)",
    )


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line too, like a failed call: what is wrong and where help is.
    Subcommands' parsers are of this class as well (argparse makes them like their parent)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orders",
        description="Call the orders service (orders.v1.OrdersService) over gRPC.",
        epilog="Tokens come from the environment: ORDERS_TOKEN (an API token) and"
        " ORDERS_ADMIN_TOKEN (Seed, or everything when there is no API token).",
    )
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: argparse._SubParsersAction[_Parser], name: str, help: str) -> _Parser:
        sub = parent.add_parser(name, help=help, description=help)
        _common(sub, suppress=True)
        return sub

    seed = command(commands, "seed", "fill the database with generated data, showing progress")
    seed.add_argument(
        "--customers", type=IntRange(*SEED_CUSTOMERS), default=50, help="1 to 100,000"
    )
    seed.add_argument(
        "--orders-per-customer",
        type=IntRange(*SEED_ORDERS_PER_CUSTOMER),
        default=5,
        help="0 to 1,000",
    )
    seed.add_argument(
        "--items-per-order", type=IntRange(*SEED_ITEMS_PER_ORDER), default=3, help="0 to 100"
    )
    seed.set_defaults(run=_seed)

    listing = command(commands, "list", "list orders, newest first")
    listing.add_argument(
        "--status", type=_status, help="DRAFT, PAID, SHIPPED or CANCELLED (any case)"
    )
    listing.add_argument(
        "--email", type=_text, default="", help="substring of the customer's email"
    )
    listing.add_argument("--customer-id", type=_positive_int, default=0)
    listing.add_argument("--include-archived", action="store_true")
    listing.add_argument("--page-size", type=_size, default=0, help="default 50, at most 500")
    listing.add_argument(
        "--page-token", type=_text, default="", help="next_page_token of the last page"
    )
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.set_defaults(run=_list_orders)

    summary = command(commands, "summary", "customers ranked by their PAID, non-archived total")
    summary.add_argument("--limit", type=_size, default=0, help="default 10, at most 1000")
    summary.set_defaults(run=_summary)

    get = command(commands, "get", "show one order")
    get.add_argument("id", type=_positive_int, metavar="ID")
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
        sub.add_argument("id", type=_positive_int, metavar="ID")
        sub.set_defaults(run=_transition(call))

    watch = command(
        commands, "watch", "print order events as they happen, until Ctrl-C; then the cursor"
    )
    watch.add_argument("--customer-id", type=_positive_int, default=0, help="one customer's")
    watch.add_argument(
        "--after", type=_text, default="", help="the cursor printed last time: go on from it"
    )
    watch.set_defaults(run=_watch)

    customers = command(commands, "customers", "list, show or create customers")
    customer_commands = customers.add_subparsers(
        dest="customer_command", required=True, metavar="COMMAND"
    )
    c_list = command(customer_commands, "list", "list customers, newest first")
    c_list.add_argument("--page-size", type=_size, default=0, help="default 50, at most 500")
    c_list.add_argument(
        "--page-token", type=_text, default="", help="next_page_token of the last page"
    )
    c_list.add_argument("--all", action="store_true", help="every page, not only the first")
    c_list.set_defaults(run=_list_customers)
    c_get = command(customer_commands, "get", "show one customer")
    c_get.add_argument("id", type=_positive_int, metavar="ID")
    c_get.set_defaults(run=_get_customer)
    c_create = command(customer_commands, "create", "create a customer")
    c_create.add_argument("--email", type=_text, required=True)
    c_create.add_argument("--name", type=_text, required=True)
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


def _watch(args: argparse.Namespace, client: OrdersClient, console: Console) -> int:
    """One line per event (a table row's worth, or proto3 JSON); on Ctrl-C, or a stream that
    cannot be resumed, the cursor to go on from, on stderr: stdout stays the events."""
    events = client.watch_orders(args.customer_id, args.after)
    try:
        for event in events:
            if args.json:
                console.file.write(views.to_json(event, indent=None) + "\n")
            else:
                console.print(views.event_line(event))
            console.file.flush()
        return 0
    except KeyboardInterrupt:
        events.cancel()
        _resume_hint(events.cursor, args.customer_id)
        return EXIT_INTERRUPTED
    except OrdersError as error:
        if error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):  # lost, not refused
            _resume_hint(events.cursor, args.customer_id)
        raise


def _resume_hint(cursor: str, customer_id: int) -> None:
    if not cursor:
        return
    again = f" --customer-id {customer_id}" if customer_id else ""
    print(f"resume with: orders watch{again} --after {cursor}", file=sys.stderr, flush=True)


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
    try:
        client = OrdersClient.connect(target, deadlines=deadlines)
    except ValueError as exc:  # a token from the environment no header can carry
        _fail(str(exc))
        return EXIT_USAGE
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
