"""The ``streamrec`` command line: one module per command group, loaded lazily.

``COMMANDS`` maps each command to ``module:attribute`` and its one-line help, so
``streamrec --help`` lists everything without importing the heavy libraries. Options used
by several commands live in ``stream.cli.params``; command modules never import each
other.
"""

from __future__ import annotations

import logging
import sys

import click

from models.errors import StreamrecError
from stream.cli.lazy import LazyCommand, LazyGroup
from stream.cli.params import option
from stream.config import Settings

_STACK, _MODELS, _STREAM, _TENANTS = "Local stack", "Models", "Stream", "Tenants and experiments"

COMMANDS: dict[str, LazyCommand] = {
    "dev": LazyCommand(
        "stream.cli.dev:dev",
        "Run the embedded broker (Apache Kafka or Tansu) and Redis in the background.",
        _STACK,
    ),
    "demo": LazyCommand(
        "stream.cli.worker:demo",
        "Run everything end to end on a private embedded stack, then stop it all.",
        _STACK,
    ),
    "train": LazyCommand(
        "stream.cli.train:train",
        "Train item embeddings and clusters on FILE and register (and promote) a model version.",
        _MODELS,
    ),
    "evaluate": LazyCommand(
        "stream.cli.train:evaluate",
        "Compare streamrec with baselines on next-item prediction (HR@K, MRR@K, coverage, speed).",
        _MODELS,
    ),
    "similar": LazyCommand(
        "stream.cli.train:similar",
        "The K products most similar to ITEM (cosine of embeddings, within ITEM's cluster).",
        _MODELS,
    ),
    "models": LazyCommand(
        "stream.cli.models:models_group",
        "List, promote and roll back model versions per tenant.",
        _MODELS,
    ),
    "trainer": LazyCommand(
        "stream.cli.trainer:trainer",
        "Retrain each tenant's model from the click log and promote it only if it is better.",
        _MODELS,
    ),
    "worker": LazyCommand(
        "stream.cli.worker:worker",
        "Consume `clicks`, keep sessions in Redis, publish ranked items to `recommendations`.",
        _STREAM,
    ),
    "warm": LazyCommand(
        "stream.cli.worker:warm",
        "Compile the ranking kernels into numba's cache, so that a worker's first start loads "
        "them.",
        _STREAM,
    ),
    "replay": LazyCommand(
        "stream.cli.producers:replay",
        "Replay a click log into the clicks topic, keyed by session id.",
        _STREAM,
    ),
    "recs": LazyCommand(
        "stream.cli.recs:recs",
        "Follow the recommendations the workers publish.",
        _STREAM,
    ),
    "synth": LazyCommand(
        "stream.cli.producers:synth",
        "Generate a realistic synthetic clickstream, seeded: to a file or into Kafka.",
        _STREAM,
    ),
    "loadtest": LazyCommand(
        "stream.cli.producers:loadtest",
        "Offer clicks to a running worker and measure latency and throughput end to end.",
        _STREAM,
    ),
    "tenant": LazyCommand(
        "stream.cli.tenant:tenant",
        "Tenants (shops): create, switch, serving rules, API keys.",
        _TENANTS,
    ),
    "experiment": LazyCommand(
        "stream.cli.experiments:experiment",
        "A/B tests between the version in service and a candidate, and their status.",
        _TENANTS,
    ),
    "bandit": LazyCommand(
        "stream.cli.experiments:bandit",
        "A multi-armed bandit over model versions (Thompson sampling on hit rate).",
        _TENANTS,
    ),
    "stats": LazyCommand(
        "stream.cli.stats:stats",
        "Recommendations, implicit hits, hit rate with its 95 % Wilson interval, and "
        "purchases, per variant (model version or popular) of TENANT.",
        _TENANTS,
    ),
}

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT)
@option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """streamrec: real-time session-based product recommendations from a click stream.

    \b
    Quick start (embedded broker + Redis, no Docker):
      streamrec dev up                 # the embedded Kafka-compatible broker and Redis
      streamrec train                  # train on the shipped clickstream and promote it
      streamrec worker &               # the stream worker (Ctrl-C or kill %1 stops it)
      streamrec replay --rate 1000 --limit 20000   # 20 s of clicks into `clicks`
      streamrec recs tail --limit 5    # the lists the worker publishes
      streamrec dev down

    Every command reads STREAMREC_* environment variables (see README) for where the
    broker, Redis and the model registry are; each command's --help names the ones it
    uses.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Settings.from_env()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="streamrec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("streamrec: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `streamrec tenant`: its help
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"streamrec: error: {exc.format_message()}{_usage_hint(exc)}", err=True)
        sys.exit(exc.exit_code)
    except StreamrecError as exc:
        click.echo(f"streamrec: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        # A path that cannot be read or written (a bad --out, a read-only registry) is the
        # user's to fix, and the message names it; other OS errors keep their traceback.
        if exc.filename is None:
            raise
        click.echo(f"streamrec: error: {exc.filename}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def _usage_hint(exc: click.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.MissingParameter) and ctx is not None and _names_a_tenant(exc, ctx):
        return f" (`streamrec tenant list` shows them; see '{ctx.command_path} --help')"
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f" (see '{ctx.command_path} --help')"
    return ""


def _names_a_tenant(exc: click.MissingParameter, ctx: click.Context) -> bool:
    """A missing argument that names an existing tenant (not a new one to create)."""
    name = exc.param.name if exc.param is not None else None
    path = ctx.command_path
    return name == "tenant" or (
        name == "name" and path.startswith("streamrec tenant") and not path.endswith("create")
    )
