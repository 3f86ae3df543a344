"""Every hook a userrl plugin can implement.

Plugins are modules (or objects) exposed through the ``userrl`` entry-point group and marked
with ``userrl_core.hookimpl``. Built-in plugins load through the same group. Registration hooks
receive a ``register`` callback; lifecycle hooks receive the live :class:`~userrl_core.run.RunHandle`.
docs/plugins.md documents each hook; tests/test_docs.py fails when one is missing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from userrl_core.run import RunHandle

PROJECT = "userrl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Registration: called once when the plugin manager loads, one plugin at a time
# --------------------------------------------------------------------------------------------


@hookspec
def register_environments(register: Callable[..., None]) -> None:
    """Register environment factories.

    Called once per plugin when the plugin manager loads.

    :param register: ``register(name, factory, description="")``. ``name`` is the
        ``env_name`` that dataset rows carry (``"IntentionGym"``); ``factory`` is called as
        ``factory(task=Task, simulator=Simulator, settings=dict, seed=int)`` for each episode
        and returns an object with async ``reset()``, async ``step(action)`` and ``metrics()``
        (see ``userrl_core.types.Environment``; optional factory attributes
        ``settings_model``, ``needs_simulator``, ``validate_task``, ``default_tasks`` are in
        ``userrl_core.types.EnvironmentFactory``). A name another plugin also registered is
        contested: a run that needs it stops with an error naming both plugins.
    :returns: nothing.
    """


@hookspec
def register_simulators(register: Callable[..., None]) -> None:
    """Register user-simulator factories.

    Called once per plugin when the plugin manager loads.

    :param register: ``register(name, factory, description="")``. ``name`` is what
        ``simulator.name`` in a recipe refers to (``"litellm"``, ``"local"``); ``factory`` is
        called once per run as ``factory(config=SimulatorConfig)`` and returns a
        ``userrl_core.types.Simulator`` (``name``, async ``complete``, ``stats()``, async
        ``aclose()``). Duplicate names are contested, as above.
    :returns: nothing.
    """


@hookspec
def register_rewards(register: Callable[..., None]) -> None:
    """Register reward methods: turn-credit methods and trajectory-score methods.

    Called once per plugin when the plugin manager loads.

    :param register: ``register(kind, name, fn, description="")`` with ``kind``
        ``"turn_credit"`` (``algorithm.turn_credit``) or ``"trajectory_score"``
        (``algorithm.trajectory_score``). Turn-credit and trajectory-score
        functions are pure and vectorised: ``fn(rewards, turn_mask, gamma=..., **kwargs)`` on
        ``[episodes, turns]`` tensors (see ``userrl_core.types.TurnCreditFn``).
        Duplicate ``(kind, name)`` pairs are contested, as above.
    :returns: nothing.
    """


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register rollout and training backends.

    Called once per plugin when the plugin manager loads.

    :param register: ``register(kind, name, factory, description="")`` with ``kind``
        ``"rollout"`` (``rollout.backend``) or ``"training"`` (``actor.backend``). ``factory``
        is called as ``factory(config=RunConfig, **kwargs)``; a rollout factory also receives
        ``trainer=`` (the training backend) so colocated backends can share weights. The
        objects follow ``userrl_core.types.RolloutBackend`` and ``TrainingBackend``.
        Duplicate ``(kind, name)`` pairs are contested, as above.
    :returns: nothing.
    """


@hookspec
def register_settings(register: Callable[..., None]) -> None:
    """Register the recipe sections a plugin owns (beyond ``env.<name>`` and
    ``simulator.<name>``, which an environment's or simulator's factory owns through its
    ``settings_model`` attribute).

    Called once per plugin when the plugin manager loads.

    :param register: ``register(section, model, description="", renamed=None)``. ``section``
        is a top-level recipe key the core schema does not use (``"guard"``); ``model`` is a
        pydantic model class that validates it (unknown keys should be forbidden); the
        recipe loader validates the section with it (errors name the dotted key, exit status
        2), ``userrl keys`` lists its fields, and the plugin reads it with
        ``userrl_core.config.sections.section_settings(config, section, model)``.
        ``renamed`` maps old dotted recipe keys to keys inside the section: a recipe that
        still uses one keeps working with one warning line. Duplicate sections are contested.
    :returns: nothing.
    """


# --------------------------------------------------------------------------------------------
# Run lifecycle: called by the trainer; loggers, stoppers and reporters implement these
# --------------------------------------------------------------------------------------------


@hookspec
def on_run_start(run: "RunHandle") -> None:
    """Called once after the run folder, the backends and the datasets are ready, before the
    first rollout (and before validation at step 0).

    :param run: the ``RunHandle``: ``config`` (validated ``RunConfig``), ``run_dir``
        (``pathlib.Path``), ``step`` and ``request_stop`` / ``request_rollback`` (for stoppers).
    :returns: nothing.
    """


@hookspec
def on_step_end(run: "RunHandle", step: int, metrics: dict[str, float]) -> None:
    """Called after every training step, once the update is done and the step's metrics are
    complete (including validation metrics when this step validated).

    :param run: the ``RunHandle``; a stopper may call ``run.request_stop(rule, message, data)``
        or ``run.request_rollback(rule, message, data, changes)`` here.
    :param step: the global step just finished (1-based).
    :param metrics: flat mapping of metric name to value (verl names where one exists).
    :returns: nothing.
    """


@hookspec
def on_validation_end(run: "RunHandle", step: int, metrics: dict[str, float]) -> None:
    """Called after each validation pass (also the one before training, at step 0).

    :param run: the ``RunHandle``.
    :param step: the global step the validated weights belong to.
    :param metrics: validation metrics (``val-core/<data_source>/reward/mean@1``, ...).
    :returns: nothing.
    """


@hookspec
def on_checkpoint_saved(run: "RunHandle", step: int, path: "Path", is_best: bool) -> None:
    """Called after a checkpoint folder was written and renamed into place.

    :param run: the ``RunHandle``.
    :param step: the step the checkpoint holds.
    :param path: the checkpoint folder (``pathlib.Path``).
    :param is_best: true when this checkpoint is the new best by validation reward.
    :returns: nothing.
    """


@hookspec
def on_run_end(run: "RunHandle", status: str, summary: dict[str, Any]) -> None:
    """Called once when the run ends, whatever the reason.

    :param run: the ``RunHandle``.
    :param status: ``"finished"``, ``"stopped"`` (a stopper asked), ``"failed"`` (an
        exception) or ``"interrupted"`` (Ctrl-C).
    :param summary: the run summary that is also written to ``summary.json``.
    :returns: nothing.
    """
