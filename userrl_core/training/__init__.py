"""Running a run: building its pieces, the training loop, batching, checkpoints, metrics,
progress, validation reward, evaluation, the report, and the simulator server a run manages.

Nothing here is imported by ``--dry-run``'s preflight except :mod:`geometry` (no torch).
"""
