"""`python -m server migrate | serve`."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import load_settings
from .storage.database import Database
from .storage.migrate import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the database migrations to DATABASE_URL")
    commands.add_parser("serve", help="serve gRPC until SIGTERM or SIGINT")
    args = parser.parse_args(argv)

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "migrate":
        database = Database(settings.database_url)
        migrate(database.engine)
        database.dispose()
        logging.getLogger("orders.migrate").info(
            "database %s is at the latest schema",
            database.url.render_as_string(hide_password=True),
        )
        return 0
    from .transport.app import OrdersServer

    OrdersServer(settings).serve_until_signalled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
