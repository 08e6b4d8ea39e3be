"""Command-line pieces the training entry points share (``training.pretrain``, ``training.finetune``).

The library (loop, tasks, run dirs) never sees argparse: these turn the parsed arguments into a run config and a
run dir, which the CLIs hand on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.distributed import World
from training.rundir import load_run_config


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


def resolve_run_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    world: World,
    from_args: Callable[[argparse.Namespace], dict[str, Any]],
) -> tuple[dict[str, Any], Path | None]:
    """With ``--resume RUN_DIR``: that run's saved options (an explicit ``--duration`` wins) and its dir.

    Otherwise a new config from the arguments and no dir yet (``training.rundir.open_run_dir`` makes it).
    """
    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir)
        if "duration" in given_options(parser, argv):
            cfg["duration"] = args.duration
        return cfg, run_dir
    cfg = from_args(args)
    if args.batch % world.world_size:
        parser.error(f"--batch {args.batch} is not divisible by {world.world_size} processes")
    return cfg, None
