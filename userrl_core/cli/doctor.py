"""``userrl doctor [RECIPE] [overrides...]``: one PASS/FAIL/INFO line per check."""

from __future__ import annotations

import argparse
from typing import Any

from userrl_core.preflight.doctor import exit_status, run_doctor


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="Check this machine (and what a recipe needs): versions, plugins, GPUs, keys, files, ports."
    )
    parser.add_argument("recipe", nargs="?", default=None, help="Recipe YAML file to check against.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for `userrl run`.")
    parser.set_defaults(func=doctor_command)


def doctor_command(args: argparse.Namespace) -> int:
    checks = run_doctor(args.recipe, args.overrides)
    for check in checks:
        print(check.line())
    status = exit_status(checks)
    failed = sum(1 for c in checks if c.required and c.status == "fail")
    print("\nall required checks passed" if status == 0 else f"\n{failed} required check(s) failed")
    return status
