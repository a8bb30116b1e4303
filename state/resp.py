"""Redis protocol (RESP2) encoding of a batch's commands in one buffer.

A batch's round trip sends a script call with thousands of arguments; redis-py encodes
each argument with several Python calls, a visible share of the worker's time, so the
batch is packed here by hiredis's C packer and sent with one ``send_packed_command``
(benchmarks/resp_pack.py compares it with a pure-Python packer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import hiredis

Arg = str | bytes | int | float


def pack_commands(commands: Iterable[Sequence[Arg]]) -> bytes:
    return b"".join([hiredis.pack_command(tuple(command)) for command in commands])
