"""Wire format: round trips, authentication, replays and garbage."""

from __future__ import annotations

import dataclasses
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failover import wire

KEY = bytes(range(32))
OLD_KEY = bytes(range(32, 64))

SAMPLES: list[wire.Message] = [
    wire.Heartbeat(epoch=3, holds_vip=True, held_epoch=2, digest="ab" * 32),
    wire.SwapRequest(epoch=4, move="unswap"),
    wire.Prepare(epoch=4, move="swap", digest="cd" * 32),
    wire.Prepared(epoch=4),
    wire.Drained(epoch=4, left=2, oldest_ms=1500.0, after_ms=60000.0, how="drain_max"),
    wire.Refused(epoch=4, reason="backup is not healthy: HTTP 503"),
    wire.Released(epoch=4, release_ms=0.25),
    wire.Claimed(epoch=4, turnaround_ms=0.4, claim_ms=0.3),
    wire.ClaimFailed(epoch=4, reason="EPERM"),
    wire.Abort(epoch=4, reason="prepare timed out"),
    wire.Done(epoch=4),
    wire.Confirmed(epoch=4, requests=7, clients="203.0.113.100,2001:db8::100", confirm_ms=3.5),
    wire.HandBack(epoch=4, reason="no client request reached backup within 10 s"),
    wire.Ack(epoch=4, of="confirmed"),
    wire.TellStragglers(epoch=4, entries="203.0.113.101=02:00:cb:00:71:65,203.0.113.1=02:00:00:00:00:01"),
    wire.CheckRequest(epoch=0, nonce=3, move="swap", role="target"),
    wire.CheckResult(epoch=0, nonce=3, ok=False, findings="FAIL\thealth_url\tHTTP 503\t"),
]


def envelope(msg: wire.Message, seq: int = 7) -> wire.Envelope:
    return wire.Envelope(cluster="web", sender="live", boot=1_700_000_000_000_000_000, seq=seq, message=msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.kind)
def test_round_trip(msg: wire.Message) -> None:
    env = envelope(msg)
    assert wire.decode(wire.encode(env, KEY), (KEY,)) == env


def test_every_kind_has_a_sample() -> None:
    assert {m.kind for m in SAMPLES} == set(wire.MESSAGE_TYPES)


def test_every_single_flipped_bit_is_rejected() -> None:
    data = wire.encode(envelope(SAMPLES[0]), KEY)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(wire.WireError):
            wire.decode(bytes(flipped), (KEY,))


def test_wrong_key_rejected_and_previous_key_accepted() -> None:
    data = wire.encode(envelope(SAMPLES[3]), OLD_KEY)
    with pytest.raises(wire.WireError) as err:
        wire.decode(data, (KEY,))
    assert err.value.reason == "auth"
    assert wire.decode(data, (KEY, OLD_KEY)).message == SAMPLES[3]


def test_replay_and_old_boot_rejected() -> None:
    guard = wire.ReplayGuard()
    first = envelope(SAMPLES[0], seq=5)
    assert guard.accept(first)
    assert not guard.accept(first)
    assert not guard.accept(envelope(SAMPLES[0], seq=4))
    assert guard.accept(envelope(SAMPLES[0], seq=6))
    old_boot = dataclasses.replace(first, boot=first.boot - 1, seq=10**6)
    assert not guard.accept(old_boot)
    new_boot = dataclasses.replace(first, boot=first.boot + 1, seq=1)
    assert guard.accept(new_boot)


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 10, 33, -1, -32, -33])
def test_truncated_rejected(cut: int) -> None:
    data = wire.encode(envelope(SAMPLES[1]), KEY)
    with pytest.raises(wire.WireError):
        wire.decode(data[:cut], (KEY,))


def test_oversized_rejected() -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode(b"FO\x01" + b"x" * 2000, (KEY,))
    assert err.value.reason == "oversized"


def test_other_version_rejected() -> None:
    data = bytearray(wire.encode(envelope(SAMPLES[1]), KEY))
    data[2] = 2
    with pytest.raises(wire.WireError) as err:
        wire.decode(bytes(data), (KEY,))
    assert err.value.reason == "version"


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b"{}",
        b'{"c":"web","s":"live","b":1,"n":1,"k":"nope","m":{}}',
        b'{"c":"web","s":"live","b":1,"n":1,"k":"done","m":{"epoch":"1"}}',
        b'{"c":"web","s":"live","b":1,"n":true,"k":"done","m":{"epoch":1}}',
        b'{"c":"web","s":"live","b":1,"n":1,"k":"heartbeat","m":{"epoch":1}}',
        b'{"c":"web","s":"live","b":1,"n":1,"k":"done","m":[]}',
        b"\xff\xfe not json",
    ],
)
def test_authenticated_but_malformed_rejected(payload: bytes) -> None:
    """Even a key holder cannot crash the decoder."""
    import hashlib
    import hmac

    head = b"FO\x01" + payload
    data = head + hmac.new(KEY, head, hashlib.sha256).digest()
    with pytest.raises(wire.WireError) as err:
        wire.decode(data, (KEY,))
    assert err.value.reason == "malformed"


