"""Option types and option groups shared by the commands (faust's ``cli/params.py``).

A name or a duration is checked when the command line is parsed, before any work
(training, reading a file) starts. An option that overrides a setting names its
``STREAMREC_*`` variable and its default in ``--help``, and reads the variable itself, so
the value it passes on is the one ``Settings.from_env`` would have chosen.

This module stays light (click and ``stream.config``): every command module imports it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from models.names import TENANT_RULE, is_tenant
from stream.config import Settings
from stream.timing import parse_duration

if TYPE_CHECKING:
    from models.datasets import Clicks

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# -- options -------------------------------------------------------------------------------


class Option(click.Option):
    """An option whose ``show_default`` text is shown as given: ``[default: 10]``, where
    click would write ``[default: (10)]``."""

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra


def option(*decls: str, **kwargs: Any) -> Decorator:
    """``click.option`` with this CLI's ``Option``: every command module uses it."""
    return click.option(*decls, cls=Option, **kwargs)


# -- types ---------------------------------------------------------------------------------


class TenantName(click.ParamType):
    name = "tenant"

    def __init__(self, max_length: int = 64) -> None:
        self.max_length = max_length

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not is_tenant(value):
            self.fail(f"{value!r} is not a tenant name: it {TENANT_RULE}", param, ctx)
        if len(value) > self.max_length:
            self.fail(f"{value!r} is longer than {self.max_length} characters", param, ctx)
        return str(value)


class ExistingTenant(TenantName):
    """A tenant that was created already: commands on an unknown tenant are an error,
    never a new tenant (``streamrec tenant create`` makes one)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name = super().convert(value, param, ctx)
        settings = ctx.find_object(Settings) if ctx is not None else None
        if settings is not None:
            from models.registry import Registry  # numpy behind it: only when used

            if not Registry(settings.registry_dir).exists(name):
                raise click.ClickException(
                    f"unknown tenant {name!r}: create it first (`streamrec tenant create {name}`)"
                )
        return name


TENANT = TenantName()
EXISTING_TENANT = ExistingTenant()
# "--tenants N" appends "-0" .. "-(N-1)": a prefix of 56 characters stays a valid name.
TENANT_PREFIX = TenantName(max_length=56)
POSITIVE = click.FloatRange(min=0, min_open=True)
CLICK_LOG = click.Path(exists=True, dir_okay=False, path_type=Path)
# train's and replay's FILE; without it they read the shipped e-shop clickstream.
click_log_argument = click.argument("file", required=False, type=CLICK_LOG)


def unreachable(settings: Settings, exc: Exception) -> click.ClickException:
    """Redis away, as the one line a command ends with."""
    return click.ClickException(f"cannot reach Redis at {settings.redis_display}: {exc}")


class Duration(click.ParamType):
    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# -- building blocks -----------------------------------------------------------------------


def stacked(*options: Decorator) -> Decorator:
    """Several options as one decorator, in the order given (top to bottom in --help)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def packed(name: str, cls: type, *options: Decorator) -> Decorator:
    """Several options handed to the command as one argument ``name``: a ``cls`` (a
    dataclass whose fields are the options' parameter names) built from their values."""
    names = tuple(f.name for f in fields(cls))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def with_packed(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names if n in kwargs}
            return func(*args, **{name: cls(**given)}, **kwargs)

        return stacked(*options)(with_packed)

    return decorate


def _setting_default(name: str) -> Any:
    field = Settings.model_fields[name]
    return None if field.default_factory else field.default


def setting_option(*decls: str, setting: str, **kwargs: Any) -> Decorator:
    """An option that overrides ``Settings.<setting>``: the flag, else the variable, else
    the setting's default, the same order ``Settings.from_env`` follows."""
    kwargs.setdefault("default", _setting_default(setting))
    return option(*decls, envvar=f"STREAMREC_{setting.upper()}", show_envvar=True, **kwargs)


def tenant_option(**kwargs: Any) -> Decorator:
    kwargs.setdefault("help", "Tenant (shop) whose model is used.")
    return option("--tenant", default="default", type=TENANT, **kwargs)


json_flag = option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

broker_option = setting_option(
    "--broker", setting="broker", help="Kafka bootstrap servers (host:port[,host:port...])."
)


