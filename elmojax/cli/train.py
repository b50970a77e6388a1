"""``elmojax train``: bilm-tf's ``train_elmo.py`` flags; the same command resumes."""

from __future__ import annotations

import argparse
import json

from elmojax.cli import flags
from elmojax.config import Numerics, TrainConfig


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a biLM (resumes when SAVE_DIR already holds a run)",
        description="Train an ELMo biLM as bilm-tf's train_elmo.py does. Running the same command again "
        "resumes from the latest checkpoint in --save-dir.",
    )
    flags.flag(p, "--options-file", required=True, help="options.json with the model and training keys")
    flags.flag(
        p, "--batch-size", type=int, default=None, help="override batch_size (per device) of the options"
    )
    flags.flag(p, "--n-epochs", type=int, default=None, help="override n_epochs of the options")
    flags.add_knobs(p, "train")  # every TrainConfig, Numerics and DistributedConfig field (config.KNOBS)
    flags.add_compilation_cache(p)
    p.set_defaults(func=run)


def config(args: argparse.Namespace) -> TrainConfig:
    """The run's :class:`~elmojax.config.TrainConfig` from the parsed flags (validated)."""
    numerics = flags.config_from_args(Numerics, args, "train")
    return flags.config_from_args(TrainConfig, args, "train", numerics=numerics)


def run(args: argparse.Namespace) -> None:
    train_config = config(args)  # bad values stop here, before anything starts
    flags.start_distributed(args)
    from elmojax.train import options_with_overrides, train

    options = options_with_overrides(args.options_file, batch_size=args.batch_size, n_epochs=args.n_epochs)
    last = train(options, train_config)
    print(json.dumps(last))
