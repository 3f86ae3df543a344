"""What ``userrl``'s exit status means, so schedulers and scripts can tell outcomes apart.

=====  ===========================================================================
code   meaning
=====  ===========================================================================
0      finished: every planned step ran (or the command did its job)
1      failed: an unexpected error (a traceback is printed)
2      bad input: a recipe, dataset row, plugin name, key or model that cannot work
       (one ``userrl: error: ...`` line, no traceback)
3      stopped by a rule: the stability guard (its ``simulator_failure_spike`` rule stops
       a run whose simulator is unreachable), or too many steps in a row without an update
130    interrupted by SIGINT (Ctrl-C); the summary and the report are still written
143    terminated by SIGTERM (Slurm, Kubernetes, ``docker stop``); handled like SIGINT
=====  ===========================================================================
"""

from __future__ import annotations

FINISHED = 0
FAILED = 1
BAD_INPUT = 2
STOPPED = 3
INTERRUPTED = 130
TERMINATED = 143

EXIT_BY_STATUS = {
    "finished": FINISHED,
    "failed": FAILED,
    "stopped": STOPPED,
    "interrupted": INTERRUPTED,
    "terminated": TERMINATED,
}
"""Exit status for each ``summary.json`` ``status``."""


def exit_code_for(status: str | None) -> int:
    """The exit status for a run's final ``status`` (unknown statuses count as failures)."""
    return EXIT_BY_STATUS.get(status or "", FAILED)
