"""Load test: offer clicks at a rate, read the recommendations, measure what came back.

``run`` offers the load and matches recommendations to events, ``report`` turns the
per-event times into a report (dict, markdown, files), ``plots`` draws it (matplotlib,
the ``plots`` extra). The names below are what ``streamrec loadtest`` uses.
"""

from __future__ import annotations

from producers.loadtest.plots import plot_run, plot_sweep
from producers.loadtest.report import markdown_report, markdown_sweep, write_outputs
from producers.loadtest.run import LoadTestConfig, RunData, events_for, run_loadtest

__all__ = [
    "LoadTestConfig",
    "RunData",
    "events_for",
    "markdown_report",
    "markdown_sweep",
    "plot_run",
    "plot_sweep",
    "run_loadtest",
    "write_outputs",
]
