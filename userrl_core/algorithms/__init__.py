"""Pure, vectorised pieces of the RL update: turn credits, trajectory scores, advantages,
losses and learning-rate schedules. None of them touches a model, a file or a plugin; the
built-in reward plugin (``userrl_plugins.rewards``) registers the credit and score methods by
name. docs/algorithms.md gives every formula.
"""