@settings(max_examples=2000)
@given(st.binary(max_size=1500))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(data, (KEY,))


@settings(max_examples=500)
@given(st.integers(0, 10**9), st.booleans(), st.text(max_size=200))
def test_generated_messages_round_trip(epoch: int, holds: bool, reason: str) -> None:
    """Any text goes out; what arrives is the text with each control character shown as U+FFFD."""
    arrives = "".join("\ufffd" if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF else c
                      for c in reason)
    for msg, expected in (
        (wire.Heartbeat(epoch=epoch, holds_vip=holds, held_epoch=epoch, digest="0" * 64), None),
        (wire.Refused(epoch=epoch, reason=reason), wire.Refused(epoch=epoch, reason=arrives)),
    ):
        env = envelope(msg)
        assert wire.decode(wire.encode(env, KEY), (KEY,)).message == (expected or msg)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ok", "warn", "FAIL"]), st.text(max_size=80), st.text(max_size=400),
                  st.text(max_size=400)),
        max_size=30,
    )
)
def test_findings_always_fit_one_datagram_and_failures_go_last(
    rows: list[tuple[str, str, str, str]],
) -> None:
    packed = wire.pack_findings(rows)
    msg = wire.CheckResult(epoch=0, nonce=2**40, ok=False, findings=packed)
    env = wire.Envelope(cluster="c" * 32, sender="n" * 32, boot=2**62, seq=2**40, message=msg)
    assert wire.decode(wire.encode(env, KEY), (KEY,)).message == msg  # never oversized
    unpacked = wire.unpack_findings(packed)
    assert all(level in ("ok", "warn", "FAIL") for level, *_ in unpacked)
    failures = sum(1 for level, *_ in rows if level == "FAIL")
    if failures:
        assert any(level == "FAIL" for level, *_ in unpacked)  # at least one failure always arrives


def test_findings_round_trip_when_they_fit() -> None:
    rows = [("ok", "key", "/etc/failover/key: readable", ""),
            ("FAIL", "net.ipv4.conf.eth0.arp_ignore", "0", "sysctl -w net.ipv4.conf.eth0.arp_ignore=1")]
    assert wire.unpack_findings(wire.pack_findings(rows)) == rows


def test_deeply_nested_json_from_a_key_holder_is_malformed_not_a_crash() -> None:
    import hashlib
    import hmac

    head = b"FO\x01" + b"[" * 1100 + b"]" * 200  # fits in a datagram, deeper than the parser goes
    data = head + hmac.new(KEY, head, hashlib.sha256).digest()
    with pytest.raises(wire.WireError) as err:
        wire.decode(data, (KEY,))
    assert err.value.reason == "malformed"


def test_a_failure_of_wide_characters_is_cut_by_characters_and_keeps_its_level() -> None:
    # Each of these is 12 bytes once JSON escapes it: cutting by the excess in bytes once left no level.
    wide = "\U0001d54b" * 80
    packed = wire.pack_findings([("FAIL", wide, wide * 3, wide * 3)])
    assert len(json.dumps(packed)) <= wire.FINDINGS_MAX
    [(level, check, _detail, _fix)] = wire.unpack_findings(packed)
    assert level == "FAIL" and check.startswith("\U0001d54b")


def _signed(payload: bytes) -> bytes:
    import hashlib
    import hmac

    head = b"FO\x01" + payload
    return head + hmac.new(KEY, head, hashlib.sha256).digest()


