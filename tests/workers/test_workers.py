"""``workers = 2``: a master and two worker processes, real processes and a real smtp-sink.

Each test starts ``mailgate serve`` as an operator would, then kills, signals and scrapes it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from mailgate.policy.settings import PolicyListenerSettings
from tests.peers.smtp_sink import SmtpSink
from tests.workers.helpers import (
    connect,
    free_port,
    scrape,
    server_side_inode,
    serving,
    socket_inodes,
    write_config,
)


def read_reply(sock: socket.socket) -> bytes:
    """One whole (possibly multi-line) SMTP reply."""
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return tmp_path / "conf"


def test_two_workers_share_the_port_and_name_themselves_in_the_log(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    with serving(conf, tmp_path / "log", port) as server:
        pids = server.worker_pids()
        assert sorted(pids) == [1, 2]
        for number, pid in pids.items():
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            assert title == f"mailgate worker {number} --config {conf}".encode()
        assert server.send(30) == [250] * 30
        smtp_sink.wait_for_messages(30)
        served = server.served_by(count=30)
        assert len(served) == 30
        assert set(served) == {1, 2}, served
        workers = {e.get("worker") for e in server.events()}
        assert workers == {"master", 1, 2}


def test_a_killed_worker_is_started_again_and_the_port_stays_served(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    with serving(conf, tmp_path / "log", port) as server:
        old = server.worker_pids()
        mark = len(server.events())
        os.kill(old[1], signal.SIGKILL)
        died = server.master_event("worker died; starting it again", mark)
        assert died["number"] == 1 and died["status"] == -signal.SIGKILL
        again = server.master_event("worker started again", mark)
        assert again["number"] == 1 and again["pid"] != old[1]
        assert server.worker_pids() == {1: again["pid"], 2: old[2]}
        mark = len(server.events())
        assert server.send(20) == [250] * 20
        assert set(server.served_by(mark, count=20)) == {1, 2}


def test_sighup_with_a_good_configuration_swaps_the_chain_in_every_worker(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    with serving(conf, tmp_path / "log", port) as server:
        (conf / "20-add_header.toml").write_text('name = "X-Reloaded"\nvalue = "yes"\n')
        mark = len(server.events())
        server.signal(signal.SIGHUP)
        done = server.master_event("configuration reloaded in every worker", mark)
        assert done["workers"] == [1, 2]
        reloaded = {
            e["worker"] for e in server.events()[mark:] if e["event"] == "configuration reloaded"
        }
        assert reloaded == {1, 2}
        mark = len(server.events())
        assert server.send(30) == [250] * 30
        messages = smtp_sink.wait_for_messages(30)
        assert all(m.header("X-Reloaded") == "yes" for m in messages)
        assert set(server.served_by(mark, count=20)) == {1, 2}


def test_sighup_with_a_bad_configuration_swaps_none_and_the_master_says_why(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    (conf / "20-add_header.toml").write_text('name = "X-Old"\n')
    with serving(conf, tmp_path / "log", port) as server:
        (conf / "20-add_header.toml").write_text('name = "X-New"\nno_such_key = 1\n')
        mark = len(server.events())
        server.signal(signal.SIGHUP)
        refused = server.master_event(
            "configuration refused, keeping the old one in every worker", mark
        )
        assert "20-add_header.toml" in refused["error"]
        assert "no_such_key" in refused["error"]
        assert server.send(20) == [250] * 20
        messages = smtp_sink.wait_for_messages(20)
        assert all(m.header("X-Old") and m.header("X-New") is None for m in messages)
        assert set(server.served_by(mark, count=20)) == {1, 2}
        assert not [
            e
            for e in server.events()[mark:]
            if "reload" in e["event"] and e.get("worker") != "master"
        ]


def test_sigterm_lets_a_session_in_flight_finish(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    with serving(conf, tmp_path / "log", port) as server:
        sock = connect(port)
        assert read_reply(sock).startswith(b"220")
        for command, code in (
            (b"EHLO client.test", b"250"),
            (b"MAIL FROM:<a@x.test>", b"250"),
            (b"RCPT TO:<b@y.test>", b"250"),
            (b"DATA", b"354"),
        ):
            sock.sendall(command + b"\r\n")
            assert read_reply(sock).startswith(code)
        sock.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
        mark = len(server.events())
        server.signal(signal.SIGTERM)
        server.wait_for(lambda e: e["event"] == "draining" and e["worker"] == 1, mark)
        server.wait_for(lambda e: e["event"] == "draining" and e["worker"] == 2, mark)
        time.sleep(0.5)
        sock.sendall(b"second half\r\n.\r\n")
        assert read_reply(sock).startswith(b"250")
        sock.sendall(b"QUIT\r\n")
        assert read_reply(sock).startswith(b"221")
        sock.close()
        assert server.proc is not None
        assert server.proc.wait(timeout=30) == 0
        [message] = smtp_sink.wait_for_messages(1)
        assert message.header("Subject") == "in flight"
        server.master_event("stopped", mark)


def test_metrics_are_summed_over_the_workers(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port, metrics = free_port(), free_port()
    write_config(conf, port, smtp_sink.address, f'[metrics]\naddress = "127.0.0.1:{metrics}"\n')
    with serving(conf, tmp_path / "log", port) as server:
        assert server.send(30) == [250] * 30
        assert set(server.served_by(count=30)) == {1, 2}
        text = scrape(metrics)
        accepted = re.search(
            r'^mailgate_messages_total\{ingress="smtp",listener="smtp",outcome="accepted"\} (\S+)$',
            text,
            re.M,
        )
        assert accepted is not None, text
        assert float(accepted.group(1)) == 30
        assert re.search(r"^mailgate_sessions_total\{.*\} 30\.0$", text, re.M), text
        assert re.search(r"^mailgate_build_info\{.*\} 1\.0$", text, re.M), text
        assert re.search(r"^mailgate_message_size_bytes_count 30\.0$", text, re.M), text
        # Reloads are counted once per reload, by the master that checks them first.
        (conf / "20-add_header.toml").write_text("no_such_key = 1\n")
        mark = len(server.events())
        server.signal(signal.SIGHUP)
        server.master_event("configuration refused, keeping the old one in every worker", mark)
        (conf / "20-add_header.toml").write_text('name = "X-Good"\n')
        mark = len(server.events())
        server.signal(signal.SIGHUP)
        server.master_event("configuration reloaded in every worker", mark)
        text = scrape(metrics)
        assert re.search(r'^mailgate_config_reloads_total\{result="ok"\} 1\.0$', text, re.M), text
        refused = r'^mailgate_config_reloads_total\{result="refused"\} 1\.0$'
        assert re.search(refused, text, re.M), text


def test_a_connection_limit_holds_in_total_across_both_workers(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    write_config(conf, port, smtp_sink.address)
    (conf / "15-limits.toml").write_text(
        '[[limit]]\nwhat = "connections"\nkey = "client.ip"\nwindow = 600\nmax = 6\n'
    )
    with serving(conf, tmp_path / "log", port) as server:
        greetings = []
        for _ in range(16):
            sock = connect(port)
            greetings.append(read_reply(sock)[:3])
            if greetings[-1] == b"220":
                sock.sendall(b"QUIT\r\n")
                read_reply(sock)
            sock.close()
        assert greetings.count(b"220") == 6, greetings
        assert greetings.count(b"421") == 10, greetings
        sessions = [
            e["worker"] for e in server.events() if e["event"] in ("session end", "limit reached")
        ]
        assert set(sessions) == {1, 2}, sessions


def test_policy_listeners_on_tcp_and_unix_are_served_by_both_workers(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp, policy = free_port(), free_port()
    unix = tmp_path / "policy.sock"
    write_config(
        conf,
        smtp,
        smtp_sink.address,
        f'[[listener]]\ntype = "policy"\naddress = "inet:127.0.0.1:{policy}"\n'
        f'[[listener]]\ntype = "policy"\nname = "policy-unix"\naddress = "unix:{unix}"\n',
    )
    request = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\n"
    request += b"sender=a@x.test\nrecipient=b@y.test\n\n"
    with serving(conf, tmp_path / "log", smtp) as server:
        pids = server.worker_pids()
        clients = [connect(policy) for _ in range(16)]
        for client in clients:
            client.sendall(request)
            assert client.recv(4096).startswith(b"action=")
        owners = set()
        for client in clients:
            inode = server_side_inode(client)
            owners |= {n for n, pid in pids.items() if inode in socket_inodes(pid)}
        assert owners == {1, 2}
        for client in clients:
            client.close()
        for _ in range(8):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(15)
                client.connect(str(unix))
                client.sendall(request)
                assert client.recv(4096).startswith(b"action=")
        assert unix.stat().st_mode & 0o777 == PolicyListenerSettings().socket_mode
    assert not unix.exists()


def test_a_milter_listener_is_served_by_both_workers(
    conf: Path, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp, milter = free_port(), free_port()
    write_config(
        conf,
        smtp,
        smtp_sink.address,
        f'[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:{milter}"\n',
    )
    # SMFIC_OPTNEG: protocol version 6, every action, no protocol steps left out.
    optneg = b"O" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + bytes(4)
    frame = len(optneg).to_bytes(4, "big") + optneg
    with serving(conf, tmp_path / "log", smtp) as server:
        pids = server.worker_pids()
        clients = [connect(milter) for _ in range(16)]
        owners = set()
        for client in clients:
            client.sendall(frame)
            reply = client.recv(4096)
            assert reply[4:5] == b"O", reply
            inode = server_side_inode(client)
            owners |= {n for n, pid in pids.items() if inode in socket_inodes(pid)}
        assert owners == {1, 2}
        for client in clients:
            client.close()
