"""Where the agent listens for its switches' OpenFlow connections.

``punix:PATH`` (the default: ``sdn-egress.sock`` in the OVS run directory,
the bridges' controller target ``unix:PATH``) or ``tcp:HOST:PORT``.  Over
TCP any process of the host's network namespace can connect, pose as br-int
(its datapath id is predictable) or take the port while the agent restarts;
the Unix socket is a file of mode 0600 owned by the agent's user (root) in a
directory only root writes to, so only a process with root's file rights can
be the agent or reach it; a connecting process of another user (seen by
``SO_PEERCRED``) is refused as well.

os-ken 4.x binds a Unix socket when its listen host is a path, but its
``Datapath`` then fails on every connection (it sets ``TCP_NODELAY`` on the
socket); so a Unix socket is served here (:class:`UnixServer`, in place of
os-ken's ``OpenFlowController``), handing each connection to os-ken's own
``datapath_connection_factory``.
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, one for the NUL


class ListenError(ValueError):
    pass


@dataclass(frozen=True)
class Listen:
    path: str | None = None  # punix:
    host: str | None = None  # tcp:
    port: int | None = None

    def __str__(self) -> str:
        return f"punix:{self.path}" if self.path else f"tcp:{self.host}:{self.port}"

    def os_ken_args(self) -> list[str]:
        """os-ken's options (TCP only: a Unix socket is served by UnixServer)."""
        if self.path:
            return []
        return ["--ofp-listen-host", self.host, "--ofp-tcp-listen-port", str(self.port)]


def parse(text: str) -> Listen:
    kind, sep, rest = text.partition(":")
    if kind == "punix" and sep:
        if not rest.startswith("/"):
            raise ListenError(f"--listen {text}: punix: needs an absolute path")
        if len(rest.encode()) > UNIX_PATH_MAX:
            raise ListenError(f"--listen {text}: the path is longer than {UNIX_PATH_MAX} bytes, "
                              "the most a Unix socket address holds")
        return Listen(path=rest)
    if kind == "tcp" and sep:
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ListenError(f"--listen {text}: expected tcp:HOST:PORT")
        return Listen(host=host, port=int(port))
    raise ListenError(f"--listen {text}: expected punix:PATH (the bridges' controller unix:PATH) "
                      "or tcp:HOST:PORT")


def prepare(listen: Listen) -> None:
    """Make a Unix socket path ready to bind: its directory must exist; a
    socket file nobody listens on any more (the last agent's) is removed; a
    live one or any other file is an error naming the path."""
    if not listen.path:
        return
    path = listen.path
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ListenError(f"--listen punix:{path}: directory {directory} does not exist "
                          "(is the OVS run directory mounted?)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"--listen punix:{path}: exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: its listener is gone
        return
    finally:
        probe.close()
    raise ListenError(f"--listen punix:{path}: another process listens there already "
                      "(a second agent on this node?)")


class _UnixStream(socket.socket):
    """An accepted Unix connection that ignores TCP socket options (os-ken's
    Datapath sets TCP_NODELAY, which a Unix socket refuses)."""

    def setsockopt(self, level, *args):
        if level == socket.IPPROTO_TCP:
            return None
        return super().setsockopt(level, *args)


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix connection."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


class UnixServer:
    """Listens on ``path`` (mode 0600 before ``listen()``: no connection can
    come in while the file is still open to others) and hands every
    connection from a process of the agent's own user to os-ken."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)

    def __call__(self) -> None:
        from os_ken.base import app_manager  # noqa: F401 - os-ken's modules import in this order only
        from os_ken.controller.controller import datapath_connection_factory
        from os_ken.lib import hub

        while True:
            conn, _ = self.sock.accept()
            pid, uid = peer_uid(conn)
            if uid != os.geteuid():
                LOG.warning("OpenFlow: refused a connection on %s from pid %d (uid %d): only the "
                            "switch, running as uid %d, may connect", self.path, pid, uid, os.geteuid())
                conn.close()
                continue
            stream = _UnixStream(fileno=conn.detach())
            hub.spawn(datapath_connection_factory, stream, f"unix:{self.path} (pid {pid})")


def install(manager, listen: Listen) -> None:
    """Before ``manager.instantiate_apps``: serve ``listen`` (a Unix socket)
    instead of os-ken's TCP listener."""
    if not listen.path:
        return
    from os_ken.controller.ofp_handler import OFPHandler
    from os_ken.lib import hub

    server = UnixServer(listen.path)

    class UnixOFPHandler(OFPHandler):
        def start(self):
            super(OFPHandler, self).start()  # the app's own event loop, not OFPHandler's listener
            self.controller = server
            return hub.spawn(server)

    key = OFPHandler.__module__
    if key not in manager.applications_cls:
        raise RuntimeError(f"{key} is not among the loaded os-ken apps")
    manager.applications_cls[key] = UnixOFPHandler
