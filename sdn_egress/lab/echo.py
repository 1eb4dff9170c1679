"""The external hosts' echo service: TCP and UDP on port 8080 answer with the
source address they saw (text and a newline); every connection, line,
datagram and ICMP echo request is recorded as a JSON line, so tests and the
demo can ask "which source did the outside world see?".  Both families: each
service listens on IPv4 and on IPv6 (separate sockets, so an IPv4 source is
reported as such, never as ``::ffff:``...); ICMPv6 echo requests are
recorded with ``proto: icmpv6`` (the kernel answers them, as it does ICMP's).

TCP: the address is sent on connect and again for every line received, so one
connection can be asked repeatedly (an established connection surviving a
change is visible).

Bulk TCP on port 8081, to move real amounts of data (full-size segments) and
check they arrive intact: a client sends ``PUT N`` and then N bytes, and gets
back ``SHA256 SRC`` of what arrived; or sends ``GET N SEED`` and receives the
N bytes of :func:`stream` (SEED) and then the connection closes.
"""
from __future__ import annotations

import argparse
import hashlib
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


BULK_PORT = 8081
CHUNK = 65536


def stream(seed: str, n: int):
    """N deterministic bytes in chunks (SHA-256 in counter mode over
    ``seed``): both ends can compute the digest without storing the data."""
    i, left = 0, n
    while left > 0:
        block = b"".join(hashlib.sha256(f"{seed}:{i}:{j}".encode()).digest() for j in range(CHUNK // 32))
        i += 1
        yield block[:left]
        left -= len(block[:left])


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own
        super().server_bind()


def tcp_servers(port: int, handler) -> list[socketserver.ThreadingTCPServer]:
    """The same TCP service on IPv4 and on IPv6."""
    return [_TcpServer(("0.0.0.0", port), handler), _Tcp6Server(("::", port), handler)]


def serve_bulk(port: int, record: Recorder) -> list[socketserver.ThreadingTCPServer]:
    class Bulk(socketserver.StreamRequestHandler):
        def handle(self):
            src = self.client_address[0]
            try:
                words = self.rfile.readline(200).decode(errors="replace").split()
                if len(words) == 2 and words[0] == "PUT" and words[1].isdigit():
                    n, digest, got = int(words[1]), hashlib.sha256(), 0
                    while got < n:
                        data = self.rfile.read1(min(CHUNK, n - got))
                        if not data:
                            break
                        digest.update(data)
                        got += len(data)
                    record(proto="tcp", event="bulk-put", src=src, sport=self.client_address[1], bytes=got)
                    self.wfile.write(f"{digest.hexdigest()} {src} {got}\n".encode())
                elif len(words) == 3 and words[0] == "GET" and words[1].isdigit():
                    record(proto="tcp", event="bulk-get", src=src, sport=self.client_address[1],
                           bytes=int(words[1]))
                    for block in stream(words[2], int(words[1])):
                        self.wfile.write(block)
                else:
                    self.wfile.write(b"usage: PUT N | GET N SEED\n")
            except OSError:
                pass

    return tcp_servers(port, Bulk)


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

    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp4.bind(("0.0.0.0", port))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    udp6.bind(("::", port))

    def udp_loop(udp):
        while True:
            data, peer = udp.recvfrom(65535)
            src, sport = peer[0], peer[1]
            record(proto="udp", src=src, sport=sport,
                   data=data.decode(errors="replace").split("\n", 1)[0][:200])
            udp.sendto(f"{src}\n".encode(), peer)

    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def icmp_loop():
        while True:
            pkt, _ = icmp.recvfrom(65535)
            ihl = (pkt[0] & 0x0F) * 4
            src = socket.inet_ntoa(pkt[12:16])
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if icmp_type == 8:  # echo request (the kernel answers it)
                record(proto="icmp", src=src, id=ident, seq=seq, data=pkt[ihl + 8:ihl + 8 + 64].hex())

    # ICMPv6: the socket gets the message without the IPv6 header, the
    # source with recvfrom.
    icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)

    def icmp6_loop():
        while True:
            msg, peer = icmp6.recvfrom(65535)
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", msg[:8])
            if icmp_type == 128:  # echo request (the kernel answers it)
                record(proto="icmpv6", src=peer[0], id=ident, seq=seq, data=msg[8:8 + 64].hex())

    tcp = tcp_servers(port, TCP) + serve_bulk(BULK_PORT, record)
    threads = [threading.Thread(target=t.serve_forever, daemon=True) for t in tcp]
    threads += [threading.Thread(target=udp_loop, args=(u,), daemon=True) for u in (udp4, udp6)]
    threads += [threading.Thread(target=icmp_loop, daemon=True), threading.Thread(target=icmp6_loop, daemon=True)]
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
