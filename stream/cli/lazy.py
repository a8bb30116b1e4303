"""A click group whose subcommands are imported only when they run.

``streamrec --help`` lists every command from a table of names, import paths and one-line
helps, so it answers without importing numpy, gensim, faust or confluent_kafka; a command's
module is imported when that command (or its own ``--help``) is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click
from click.utils import make_default_short_help


@dataclass(frozen=True)
class LazyCommand:
    target: str  # "package.module:attribute"
    help: str  # the first sentence of the command's docstring (a unit test checks)
    section: str


class LazyGroup(click.Group):
    def __init__(self, *args: object, lazy: dict[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *sorted(set(self.commands) - set(self.lazy))]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            self.add_command(load(self.lazy[cmd_name].target), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        width = max(len(n) for n in names)
        limit = formatter.width - 6 - width
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in names:
            entry = self.lazy.get(name)
            if entry is not None:
                short = make_default_short_help(entry.help, limit)
                sections.setdefault(entry.section, []).append((name.ljust(width), short))
            elif not self.commands[name].hidden:
                short = self.commands[name].get_short_help_str(limit)
                sections.setdefault("Commands", []).append((name.ljust(width), short))
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def load(target: str) -> click.Command:
    module, _, attr = target.partition(":")
    command = getattr(importlib.import_module(module), attr)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")
    return command