_ENV = b'"c":"web","s":"live","b":1,"n":1'


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # An integer too large for a float, where a float goes: float() raised OverflowError here.
        (b'{' + _ENV + b',"k":"released","m":{"epoch":1,"release_ms":1' + b"0" * 400 + b"}}", "out-of-range"),
        (b'{' + _ENV + b',"k":"prepare","m":{"epoch":1,"move":"swap","digest":"x","drain_ms":Infinity}}',
         "out-of-range"),
        (b'{' + _ENV + b',"k":"prepare","m":{"epoch":1,"move":"swap","digest":"x","drain_ms":1e999}}',
         "out-of-range"),
        (b'{' + _ENV + b',"k":"prepare","m":{"epoch":1,"move":"swap","digest":"x","drain_ms":NaN}}',
         "out-of-range"),
        (b'{' + _ENV + b',"k":"prepare","m":{"epoch":1,"move":"swap","digest":"x","drain_ms":-5}}',
         "out-of-range"),
        (b'{' + _ENV + b',"k":"claimed","m":{"epoch":1,"turnaround_ms":-Infinity,"claim_ms":0}}',
         "out-of-range"),
        (b'{' + _ENV + b',"k":"released","m":{"epoch":1,"release_ms":1e12}}', "out-of-range"),
        (b'{' + _ENV + b',"k":"done","m":{"epoch":-1}}', "out-of-range"),
        (b'{' + _ENV + b',"k":"done","m":{"epoch":1' + b"0" * 30 + b"}}", "out-of-range"),
        (b'{"c":"web","s":"live","b":-1,"n":1,"k":"done","m":{"epoch":1}}', "out-of-range"),
        (b'{"c":"web","s":"live","b":1,"n":1' + b"0" * 25 + b',"k":"done","m":{"epoch":1}}', "out-of-range"),
        (b'{' + _ENV + b',"k":"confirmed","m":{"epoch":1,"requests":-3,"clients":"","confirm_ms":1}}',
         "out-of-range"),
        # Strings that break execve or an environment (the reason reaches a hook as FAILOVER_REASON).
        (b'{' + _ENV + b',"k":"refused","m":{"epoch":1,"reason":"a\\u0000b"}}', "control-char"),
        (b'{' + _ENV + b',"k":"abort","m":{"epoch":1,"reason":"\\ud800"}}', "control-char"),
        (b'{' + _ENV + b',"k":"hand-back","m":{"epoch":1,"reason":"\\u001b[2J"}}', "control-char"),
        (b'{' + _ENV + b',"k":"claim-failed","m":{"epoch":1,"reason":"two\\nlines"}}', "control-char"),
        (b'{"c":"web\\u0000","s":"live","b":1,"n":1,"k":"done","m":{"epoch":1}}', "control-char"),
    ],
)
def test_authenticated_but_absurd_values_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    """A key holder's absurd values stop at decode, with a reason the core counts like any other."""
    with pytest.raises(wire.WireError) as err:
        wire.decode(_signed(payload), (KEY,))
    assert err.value.reason == reason


def test_findings_keep_their_tabs_and_newlines() -> None:
    msg = wire.CheckResult(epoch=0, nonce=1, ok=False, findings="FAIL\tkey\tmissing\t\nok\tnic\tup\t")
    assert wire.decode(wire.encode(envelope(msg), KEY), (KEY,)).message == msg


def test_encode_neutralises_what_decode_would_refuse() -> None:
    """Our own reasons (a hook's last line, an errno text) never make the peer drop our message."""
    env = envelope(wire.Refused(epoch=4, reason="hook said \x1b[31mno\x1b[0m\x00 twice\nor more \ud800"))
    decoded = wire.decode(wire.encode(env, KEY), (KEY,))
    assert isinstance(decoded.message, wire.Refused)
    assert decoded.message.reason == "hook said \ufffd[31mno\ufffd[0m\ufffd twice\ufffdor more \ufffd"


def test_the_largest_proof_fits_one_datagram_and_an_older_peers_decodes_with_defaults() -> None:
    clients = ",".join(f"2001:db8:ffff:ffff:ffff:ffff:ffff:{n:04x}" for n in range(10))
    why = "live served 12345 req/s before the move: 20 arrivals take 2 ms, at least 300 ms"
    reason = f"no client request to 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff reached backup in 300 ms ({why})"
    proof = {"requests": 2, "clients": clients, "destination": "kernel witness", "canary": False,
             "deadline_ms": 300.0, "deadline_why": why}  # fmt: skip
    for msg in (
        wire.HandBack(epoch=4, reason=reason + "; 99999 access-log lines since the claim did not parse",
                      drain_ms=5000.0, drain_max_ms=60000.0, **proof),
        wire.Confirmed(epoch=4, confirm_ms=12.5, **proof),
    ):  # fmt: skip
        env = envelope(msg)
        assert wire.decode(wire.encode(env, KEY), (KEY,)) == env
    # A peer without the proof fields: its messages still decode, the facts empty.
    old = {"epoch": 4, "requests": 3, "clients": "203.0.113.100", "confirm_ms": 3.5}
    head = wire.MAGIC + bytes([wire.VERSION]) + json.dumps(
        {"c": "web", "s": "backup", "b": 1, "n": 1, "k": "confirmed", "m": old}
    ).encode()
    decoded = wire.decode(head + hmac.digest(KEY, head, "sha256"), (KEY,)).message
    assert decoded == wire.Confirmed(epoch=4, requests=3, clients="203.0.113.100", confirm_ms=3.5)
    assert isinstance(decoded, wire.Confirmed) and decoded.deadline_why == "" and decoded.destination == ""


