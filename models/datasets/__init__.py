"""Click data: readers of click logs on disk, sessions, synthetic streams, and the
shipped Kaggle e-shop clickstream.

``readers`` turns a file (e-shop CSV, YOOCHOOSE, any delimited file) into columnar
:class:`Clicks`; ``sessions`` groups clicks into ordered :class:`Session` lists and
splits them in time; ``synthetic`` makes seeded Zipf + Markov sessions.
"""

from __future__ import annotations

from pathlib import Path

from models.datasets.readers import FORMATS, Format, read_clicks, read_yoochoose
from models.datasets.sessions import (
    DAY_S,
    Clicks,
    Session,
    build_sessions,
    item_categories,
    sessionize,
    split_last_days,
)
from models.datasets.synthetic import synthetic_sessions

__all__ = [
    "DAY_S",
    "FORMATS",
    "Clicks",
    "Format",
    "Session",
    "build_sessions",
    "eshop_path",
    "item_categories",
    "read_clicks",
    "read_yoochoose",
    "sessionize",
    "split_last_days",
    "synthetic_sessions",
]


def eshop_path() -> Path:
    """The shipped copy of the e-shop clothing 2008 clickstream (see ATTRIBUTION.md)."""
    return Path(__file__).resolve().parent / "eshop-clothing-2008.csv.gz"
