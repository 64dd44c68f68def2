"""``python -m gateway render|validate|run|health``: see ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from gateway.config import DESCRIPTOR_PATH, GatewayConfig, render
from gateway.envoy import EnvoyError, validate
from gateway.health import is_serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (
        ("render", "print envoy.yaml rendered with the ports from the environment"),
        ("validate", "render, then check the result with `envoy --mode validate`"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--variant",
            choices=("local", "compose"),
            default="local",
            help="local: everything on 127.0.0.1; compose: the docker-compose network",
        )
        if name == "render":
            command.add_argument("--output", "-o", type=Path, help="write here, not to stdout")

    commands.add_parser("run", help="run the server and Envoy in the foreground (scripts/run)")

    health = commands.add_parser("health", help="exit 0 if a gRPC server reports SERVING")
    health.add_argument("target", nargs="?", default="127.0.0.1:50051", help="host:port")
    health.add_argument("--service", default="", help="'' (the whole server) by default")

    args = parser.parse_args(argv)
    if args.command == "run":
        from gateway.local_stack import run

        return run()
    if args.command == "health":
        return 0 if is_serving(args.target, args.service) else 1

    try:
        config = GatewayConfig.from_env(args.variant)
        if args.variant == "local":
            config = config.with_server_processes(os.environ)  # as `run` starts them
    except ValueError as error:  # a setting from the environment: say which, no traceback
        print(f"python -m gateway {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "validate":
        # The compose file mounts this very descriptor at COMPOSE_DESCRIPTOR_PATH; Envoy checks
        # that the file exists, so validate with it where it is here.
        config = dataclasses.replace(config, descriptor_path=str(DESCRIPTOR_PATH))
        try:
            validate(render(config))
        except EnvoyError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"envoy accepts the {args.variant} configuration")
        return 0
    text = render(config)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
