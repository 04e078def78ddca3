"""The gdb stub against packets no gdb would send: each gets an E-packet (or gdb's empty
"unsupported" reply) and the stub keeps serving. Packets come from a socket, so the stub must
survive anything; the raw client and the guest are those of tests/test_gdbstub.py."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from emu.tools.gdb import args
from emu.tools.gdb.stub import GdbStub
from tests.test_gdbstub import Client, ThreadStub, guest_machine

# The malformed classes seen in the wild: missing separators, non-hex digits, odd lengths,
# signs and spaces that Python's int() and bytes.fromhex() would accept, numbers past 64 bits,
# unknown annexes and junk after well-formed packets.
MALFORMED = [
    "m", "m1000", "m1000,", "m,10", "mzz,4", "m1000,zz", "m-10,4", "m 10,4", "m0x10,4",
    "m1_0,4", "m10000000000000000,4", "m10,10000000000000000",
    "M", "M1000,2", "M1000,2:zz11", "M1000,2:abc", "M1000:00", "Mq,1:00", "M10,1:0 0",
    "G0", "Gabc", "Gzz", "G 00",
    "p", "pzz", "p-1", "p10000", "p 1",
    "P", "P0", "P0=", "P0=zz", "Pzz=00", "P0=0", "P1000=00",
    "Z", "Z0", "Z0,1000", "Zq,1000,1", "Z0,zz,1", "Z0,1000,zz", "Z2,1000,0", "Z9,1000,1",
    "Z0,1000,1,5", "z", "z0,", "Z-1,10,1", "Z2,10,100000000",
    "szz", "s-1", "c zz", "cqq", "Cqq", "Czz;1000", "S05;zz",
    "qXfer", "qXfer:features:read:", "qXfer:features:read:target.xml",
    "qXfer:features:read:target.xml:", "qXfer:features:read:target.xml:zz,10",
    "qXfer:features:read:target.xml:0,zz", "qXfer:features:read:other.xml:0,10",
    "qXfer:features:read:target.xml:-1,10", "qXfer:memory-map:read::0,10",
    "qRcmd", "qRcmd,", "qRcmd,z", "qRcmd,abc", "qRcmd,zzzz", "qRcmd,ff",
    "qRcmd," + "vmcb zz".encode().hex(), "qRcmd," + "npt-walk q".encode().hex(),
    "qRcmd," + "memtype".encode().hex(), "qRcmd," + "break-on nowhere".encode().hex(),
    "QStartNoAckModeXYZ", "vCont;x", "vCont;", "vContq", "vKillx", "Hgzz", "T-1",
    "\x00", "\xff\xfe", "b", "bx", "\u00e9", "x" * 4000,
]


@pytest.fixture(scope="module")
def stub() -> GdbStub:
    s = GdbStub(guest_machine(), "127.0.0.1", 0, wait=False, log=None)
    resumed = []
    # Parsing is under test, not running: a resume that got this far is recorded instead.
    s._resume = lambda step, addr: resumed.append((step, addr)) or "RESUMED"
    s.resumed = resumed
    return s


@pytest.mark.parametrize("pkt", MALFORMED, ids=lambda p: repr(p[:24]))
def test_malformed_packet_is_answered_with_an_error(stub: GdbStub, pkt: str) -> None:
    reply = stub.answer(pkt)
    assert isinstance(reply, str) and reply != "RESUMED", f"{pkt!r} -> {reply!r}"
    if pkt.startswith("qRcmd,") and not reply.startswith("E"):
        # Monitor output travels hex-encoded; a bad command gets its explanation, not a crash.
        text = bytes.fromhex(reply).decode()
        assert text.startswith(("error:", "unknown monitor command", "no nested guest")) or \
            "help" in text, text
        return
    if reply not in ("", "OK") and not reply.startswith("l"):
        assert re.fullmatch(r"E\d\d|E\..+", reply, re.S), f"{pkt!r} -> {reply!r}"


def test_well_formed_packets_still_mean_what_they_meant(stub: GdbStub) -> None:
    assert stub.answer("c") == "RESUMED" and stub.resumed[-1] == (False, None)
    assert stub.answer("s1000") == "RESUMED" and stub.resumed[-1] == (True, 0x1000)
    assert stub.answer("S05") == "RESUMED" and stub.resumed[-1] == (True, None)
    assert len(stub.answer("g")) == 2 * sum(__import__("emu.tools.gdb.regs",
                                                        fromlist=["sizes"]).sizes())
    assert stub.answer("m100000,4") != "E01"


# Any byte string a socket can deliver, and mutations of real packets.
_real = st.sampled_from(["m", "M", "g", "G", "p", "P", "Z", "z", "qXfer:features:read:",
                         "qRcmd,", "qSupported", "vCont", "H", "T", "?", "q", "Q"])
_noise = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=_real, tail=_noise)
def test_any_packet_gets_a_reply_and_the_stub_survives(stub: GdbStub, head: str, tail: str) -> None:
    pkt = head + tail
    if pkt[:1] in "cCsS" or pkt.startswith(("vCont;c", "vCont;s", "vCont;C", "vCont;S", "bs", "bc",
                                            "k", "D", "vKill")):
        return
    reply = stub.answer(pkt)
    assert isinstance(reply, str)


def test_the_stub_keeps_serving_a_socket_after_malformed_packets() -> None:
    served = ThreadStub(guest_machine())
    c = Client(served.port)
    regs = c.ask("g")
    for pkt in MALFORMED:
        reply = c.ask(pkt)
        assert reply == "" or reply.startswith(("E", "OK", "l")) or pkt.startswith("qRcmd,"), \
            (pkt, reply)
    # Junk after QStartNoAckMode: the stub stops acknowledging and still answers.
    assert c.ask("QStartNoAckMode") == "OK"
    c.conn.ack = False
    c.conn.sock.sendall(b"+++--garbage$zz#zz")
    assert c.ask("g") == regs
    c.conn.send("k")
    assert served.join().reason == "killed"


def test_argument_parser_refuses_what_python_would_accept() -> None:
    for bad in ("", "-1", "+1", " 1", "1 ", "0x1", "1_0", "g"):
        with pytest.raises(args.PacketError):
            args.hex_int(bad, "x")
    with pytest.raises(args.PacketError):
        args.hex_int("1" + "0" * 16, "x")
    assert args.hex_int("ffffffffffffffff", "x") == (1 << 64) - 1
    for bad in ("0", "0 0", "zz", "abc"):
        with pytest.raises(args.PacketError):
            args.hex_bytes(bad, "x")
    assert args.address_range("10,4", "m") == (0x10, 4)
