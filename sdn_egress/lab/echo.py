"""The external hosts' echo service: TCP and UDP on port 8080 answer with the
source address they saw (text and a newline); every connection, line,
datagram and ICMP echo request is recorded as a JSON line, so tests and the
demo can ask "which source did the outside world see?".

TCP: the address is sent on connect and again for every line received, so one
connection can be asked repeatedly (an established connection surviving a
change is visible).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import struct
import threading
import time

_lock = threading.Lock()


class Recorder:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)

    def __call__(self, **entry) -> None:
        entry["t"] = time.time()
        with _lock:
            self.f.write(json.dumps(entry, sort_keys=True) + "\n")


def serve(port: int, record: Recorder) -> list[threading.Thread]:
    class TCP(socketserver.StreamRequestHandler):
        def handle(self):
            src = self.client_address[0]
            record(proto="tcp", event="connect", src=src, sport=self.client_address[1])
            try:
                self.wfile.write(f"{src}\n".encode())
                for line in self.rfile:
                    record(proto="tcp", event="line", src=src, sport=self.client_address[1],
                           data=line.decode(errors="replace").strip()[:200])
                    self.wfile.write(f"{src}\n".encode())
            except OSError:
                pass

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    tcp = Server(("0.0.0.0", port), TCP)

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", port))

    def udp_loop():
        while True:
            data, (src, sport) = udp.recvfrom(65535)
            record(proto="udp", src=src, sport=sport,
                   data=data.decode(errors="replace").split("\n", 1)[0][:200])
            udp.sendto(f"{src}\n".encode(), (src, sport))

    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def icmp_loop():
        while True:
            pkt, _ = icmp.recvfrom(65535)
            ihl = (pkt[0] & 0x0F) * 4
            src = socket.inet_ntoa(pkt[12:16])
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if icmp_type == 8:  # echo request (the kernel answers it)
                record(proto="icmp", src=src, id=ident, seq=seq, data=pkt[ihl + 8:ihl + 8 + 64].hex())

    threads = [threading.Thread(target=tcp.serve_forever, daemon=True),
               threading.Thread(target=udp_loop, daemon=True),
               threading.Thread(target=icmp_loop, daemon=True)]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--log", required=True, help="JSON lines of everything seen")
    ap.add_argument("--ready", help="file created once the sockets are bound")
    args = ap.parse_args()
    threads = serve(args.port, Recorder(args.log))
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(str(os.getpid()))
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
