"""``mailgate reports``: pending, send --now [--dry-run], list, show, summary."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mailgate.cli import main
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.plugins.reports import ReportingService
from mailgate.plugins.reports.incoming import parse_mail
from mailgate.store import StoreSettings
from tests.plugins.reports import samples
from tests.plugins.reports.test_service import DAY, SETTINGS, record


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    """A configuration with a store and the reports plugin, and evaluations of yesterday."""
    url = f"sqlite:///{tmp_path}/store/mailgate.db"
    (tmp_path / "mailgate.toml").write_text(f'[store]\nurl = "{url}"\n')
    (tmp_path / "95-reports.toml").write_text(
        'org_name = "Test"\ncontact = "postmaster@mx.test"\nsender = "reports@mx.test"\n'
        'submitter = "mx.test"\n'
    )

    async def fill() -> None:
        service = ReportingService(SETTINGS, StoreSettings(url=url), "node")
        await service.open()
        await service.store_received(parse_mail(samples.zipped("dmarc@a.example")), "x@r.test")
        await service.store_received(parse_mail(samples.broken_xml("dmarc@a.example")), "")
        yesterday = time.time() - DAY
        await record(
            service,
            yesterday,
            ("a.example", "192.0.2.1", True),
            ("a.example", "192.0.2.1", True),
            ("a.example", "192.0.2.9", False),
            ("b.example", "192.0.2.1", True),
        )
        await service.stop()

    asyncio.run(fill())
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["reports", *args])
    return code, capsys.readouterr().out


def test_pending_send_list_show_and_summary(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(configured)
    code, out = run(capsys, "-c", c, "pending")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["a.example", "b.example"]
    assert " 3  " in out.splitlines()[1]

    code, out = run(capsys, "-c", c, "send", "--now", "--dry-run", "--domain", "a.example")
    assert code == 0
    assert "a.example" in out and "dry run, 3 messages in 2 records" in out
    assert "<feedback>" in out and "<source_ip>192.0.2.9</source_ip>" in out

    code, out = run(capsys, "-c", c, "send", "--now")
    assert code == 0
    assert out.count(": sent,") == 2 and "mailto:dmarc@a.example: queued (queued as" in out
    code, out = run(capsys, "-c", c, "send", "--now")
    assert out.strip() == "nothing is due"

    code, out = run(capsys, "-c", c, "list", "--only", "sent")
    report_ids = [line.split()[0] for line in out.splitlines()[1:]]
    assert out.startswith("sent (2):") and len(report_ids) == 2
    code, out = run(capsys, "-c", c, "show", report_ids[0])
    assert code == 0 and "mailto:dmarc@" in out and "sent" in out
    assert run(capsys, "-c", c, "show", "nosuchid")[0] == 1

    code, out = run(capsys, "-c", c, "summary", "a.example")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "a.example: 3 messages from 2 sources, 66.7% pass"
    assert lines[2].split() == ["192.0.2.1", "2", "100.0%", "0.0%", "100.0%"]
    assert lines[3].split() == ["192.0.2.9", "1", "0.0%", "0.0%", "0.0%"]


def test_list_and_show_reports_received(
    configured: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(configured)
    code, out = run(capsys, "-c", c, "list", "--only", "received")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "received (2):"
    kinds = {line.split()[3]: line.split()[0] for line in lines[1:]}
    assert set(kinds) == {"aggregate", "malformed"}
    assert "12/15 passed" in out and "broken XML" in out
    code, out = run(capsys, "-c", c, "show", kinds["aggregate"])
    assert code == 0 and "google.test" in out and "203.0.113.7" in out
    code, out = run(capsys, "-c", c, "show", kinds["malformed"])
    assert code == 0 and "could not be read: broken XML" in out


def test_without_the_plugin_it_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reports", "-c", str(tmp_path), "pending"]) == 1
    assert "reports plugin is not enabled" in capsys.readouterr().err


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[3] / "conf.d" / "95-reports.toml"
    text = shipped.read_text()
    (tmp_path / "95-reports.toml").write_text(text)
    assert load_config(tmp_path).disabled == [("reports", str(tmp_path / "95-reports.toml"))]
    (tmp_path / "95-reports.toml").write_text(text.replace("enabled = false", "enabled = true"))
    assert [p.name for p in load_config(tmp_path).pipeline().plugins][-1] == "reports"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('org_name = "x"\ncontact = "p@x.example"\n', "sender"),
        ('org_name = "x"\ncontact = "nobody"\nsender = "r@x.example"\n', "contact"),
        (
            'org_name = "x"\ncontact = "p@x.example"\nsender = "r@x.example"\nmin_period = 5\n',
            "min_period",
        ),
        ('org_name = "x"\ncontact = "p@x.example"\nsender = "r@x.example"\nrua = 1\n', "rua"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "95-reports.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path).pipeline()
    assert str(info.value).startswith(f"{tmp_path / '95-reports.toml'}: {key}")
