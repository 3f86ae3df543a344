"""``userrl``: entry point and error handling for every subcommand.

Each command is a module with ``add_parser(subparsers)`` that sets ``func`` on its parser;
adding a command is one line in :data:`COMMANDS`. Exit statuses are listed in
:mod:`userrl_core.exit_codes`: 0 ok, 1 unexpected failure (with traceback), 2 bad input (one
line ``userrl: error: ...`` on stderr, no traceback), 3 a run stopped by a rule, 130 SIGINT,
143 SIGTERM. SIGTERM raises :class:`~userrl_core.errors.Terminated` (a ``KeyboardInterrupt``),
so it is cleaned up after exactly like Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from typing import Any, Sequence

from userrl_core import __version__
from userrl_core.cli import doctor, eval_cmd, keys, plugins, report_cmd, run, simulate, simulator_cmd
from userrl_core import exit_codes
from userrl_core.errors import Terminated, UserError
from userrl_core.redaction import RedactingStream, protect_environment

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


def _on_sigterm(signum: int, frame: Any) -> None:
    # Later SIGTERMs are ignored so that they cannot cut the clean-up short (a scheduler that
    # loses patience sends SIGKILL anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into :class:`Terminated` in the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def redact_console() -> None:
    """Everything the process prints passes through :func:`~userrl_core.redaction.redact`:
    the values of secret-named environment variables and key-shaped text become ``***``."""
    protect_environment()
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    install_sigterm_handler()
    redact_console()
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
    except Terminated:
        print("userrl: terminated (SIGTERM)", file=sys.stderr)
        return exit_codes.TERMINATED
    except KeyboardInterrupt:
        print("userrl: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:  # `userrl plugins list | head`
        return 0
    except Exception:
        traceback.print_exc()
        return exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
