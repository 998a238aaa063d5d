"""load_settings: TOML tables into settings dataclasses, with errors naming file and key."""

from __future__ import annotations

import enum
import pathlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from mailgate import sockaddr
from mailgate.config import (
    ConfigError,
    Dynamic,
    HostPort,
    Networks,
    fixed_dynamics,
    is_host_port,
    load_settings,
    split_host_port,
)
from mailgate.session import Address, Session, Transaction

SRC = "conf.d/mailgate.toml"


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass
class Inner:
    depth: int = 1


@dataclass
class Example:
    address: HostPort = "127.0.0.1:25"
    name: str = "x"
    count: int = 3
    ratio: float = 0.5
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    policy: Literal["reject", "normalize"] = "reject"
    mode: Mode = Mode.SAFE
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None
    path: pathlib.Path = pathlib.Path("/tmp")
    networks: Networks = field(default_factory=lambda: ["127.0.0.0/8"])
    threshold: Dynamic[float] = field(default=Dynamic.fixed(5.0))


@dataclass
class Required:
    host: str


def load(table: dict[str, object]) -> Example:
    return load_settings(Example, table, source=SRC, prefix="relay")


def test_defaults() -> None:
    s = load({})
    assert s == Example()
    assert s.threshold.value(Session(client_ip="192.0.2.1")) == 5.0


def test_values_are_converted() -> None:
    s = load(
        {
            "count": 7,
            "ratio": 2,
            "flag": True,
            "tags": ["a"],
            "policy": "normalize",
            "mode": "fast",
            "inner": {"depth": 4},
            "maybe": 9,
            "path": "/var/spool",
            "networks": ["10.0.0.0/8"],
        }
    )
    assert (s.count, s.ratio, s.flag, s.tags, s.policy) == (7, 2.0, True, ["a"], "normalize")
    assert s.mode is Mode.FAST and s.inner.depth == 4 and s.maybe == 9
    assert s.path == pathlib.Path("/var/spool") and isinstance(s.ratio, float)


def test_error_names_file_key_found_and_expected() -> None:
    with pytest.raises(ConfigError) as err:
        load({"address": 42})
    assert (
        str(err.value)
        == 'conf.d/mailgate.toml: relay.address: found 42 (int), expected "host:port"'
    )
    assert (err.value.file, err.value.key, err.value.found) == (SRC, "relay.address", 42)


@pytest.mark.parametrize(
    ("table", "key", "expected"),
    [
        ({"count": "3"}, "relay.count", "an integer"),
        ({"count": True}, "relay.count", "an integer"),
        ({"flag": "yes"}, "relay.flag", "true or false"),
        ({"tags": "a"}, "relay.tags", "a list of strings"),
        ({"tags": ["a", 1]}, "relay.tags[1]", "a string"),
        ({"policy": "drop"}, "relay.policy", 'one of "reject", "normalize"'),
        ({"mode": "slow"}, "relay.mode", 'one of "fast", "safe"'),
        ({"inner": {"depth": "x"}}, "relay.inner.depth", "an integer"),
        ({"maybe": "x"}, "relay.maybe", "an integer"),
        ({"networks": ["10.0.0.0/33"]}, "relay.networks", "a list of networks"),
        ({"address": "nohost"}, "relay.address", '"host:port"'),
    ],
)
def test_wrong_values(table: dict[str, object], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(table)
    assert err.value.key == key
    assert err.value.expected.startswith(expected)


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as err:
        load({"cuont": 3})
    assert err.value.key == "relay.cuont"
    assert 'did you mean "count"?' in str(err.value)


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="host: found nothing, expected a string"):
        load_settings(Required, {}, source=SRC)


def test_dynamic_rules() -> None:
    s = load(
        {
            "threshold": [
                {"if": 'ip_in(client.ip, ["192.0.2.0/24"])', "then": 10},
                {"if": 'sender.domain == "example.org"', "then": 3.0},
                {"else": 5},
            ]
        }
    )
    assert s.threshold.value(Session(client_ip="192.0.2.9")) == 10.0
    tx = Transaction(Address("a@example.org"))
    assert s.threshold.value(Session(client_ip="198.51.100.1"), tx) == 3.0
    assert s.threshold.value(Session(client_ip="198.51.100.1"), None) == 5.0


def test_dynamic_values_map_and_equality() -> None:
    s = load({"threshold": [{"if": "tls", "then": 10}, {"else": 5}]})
    assert s.threshold.values() == [10.0, 5.0]
    doubled = s.threshold.map(lambda v: v * 2)
    assert doubled.values() == [20.0, 10.0] and not doubled.is_fixed
    assert doubled.value(Session(client_ip="192.0.2.1", tls=True)) == 20.0
    assert Dynamic.fixed(3) == 3 and hash(Dynamic.fixed(3)) == hash(3)
    assert s.threshold != 5.0  # rules are not their else value


@dataclass
class WithDynamic:
    limit: Dynamic[int] = field(default=Dynamic.fixed(1))

    def __post_init__(self) -> None:
        fixed_dynamics(self)


def test_fixed_dynamics_wraps_plain_values_given_by_code() -> None:
    made = WithDynamic(limit=7)  # type: ignore[arg-type]
    assert isinstance(made.limit, Dynamic) and made.limit.is_fixed and made.limit.default == 7
    rules = Dynamic.fixed(9)
    assert WithDynamic(limit=rules).limit is rules


@pytest.mark.parametrize(
    ("rules", "key", "expected"),
    [
        ([{"if": "tls", "then": 1.0}], "relay.threshold[1]", "a final { else"),
        ([{"else": 1.0}, {"if": "tls", "then": 1.0}], "relay.threshold[0]", "{ else = ... } alone"),
        ([{"if": "tls +", "then": 1.0}, {"else": 1.0}], "relay.threshold[0].if", "a valid CEL"),
        ([{"if": "tls", "then": "x"}, {"else": 1.0}], "relay.threshold[0].then", "a number"),
        ([{"if": "tls", "then": 1.0, "x": 1}, {"else": 1.0}], "relay.threshold[0]", "{ if ="),
    ],
)
def test_bad_dynamic_rules(rules: list[dict[str, object]], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"threshold": rules})
    assert err.value.key == key
    assert err.value.expected.startswith(expected)


def test_bad_expression_error_has_position() -> None:
    with pytest.raises(ConfigError) as err:
        load({"threshold": [{"if": "client.ip ==", "then": 1.0}, {"else": 2.0}]})
    assert "at 1:13" in str(err.value)


def test_settings_read_host_port_with_the_one_parser() -> None:
    """`HostPort` settings, the listeners, the relay and metrics share `mailgate.sockaddr`'s."""
    assert (is_host_port, split_host_port) == (sockaddr.is_host_port, sockaddr.parse_host_port)
    assert split_host_port("[::1]:25") == ("::1", 25)
