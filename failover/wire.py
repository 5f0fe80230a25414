"""The heartbeat and swap messages on the wire: versioned, HMAC-SHA256 authenticated, replay-checked.

Bytes in, dataclasses out; no sockets, no clock. A datagram is

    b"FO" | version (1 byte) | JSON envelope | HMAC-SHA256 over everything before it (32 bytes)

JSON keeps the format readable in a packet capture and easy to extend; the HMAC is checked before a
single byte of JSON is parsed, so an unauthenticated sender never reaches the parser.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import MISSING, dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar

MAGIC = b"FO"
VERSION = 1
MAC_LEN = 32
MAX_DATAGRAM = 1400  # stays inside one Ethernet frame; anything larger is not ours


class WireError(Exception):
    """A datagram that is not a valid message; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """Base of every message body; `kind` names it on the wire."""

    kind: ClassVar[str] = ""
    epoch: int


@dataclass(frozen=True)
class Heartbeat(Message):
    kind: ClassVar[str] = "heartbeat"
    holds_vip: bool
    held_epoch: int
    digest: str
    healthy: bool = True
    keys: str = ""  # fingerprints of the keys this sender accepts, comma-separated (key rotation)
    # The longest the sender means to wait for its next heartbeat, in ms: a standby of a holder it hears
    # sends less often than the holder (Node._standby_beats), and says so. 0: an agent older than this,
    # which sends every heartbeat_interval_ms and judges its peer by dead_after_ms alone.
    every_ms: float = 0.0


@dataclass(frozen=True)
class SwapRequest(Message):
    """The non-holder asks the holder to hand the VIP over (the command was given on the target)."""

    kind: ClassVar[str] = "swap-request"
    move: str  # "swap" or "unswap"


@dataclass(frozen=True)
class Prepare(Message):
    kind: ClassVar[str] = "prepare"
    move: str
    digest: str
    drain_ms: float = 0.0  # how long the source will keep serving in-flight connections after release
    drain_max_ms: float = 0.0  # and at the latest this long, waiting for them to end


@dataclass(frozen=True)
class Prepared(Message):
    kind: ClassVar[str] = "prepared"
    handoff_error: str = ""  # the connection handoff could not be put in place (nft missing...): why


@dataclass(frozen=True)
class Refused(Message):
    kind: ClassVar[str] = "refused"
    reason: str


@dataclass(frozen=True)
class Released(Message):
    kind: ClassVar[str] = "released"
    release_ms: float
    # Requests per second to the VIP the source served just before the move, if rate_known: the target
    # expects clients within a deadline derived from it.
    rate: float = 0.0
    rate_known: bool = False
    canary: bool = False  # too quiet to judge by clients: the source sends marked requests instead


@dataclass(frozen=True)
class Claimed(Message):
    kind: ClassVar[str] = "claimed"
    # Time from receiving Released to sending Claimed, so the source can split the round trip.
    turnaround_ms: float
    claim_ms: float
    # Sent by a target that restarted mid-swap and found the VIP on itself: no confirmation will follow.
    restarted: bool = False


@dataclass(frozen=True)
class ClaimFailed(Message):
    kind: ClassVar[str] = "claim-failed"
    reason: str


@dataclass(frozen=True)
class Abort(Message):
    kind: ClassVar[str] = "abort"
    reason: str


@dataclass(frozen=True)
class Done(Message):
    kind: ClassVar[str] = "done"


@dataclass(frozen=True)
class Confirmed(Message):
    """The new holder's access log shows the clients arrived: the move is proven."""

    kind: ClassVar[str] = "confirmed"
    requests: int
    clients: str  # comma-separated, the first few
    confirm_ms: float  # from the claim (first announcement) to the confirming request
    # The proof's facts, so the source's outcome carries them too (empty from a peer that predates them).
    destination: str = ""  # how the address asked was known: log field, kernel witness, ..., canary
    canary: bool = False  # the source's marked requests were the proof, not clients'
    deadline_ms: float = 0.0  # the wait for proof the target set itself after its claim
    deadline_why: str = ""  # how that deadline was chosen, in words


