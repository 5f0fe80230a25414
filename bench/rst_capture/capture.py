"""Capture every TCP frame entering the bridge's ports (headers only) until SIGTERM or duration.
Record: <d ts><H ifindex><H len> + frame[:len]; port names printed first as JSON line in a side file."""
import json, signal, socket, struct, sys, time, select, os
out_path, duration = sys.argv[1], float(sys.argv[2])
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
names = {idx: name for idx, name in socket.if_nameindex()}
json.dump(names, open(out_path + ".ifaces", "w"))
stop = False
def term(*a):
    global stop; stop = True
signal.signal(signal.SIGTERM, term)
f = open(out_path, "wb", buffering=1 << 20)
print("ready", flush=True)
end = time.monotonic() + duration
n = 0
while not stop and time.monotonic() < end:
    r, _, _ = select.select([s], [], [], 0.2)
    if not r: continue
    for _ in range(256):
        try:
            frame, addr = s.recvfrom(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if addr[2] == PACKET_OUTGOING or addr[0] == "br0":
            continue
        if frame[12:14] == b"\x08\x00" and frame[23] == 6 or frame[12:14] == b"\x86\xdd" and frame[20] == 6:
            idx = socket.if_nametoindex(addr[0]) if False else 0
            b = frame[:134]
            f.write(struct.pack("<d16sH", time.monotonic(), addr[0].encode()[:16], len(b)) + b)
            n += 1
f.close()
print(json.dumps({"frames": n}), flush=True)
