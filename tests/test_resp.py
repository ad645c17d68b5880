"""RespReader: RESP2/RESP3 replies, payload fields into caller memory."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import redis

from dfxm_online.acquisition.resp import RespReader


def parse(data: bytes, sink=None, size: int = 16):
    """Parse `data` sent in small pieces, through a reader with a tiny buffer."""
    a, b = socket.socketpair()

    def send():
        for i in range(0, len(data), 7):
            a.sendall(data[i : i + 7])

    thread = threading.Thread(target=send)
    thread.start()
    try:
        return RespReader(b, size=size).read(sink)
    finally:
        thread.join()
        a.close()
        b.close()


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def test_stream_reply_payloads_go_into_the_sink():
    p1, p2 = bytes(range(40)), bytes(range(100, 140))
    entry = lambda eid, payload: (b"*2\r\n" + bulk(eid) + b"*4\r\n" + bulk(b"payload") + bulk(payload)  # noqa: E731
                                  + bulk(b"len") + bulk(b"2"))
    data = b"*1\r\n*2\r\n" + bulk(b"key:with:a-long-name") + b"*2\r\n" + entry(b"0-1", p1) + entry(b"2-1", p2)
    out = np.zeros(80, np.uint8)
    used = [0]

    def sink(n):
        used[0] += n
        return memoryview(out)[used[0] - n : used[0]]

    reply = parse(data, sink)
    assert reply[0][0] == b"key:with:a-long-name"
    assert [e[0] for e in reply[0][1]] == [b"0-1", b"2-1"]
    assert reply[0][1][0][1][2:] == [b"len", b"2"]
    assert out.tobytes() == p1 + p2


def test_resp3_types_and_nil():
    assert parse(b"%1\r\n" + bulk(b"k") + b"*2\r\n:5\r\n,1.5\r\n") == [(b"k", [5, 1.5])]
    assert parse(b"_\r\n") is None
    assert parse(b"*-1\r\n") is None
    assert parse(b"+OK\r\n") == b"OK"
    assert parse(b"#t\r\n") is True
    assert parse(bulk(b"x" * 100)) == b"x" * 100  # longer than the reader's buffer


@pytest.mark.parametrize("data", [b"-ERR wrong\r\n", b"!9\r\nERR wrong\r\n"])
def test_error_replies_raise(data):
    with pytest.raises(redis.ResponseError, match="ERR wrong"):
        parse(data)