@dataclass(frozen=True)
class HandBack(Message):
    """Not confirmed in time: the new holder has released the VIP; the old one takes it back."""

    kind: ClassVar[str] = "hand-back"
    reason: str
    drain_ms: float = 0.0  # the new holder drains after its hand-back release, as a source after a swap
    drain_max_ms: float = 0.0
    # What the proof had counted when the deadline passed, as in Confirmed.
    requests: int = 0
    clients: str = ""
    destination: str = ""
    canary: bool = False
    deadline_ms: float = 0.0
    deadline_why: str = ""


@dataclass(frozen=True)
class TellStragglers(Message):
    """Clients still sending to the old holder: the new holder tells each where the VIP is now."""

    kind: ClassVar[str] = "tell-stragglers"
    entries: str  # "ip=mac,ip=mac"


@dataclass(frozen=True)
class Drained(Message):
    """The old holder's drain after its release of `epoch` is over: the new holder's handoff may end."""

    kind: ClassVar[str] = "drained"
    left: int  # connections to the VIP still open when it ended (-1: not counted)
    oldest_ms: float  # how long the oldest of those had been open
    after_ms: float  # from the release to the end of the drain
    how: str  # "closed" | "drain_max" | "claimed" | "not-counted" | "ended"
    closing: int = 0  # of `left`: closed by the server, waiting only for their clients' FIN
    # False: only such connections are left, so the host may go down, but the drain goes on and the
    # handoff must stay for their FINs; a final Drained follows.
    final: bool = True


@dataclass(frozen=True)
class Ack(Message):
    kind: ClassVar[str] = "ack"
    of: str  # the kind acknowledged


@dataclass(frozen=True)
class CheckRequest(Message):
    """A dry run asks the peer to run its preflight checks as `role` of `move`. Nothing changes anywhere:
    the epoch is always 0 (no move), and `nonce` pairs the answer with the question."""

    kind: ClassVar[str] = "check-request"
    nonce: int
    move: str
    role: str  # what the receiver would play: "source" or "target"


@dataclass(frozen=True)
class CheckResult(Message):
    kind: ClassVar[str] = "check-result"
    nonce: int
    ok: bool  # no check failed
    findings: str  # pack_findings(): one per line, level TAB check TAB detail TAB fix


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (
        Heartbeat,
        SwapRequest,
        Prepare,
        Prepared,
        Refused,
        Released,
        Claimed,
        ClaimFailed,
        Abort,
        Done,
        Confirmed,
        HandBack,
        TellStragglers,
        Drained,
        Ack,
        CheckRequest,
        CheckResult,
    )
}

FINDINGS_MAX = 900  # bytes of JSON for a CheckResult's findings: the envelope and HMAC fit beside them
_FIELD_MAX = (8, 60, 200, 200)  # level, check, detail, fix


def pack_findings(rows: list[tuple[str, str, str, str]], limit: int = FINDINGS_MAX) -> str:
    """(level, check, detail, fix) rows as text that fits one datagram; failures are the last to go.

    When the rows do not fit, the fixes of passed checks go first, then the passed checks become one
    count line, then the last lines, then the tail of the one left.
    """

    def clean(row: tuple[str, str, str, str]) -> tuple[str, ...]:
        words = (_FORBIDDEN.sub(REPLACEMENT, " ".join(str(v).split())) for v in row)
        return tuple(w[:n] for w, n in zip(words, _FIELD_MAX, strict=True))

    def size(text: str) -> int:
        return len(json.dumps(text))

    cleaned = [clean(r) for r in rows]
    attempts = [
        cleaned,
        [r if r[0] == "FAIL" else (*r[:3], "") for r in cleaned],
    ]
    failed = [r for r in cleaned if r[0] == "FAIL"]
    passed = len(cleaned) - len(failed)
    attempts.append(failed + ([("ok", f"{passed} other checks passed", "", "")] if passed else []))
    for attempt in attempts:
        text = "\n".join("\t".join(r) for r in attempt)
        if size(text) <= limit:
            return text
    lines = text.split("\n")
    while len(lines) > 1 and size("\n".join(lines)) > limit:
        lines.pop()
    # One failure alone is too long: its fix and detail lose their tails. By characters, not by the bytes
    # JSON escapes them to (one astral character is 12 bytes of it), so the level at the start survives.
    text, fits = lines[0], 0
    too_long = len(text) + 1
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        fits, too_long = (middle, too_long) if size(text[:middle]) <= limit else (fits, middle)
    return text[:fits]


