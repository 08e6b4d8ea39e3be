"""Command-line pieces the training entry points share (``training.pretrain``, ``training.finetune``).

The library (loop, tasks, run dirs) never sees argparse: these turn the parsed arguments into a run config and a
run dir, which the CLIs hand on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from training.distributed import World
from training.run_config import ConfigError, RunConfig
from training.rundir import save_run_config
from training.steps import PRECISIONS

C = TypeVar("C", bound=RunConfig)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that shows each default once: appended as "(default: X)" unless the help text already says
    what the default is, and left out where there is nothing to show (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options given explicitly in ``argv`` (None: the process's arguments, as argparse
    reads them), whatever their defaults or presets say."""
    unset = object()
    # argparse fills in a default only where the namespace lacks the attribute: pre-filled ones stay ``unset``
    # unless the command line sets them.
    dests = {a.dest for a in parser._actions if a.dest != argparse.SUPPRESS}
    namespace = argparse.Namespace(**dict.fromkeys(dests, unset))
    parser.parse_known_args(None if argv is None else list(argv), namespace=namespace)
    return {k for k, v in vars(namespace).items() if v is not unset}


def add_step_arguments(group: argparse._ArgumentGroup) -> None:
    """``--batch-gpu`` and ``--precision`` (``training.steps``), shared by pre-training and fine-tuning."""
    group.add_argument(
        "--batch-gpu",
        type=int,
        default=None,
        help="images per GPU (rank) per round: the rank's share of the batch runs in rounds whose gradients add "
        "up before one optimizer step (default: all at once); may be changed on --resume",
    )
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="autocast precision of the forward passes: bf16, fp16 (with a loss scaler) or fp32; auto is bf16 on "
        "a CUDA GPU that has it, else fp32. The run records what it resolved to",
    )
    group.add_argument(
        "--bf16", dest="precision", action="store_const", const="bf16", default="auto", help="--precision bf16"
    )


def resolve_run_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    world: World,
    config_type: type[C],
) -> tuple[C, Path | None]:
    """With ``--resume RUN_DIR``: that run's saved options (an explicit ``--duration`` or ``--batch-gpu`` wins,
    unless the config's ``check_resumed_from`` refuses it as changing what the run computes; the run's config.json
    then records it) and its dir.

    Otherwise a new config from the arguments and no dir yet (``training.rundir.open_run_dir`` makes it). A bad
    option value ends the process with the parser's usage message.
    """
    try:
        if args.resume:
            run_dir = Path(args.resume)
            saved, saved_json = config_type.read_with_json(run_dir)
            given = given_options(parser, argv)
            changes = {k: getattr(args, k) for k in ("duration", "batch_gpu") if k in given}
            cfg = saved.replace(**changes)
            cfg.check_resumed_from(saved)
            if world.is_main and cfg != saved:  # keeps the keys the config does not hold (world size, teacher record)
                resumed_json = cfg.to_json()
                save_run_config(run_dir, {**saved_json, **{k: resumed_json[k] for k in changes}})
            return cfg, run_dir
        cfg = config_type.from_options(vars(args))
    except ConfigError as e:
        parser.error(str(e))
    if args.batch % world.world_size:
        parser.error(f"--batch {args.batch} is not divisible by {world.world_size} processes")
    return cfg, None
