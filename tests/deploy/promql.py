"""Metric names used by a PromQL expression, by a small lexer (enough for the queries in deploy/).

A name counts as a metric when it is an identifier outside label braces, range brackets and strings, not a
function call, not a keyword, and not inside a `by (...)`/`without (...)`/`on (...)`/`ignoring (...)`/
`group_left (...)`/`group_right (...)` label list. Grafana variables (`$model`, `$__rate_interval`) are skipped.
"""

from __future__ import annotations

import re

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
    # aggregation operators, which may be followed by `by (...)` instead of their parenthesis
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<punct>==|!=|=~|!~|>=|<=|[-+*/%^(){}\[\],=<>@])
    """,
    re.VERBOSE,
)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def metric_names(expr: str) -> set[str]:
    toks = tokens(expr)
    names: set[str] = set()
    brace = bracket = 0
    label_list_depth: int | None = None  # paren depth of an open `by (...)`-style list
    paren = 0
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            brace += 1
        elif text == "}":
            brace -= 1
        elif text == "[":
            bracket += 1
        elif text == "]":
            bracket -= 1
        elif text == "(":
            paren += 1
            prev = toks[i - 1][1] if i else ""
            if prev in LABEL_LIST_KEYWORDS:
                label_list_depth = paren
        elif text == ")":
            if label_list_depth == paren:
                label_list_depth = None
            paren -= 1
        elif kind == "ident" and not brace and not bracket and label_list_depth is None:
            if text.lower() in KEYWORDS or nxt == "(":
                continue
            names.add(text)
    return names