def unpack_findings(text: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for line in text.splitlines():
        level, check, detail, fix = [*line.split("\t"), "", "", ""][:4]
        if level:
            rows.append((level, check, detail, fix))
    return rows


@dataclass(frozen=True)
class Envelope:
    """Who sent a message and where it sits in that sender's stream."""

    cluster: str
    sender: str
    boot: int  # the sender's boot id (bootid.py): grows at every start, so a restart sorts later
    seq: int
    message: Message


# Bounds of what a peer may say: every number is a count, an epoch, a sequence or a duration, never
# negative; an int must fit a signed 64-bit field, a duration one day (config allows minutes at most).
INT_MAX = 2**63 - 1
MS_MAX = 86_400_000.0
# Text that would break execve or an environment (NUL, lone surrogates) or a log line or a terminal
# (other control characters). Only a CheckResult's findings carry tabs and newlines: they are its format.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_FORBIDDEN_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_MULTILINE = {("check-result", "findings")}
REPLACEMENT = "\ufffd"


def _forbidden(kind: str, name: str) -> re.Pattern[str]:
    return _FORBIDDEN_MULTILINE if (kind, name) in _MULTILINE else _FORBIDDEN


def encode(envelope: Envelope, key: bytes) -> bytes:
    """Sign one message. Text the peer's decode would refuse (a hook's coloured last line, say) is sent
    with U+FFFD in place of each offending character, so our own words never get our message dropped."""
    msg = envelope.message
    if isinstance(msg, Heartbeat):
        # A heartbeat says the same as the last one but for its sequence number: its JSON around that
        # number is kept (the same bytes the encoder makes, see _head_parts), not made again 100 times a
        # second.
        where = (envelope.cluster, envelope.sender, envelope.boot, msg)
        parts = _HEARTBEAT_PARTS.get(where)
        if parts is None:
            parts = _remember(_HEARTBEAT_PARTS, where, _head_parts(envelope))
        head = parts[0] + str(envelope.seq).encode() + parts[1]
    else:
        head = _head(envelope)
    data = head + _hmac_sha256(key, head)
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"{len(data)} bytes")
    return data


def _doc(envelope: Envelope) -> dict[str, Any]:
    msg = envelope.message
    body = {}
    for name, _expected, _optional, _as_float, forbidden in _plan(type(msg)):
        value = getattr(msg, name)
        body[name] = forbidden.sub(REPLACEMENT, value) if isinstance(value, str) else value
    return {
        "c": _FORBIDDEN.sub(REPLACEMENT, envelope.cluster),
        "s": _FORBIDDEN.sub(REPLACEMENT, envelope.sender),
        "b": envelope.boot,
        "n": envelope.seq,
        "k": msg.kind,
        "m": body,
    }


def _head(envelope: Envelope) -> bytes:
    """Everything the HMAC covers: magic, version, the JSON envelope."""
    return MAGIC + bytes([VERSION]) + _JSON_OUT.encode(_doc(envelope)).encode()


def _head_parts(envelope: Envelope) -> tuple[bytes, bytes]:
    """_head(envelope) cut around the sequence number's digits: what comes before them, and after.

    The encoder writes the object's members in order, each `"key":value`, joined by `,`, so the head is
    the same bytes as `_JSON_OUT.encode(doc)`: checked against it here, once per message, and by
    tests/test_wire.py."""
    doc = _doc(envelope)
    out = _JSON_OUT.encode
    before = "{" + ",".join(f"{out(k)}:{out(doc[k])}" for k in ("c", "s", "b")) + ',"n":'
    after = "".join(f",{out(k)}:{out(doc[k])}" for k in ("k", "m")) + "}"
    parts = (MAGIC + bytes([VERSION]) + before.encode(), after.encode())
    if parts[0] + str(envelope.seq).encode() + parts[1] != _head(envelope):  # never, but never trusted
        raise WireError("encoder", "heartbeat parts differ from the encoder's output")
    return parts


