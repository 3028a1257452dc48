"""Loading layer: model specs, checkpoints, data, losses and project defaults.

Nothing here differentiates; it turns files and specs into a model with its weights, a data set
and a loss function, and rejects bad input with a :class:`hesscli.errors.HesscliError`.
"""
