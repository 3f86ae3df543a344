"""Before a run: the dry-run plan, the per-GPU memory estimate, the requirements check and
``userrl doctor``. Nothing here loads a model or imports torch at module level."""
