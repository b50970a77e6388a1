"""The run config: one table of knobs (elmojax.config.KNOBS) gives every command its flags, each flag
parses to its dataclass field with the dataclass's default, a bad value is one line naming the flag,
the CLI reference's table is the generated one, and ``--precision`` reaches the compiled model."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

from elmojax.cli import build_parser, main
from elmojax.cli.flags import config_from_args
from elmojax.config import (
    CONFIGS,
    KERNEL_NAMES,
    KNOBS,
    OPTIMIZER_NAMES,
    DistributedConfig,
    EmbedConfig,
    Numerics,
    TrainConfig,
    knobs_for,
    markdown,
)
from elmojax.errors import ElmoError
from tests.helpers import ROOT

#: the required arguments of each command that takes knobs
REQUIRED = {
    "train": ["train", "--options-file", "o.json", "--train-prefix", "t*.txt", "--save-dir", "RUN"],
    "evaluate": ["evaluate", "--save-dir", "RUN", "--test-prefix", "t*.txt"],
    "embed": ["embed", "in.txt", "out.h5", "--options-file", "o.json", "--weight-file", "w.h5"],
    "probe": ["probe", "--options-file", "o", "--weight-file", "w", "--train", "a", "--test", "b",
              "--task", "upos"],
    "compile-check": ["compile-check", "--topology", "v5e:1x1", "--options-file", "o", "--vocab-size", "10"],
}  # fmt: skip
#: the config each command builds from its flags (compile-check and evaluate: Numerics only)
BUILT = {
    "train": (TrainConfig, Numerics, DistributedConfig),
    "evaluate": (Numerics, DistributedConfig),
    "embed": (EmbedConfig, Numerics, DistributedConfig),
    "probe": (EmbedConfig, Numerics),
    "compile-check": (Numerics,),
}


def parse(command: str, *extra: str):
    return build_parser().parse_args([*REQUIRED[command], *extra])


def build(cls, args, command: str):
    """The config ``command`` builds (TrainConfig with the Numerics of the same flags)."""
    if cls is TrainConfig:
        return config_from_args(cls, args, command, numerics=config_from_args(Numerics, args, command))
    return config_from_args(cls, args, command)


def test_every_field_of_every_run_config_has_one_row():
    rows = [k.field for k in KNOBS]
    assert len(rows) == len(set(rows))
    for cls in CONFIGS:
        fields = {f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)}
        assert fields == {r for r in rows if r.startswith(cls.__name__ + ".")}, cls.__name__
    assert len(rows) == sum(len(dataclasses.fields(c)) for c in CONFIGS)


def test_the_cli_reference_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- knobs: .*? -->\n(.*?)<!-- end of knobs -->", text, re.S).group(1)
    assert table == markdown(), "regenerate it: python -m elmojax.config --markdown"
    for k in KNOBS:
        assert f"`{k.field}`" in table
        if k.flag:  # and every knob's flag is in the synopsis of each command that takes it
            for command in k.commands:
                block = re.search(rf"elmojax {command} (.*?)(?=\nelmojax |\n```)", text, re.S).group(1)
                assert k.option in block, (command, k.option)


def test_the_names_kept_free_of_jax_are_the_real_ones():
    from elmojax.model.kernels import KERNELS
    from elmojax.train.optim import OPTIMIZERS

    assert KERNEL_NAMES == tuple(KERNELS) and OPTIMIZER_NAMES == tuple(OPTIMIZERS)


@pytest.mark.parametrize("command", list(REQUIRED))
def test_without_flags_every_field_has_the_dataclass_default(command):
    args = parse(command)
    for cls in BUILT[command]:
        config = build(cls, args, command)
        for f in dataclasses.fields(cls):
            knob = next(k for k in KNOBS if k.field == f"{cls.__name__}.{f.name}")
            if not knob.flag or command not in knob.commands or command in knob.required:
                continue
            if knob.kind == "progress":
                continue  # decided by the terminal (tests/test_progress.py)
            expected = knob.defaults.get(command, f.default)
            assert getattr(config, f.name) == expected, (command, f.name)
            if command not in knob.defaults:
                assert getattr(config, f.name) == getattr(cls, f.name), (command, f.name)
    if command in ("embed", "probe"):  # their embeddings are full float32 unless told otherwise
        assert build(Numerics, args, command).precision == "highest"


def _other_value(knob, command: str) -> tuple[list[str], object]:
    """Flags that set ``knob`` to a value other than its default, and that value."""
    default = knob.default(command)
    if knob.kind == "switch":
        return [knob.option], True
    if knob.kind == "toggle":
        return [f"--no-{knob.option[2:]}" if default else knob.option], not default
    if knob.kind == "progress":
        return ["--no-progress"], False
    if knob.choices:
        value = next(c for c in reversed(knob.choices) if c != default)
        return [knob.option, value], value
    if knob.parse is not None:
        return [knob.option, "3:5"], (3, 5)
    if command in knob.required:
        return [], None
    value = {int: (default or 1) + 2, float: 0.5, str: "x/y*"}[knob.type]
    # bilm-tf's underscore spelling, as every knob has it
    argv = [knob.option.replace("-", "_").replace("__", "--"), str(value)]
    return argv + (["--distributed"] if knob.owner is DistributedConfig else []), value


@pytest.mark.parametrize("command", list(REQUIRED))
def test_each_flag_sets_its_field(command):
    for knob in knobs_for(command):
        argv, value = _other_value(knob, command)
        if not argv:
            continue
        args = parse(command, *argv)
        if knob.owner in BUILT[command]:
            config = build(knob.owner, args, command)
            assert getattr(config, knob.name) == value, (command, argv)
            others = [k for k in knobs_for(command) if k.owner is knob.owner and k is not knob]
            for k in others:  # and nothing else
                if k.kind != "progress" and command not in k.required and "--distributed" not in argv:
                    assert getattr(config, k.name) == k.default(command), (command, argv, k.name)
        else:  # a field the command passes on itself (softmax_shards of evaluate, compile-check)
            assert getattr(args, knob.name) == value, (command, argv)


@pytest.mark.parametrize(
    "command, argv, flag",
    [
        ("train", ["--max-bad-steps", "0"], "--max-bad-steps must be >= 1"),
        ("train", ["--agree-every", "-1"], "--agree-every must be >= 1"),
        ("train", ["--sparse-fraction", "1.5"], "--sparse-fraction must be between 0 and 1"),
        ("train", ["--restore-retry-s", "-1"], "--restore-retry-s must be >= 0"),
        ("train", ["--profile-steps", "5:2"], "--profile-steps 5:2: the steps must be"),
        ("train", ["--profile-steps", "5"], "--profile-steps '5': expected A:B"),
        ("train", ["--conv-tokens", "0"], "--conv-tokens must be an integer >= 1"),
        ("train", ["--max-steps", "0"], "--max-steps must be >= 1"),
        ("evaluate", ["--tile-logits", "0"], "--tile-logits must be an integer >= 1"),
        ("embed", ["--chunk-batches", "0"], "--chunk-batches must be >= 1"),
        ("embed", ["--batch-size", "0"], "--batch-size must be >= 1"),
        ("probe", ["--batch-size", "-2"], "--batch-size must be >= 1"),
        ("compile-check", ["--conv-tokens", "0"], "--conv-tokens must be an integer >= 1"),
        ("train", ["--heartbeat-timeout", "60"], "--heartbeat-timeout needs --distributed"),
        (
            "evaluate",
            ["--distributed", "--shutdown-timeout", "0"],
            "--shutdown-timeout must be >= 1 (seconds)",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_and_nothing_is_written(
    command, argv, flag, tmp_path, capsys
):
    args = [a.replace("RUN", str(tmp_path / "run")) for a in REQUIRED[command]]
    cache = [] if command == "compile-check" else ["--no-compilation-cache"]
    assert main([*args, *argv, *cache]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err and err.startswith(f"elmojax {command}: error: "), err
    assert not (tmp_path / "run").exists()


def test_an_unknown_choice_is_refused_by_the_parser(capsys):
    for argv in (["--precision", "medium"], ["--kernels", "pallas"], ["--optimizer", "lamb"]):
        with pytest.raises(SystemExit) as e:
            parse("train", *argv)
        assert e.value.code == 2 and f"argument {argv[0]}: invalid choice" in capsys.readouterr().err


def test_the_python_config_is_checked_once_where_it_is_built():
    base = dict(save_dir="run", train_prefix="t*.txt")
    with pytest.raises(ElmoError, match="`agree_every` must be >= 1"):
        TrainConfig(**base, agree_every=0)
    with pytest.raises(ElmoError, match="unknown `optimizer` 'lamb'"):
        TrainConfig(**base, optimizer="lamb")
    with pytest.raises(ElmoError, match="`chunk_batches` must be >= 1"):
        EmbedConfig(chunk_batches=0)
    assert TrainConfig(**base, profile_steps=[2, 4]).profile_steps == (2, 4)


def _highest_products(numerics: Numerics, tiny_options, tiny_params) -> int:
    """How many products of the compiled token embedder run at full float32 precision."""
    from elmojax.model.bilm import BiLM

    tokens = jnp.ones((4, tiny_options.char_cnn.max_characters_per_token), jnp.int32)
    embed = jax.jit(lambda p, t: BiLM(tiny_options, numerics).apply(p, t, method=BiLM.embed_tokens))
    return embed.lower(tiny_params, tokens).as_text().count("precision HIGHEST")


def test_the_precision_flag_reaches_the_compiled_model(tiny_options, tiny_params):
    train_numerics = {
        flag: build(TrainConfig, parse("train", *flag), "train").numerics
        for flag in ((), ("--precision", "highest"))
    }
    assert train_numerics[()].precision is None
    assert train_numerics[("--precision", "highest")].precision == "highest"
    assert _highest_products(train_numerics[()], tiny_options, tiny_params) == 0
    n = _highest_products(train_numerics[("--precision", "highest")], tiny_options, tiny_params)
    assert n >= 3  # the convolution, the highway layer and the projection at least
    embed_default = build(Numerics, parse("embed"), "embed")
    assert _highest_products(embed_default, tiny_options, tiny_params) == n
    embed_default_precision = build(Numerics, parse("embed", "--precision", "default"), "embed")
    assert _highest_products(embed_default_precision, tiny_options, tiny_params) == 0


def test_the_process_defaults_are_those_of_parallel_initialize():
    import inspect

    from elmojax.parallel import initialize

    defaults = {n: p.default for n, p in inspect.signature(initialize).parameters.items()}
    config = DistributedConfig()
    assert {n: getattr(config, n) for n in defaults} == defaults
    with pytest.raises(ElmoError, match="`num_processes` needs `distributed`"):
        DistributedConfig(num_processes=2)
