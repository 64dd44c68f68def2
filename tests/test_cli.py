"""The `orders` CLI as a user runs it: the installed console script in a subprocess against a
live server. JSON for scripts, tables for people, every page with --all, one-line errors with
a non-zero exit, tokens from the environment, and the seed's live progress bar in a terminal."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    OrdersServer,
    as_foreground_program,
    free_port,
    list_all_customers,
    long_seed,
    table_counts,
    unique_email,
)
from orders.v1 import orders_pb2 as pb

from orders_client import OrdersClient
from orders_client.cli import IntRange, build_parser
from orders_client.cli import main as cli_main

ORDERS = Path(sys.executable).parent / "orders"
ADMIN = "cli-admin-token-77c2"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Tests of the CLI's own behaviour, whatever database the server uses: run on SQLite only.
ONE_BACKEND = pytest.mark.parametrize("databases", ["sqlite"], indirect=True)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return json.loads(self.out)


def cli_env(target: str, **extra: str) -> dict[str, str]:
    """The developer's ORDERS_* variables left out: each test says what the CLI sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
    env.update(ORDERS_TARGET=target, COLUMNS="160", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def orders(target: str, *args: str, timeout: float = 60, **env: str) -> Result:
    done = subprocess.run(
        [str(ORDERS), *args],
        env=cli_env(target, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def expect_error(result: Result, line: str, code: int = 1) -> None:
    """Exit `code`, nothing on stdout, and exactly one line on stderr starting with `line`."""
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.err


def new_customer(target: str) -> dict[str, Any]:
    email = unique_email("cli")
    return orders(target, "customers", "create", "--email", email, "--name", "Cli", "--json").json()


def new_order(target: str, customer_id: str, *items: str) -> dict[str, Any]:
    lines = [a for i in (items or ("SKU-1:1:100",)) for a in ("--item", i)]
    return orders(target, "create", "--customer-id", customer_id, *lines, "--json").json()


# --------------------------------------------------------------------------------------------
# JSON for scripts.


def test_every_command_prints_proto3_json(shared_server: OrdersServer) -> None:
    target = shared_server.address
    customer = new_customer(target)
    assert set(customer) == {"id", "email", "name", "created_at"}
    assert isinstance(customer["id"], str), "int64 is a JSON string in proto3 JSON"
    cid = customer["id"]
    assert orders(target, "customers", "get", cid, "--json").json() == customer

    order = new_order(target, cid, "BOOK:2:1250", "PEN:3:199")
    assert order["status"] == "DRAFT" and order["is_archived"] is False
    assert order["total_cents"] == "3097" and order["customer"] == customer
    assert [(i["sku"], i["quantity"], i["unit_price_cents"]) for i in order["items"]] == [
        ("BOOK", 2, "1250"),
        ("PEN", 3, "199"),
    ]
    oid = order["id"]
    assert orders(target, "pay", oid, "--json").json()["status"] == "PAID"
    assert orders(target, "ship", oid, "--json").json()["status"] == "SHIPPED"
    archived = orders(target, "--json", "archive", oid).json()  # --json before the command too
    assert archived["is_archived"] is True
    assert orders(target, "get", oid, "--json").json() == archived

    other = new_order(target, cid)
    assert orders(target, "cancel", other["id"], "--json").json()["status"] == "CANCELLED"
    assert orders(target, "customers", "get", cid, "--json").json() == customer

    summary = orders(target, "summary", "--limit", "3", "--json").json()
    assert set(summary) == {"customers"} and len(summary["customers"]) <= 3


def test_list_pages_through_every_page_and_filters(shared_server: OrdersServer) -> None:
    target = shared_server.address
    with OrdersClient.connect(target, environ={}) as client:  # the setup, without the CLI
        email = unique_email("pages")
        cid = str(client.create_customer(email, "Pages").id)
        item = pb.OrderItem(sku="SKU-1", quantity=1, unit_price_cents=100)
        made = [str(client.create_order(int(cid), [item]).id) for _ in range(7)]
        client.pay_order(int(made[1]))
        client.archive_order(int(made[0]))
    mine = ("list", "--customer-id", cid, "--json")

    first = orders(target, *mine, "--page-size", "3").json()
    assert [o["id"] for o in first["orders"]] == made[6:3:-1] and first["next_page_token"]
    second = orders(target, *mine, "--page-size", "3", "--page-token", first["next_page_token"])
    assert [o["id"] for o in second.json()["orders"]] == made[3:0:-1]

    every = orders(target, *mine, "--page-size", "3", "--all").json()
    assert [o["id"] for o in every["orders"]] == made[:0:-1], "six pages' worth, archived left out"
    assert every["next_page_token"] == ""
    archived_too = orders(target, *mine, "--all", "--include-archived", "--page-size", "2")
    assert [o["id"] for o in archived_too.json()["orders"]] == made[::-1]
    paid = orders(target, *mine, "--all", "--status", "paid").json()
    assert [o["id"] for o in paid["orders"]] == [made[1]]
    by_email = orders(target, "list", "--email", email.upper(), "--all", "--json")
    assert [o["id"] for o in by_email.json()["orders"]] == made[:0:-1]

    # For people: a table, and how to get the next page.
    table = orders(target, "list", "--customer-id", cid, "--page-size", "3")
    assert table.code == 0 and "3 orders" in table.out
    assert "more: orders list --page-token" in table.out
    table = orders(target, "list", "--customer-id", cid, "--page-size", "3", "--all")
    assert "6 orders" in table.out and "more:" not in table.out


@ONE_BACKEND
def test_tables_for_people(shared_server: OrdersServer) -> None:
    target = shared_server.address
    email = unique_email("table")
    created = orders(target, "customers", "create", "--email", email, "--name", "Ada [Lovelace]")
    # Text as given: "[...]" is not read as rich markup.
    assert created.code == 0 and email in created.out and "Ada [Lovelace]" in created.out
    customer_id = orders(target, "customers", "list", "--page-size", "1", "--json").json()
    cid = customer_id["customers"][0]["id"]
    assert email in orders(target, "customers", "get", cid).out
    oid = new_order(target, cid, "BOOK:2:1250")["id"]
    shown = orders(target, "pay", oid)
    assert shown.code == 0 and "PAID" in shown.out and "BOOK" in shown.out and "25.00" in shown.out
    assert not shown.out.lstrip().startswith("{")
    listed = orders(target, "list", "--customer-id", cid)
    assert listed.code == 0 and "1 order" in listed.out and email in listed.out
    summary = orders(target, "summary", "--limit", "1000")
    assert summary.code == 0 and "Customers by PAID" in summary.out


# --------------------------------------------------------------------------------------------
# Errors.


@ONE_BACKEND
def test_errors_are_one_line_on_stderr_with_a_non_zero_exit(shared_server: OrdersServer) -> None:
    target = shared_server.address
    expect_error(
        orders(target, "get", "987654321"), "error: NOT_FOUND: order 987654321 does not exist"
    )
    expect_error(orders(target, "get", "987654321", "--json"), "error: NOT_FOUND: order")
    customer = new_customer(target)
    expect_error(
        orders(target, "customers", "create", "--email", customer["email"].upper(), "--name", "X"),
        "error: ALREADY_EXISTS: ",
    )
    order = new_order(target, customer["id"])
    assert orders(target, "cancel", order["id"]).code == 0
    expect_error(orders(target, "pay", order["id"]), "error: FAILED_PRECONDITION: ")
    # The server's own refusals: an empty SKU, a seed above the server's cap on rows.
    expect_error(
        orders(target, "create", "--customer-id", customer["id"], "--item", ":1:100"),
        "error: INVALID_ARGUMENT: items[0].sku: ",
    )
    big = ("--customers", "100000", "--orders-per-customer", "1000", "--items-per-order", "100")
    expect_error(orders(target, "seed", *big), "error: INVALID_ARGUMENT: customers: ")
    # A command line the server never sees: exit 2, one line that says what is wrong.
    for args, line in (
        (("list", "--status", "sent"), "error: argument --status: unknown order status 'sent'"),
        (("get", "abc"), "error: argument ID: must be an id from 1 to "),
        (("create", "--customer-id", "1", "--item", "BOOK-2"), "error: argument --item: "),
        (("frobnicate",), "error: argument COMMAND: invalid choice: 'frobnicate'"),
    ):
        expect_error(orders(target, *args), line, code=2)


def int_options(
    parser: argparse.ArgumentParser, command: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """(command, option) for every option of every command that takes a whole number."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from int_options(sub, (*command, name))
        elif isinstance(action.type, IntRange):
            yield command, action


def test_every_whole_number_option_has_a_range_and_says_it_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The parser in-process: every option of every command, each with three bad values.
    found = list(int_options(build_parser()))
    assert len(found) == 15, [(c, a.dest) for c, a in found]  # a new option lands here too
    for command, action in found:
        kind = action.type
        assert isinstance(kind, IntRange)
        name = action.option_strings[0] if action.option_strings else action.metavar
        for bad in (str(kind.low - 1), str(kind.high + 1), "12abc"):
            argv = [*command, *action.option_strings, bad]
            with pytest.raises(SystemExit) as exited:
                cli_main(argv)
            out, err = capsys.readouterr()
            assert exited.value.code == 2 and out == "", (argv, out, err)
            assert err.count("\n") == 1, (argv, err)
            assert err.startswith(f"error: argument {name}: must be "), (argv, err)
            assert f"from {kind.low:,} to {kind.high:,}, got {bad!r}" in err, (argv, err)
        # Its bounds themselves are fine (with what else the command requires).
        required = ["--item", "A:1:1"] if command == ("create",) else []
        for good in (kind.low, kind.high):
            argv = [*command, *action.option_strings, str(good), *required]
            args = build_parser().parse_args(argv)
            assert getattr(args, action.dest) == good


def test_values_out_of_range_are_one_line_errors_not_python_exceptions() -> None:
    # As a user runs it: nothing is sent, so no server is needed.
    target = f"127.0.0.1:{free_port()}"
    for args, line in (
        # Past int32: protobuf would refuse it with a ValueError ("Value out of range").
        (
            ("seed", "--customers", "99999999999"),
            "error: argument --customers: must be a whole number from 1 to 100,000, got",
        ),
        (("list", "--customer-id", str(2**63)), "error: argument --customer-id: must be an id"),
        (
            ("create", "--customer-id", "1", "--item", "BOOK:99999999999:1"),
            "error: argument --item: 'BOOK:99999999999:1': QUANTITY must be a whole number"
            " from 1 to 1,000,000",
        ),
        (
            ("create", "--customer-id", "1", "--item", "BOOK:1:-1"),
            "error: argument --item: 'BOOK:1:-1': UNIT_PRICE_CENTS must be a whole number"
            " from 0 to 10,000,000,000",
        ),
        (("--timeout", "inf", "list"), "error: argument --timeout: must be a number of seconds"),
        (("list", "--timeout", "-1"), "error: argument --timeout: must be a number of seconds"),
    ):
        result = orders(target, *args)
        expect_error(result, line, code=2)
        assert "Error" not in result.err and "unexpected" not in result.err, result.err
    # A token no HTTP/2 header can carry: said once, without the token, instead of gRPC's log.
    result = orders(target, "list", ORDERS_TOKEN="secret\nvalue")
    expect_error(result, "error: ORDERS_TOKEN must be printable ASCII", code=2)
    assert "secret" not in result.err


def test_an_unreachable_server_is_one_line_after_the_retries() -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = orders(target, "list")
    took = time.monotonic() - started
    expect_error(result, "error: UNAVAILABLE: ")
    assert f"(target {target})" in result.err
    # The retry policy waits about 0.2 + 0.4 + 0.8 + 1.6 s (+-20%) before giving up.
    assert took > 1.5, f"gave up after {took:.2f}s: UNAVAILABLE was not retried"


# --------------------------------------------------------------------------------------------
# Seed.


def run_in_terminal(
    args: list[str], env: dict[str, str], interrupt_when: Callable[[str], bool] | None = None
) -> tuple[int, str]:
    """Runs `args` on a pseudo-terminal of 120 columns; returns its exit code and everything it
    wrote. With `interrupt_when`, sends SIGINT once it holds for the screen so far (its text
    without ANSI sequences)."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    process = subprocess.Popen(
        args,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
        preexec_fn=as_foreground_program,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 90
    interrupted = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
            if interrupt_when and not interrupted:
                if interrupt_when(ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))):
                    process.send_signal(signal.SIGINT)
                    interrupted = True
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


def seed_command(request: pb.SeedRequest) -> list[str]:
    return [
        str(ORDERS),
        "seed",
        f"--customers={request.customers}",
        f"--orders-per-customer={request.orders_per_customer}",
        f"--items-per-order={request.items_per_order}",
    ]


# One redraw of the seed's progress bar.
REDRAW = re.compile(
    r"(\w+)\s+\S*\s+(\d+)%\s+([\d,]+)/([\d,]+)\s+([\d,?]+) rows/s\s+(ETA [-\d:]+|in [\d:]+)"
)


@ONE_BACKEND
def test_seed_shows_a_live_progress_bar_then_a_summary(
    shared_server: OrdersServer, backend: str
) -> None:
    # Long enough for several progress messages (the server sends one every half second).
    request = long_seed(shared_server, backend, seconds=2.5)
    # The seed rate is measured once a session; if the machine got faster since (other work
    # ended), the bar has too few redraws to watch: double the seed, a few times at most.
    for _ in range(3):
        code, screen = run_in_terminal(
            seed_command(request),
            cli_env(shared_server.address, TERM="xterm-256color"),
        )
        assert code == 0, screen
        text = ANSI.sub("", screen)
        # Each redraw: "<phase> <bar> <pct>% <done>/<total> <rate> rows/s ETA h:mm:ss".
        redraws = REDRAW.findall(text)
        assert redraws, text[-2000:]
        if len({d for _, _, d, _, _, _ in redraws}) >= 4 or request.customers >= 80_000:
            break
        request.customers = min(2 * request.customers, 80_000)
    total = request.customers * (1 + request.orders_per_customer * (1 + request.items_per_order))
    assert {int(t.replace(",", "")) for *_, t, _, _ in redraws} == {total}
    done_counts = {int(d.replace(",", "")) for _, _, d, _, _, _ in redraws}
    assert len(done_counts) >= 3, f"the bar moved only through {sorted(done_counts)}"
    assert max(done_counts) == total and min(done_counts) < total
    assert any(re.fullmatch(r"ETA \d+:\d\d:\d\d", eta) for *_, eta in redraws), "an ETA in time"
    assert any(rate not in ("?", "0") for *_, rate, _ in redraws), "a rate in rows/s"
    assert {phase for phase, *_ in redraws} >= {"items", "done"}
    # Then the summary table, with the totals.
    summary = text[text.index("Seed done") :]
    assert f"{request.customers:,}" in summary and f"{total:,}" in summary
    assert re.search(r"rows/s\s+[\d,]+", summary)


@ONE_BACKEND
def test_ctrl_c_cancels_the_seed_and_nothing_of_it_is_kept(
    shared_server: OrdersServer, backend: str
) -> None:
    # Ctrl-C lands while the bar shows the items phase at most half done: the customers and the
    # orders are written, and the server still has at least half the seed's rows to write, some
    # five seconds at the measured rate, against the milliseconds a cancel takes to reach it.
    # Signalled at the first redraw, a seed could finish first on a fast machine (exit 0).
    request = long_seed(shared_server, backend, seconds=10.0)
    largest = 5_000_000 // (1 + request.orders_per_customer * (1 + request.items_per_order))
    signalled: list[tuple[str, ...]] = []

    def mid_items(screen: str) -> bool:
        for redraw in REDRAW.findall(screen):
            phase, _, done, total, *_ = redraw
            if phase == "items" and int(done.replace(",", "")) <= int(total.replace(",", "")) // 2:
                signalled.append(redraw)
                return True
        return False

    # The rate is measured once a session: were the machine far faster now, the seed could pass
    # half of its items between two redraws. Then it ran to its end; try again, twice as large.
    while True:
        before = table_counts(shared_server.database_url)
        code, screen = run_in_terminal(
            seed_command(request),
            cli_env(shared_server.address, TERM="xterm-256color"),
            interrupt_when=mid_items,
        )
        text = ANSI.sub("", screen)
        if signalled or request.customers >= largest:
            break
        assert code == 0, text[-2000:]
        request.customers = min(2 * request.customers, largest)
    assert signalled, f"no redraw of the items phase at most half done:\n{text[-2000:]}"
    assert code == 130, f"signalled at {signalled[0]}\n{text[-2000:]}"
    assert "error: seed cancelled" in text and "Traceback" not in text
    assert "Seed done" not in text
    deadline = time.monotonic() + 30
    while table_counts(shared_server.database_url) != before:
        assert time.monotonic() < deadline, "the cancelled seed left rows behind"
        time.sleep(0.2)


@ONE_BACKEND
def test_seed_json_is_one_message_a_line_and_needs_the_admin_token(start_server: Any) -> None:
    server = start_server(ORDERS_ADMIN_TOKEN=ADMIN)
    seed = ("seed", "--customers", "3", "--orders-per-customer", "2", "--items-per-order", "1")
    expect_error(orders(server.address, *seed, "--json"), "error: UNAUTHENTICATED: ")
    expect_error(
        orders(server.address, *seed, ORDERS_ADMIN_TOKEN="wrong"), "error: PERMISSION_DENIED: "
    )
    result = orders(server.address, *seed, "--json", ORDERS_ADMIN_TOKEN=ADMIN)
    assert result.code == 0, result.err
    messages = [json.loads(line) for line in result.out.splitlines()]
    assert messages[0]["phase"] == "PHASE_STARTED" and messages[0]["done"] is False
    last = messages[-1]
    assert last["phase"] == "PHASE_DONE" and last["done"] is True
    assert (last["customers_done"], last["orders_done"], last["items_done"]) == ("3", "6", "6")
    # Without a TTY and without --json: no animation, the final bar and the summary table.
    plain = orders(server.address, *seed, ORDERS_ADMIN_TOKEN=ADMIN)
    assert plain.code == 0 and "Seed done" in plain.out and "\x1b[" not in plain.out

    # Every customer of this fresh database, over pages of four.
    every = orders(server.address, "customers", "list", "--all", "--page-size", "4", "--json")
    ids = [c["id"] for c in every.json()["customers"]]
    assert ids == [str(c.id) for c in list_all_customers(server.stub)] and len(ids) == 6
    assert "6 customers" in orders(server.address, "customers", "list", "--all").out
