"""A Dockerfile reader for the tests: stages, instructions, flags, ARG/ENV expansion as Docker does it.

Enough of the Dockerfile syntax for the repo's own Dockerfiles (line continuations, comments, parser
directives, shell and exec forms, `--flag=value` options), so that the tests follow the real file.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    cmd: str                      # upper case: RUN, COPY, ENV, ...
    flags: dict[str, str]         # leading --name=value options (RUN --mount, COPY --from, HEALTHCHECK --interval)
    args: str                     # the rest, raw
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form of RUN/CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for the shell form."""
        text = self.args
        if self.cmd == "HEALTHCHECK":
            if not text.startswith("CMD"):
                return None
            text = text[3:].strip()
        if text.startswith("["):
            value = json.loads(text)
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"line {self.line}: exec form must be a JSON list of strings")
            return value
        return None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


_VAR = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alternative}."""

    def sub(m: re.Match) -> str:
        name = m.group("name") or m.group("bare")
        value = env.get(name, "")
        op = m.group("op")
        if op == "-":
            return value if value else expand(m.group("word"), env)
        if op == "+":
            return expand(m.group("word"), env) if value else ""
        return value

    return _VAR.sub(sub, text)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments and parser directives; inside a continuation Docker skips them too
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append((start, buf.strip()))
        buf = ""
    if buf:
        lines.append((start, buf.strip()))
    return lines


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags = {}
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, text in _logical_lines(path.read_text()):
        cmd, _, rest = text.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        flags, args = _split_flags(rest) if cmd in {"RUN", "COPY", "ADD", "HEALTHCHECK", "FROM"} else ({}, rest)
        if cmd == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=parts[0]))
        elif not stages:
            if cmd != "ARG":
                raise ValueError(f"{path}:{line}: only ARG may come before the first FROM, got {cmd}")
            key, eq, value = args.partition("=")
            global_args[key] = value if eq else None
        else:
            stages[-1].instructions.append(Instruction(cmd, flags, args, line))
    return Dockerfile(global_args, stages)


def env_pairs(args: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """The key/value pairs of one ENV instruction. As in Docker, every value is expanded against the variables
    set before this instruction (``env``), not against pairs earlier on the same line."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return [(words[0], expand(" ".join(words[1:]), env))]
    return [(key, expand(value, env)) for key, _, value in (word.partition("=") for word in words)]


class DockerIgnore:
    """The patterns of a .dockerignore file (last match wins, `!` re-includes, `**/` matches at any depth)."""

    def __init__(self, path: Path):
        lines = path.read_text().splitlines() if path.is_file() else []
        self.patterns = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]

    def ignored(self, rel: str) -> bool:
        result = False
        for pattern in self.patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if pattern.startswith("**/"):
                tail = pattern[3:]
                hit = any(fnmatch.fnmatch("/".join(rel.split("/")[i:]), tail) for i in range(rel.count("/") + 1))
                hit = hit or any(fnmatch.fnmatch(part, tail) for part in rel.split("/")[:-1])
            else:
                hit = fnmatch.fnmatch(rel, pattern) or any(
                    fnmatch.fnmatch("/".join(rel.split("/")[: i + 1]), pattern) for i in range(rel.count("/")))
            if hit:
                result = not negate
        return result
