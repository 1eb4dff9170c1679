"""The agent's OpenFlow endpoint: punix:PATH (default) or tcp:HOST:PORT;
a stale socket is replaced, a live one or another file is never touched."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from ovs_setup.node import NodeBridges, agent_socket
from sdn_egress.agent import listen


def test_the_socket_lives_beside_the_ovsdb_socket_and_the_bridges_point_at_it():
    assert agent_socket("unix:/var/run/openvswitch/db.sock") == "/var/run/openvswitch/sdn-egress.sock"
    assert NodeBridges(db_target="unix:/run/x/db.sock").controller == "unix:/run/x/sdn-egress.sock"
    with pytest.raises(ValueError, match="OVSDB target 'tcp:127.0.0.1:6640' is not unix:PATH"):
        agent_socket("tcp:127.0.0.1:6640")


@pytest.mark.parametrize("text, want", [
    ("punix:/run/a.sock", listen.Listen(path="/run/a.sock")),
    ("tcp:127.0.0.1:6653", listen.Listen(host="127.0.0.1", port=6653)),
    ("tcp:[::1]:6653", listen.Listen(host="::1", port=6653)),
])
def test_parse(text, want):
    assert listen.parse(text) == want and str(listen.parse(text)) in (text, "tcp:::1:6653")


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1:6653", "expected punix:PATH"),
    ("punix:rel.sock", "punix: needs an absolute path"),
    ("tcp:127.0.0.1:99999", "expected tcp:HOST:PORT"),
    ("punix:/" + "x" * 120, "longer than 107 bytes"),
])
def test_parse_refuses_with_the_flag_named(text, message):
    with pytest.raises(listen.ListenError, match=message) as err:
        listen.parse(text)
    assert str(err.value).startswith(f"--listen {text}")


def test_prepare_removes_a_stale_socket_and_keeps_everything_else(tmp_path):
    path = str(tmp_path / "of.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # bound, never listening: what a killed agent leaves
    listen.prepare(listen.Listen(path=path))
    assert not os.path.exists(path)

    live = listen.UnixServer(path)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with pytest.raises(listen.ListenError, match="another process listens there already"):
            listen.prepare(listen.Listen(path=path))
        assert os.path.exists(path)
    finally:
        live.sock.close()
    os.unlink(path)
    (tmp_path / "of.sock").write_text("not a socket")
    with pytest.raises(listen.ListenError, match="exists and is not a socket; not removing it"):
        listen.prepare(listen.Listen(path=path))
    with pytest.raises(listen.ListenError, match="directory /nonexistent does not exist"):
        listen.prepare(listen.Listen(path="/nonexistent/of.sock"))


def test_another_user_cannot_connect(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (to run the client as another user)")
    directory = tempfile.mkdtemp(prefix="se-listen-", dir="/tmp")
    os.chmod(directory, 0o755)  # others may reach the directory: only the socket's mode stops them
    path = os.path.join(directory, "of.sock")
    server = listen.UnixServer(path)
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e: print(type(e).__name__)\n")

    def as_nobody() -> str:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                              "-c", probe, path], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr
    try:
        assert as_nobody() == "PermissionError"
        os.chmod(path, 0o666)  # the control: the same client reaches a socket open to all
        assert as_nobody() == "connected"
    finally:
        server.sock.close()
        shutil.rmtree(directory)


def test_a_process_of_another_user_that_gets_past_the_file_mode_gets_nothing(tmp_path, caplog):
    """A process of another uid with CAP_DAC_OVERRIDE can connect despite the
    socket's mode 0600; the agent drops it at once (SO_PEERCRED) and sends it
    nothing: not a HELLO, no flow request, nothing it could answer as br-int."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to run the client as another user with a capability)")
    import threading
    directory = tempfile.mkdtemp(prefix="se-listen-", dir="/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "of.sock")
    server = listen.UnixServer(path)
    threading.Thread(target=server, daemon=True).start()
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(5)\ns.connect(sys.argv[1])\n"
             "print(repr(s.recv(100)))\n")
    try:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "--inh-caps=+dac_override", "--ambient-caps=+dac_override", sys.executable, "-c",
                              probe, path], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "b''", out.stdout + out.stderr  # connected, then closed: nothing sent
        assert any("refused a connection" in r.message and "(uid 65534)" in r.message for r in caplog.records)
    finally:
        server.sock.close()
        shutil.rmtree(directory)
