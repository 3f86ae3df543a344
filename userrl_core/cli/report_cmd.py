"""``userrl report RUN_DIR``: write ``report.md`` and ``plots/*.png`` into a run folder.

The trainer does this by itself at the end of every run; the command redoes it by hand, for a
run that was killed before it could, or one still running (it reads only the run folder).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Write report.md and plots/*.png into a run folder.",
        description="Write report.md and plots/*.png (reward, length, entropy/pg_loss/grad_norm, throughput, "
        "simulator) into a run folder, from its config.yaml, metrics.jsonl, decisions.jsonl, transcripts and "
        "summary.json. Works for finished, stopped, crashed and running runs.",
    )
    parser.add_argument("run_dir", help="The run folder.")
    parser.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from userrl_core.training.report import write_report

    path = write_report(args.run_dir)
    print(f"report: {path}")
    print(f"plots:  {path.parent / 'plots'}")
    return 0
