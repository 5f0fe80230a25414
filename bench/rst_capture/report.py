import json, struct, sys, socket, collections
path = sys.argv[1]
meta = json.load(open(path + ".moves.json"))
moves = meta["moves"]
import itertools
starts = sorted((m["started"], m.get("command", m.get("cmd", "?")), m) for m in moves)
data = open(path, "rb").read()
recs = []
i = 0
hdr = struct.calcsize("<d16sH")
while i + hdr <= len(data):
    ts, port, n = struct.unpack_from("<d16sH", data, i); i += hdr
    fr = data[i:i+n]; i += n
    recs.append((ts, port.rstrip(b"\0").decode(), fr))
print("frames", len(recs))
macs = {}
def parse(fr):
    et = fr[12:14]
    if et == b"\x08\x00":
        ihl = (fr[14] & 15) * 4; src = socket.inet_ntop(socket.AF_INET, fr[26:30]); dst = socket.inet_ntop(socket.AF_INET, fr[30:34])
        tot = struct.unpack(">H", fr[16:18])[0]; t = 14 + ihl; iplen = tot - ihl
    else:
        src = socket.inet_ntop(socket.AF_INET6, fr[22:38]); dst = socket.inet_ntop(socket.AF_INET6, fr[38:54])
        iplen = struct.unpack(">H", fr[18:20])[0]; t = 54
    sp, dp, seq, ack = struct.unpack(">HHII", fr[t:t+12]); off = (fr[t+12] >> 4) * 4; fl = fr[t+13]
    return src, dst, sp, dp, seq, ack, fl, iplen - off
for ts, port, fr in recs:
    macs.setdefault(port, set()).add(fr[6:12].hex(":"))
print({p: sorted(m)[:3] for p, m in macs.items()})
mac_port = {m: p for p, ms in macs.items() for m in ms if len(ms) == 1}
def fl_s(f):
    return "".join(c for b, c in zip((1, 2, 4, 8, 16, 32), "FSRPA.") if f & b) or "-"
def move_at(ts):
    prev = [s for s in starts if s[0] <= ts]
    return f"{prev[-1][1]}#{len(prev)}+{(ts-prev[-1][0])*1000:.1f}ms" if prev else "before"
byconn = collections.defaultdict(list)
rsts = []
for ts, port, fr in recs:
    try:
        src, dst, sp, dp, seq, ack, fl, ln = parse(fr)
    except Exception:
        continue
    if port == "vclient":
        key = (src, sp, dst, dp)
    else:
        key = (dst, dp, src, sp)
    byconn[key].append((ts, port, fr[0:6].hex(":"), src, sp, dst, dp, seq, ack, fl, ln))
    if port != "vclient" and fl & 4:
        rsts.append((ts, key))
print("rsts", len(rsts))
for ts, key in rsts:
    print("=== RST", move_at(ts), key)
    for e in [e for e in byconn[key] if ts - 0.15 <= e[0] <= ts + 0.05]:
        t, port, dmac, src, sp, dst, dp, seq, ack, fl, ln = e
        print(f"  {move_at(t):>26} in={port:8} to={mac_port.get(dmac, dmac):8} {src}:{sp}->{dst}:{dp} {fl_s(fl):5} seq={seq} ack={ack} len={ln}")
for m in moves:
    print(m.get("command"), m["started"], (m.get("drain") or {}))
