"""`python -m server migrate | serve`."""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.exc import OperationalError

from .config import load_settings
from .domain.errors import Unavailable
from .observability import configure_logging
from .storage import consistency
from .storage.database import Database
from .storage.migrate import migrate

log = logging.getLogger("orders.command")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the database migrations to DATABASE_URL")
    commands.add_parser("serve", help="serve gRPC until SIGTERM or SIGINT")
    check = commands.add_parser(
        "check", help="recompute order totals and the summary rollup; exit 1 on drift"
    )
    check.add_argument("--fix", action="store_true", help="repair the drift found")
    args = parser.parse_args(argv)

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command in ("migrate", "check"):
        database = Database(settings.database_url, transaction_pooling=settings.transaction_pooling)
        shown = database.url.render_as_string(hide_password=True)
        try:
            if args.command == "check":
                return check_consistency(database, fix=args.fix)
            migrate(database.engine)
        except (OperationalError, Unavailable) as error:
            # A database that is down or refuses us: one line that says so, no traceback
            # (and the URL without its password).
            cause = error.orig if isinstance(error, OperationalError) else error.__cause__
            reason = str(getattr(cause, "orig", None) or cause or error).strip().splitlines()[0]
            log.error("%s: cannot use the database %s: %s", args.command, shown, reason)
            return 1
        finally:
            database.dispose()
        log.info("database %s is at the latest schema", shown)
        return 0
    if settings.grpc_processes > 1 and settings.worker_index < 0:
        from .supervisor import supervise

        return supervise(settings)
    from . import tracing
    from .transport.app import OrdersServer

    # Before the server opens its database: its engine is instrumented when traces are on.
    # Each serving process has its own exporter (a supervisor serves no call).
    tracing.configure()
    OrdersServer(settings).serve_until_signalled()
    return 0


def check_consistency(database: Database, fix: bool) -> int:
    with database.write() as session:
        totals = consistency.find_total_drift(session)
        rollups = consistency.find_rollup_drift(session)
        for t in totals:
            print(f"order {t.order_id}: total_cents {t.stored}, items sum to {t.computed}")
        for r in rollups:
            email = (
                "" if r.stored_email == r.email else f", email {r.stored_email!r} for {r.email!r}"
            )
            print(
                f"customer {r.customer_id}: summary row ({r.stored_count}, {r.stored_total}), "
                f"paid orders ({r.computed_count}, {r.computed_total}){email}"
            )
        if fix:
            consistency.repair(session, totals, rollups)
    drift = len(totals) + len(rollups)
    if not drift:
        print("consistent: every order total matches its items, every summary row its orders")
        return 0
    print(f"{drift} drifted rows {'repaired' if fix else 'found (run with --fix to repair)'}")
    return 0 if fix else 1


if __name__ == "__main__":
    sys.exit(main())
