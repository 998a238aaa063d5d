"""The Makefile's ``peers`` target leaves the machine's ``policy-rc.d`` as it found it.

``make peers`` writes a ``policy-rc.d`` that says ``exit 101`` so that apt starts none of the
daemons it installs, and must remove it afterwards (even when apt fails): left behind, it stops
every later package install on the machine from starting its service. One that was already
there (Docker's own) is not ours to touch. These tests run the target with a stub in place of
apt-get, a policy-rc.d path under ``tmp_path`` and a package that is never installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT_PACKAGE = "mailgate-test-no-such-package"

STUB = """#!/bin/sh
# apt-get for the test: log the call and what policy-rc.d said meanwhile, then exit as told.
printf '%s|%s\\n' "$*" "$(cat '{policy}' 2>/dev/null || echo absent)" >> '{log}'
case "$1" in
    update) exit {update_status} ;;
    *) exit {install_status} ;;
esac
"""


def make_peers(
    tmp_path: Path,
    *,
    packages: str = ABSENT_PACKAGE,
    update_status: int = 0,
    install_status: int = 0,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``make peers`` with the stub apt-get; return the result and the stub's log lines."""
    policy, log, stub = tmp_path / "policy-rc.d", tmp_path / "apt.log", tmp_path / "apt-get"
    stub.write_text(
        STUB.format(
            policy=policy, log=log, update_status=update_status, install_status=install_status
        )
    )
    stub.chmod(0o755)
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "peers",
            f"APT_GET={stub}",
            f"POLICY_RC_D={policy}",
            f"APT_PACKAGES={packages}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_policy_rc_d_is_written_for_apt_and_removed_after(tmp_path: Path) -> None:
    result, calls = make_peers(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [
        "update -q|#!/bin/sh",
        "exit 101",
        f"install -y -q --no-install-recommends {ABSENT_PACKAGE}|#!/bin/sh",
        "exit 101",
    ]
    assert not (tmp_path / "policy-rc.d").exists()


@pytest.mark.parametrize(
    ("update_status", "install_status", "expected_calls"),
    [(100, 0, 2), (0, 100, 4)],
    ids=["update-fails", "install-fails"],
)
def test_policy_rc_d_is_removed_when_apt_fails(
    tmp_path: Path, update_status: int, install_status: int, expected_calls: int
) -> None:
    result, calls = make_peers(tmp_path, update_status=update_status, install_status=install_status)
    assert result.returncode != 0
    assert "exit 101" in calls
    assert len(calls) == expected_calls
    assert not (tmp_path / "policy-rc.d").exists()


@pytest.mark.parametrize("apt_status", [0, 100], ids=["apt-succeeds", "apt-fails"])
def test_existing_policy_rc_d_is_left_untouched(tmp_path: Path, apt_status: int) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the administrator's own\nexit 0\n")
    policy.chmod(0o700)
    os.utime(policy, (1_000_000_000, 1_000_000_000))
    before = policy.stat()

    result, calls = make_peers(tmp_path, install_status=apt_status)

    assert (result.returncode == 0) == (apt_status == 0), result.stderr
    assert calls[1] == "# the administrator's own"
    after = policy.stat()
    assert policy.read_text() == "#!/bin/sh\n# the administrator's own\nexit 0\n"
    assert (after.st_mode, after.st_mtime, after.st_ino) == (
        before.st_mode,
        before.st_mtime,
        before.st_ino,
    )


def test_nothing_is_written_when_every_package_is_installed(tmp_path: Path) -> None:
    result, calls = make_peers(tmp_path, packages="dpkg")
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert not (tmp_path / "policy-rc.d").exists()
