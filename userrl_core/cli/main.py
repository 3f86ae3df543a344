"""``userrl``: entry point and error handling for every subcommand.

Each command is a module with ``add_parser(subparsers)`` that sets ``func`` on its parser;
adding a command is one line in :data:`COMMANDS`. Exit status: 0 ok, 1 unexpected failure
(with traceback), 2 bad input (one line ``userrl: error: ...`` on stderr, no traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Sequence

from userrl_core import __version__
from userrl_core.cli import doctor, eval_cmd, keys, plugins, report_cmd, run, simulate, simulator_cmd
from userrl_core.errors import UserError

COMMANDS = (run, plugins, doctor, simulate, keys, eval_cmd, report_cmd, simulator_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="userrl",
        description="Multi-turn RL for LLM agents against simulated users.",
    )
    parser.add_argument("--version", action="version", version=f"userrl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logs (plugin tracebacks).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`run r.yaml --dry-run a.b=1`): argparse leaves those
    # in `extra`; anything else there is a real error.
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="userrl: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"userrl: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("userrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `userrl plugins list | head`
        return 0
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
