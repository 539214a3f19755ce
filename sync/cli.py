"""The `ks2os` command: parses arguments, loads the configuration, calls a job.

Nothing here knows how a job works. Every user mistake (a wrong flag, an
unknown command, a bad or missing config file) ends as one line on stderr and
exit code 2; a run that cannot go on (a server unreachable, a table without
CDC) ends as one line and exit code 1. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import orjson

from sync import __version__
from sync.config import Config, describe, load_config
from sync.errors import ConfigError, Ks2osError
from sync.logs import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "ks2os.toml"

Command = Callable[[argparse.Namespace, Config], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ks2os",
        description="Keep OpenSearch indexes in sync with Amazon Keyspaces tables.",
    )
    parser.add_argument("--version", action="version", version=f"ks2os {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration (default: $KS2OS_CONFIG, else ./{DEFAULT_CONFIG})",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log line format (default: text on a terminal, json otherwise)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            parser_class=_Parser)
    config_commands.required = True
    check = config_commands.add_parser(
        "check", help="validate the configuration and print it, secrets masked"
    )
    check.set_defaults(handler=_config_check)
    return parser


def _config_check(args: argparse.Namespace, cfg: Config) -> int:
    sys.stdout.write(orjson.dumps(describe(cfg), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _config_path(args: argparse.Namespace) -> str | None:
    """The file named by --config or KS2OS_CONFIG, else ./ks2os.toml if it exists."""
    explicit = args.config or os.environ.get("KS2OS_CONFIG")
    if explicit:
        return str(explicit)
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, so a job can flush and checkpoint before exiting."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum: int, frame: object) -> None:
        logging.getLogger("ks2os").info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def one_line(exc: Ks2osError) -> str:
    """The error and how to mend it, on one line."""
    text = " ".join(str(exc).split())
    return f"{text}: {exc.hint}" if exc.hint else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level, fmt=args.log_format)
    handler: Command = args.handler
    try:
        cfg = load_config(_config_path(args))
        return handler(args, cfg)
    except ConfigError as exc:
        sys.stderr.write(f"ks2os: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except Ks2osError as exc:
        sys.stderr.write(f"ks2os: {one_line(exc)}\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
