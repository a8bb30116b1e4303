"""Redis protocol (RESP2) encoding for big commands, in a few C-level passes.

redis-py encodes each argument with several Python calls; a batch's script call has
thousands of arguments, so encoding was ~15 % of the worker's time. Here a command
costs one ``str.encode`` per argument plus a few joins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Arg = str | bytes | int

_HEADS = [b"$%d\r\n" % n for n in range(4096)]
_CRLF = b"\r\n"


def _encode(arg: Arg) -> bytes:
    if type(arg) is bytes:
        return arg
    return arg.encode() if type(arg) is str else str(arg).encode()  # type: ignore[union-attr]


def _head(n: int) -> bytes:
    return _HEADS[n] if n < 4096 else b"$%d\r\n" % n


def pack_command(args: Sequence[Arg]) -> bytes:
    try:
        encoded = list(map(str.encode, args))  # type: ignore[arg-type]  # all str: the fast path
    except TypeError:
        encoded = list(map(_encode, args))
    parts: list[bytes] = [b""] * (3 * len(encoded))
    parts[0::3] = map(_head, map(len, encoded))
    parts[1::3] = encoded
    parts[2::3] = [_CRLF] * len(encoded)
    return b"*%d\r\n%s" % (len(encoded), b"".join(parts))


def pack_commands(commands: Iterable[Sequence[Arg]]) -> bytes:
    return b"".join(map(pack_command, commands))
