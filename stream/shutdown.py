"""How the worker process stops, and what it logs while its broker or Redis is away.

- SIGTERM (or Ctrl-C) starts Faust's orderly stop and arms a deadline: whatever still
  hangs after ``STOP_DEADLINE_S`` (a client stuck on a broker that is gone, a thread in
  librdkafka) the process exits then, so an orchestrator never has to kill it.
- :func:`request_exit` lets the stream stop the worker with an exit code of its own
  (``EXIT_FENCED``) through the same path.
- :class:`RepeatFilter` keeps the Kafka clients' own loggers (aiokafka, Faust, mode,
  librdkafka) from writing the same complaint hundreds of times a second while a broker
  is away: a repeated message is let through with growing gaps, and says how many like
  it were left out.
- A quiet start: the frameworks' own lines below WARNING (Faust's and mode's service
  steps, aiokafka's subscription tables, uvicorn) are left out unless ``verbose``, and
  the group coordinator a new consumer group waits for is a DEBUG line until the worker
  has started (:func:`start_up_done`); after that it is the error it says.
- Tracebacks stay in one log record each: stdout and stderr are not turned into log
  records line by line (mode's default writes a traceback one token per record), and an
  exception that ends a thread is logged as one record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from faust.worker import Worker as FaustWorker

log = logging.getLogger(f"streamrec.{__name__}")

# Exit codes of ``streamrec worker`` (README, "Stopping").
EXIT_OK = 0
EXIT_FENCED = 3
# SIGTERM to exit; the batch loop's own stop budget (stream.pipeline.loop.STOP_BUDGET_S) fits
# inside it with room for the rest of Faust's services.
STOP_DEADLINE_S = 8.0

_exit_code = EXIT_OK


def request_exit(code: int) -> None:
    """Stop the worker as SIGTERM would, then exit with ``code``."""
    global _exit_code
    _exit_code = code
    os.kill(os.getpid(), signal.SIGTERM)


def exit_code() -> int:
    return _exit_code


class RepeatFilter(logging.Filter):
    """Lets the first of a kind of warning or error through at once, then repeats of it
    only after a gap that doubles each time (``first_gap_s`` up to ``max_gap_s``); the
    one let through says how many were left out since the last. A kind is the logger,
    the level and the message's template (with its first argument when short: the node
    id of aiokafka's complaints, librdkafka's facility); a kind quiet for ``reset_s``
    starts over. Only other libraries' records are filtered (and librdkafka's, which it
    logs through a streamrec logger): streamrec's own lines are rate-limited where they
    are written."""

    def __init__(
        self,
        first_gap_s: float = 1.0,
        max_gap_s: float = 60.0,
        reset_s: float = 300.0,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self.first_gap_s, self.max_gap_s, self.reset_s = first_gap_s, max_gap_s, reset_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> [time of the last let through, the current gap, left out since]
        self._kinds: dict[tuple[Any, ...], list[Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _foreign(record.name):
            return True
        first = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if not isinstance(first, str | int) or len(str(first)) > 32:
            first = None
        kind = (record.name, record.levelno, str(record.msg)[:200], first)
        now = self._clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] > self.reset_s:
                if len(self._kinds) > 10_000:  # a message that varies every time
                    self._kinds.clear()
                self._kinds[kind] = [now, self.first_gap_s, 0]
                return True
            last, gap, left_out = state
            if now - last < gap:
                state[2] += 1
                return False
            state[:] = [now, min(gap * 2, self.max_gap_s), 0]
        if left_out:
            since = now - last
            record.msg = f"{record.getMessage()} (and {left_out} more like it in {since:.0f} s)"
            record.args = ()
        return True


def _foreign(name: str) -> bool:
    return not name.startswith("streamrec.") or name.endswith(".rdkafka")


def framework_chatter(record: logging.LogRecord) -> bool:
    """Let through warnings and errors of any logger, and streamrec's own lines."""
    return record.levelno >= logging.WARNING or not _foreign(record.name)


class StartingCoordinator(logging.Filter):
    """A consumer group's coordinator is "not available" for a moment after the group
    (or the broker) is new: expected while the worker starts, so a DEBUG line then."""

    def __init__(self) -> None:
        super().__init__()
        self.starting = True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.starting and record.levelno > logging.DEBUG and _coordinator_not_yet(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # A logger's filter runs before its handlers' level checks: they drop it
            # unless the log level is debug.
        return True


def _coordinator_not_yet(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return any(type(a).__name__ == "GroupCoordinatorNotAvailableError" for a in args)


COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_starting_coordinator = StartingCoordinator()


def start_up_done() -> None:
    """From now on a coordinator that is not available is an error again."""
    _starting_coordinator.starting = False


def install_log_filters(
    root: logging.Logger | None = None, *, verbose: bool = True
) -> RepeatFilter:
    """The repeat filter (and unless ``verbose`` the framework filter) on every handler
    of the root logger, the start-up coordinator filter, and thread exceptions logged as
    one record each."""
    root = root or logging.getLogger()
    repeats = RepeatFilter()
    for handler in root.handlers:
        handler.addFilter(repeats)
        if not verbose:
            handler.addFilter(framework_chatter)
    coordinator = logging.getLogger(COORDINATOR_LOGGER)
    if _starting_coordinator not in coordinator.filters:
        coordinator.addFilter(_starting_coordinator)
    threading.excepthook = _log_thread_exception
    return repeats


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    # A client thread cancelled while it stops is part of stopping, not a failure.
    cancelled = issubclass(args.exc_type, asyncio.CancelledError)
    log.log(
        logging.WARNING if cancelled else logging.ERROR,
        "thread %s ended by %s",
        name,
        args.exc_type.__name__,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


class Worker(FaustWorker):  # type: ignore[misc]
    """Faust's worker, with a bounded stop, quiet repeated client errors, the
    frameworks' own lines only when ``verbose``, and an exit code for the reasons the
    stream stops itself (:func:`request_exit`)."""

    def __init__(self, *args: Any, verbose: bool = False, **kwargs: Any) -> None:
        # mode would turn each write to stdout/stderr into a log record (a traceback
        # printed by a library became one record per token).
        kwargs.setdefault("redirect_stdouts", False)
        super().__init__(*args, **kwargs)
        self._verbose = verbose
        self._deadline: threading.Timer | None = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        install_log_filters(logger, verbose=self._verbose or level <= logging.DEBUG)

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        self._arm_deadline()
        super()._schedule_shutdown(signal)

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(STOP_DEADLINE_S, _stop_now)
            self._deadline.daemon = True
            self._deadline.start()

    def execute_from_commandline(self) -> NoReturn:
        try:
            super().execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            # Everything has stopped: exit now, not after the interpreter waits for
            # client threads and destructors (librdkafka's can wait on a broker that
            # is gone).
            _flush_and_exit(code or _exit_code)
        raise AssertionError("unreachable")  # pragma: no cover


def _stop_now() -> None:
    log.warning("still stopping after %.0f s (broker or Redis away?); exiting now", STOP_DEADLINE_S)
    _flush_and_exit(_exit_code)


def _flush_and_exit(code: int) -> NoReturn:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001, S110  (exiting anyway)
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110
            pass
    os._exit(code)
