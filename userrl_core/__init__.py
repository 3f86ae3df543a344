"""userrl: multi-turn RL for LLM agents against simulated users.

Plugins import ``hookimpl`` from here::

    from userrl_core import hookimpl
"""

from userrl_core.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
