"""The ``streamrec`` command line.

Each sub-area registers its commands from its own module so the files stay small:
``cli_dev`` (embedded stack), ``cli_models`` (train, similar, evaluate, models),
``cli_producers`` (replay, synth, loadtest), ``cli_worker`` (worker, demo).
"""

from __future__ import annotations

import logging
import sys

import click

from models.errors import StreamrecError
from stream.config import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """streamrec: real-time session-based product recommendations from a click stream.

    \b
    Quick start (embedded broker + Redis, no Docker):
      streamrec dev up        # start the embedded Kafka-compatible broker and Redis
      streamrec train         # train on the shipped Kaggle clickstream and promote it
      streamrec worker        # run the stream worker (Ctrl-C to stop)
      streamrec replay        # replay the clickstream into the `clicks` topic
      streamrec dev down

    Every command reads STREAMREC_* environment variables (see README) for where the
    broker, Redis and the model registry are.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Settings.from_env()


def _register_all() -> None:
    from stream import (
        cli_dev,
        cli_experiments,
        cli_models,
        cli_producers,
        cli_stats,
        cli_tenants,
        cli_trainer,
        cli_worker,
    )

    for module in (
        cli_dev,
        cli_models,
        cli_producers,
        cli_tenants,
        cli_trainer,
        cli_worker,
        cli_stats,
        cli_experiments,
    ):
        module.register(cli)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="streamrec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("streamrec: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"streamrec: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (StreamrecError, ValueError, FileNotFoundError, PermissionError) as exc:
        click.echo(f"streamrec: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
