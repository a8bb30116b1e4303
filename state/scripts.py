"""The Lua scripts the store runs: one ``lua/<name>.lua`` file each, read from the
installed package (pyproject's package data ships them in the wheel).

A file opens with a comment for its readers; Redis gets what follows it. On a cluster
every call carries the script's text (EVAL: no node can answer NOSCRIPT), so the
comment would cost bytes on every call there.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import NamedTuple


class Script(NamedTuple):
    name: str
    text: str  # what Redis runs: the file after its header comment
    sha: str  # SHA-1 of ``text``, the handle EVALSHA names it by


def parse(name: str, source: str) -> Script:
    lines = source.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("--"):
        start += 1
    text = "".join(lines[start:])
    return Script(name, text, hashlib.sha1(text.encode()).hexdigest())


def load_all() -> dict[str, Script]:
    """Every script of the package, by name (its file name without ``.lua``)."""
    found = {}
    for resource in files("state").joinpath("lua").iterdir():
        if resource.name.endswith(".lua"):
            name = resource.name.removesuffix(".lua")
            found[name] = parse(name, resource.read_text(encoding="utf-8"))
    return dict(sorted(found.items()))


SCRIPTS = load_all()
