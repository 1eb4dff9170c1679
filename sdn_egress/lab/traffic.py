"""Clients that run inside the lab's namespaces and report what the other end
saw: the questions every end-to-end test and the demo ask."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid

TCP_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.makefile().readline().strip())
"""

UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.sendto((sys.argv[4] + "\n").encode(), (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(200)[0].decode().strip())
"""

# Both families on one socket; an IPv4 peer is reported as IPv4.
UDP_ONESHOT_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(float(sys.argv[2]))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
data, peer = s.recvfrom(200)
src = peer[0].removeprefix("::ffff:")
s.sendto((src + "\n").encode(), peer)
print(src, flush=True)
"""

# A pod's traffic from its first packet: a UDP datagram to the echo service
# every 10 ms (sequence numbered); prints the seconds to the first answer
# naming argv[2], then "done" once the answers after it are in (or "timeout").
FIRST_ANSWER = r"""
import socket, sys, time
dst, want, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.01)
t0, n, got = time.monotonic(), 0, None
while time.monotonic() - t0 < limit:
    try:
        s.sendto(f"p{n}\n".encode(), (dst, 8080)); n += 1
    except OSError:
        pass
    if n == 1:
        print("sending", flush=True)
    try:
        while True:
            data = s.recvfrom(100)[0].decode().strip()
            if got is None and data == want:
                got = time.monotonic() - t0
                print(f"{got:.4f}", flush=True)
    except (socket.timeout, OSError):
        pass
    if got is not None and time.monotonic() - t0 > got + 0.3:
        break
print("done" if got is not None else "timeout", flush=True)
"""

BULK_CLIENT = r"""
import hashlib, json, socket, sys, time
from sdn_egress.lab.echo import BULK_PORT, stream
ip, n, direction, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
seed = f"{time.time_ns()}"
want = hashlib.sha256()
for block in stream(seed, n):
    want.update(block)
start = time.monotonic()
s = socket.create_connection((ip, BULK_PORT), timeout=timeout)
out = {"direction": direction, "bytes": 0, "intact": False}
try:
    if direction == "upload":
        s.sendall(f"PUT {n}\n".encode())
        for block in stream(seed, n):
            s.sendall(block)
        digest, src, got = s.makefile().readline().split()
        out.update(bytes=int(got), intact=digest == want.hexdigest() and int(got) == n, src=src)
    else:
        s.sendall(f"GET {n} {seed}\n".encode())
        got, digest = 0, hashlib.sha256()
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
            digest.update(data)
        out.update(bytes=got, intact=digest.hexdigest() == want.hexdigest() and got == n)
except OSError as exc:
    out["error"] = str(exc)
out["seconds"] = round(time.monotonic() - start, 3)
s.close()
print(json.dumps(out))
"""

TCP_SESSION = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
f = s.makefile("rw")
print(f.readline().strip(), flush=True)
while sys.stdin.readline():
    f.write("ask\n"); f.flush()
    print(f.readline().strip(), flush=True)
"""


class TcpSession:
    """One TCP connection from a pod to an echo service, asked again and again."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.greeting = proc.stdout.readline().strip()
        if not self.greeting:
            raise RuntimeError(f"TCP session did not connect: {proc.stderr.read().strip()}")

    def ask(self) -> str | None:
        """The source the server sees on this same connection, or None when
        the connection is gone."""
        if self.proc.poll() is not None:
            return None
        try:
            self.proc.stdin.write("ask\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        return self.proc.stdout.readline().strip() or None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Traffic:
    """Mixed into Lab: needs ``exec``, ``popen``, ``address``, ``topology``,
    ``echo_seen``."""

    def tcp_source(self, pod: str, ip: str, port: int = 8080, timeout: float = 2.0) -> str | None:
        proc = self.exec(pod, [sys.executable, "-c", TCP_CLIENT, ip, str(port), str(timeout)],
                         check=False, timeout=timeout + 5)
        return proc.stdout.strip() or None

    def udp_source(self, pod: str, ip: str, port: int = 8080, timeout: float = 1.0,
                   payload: str = "probe") -> str | None:
        proc = self.exec(pod, [sys.executable, "-c", UDP_CLIENT, ip, str(port), str(timeout), payload],
                         check=False, timeout=timeout + 5)
        return proc.stdout.strip() or None

    def icmp_source(self, pod: str, external: str, timeout: float = 2.0, family: str | None = None) -> str | None:
        """Ping the external host (at its address of ``family``, by default
        the lab's primary one: ICMP or ICMPv6) with a unique payload; return
        the source address its echo service recorded for that very request."""
        pattern = uuid.uuid4().hex[:16]
        self.exec(pod, ["ping", "-c", "1", "-W", str(int(timeout)), "-p", pattern, self.address(external, family)],
                  check=False, timeout=timeout + 5)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for entry in reversed(self.echo_seen(external)):
                if entry.get("proto") in ("icmp", "icmpv6") and pattern in entry.get("data", ""):
                    return entry["src"]
            time.sleep(0.05)
        return None

    def bulk(self, pod: str, ip: str, nbytes: int, direction: str = "download",
             timeout: float = 20.0) -> dict:
        """Move ``nbytes`` over one TCP connection between ``pod`` and the bulk
        service of the external host at ``ip`` ("upload": pod -> host,
        "download": host -> pod).  Returns ``bytes`` (that arrived),
        ``intact`` (their SHA-256 matched what was sent), ``seconds``, and
        for an upload ``src`` (the source address the host saw), or
        ``error`` (a socket timeout: a stalled transfer)."""
        import json
        if direction not in ("upload", "download"):
            raise ValueError(f"bulk: direction must be upload or download, not {direction!r}")
        proc = self.exec(pod, [sys.executable, "-c", BULK_CLIENT, ip, str(nbytes), direction, str(timeout)],
                         check=False, timeout=timeout * 4 + 10)
        if proc.returncode != 0:
            raise RuntimeError(f"bulk client in {pod} failed: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)

    def first_answer_sender(self, pod: str, ip: str, want: str, limit: float = 20.0) -> subprocess.Popen:
        """A sender in ``pod`` from its first packet on (this returns once that
        is out): a UDP datagram to the echo service at ``ip`` every 10 ms until
        an answer names ``want`` (the source the echo service saw).  Its
        output then ends with the seconds to that answer and ``done``, or with
        ``timeout`` after ``limit`` seconds."""
        sender = self.popen(pod, [sys.executable, "-c", FIRST_ANSWER, ip, want, str(limit)])
        first = sender.stdout.readline().strip()
        if first != "sending":
            sender.kill()
            raise RuntimeError(f"{pod}: the sender did not start ({first!r}: {sender.communicate()[1].strip()})")
        return sender

    def capture(self, external: str, path: str) -> "Capture":
        """Capture every packet to ``external``'s echo service (into ``path``) from now on."""
        return Capture(self.host_ns(external), path)

    def udp_source_of(self, pod: str, host: str, port: int = 9000, timeout: float = 3.0,
                      family: str | None = None) -> str | None:
        """Source address ``host`` (a pod, node or external) sees for a UDP
        datagram from ``pod`` to its address of ``family`` (by default the
        lab's primary), via a one-shot server started on ``host``."""
        server = self.popen(host, [sys.executable, "-c", UDP_ONESHOT_SERVER, str(port), str(timeout)])
        try:
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"one-shot server on {host} did not start: {server.stderr.read()}")
            answer = self.udp_source(pod, self.address(host, family), port=port, timeout=timeout)
            return answer
        finally:
            if server.poll() is None:
                server.kill()
            server.wait()

    @contextlib.contextmanager
    def tcp_session(self, pod: str, ip: str, port: int = 8080, timeout: float = 5.0):
        proc = self.popen(pod, [sys.executable, "-c", TCP_SESSION, ip, str(port), str(timeout)])
        session = TcpSession(proc)
        try:
            yield session
        finally:
            session.close()


class Capture:
    """tcpdump on an external host's eth0 (network namespace ``netns``): every
    packet to its echo service, from the moment this is made."""

    def __init__(self, netns: str, path: str):
        self.path = path
        # Immediate mode: every packet written as it arrives, none left in a
        # kernel buffer block when the capture stops.
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-Z", "root", "-i", "eth0", "-n",
                                      "-U", "--immediate-mode", "-w", path, "dst", "port", "8080"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "listening on eth0 ...": capturing from now on
        if "listening" not in line:
            self.close()
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")

    def sources(self) -> list[str]:
        """Source address of each captured packet, in order (the capture ends)."""
        time.sleep(0.2)  # the last answers' requests are on the wire already; let them land
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        out = subprocess.run(["tcpdump", "-Z", "root", "-n", "-r", self.path], capture_output=True, text=True,
                             check=True).stdout
        return [line.split()[2].rsplit(".", 1)[0] for line in out.splitlines() if " IP " in line]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