_PartsKey = tuple[str, str, int, "Heartbeat"]
_HEARTBEAT_PARTS: dict[_PartsKey, tuple[bytes, bytes]] = {}
_CACHE_MAX = 32  # heartbeats of distinct content kept; a node sends one or two, a test a few


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), the same bytes as hmac.digest(key, data, "sha256"), from the key's two
    padded blocks hashed once per key: OpenSSL 3's one-shot HMAC sets up the key each call, about twice
    the time of the two hashes themselves (measured on this machine kind: 7 against 3 us)."""
    pads = _PADS.get(key)
    if pads is None:
        block = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
        block = block.ljust(_BLOCK, b"\0")
        pads = _remember(_PADS, key, (
            hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        ))
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(data)
    outer.update(inner.digest())
    mac: bytes = outer.digest()
    return mac


_BLOCK = 64  # SHA-256's block size
# key -> (inner, outer): the hash states after the padded key
_PADS: dict[bytes, tuple[hashlib._Hash, hashlib._Hash]] = {}


def decode(data: bytes, keys: tuple[bytes, ...]) -> Envelope:
    """Authenticate and parse one datagram; raises WireError and nothing else."""
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"{len(data)} bytes")
    if len(data) < len(MAGIC) + 1 + MAC_LEN or data[:2] != MAGIC:
        raise WireError("not-failover")
    if data[2] != VERSION:
        raise WireError("version", f"version {data[2]}")
    head, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    for key in keys:
        if hmac.compare_digest(_hmac_sha256(key, head), mac):
            break
    else:
        raise WireError("auth")
    text = head[3:]
    seq = _SEQ.search(text)
    if seq is not None and text.count(b'"n":') == 1:
        # The peer's heartbeat again, but for its sequence number: the same bytes around it parsed to this
        # envelope before, and a number in 0..2**63-1 (the pattern and the bound below) is all that
        # decoding it again would check of the new one. One "n" key only: no duplicate can override it.
        where = (text[: seq.start(1)], text[seq.end(1):])
        known = _HEARTBEATS_HEARD.get(where)
        number = int(seq.group(1))
        if known is not None and number <= INT_MAX:
            return Envelope(cluster=known.cluster, sender=known.sender, boot=known.boot, seq=number,
                            message=known.message)
    env = _parse(text)
    if seq is not None and isinstance(env.message, Heartbeat) and env.seq == int(seq.group(1)) \
            and text.count(b'"n":') == 1:
        _remember(_HEARTBEATS_HEARD, (text[: seq.start(1)], text[seq.end(1):]), env)
    return env


_SEQ = re.compile(rb',"n":(0|[1-9][0-9]{0,18}),')
_HEARTBEATS_HEARD: dict[tuple[bytes, bytes], Envelope] = {}  # (bytes before seq, after) -> an envelope


def _parse(text: bytes) -> Envelope:
    try:
        # What json.loads(bytes) does, with one decoder made once instead of one per datagram.
        doc = _JSON_IN.decode(text.decode(json.detect_encoding(text), "surrogatepass"))
        return _envelope(doc)
    except WireError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        # Only a holder of the key can get here: a bug or version skew on the peer, not an attack.
        raise WireError("malformed", str(err)) from None


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "bool": bool,
    "str": str,
    "float": (int, float),
}


# (name, expected type, optional, a float, forbidden text) of each field of a message type.
_FieldPlan = tuple[str, type | tuple[type, ...], bool, bool, re.Pattern[str]]
_PLANS: dict[type[Message], tuple[_FieldPlan, ...]] = {}


def _plan(cls: type[Message]) -> tuple[_FieldPlan, ...]:
    """Each field of a message type as encode and decode need it: worked out once per type, not once per
    datagram (a heartbeat every 10 ms)."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (f.name, _FIELD_TYPES[str(f.type)], f.default is not MISSING, f.type == "float",
             _forbidden(cls.kind, f.name))
            for f in fields(cls)
        )
    return plan


