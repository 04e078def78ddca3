"""gdb's remote serial protocol framing: `$payload#checksum`, acknowledgements and Ctrl-C.

One job: turn a TCP byte stream into packets and back. What the packets mean is gdbstub.py's.
"""
from __future__ import annotations

import select
import socket

INTERRUPT = "\x03"          # what `get` returns for a Ctrl-C byte sent outside a packet
_ESCAPED = frozenset(b"$#}*")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(payload: str | bytes) -> bytes:
    """A packet ready to send: the payload with `$ # } *` escaped (0x7D, byte ^ 0x20)."""
    raw = payload.encode("latin-1") if isinstance(payload, str) else payload
    body = bytearray()
    for b in raw:
        if b in _ESCAPED:
            body += bytes((0x7D, b ^ 0x20))
        else:
            body.append(b)
    return b"$" + bytes(body) + b"#" + f"{checksum(bytes(body)):02x}".encode()


def unescape(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i] == 0x7D and i + 1 < len(body):
            out.append(body[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(body[i])
            i += 1
    return bytes(out)


class Connection:
    """One gdb on one socket. `ack` turns off after QStartNoAckMode, as gdb and gdbserver do."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ack = True
        self._buf = bytearray()
        self._queue: list[str] = []
        self._last_sent = b""
        self.closed = False

    # ---- receiving ------------------------------------------------------------------------
    def get(self) -> str | None:
        """The next packet payload (or INTERRUPT), blocking; None once gdb has gone."""
        while True:
            if self._queue:
                return self._queue.pop(0)
            if not self._fill(None):
                return None

    def interrupted(self) -> bool:
        """Non-blocking: has gdb sent Ctrl-C (or gone away) while the guest runs? Packets
        that arrive meanwhile are kept for `get`."""
        while self._fill(0.0):
            pass
        if INTERRUPT in self._queue:
            self._queue.remove(INTERRUPT)
            return True
        return self.closed

    def _fill(self, timeout: float | None) -> bool:
        """Read what is available (waiting up to `timeout`, None: forever) and parse it.
        False when nothing came (or the peer closed)."""
        if self.closed:
            return False
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._buf += data
        self._parse()
        return True

    def _parse(self) -> None:
        buf = self._buf
        while buf:
            c = buf[0]
            if c == 0x03:
                del buf[0]
                self._queue.append(INTERRUPT)
            elif c == ord("$"):
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    return                      # incomplete: wait for more
                body = bytes(buf[1:end])
                given = bytes(buf[end + 1:end + 3])
                del buf[:end + 3]
                try:
                    ok = int(given, 16) == checksum(body)
                except ValueError:
                    ok = False
                if self.ack:
                    self._write(b"+" if ok else b"-")
                if ok:
                    self._queue.append(unescape(body).decode("latin-1"))
            elif c == ord("-"):
                del buf[0]
                if self.ack and self._last_sent:   # without acks a '-' is line noise
                    self._write(self._last_sent)
            else:                               # '+' and line noise
                del buf[0]

    # ---- sending --------------------------------------------------------------------------
    def send(self, payload: str | bytes) -> None:
        self._last_sent = frame(payload)
        self._write(self._last_sent)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