def test_a_reordered_position_is_late_once_and_a_replay_after() -> None:
    guard = wire.ReplayGuard()
    hb = SAMPLES[0]
    assert guard.check(envelope(hb, seq=10)) == wire.NEW
    assert guard.check(envelope(hb, seq=13)) == wire.NEW  # 11 and 12 still on their way
    assert guard.check(envelope(hb, seq=12)) == wire.LATE
    assert guard.check(envelope(hb, seq=12)) == wire.REPLAY  # a copy of it
    assert guard.check(envelope(hb, seq=11)) == wire.LATE
    assert guard.check(envelope(hb, seq=10)) == wire.REPLAY  # heard as new before
    assert guard.check(envelope(hb, seq=13)) == wire.REPLAY
    assert guard.check(envelope(hb, seq=13 + wire.LATE_WINDOW)) == wire.NEW
    assert guard.check(envelope(hb, seq=13)) == wire.REPLAY  # the window's far end, heard before
    assert guard.check(envelope(hb, seq=14)) == wire.LATE  # the window's oldest position
    far = 13 + wire.LATE_WINDOW + 5 * wire.LATE_WINDOW  # a jump wider than the window forgets it all
    assert guard.check(envelope(hb, seq=far)) == wire.NEW
    assert guard.check(envelope(hb, seq=far - 1)) == wire.LATE
    older_boot = dataclasses.replace(envelope(hb, seq=far - 2), boot=envelope(hb).boot - 1)
    assert guard.check(older_boot) == wire.REPLAY


# --- the heartbeat's fast paths: the same bytes and the same envelopes as the plain ones ---------------


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_the_hmac_is_hmac_sha256(key: bytes, data: bytes) -> None:
    assert wire._hmac_sha256(key, data) == hmac.digest(key, data, "sha256")


heartbeats = st.builds(
    wire.Heartbeat,
    epoch=st.integers(0, wire.INT_MAX),
    holds_vip=st.booleans(),
    held_epoch=st.integers(0, wire.INT_MAX),
    digest=st.text(max_size=70),
    healthy=st.booleans(),
    keys=st.text(max_size=40),
)


@given(heartbeats, st.text(max_size=20), st.lists(st.integers(0, wire.INT_MAX), min_size=1, max_size=4))
def test_a_heartbeat_encodes_to_the_plain_encoders_bytes(msg: wire.Heartbeat, cluster: str,
                                                          seqs: list[int]) -> None:
    for seq in seqs:  # the first one makes the cached parts, the others use them
        env = wire.Envelope(cluster=cluster, sender="live", boot=5, seq=seq, message=msg)
        plain = wire.MAGIC + bytes([wire.VERSION]) + json.dumps(
            wire._doc(env), separators=(",", ":")).encode()
        assert wire.encode(env, KEY) == plain + hmac.digest(KEY, plain, "sha256")


@given(heartbeats, st.lists(st.integers(0, wire.INT_MAX), min_size=2, max_size=4))
def test_a_heartbeat_heard_again_decodes_as_the_plain_decoder_does(msg: wire.Heartbeat,
                                                                  seqs: list[int]) -> None:
    for seq in seqs:
        data = wire.encode(envelope(msg, seq), KEY)
        decoded = wire.decode(data, (KEY,))
        assert decoded == wire._parse(data[3:-wire.MAC_LEN]) and decoded.seq == seq


def test_a_heartbeat_with_a_second_n_is_never_taken_from_what_was_heard() -> None:
    base = {"c": "web", "s": "live", "b": 1, "n": 5, "k": "heartbeat",
            "m": {"epoch": 1, "holds_vip": True, "held_epoch": 1, "digest": "d"}}

    def text(doc: dict[str, object]) -> str:
        return json.dumps(doc, separators=(",", ":"))

    for _ in range(2):
        # Heard: its bytes around 5 are remembered.
        assert wire.decode(_signed(text(base).encode()), (KEY,)).seq == 5
    # The same bytes around the first "n", and a later duplicate that JSON lets win: never the cache's.
    dup = text(base)[:-1] + ',"n":9}'
    for first in (5, 6):
        assert wire.decode(_signed(dup.replace('"n":5', f'"n":{first}', 1).encode()), (KEY,)).seq == 9
    # A number the pattern does not take (a leading zero, too many digits) goes to the plain decoder.
    with pytest.raises(wire.WireError):
        wire.decode(_signed(text(base).replace('"n":5', '"n":05').encode()), (KEY,))
    huge = text(base).replace('"n":5', f'"n":{2**63}')
    with pytest.raises(wire.WireError, match="out-of-range"):
        wire.decode(_signed(huge.encode()), (KEY,))
