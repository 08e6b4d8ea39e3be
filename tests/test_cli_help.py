"""``--help`` of every command speaks to users: every option has a help line and shows its default once (argparse's
ArgumentDefaultsHelpFormatter appends "(default: X)" even where the help text already names the default)."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

from tests.test_import_graph import ENTRY_POINTS

# Where each command's parser is built, where that is not the module's own ``build_parser``.
PARSER_HOME = {"service.__main__": "service.cli"}
# Commands whose help lines are still to be fixed (in their own modules); strict: a fixed one fails here until
# it leaves this list.
PENDING: dict[str, str] = {}
DEFAULT_MENTION = re.compile(r"\(default\b", re.IGNORECASE)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(module_name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    module = importlib.import_module(PARSER_HOME.get(module_name, module_name))
    if hasattr(module, "build_parser"):
        return module.build_parser()

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured) as caught:
        module.main(["--help"])
    return caught.value.parser


def problems(parser: argparse.ArgumentParser, name: str) -> list[str]:
    found = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += problems(sub, f"{name} {sub_name}")
            continue
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        option = "/".join(action.option_strings) or action.dest
        if not action.help:
            found.append(f"{name} {option}: no help line")
            continue
        text = formatter._expand_help(action)
        if len(DEFAULT_MENTION.findall(text)) > 1:
            found.append(f"{name} {option}: default shown more than once: {text!r}")
    return found


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=PENDING[m])) if m in PENDING else m
        for m in sorted(ENTRY_POINTS)
    ],
)
def test_help_lines(module: str, monkeypatch: pytest.MonkeyPatch):
    parser = parser_of(module, monkeypatch)
    bad = problems(parser, f"python -m {module}")
    assert not bad, "\n".join(bad)
    help_text = parser.format_help()  # renders without errors (a stray % in a help line would raise)
    assert help_text.startswith("usage:")