_READS = {
    "home": [("STREAMREC_HOME", "pid files, logs, the registry [default: ./.streamrec]")],
    "registry": [("STREAMREC_MODEL_DIR", "model registry [default: $STREAMREC_HOME/models]")],
    "redis": [
        ("STREAMREC_REDIS_URL", f"Redis [default: {_setting_default('redis_url')}]"),
        ("STREAMREC_REDIS_CLUSTER", "1: a Redis Cluster, the URL any node [default: 0]"),
    ],
    "broker": [("STREAMREC_BROKER", f"Kafka [default: {_setting_default('broker')}]")],
    "topics": [
        (f"STREAMREC_{name.upper()}", f"topic [default: {_setting_default(name)}]")
        for name in ("clicks_topic", "recs_topic", "dlq_topic", "feedback_topic")
    ],
    "retrain": [
        (
            "STREAMREC_RETRAIN_TOPIC",
            f"a trainer group's work [default: {_setting_default('retrain_topic')}]",
        )
    ],
}


def uses(*what: str) -> str:
    """An epilog naming the STREAMREC_* variables a command reads without a flag."""
    rows = [row for w in what for row in _READS[w]]
    width = max(len(name) for name, _ in rows)
    return "\b\nEnvironment:\n" + "\n".join(f"  {n:<{width}}  {text}" for n, text in rows)


# -- the click-log column spec (train, evaluate, replay, loadtest) --------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """How to read a click log: its format and, for ``csv``, which column is which."""

    fmt: str = "auto"
    session_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    order_col: str | None = None
    category_col: str | None = None

    def columns(self) -> dict[str, str | None]:
        """Keyword arguments of ``read_clicks`` and ``load_replay`` (no category)."""
        return {
            "session_col": self.session_col,
            "item_col": self.item_col,
            "time_col": self.time_col,
            "order_col": self.order_col,
        }

    def read(self, path: Path) -> Clicks:
        from models.datasets import read_clicks

        return read_clicks(path, self.fmt, **self.columns(), category_col=self.category_col)


def column_options(*, category: bool = False) -> Decorator:
    """``--format`` and the csv column options, handed to the command as one ``spec``
    argument (a ColumnSpec). ``category``: also ``--category-col``."""
    # Imported here, not at the top: only commands that read files pay for numpy.
    from models.datasets import FORMATS

    options = [
        option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="auto",
            help="Input format: eshop (Kaggle CSV), yoochoose (TSV), csv (name the columns); "
            "auto tells eshop and yoochoose apart by the header.",
        ),
        option("--session-col", help="csv: column holding the session id."),
        option("--item-col", help="csv: column holding the item id."),
        option("--time-col", help="csv: column with timestamps (unix seconds or ISO 8601)."),
        option("--order-col", help="csv: column with the click's position in its session."),
    ]
    if category:
        options.append(
            option("--category-col", help="csv: column with the item's category (optional).")
        )

    return packed("spec", ColumnSpec, *options)


# -- where producer commands send clicks (replay, synth, loadtest) --------------------------


@dataclass(frozen=True)
class Target:
    """Where a producer command sends clicks, and how."""

    broker: str | None
    topic: str | None
    tenants: int
    tenant_name: str
    linger_ms: float | None  # None: the command's own default
    no_progress: bool

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with the --broker and --topic given."""
        return settings.with_(broker=self.broker, clicks_topic=self.topic)

    def linger(self, default: float = 5.0) -> float:
        return default if self.linger_ms is None else self.linger_ms


# Handed to the command as one ``target`` argument (a Target).
target_options = packed(
    "target",
    Target,
    broker_option,
    setting_option("--topic", setting="clicks_topic", help="Topic the clicks go to."),
    option(
        "--tenants",
        type=click.IntRange(1, 10_000),
        default=1,
        help="Spread sessions over this many tenants: NAME-0 .. NAME-(T-1).",
    ),
    option(
        "--tenant",
        "tenant_name",
        default="default",
        type=TENANT_PREFIX,
        help="Tenant of every event, or the name prefix with --tenants > 1.",
    ),
    option(
        "--linger-ms",
        type=click.FloatRange(0, 5000),
        show_default="5; loadtest 1, as its latency counts from each event's send",
        help="Producer batching delay: higher = bigger batches, more throughput.",
    ),
    option("--no-progress", is_flag=True, help="No progress bar."),
)

pacing_options = stacked(
    option(
        "--rate", type=POSITIVE, help="Events per second, evenly spaced.", show_default="no limit"
    ),
    option(
        "--speedup",
        type=POSITIVE,
        help="Keep the original gaps between clicks, X times faster. Files without "
        "a time of day (the e-shop CSV) get plausible seconds, seeded.",
    ),
)
