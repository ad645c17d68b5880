"""Redis replies read with large bulk strings going straight into caller-given memory.

Reading a plain array image stream through redis-py and hiredis copies each frame three
times after the kernel: into hiredis's buffer, into a new `bytes` object, and into the
`bytearray` blissdata's decoder joins them in, each time into freshly allocated memory.
At 512^2 uint16 that capped the daemon's reads at ~1000 frames/s. `RespReader` parses a
reply itself and reads each entry's payload (the frames) with `recv_into` straight into
memory the caller provides, so a frame is copied once, into a buffer that can be recycled.

Only for a connection that nothing else reads from: a dedicated redis-py `Connection`
sends the commands (handshake, authentication and TLS stay redis-py's), this reads the
replies from its socket.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

Sink = Callable[[int], memoryview]


class RespReader:
    """One RESP2/RESP3 reply at a time from `sock`.

    The value of every `field` field (a bulk string following a bulk string equal to
    `field` in an array, as in a stream entry's field list, or a map value under that key)
    is read into `sink(nbytes)`, a writable memoryview of exactly nbytes, and returned as
    that memoryview. Maps come back as lists of (key, value) pairs.
    """

    def __init__(self, sock, size: int = 1 << 16) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0

    def _fill(self) -> None:
        """Read more bytes after those not parsed yet, moved to the buffer's start."""
        pending = self._end - self._pos
        if self._pos:
            self._view[:pending] = self._view[self._pos : self._end]
            self._pos, self._end = 0, pending
        if self._end == len(self._buf):  # a line longer than the buffer
            self._view.release()
            self._buf = self._buf + bytearray(len(self._buf))
            self._view = memoryview(self._buf)
        got = self.sock.recv_into(self._view[self._end :])
        if not got:
            raise redis.ConnectionError("connection closed by the server in the middle of a reply")
        self._end += got

    def _line(self) -> bytes:
        while True:
            i = self._buf.find(b"\r\n", self._pos, self._end)
            if i >= 0:
                line = bytes(self._view[self._pos : i])
                self._pos = i + 2
                return line
            self._fill()

    def _read_into(self, out: memoryview) -> None:
        """Exactly len(out) bytes: those already buffered, then straight from the socket."""
        n = len(out)
        have = min(n, self._end - self._pos)
        out[:have] = self._view[self._pos : self._pos + have]
        self._pos += have
        done = have
        recv_into = self.sock.recv_into
        while done < n:
            got = recv_into(out[done:])
            if not got:
                raise redis.ConnectionError("connection closed by the server in the middle of a reply")
            done += got

    def _bulk(self, n: int, sink: Sink | None):
        if sink is not None:
            result = sink(n)
            if len(result) != n:
                raise ValueError(f"sink gave {len(result)} bytes for a {n}-byte bulk string")
            self._read_into(result)
        elif n <= self._end - self._pos:
            result = bytes(self._view[self._pos : self._pos + n])
            self._pos += n
        else:
            out = memoryview(bytearray(n))
            self._read_into(out)
            result = out.tobytes()
        while self._end - self._pos < 2:
            self._fill()
        if self._view[self._pos : self._pos + 2] != b"\r\n":
            raise redis.InvalidResponse("bulk string not followed by CRLF")
        self._pos += 2
        return result

    def read(self, sink: Sink | None = None, field: bytes = b"payload"):
        """The next reply, parsed; error replies raise `redis.ResponseError`."""
        return self._read(sink, field, None)

    def _read(self, sink: Sink | None, field: bytes, key):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"$", b"="):  # bulk / verbatim string
            n = int(rest)
            if n < 0:
                return None
            return self._bulk(n, sink if sink is not None and isinstance(key, bytes) and key == field else None)
        if kind in (b"*", b"~", b">"):  # array, set, push
            n = int(rest)
            if n < 0:
                return None
            items: list = []
            for i in range(n):
                items.append(self._read(sink, field, items[-1] if i % 2 else None))
            return items
        if kind == b"%":  # map
            pairs = []
            for _ in range(int(rest)):
                k = self._read(sink, field, None)
                pairs.append((k, self._read(sink, field, k)))
            return pairs
        if kind == b"|":  # attribute: skipped, the reply follows
            for _ in range(2 * int(rest)):
                self._read(None, field, None)
            return self._read(sink, field, key)
        if kind == b"+":
            return rest
        if kind in (b":", b"("):
            return int(rest)
        if kind == b"_":
            return None
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"-":
            raise redis.ResponseError(rest.decode(errors="replace"))
        if kind == b"!":  # blob error
            raise redis.ResponseError(self._bulk(int(rest), None).decode(errors="replace"))
        raise redis.InvalidResponse(f"unknown reply type {line[:20]!r}")