def _envelope(doc: Any) -> Envelope:
    if not isinstance(doc, dict):
        raise WireError("malformed", "envelope is not an object")
    cls = MESSAGE_TYPES.get(_typed(doc, "k", str))
    if cls is None:
        raise WireError("malformed", f"unknown kind {doc['k']!r}")
    body = _typed(doc, "m", dict)
    kwargs: dict[str, Any] = {}
    for name, expected, optional, as_float, forbidden in _plan(cls):
        if optional and name not in body:
            continue
        value: Any = body[name]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise WireError("malformed", f"{cls.kind}.{name} has the wrong type")
        kwargs[name] = _sane(f"{cls.kind}.{name}", value, as_float, forbidden)
    return Envelope(
        cluster=_sane("c", _typed(doc, "c", str)),
        sender=_sane("s", _typed(doc, "s", str)),
        boot=_sane("b", _typed(doc, "b", int)),
        seq=_sane("n", _typed(doc, "n", int)),
        message=cls(**kwargs),
    )


def _no_constant(name: str) -> float:
    raise WireError("out-of-range", f"{name} is not a number")


_JSON_OUT = json.JSONEncoder(separators=(",", ":"))
_JSON_IN = json.JSONDecoder(parse_constant=_no_constant)


def _sane(where: str, value: Any, as_float: bool = False, forbidden: re.Pattern[str] = _FORBIDDEN) -> Any:
    """`value` as the message will hold it, or a WireError naming the field."""
    if isinstance(value, str):
        bad = forbidden.search(value)
        if bad:
            raise WireError("control-char", f"{where} has U+{ord(bad.group()):04X} at {bad.start()}")
        return value
    if isinstance(value, bool):
        return value
    if as_float:
        if not (isinstance(value, float) and math.isfinite(value)) and not isinstance(value, int):
            raise WireError("out-of-range", f"{where} is not finite")
        if not 0 <= value <= MS_MAX:  # compared before float(): a huge int never reaches float()
            raise WireError("out-of-range", f"{where} is outside 0..{MS_MAX:.0f}")
        return float(value)
    if not 0 <= value <= INT_MAX:
        raise WireError("out-of-range", f"{where} is outside 0..2**63-1")
    return value


def _typed(doc: dict[str, Any], key: str, expected: type) -> Any:
    value = doc[key]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise WireError("malformed", f"field {key!r} has the wrong type")
    return value


@lru_cache(maxsize=8)  # the core names its keys with every heartbeat; a node has one or two
def key_fingerprint(key: bytes) -> str:
    """A short public name for a key: which keys a peer accepts can be said without revealing them."""
    return hashlib.sha256(b"failover-key-id:" + key).hexdigest()[:12]


NEW, LATE, REPLAY = "new", "late", "replay"
LATE_WINDOW = 64  # positions behind the newest one heard that may still arrive, once each


class ReplayGuard:
    """Each sender's (boot, seq): NEW if it sorts after every position heard, LATE if it is one of the
    LATE_WINDOW just behind it not heard yet (the network reordered it: jitter larger than the
    heartbeat interval does that to a quarter of them), REPLAY for anything heard before or older. In
    memory: a restarted receiver takes the first position it hears as the start."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self._heard: dict[str, int] = {}  # bit i: position seq - 1 - i of the newest boot was heard

    def check(self, envelope: Envelope) -> str:
        sender, boot, seq = envelope.sender, envelope.boot, envelope.seq
        last = self._last.get(sender)
        if last is None or (boot, seq) > last:
            if last is None or boot != last[0]:
                self._heard[sender] = 0  # a new boot: nothing of it heard yet
            else:
                # The old newest becomes bit (shift - 1) behind the new one; older bits move along.
                shift = seq - last[1]  # a forged huge seq never gets here: the HMAC came first
                heard = self._heard.get(sender, 0) << shift if shift < LATE_WINDOW else 0
                if shift <= LATE_WINDOW:
                    heard |= 1 << (shift - 1)
                self._heard[sender] = heard & ((1 << LATE_WINDOW) - 1)
            self._last[sender] = (boot, seq)
            return NEW
        behind = last[1] - seq - 1
        if boot != last[0] or not 0 <= behind < LATE_WINDOW:
            return REPLAY
        if self._heard.get(sender, 0) >> behind & 1:
            return REPLAY
        self._heard[sender] |= 1 << behind
        return LATE

    def accept(self, envelope: Envelope) -> bool:
        """Only NEW positions (a late one is not accepted as a message)."""
        return self.check(envelope) == NEW
