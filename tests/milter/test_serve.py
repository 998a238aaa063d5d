"""`mailgate serve` with a ``type = "milter"`` listener in mailgate.toml, Postfix in front."""

from __future__ import annotations

from pathlib import Path

from mailgate.app import App
from tests.milter.gate import LoopThread, app_behind_postfix, swaks
from tests.peers.workdir import PeerDirs


def test_milter_listener_from_mailgate_toml_serves_postfix(peer_dirs: PeerDirs) -> None:
    conf = peer_dirs.new("conf")
    (conf / "mailgate.toml").write_text(
        '[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:0"\nname = "pf-milter"\n'
    )
    with app_behind_postfix(Path(conf), peer_dirs.new("postfix")) as (app, postfix, port):
        assert [type(x).__name__ for x in app.listeners] == ["MilterListener"]
        out = swaks(port)
        assert out.returncode == 0, out.stdout
        assert len(postfix.wait_for_delivered(1)) == 1
        log = postfix.maillog().splitlines()
        assert [line for line in log if "warning" in line and "milter" in line] == []


def test_milter_option_runs_a_milter_listener_instead_of_smtp() -> None:
    loop = LoopThread()
    app = App(None, milter="127.0.0.1:0", configure_logs=False)
    loop.run(app.start())
    try:
        assert [type(x).__name__ for x in app.listeners] == ["MilterListener"]
        assert app.ports[0] > 0
    finally:
        loop.run(app.stop())
        loop.close()


def test_milter_option_runs_beside_the_smtp_listener(peer_dirs: PeerDirs) -> None:
    conf = peer_dirs.new("conf")
    (conf / "mailgate.toml").write_text('[[listener]]\ntype = "smtp"\naddress = "127.0.0.1:0"\n')
    loop = LoopThread()
    app = App(Path(conf), milter="inet:127.0.0.1:0", configure_logs=False)
    loop.run(app.start())
    try:
        assert [type(x).__name__ for x in app.listeners] == ["SmtpListener", "MilterListener"]
        assert app.reload()  # the override survives a reload
        assert [lc.type for lc in app.config.listeners] == ["smtp", "milter"]
    finally:
        loop.run(app.stop())
        loop.close()
