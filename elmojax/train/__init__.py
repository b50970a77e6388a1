"""Training the biLM: state, optimiser, sparse row updates, the jitted steps, checkpoints and run
directories, metrics writers, the run lock and the loop.

``from elmojax.train import TrainConfig, train`` is the entry point; the parts live in their modules.
:class:`TrainConfig` is defined with the other run configs in :mod:`elmojax.config`.
"""

from elmojax.train.loop import TrainConfig, options_with_overrides, train

__all__ = ["TrainConfig", "options_with_overrides", "train"]
