"""The plugin contract, enforced at load: a plugin class that breaks it is a configuration error
naming the file, the plugin, the hook and the reason, never a traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.config import ConfigError, PluginError
from mailgate.contract import ContractError, check_plugin_class, hook_arguments
from mailgate.hookspecs import PluginClass
from mailgate.loader import installed_plugins, load_config
from mailgate.plugins.add_header import AddHeader
from tests.config.contract_plugins import install_contract_plugins


@pytest.fixture
def contract_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugins of `tests.config.contract_plugins`, installed (entry points) for this test."""
    site = install_contract_plugins(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("misspelled_hook", "hook on_recipient: no such hook (did you mean on_rcpt?)"),
        (
            "unknown_argument",
            "hook on_rcpt: unknown argument 'rcpt' "
            "(the hook offers session, transaction, recipient)",
        ),
        (
            "wrapper",
            "hook on_rcpt: hookimpl option wrapper is not supported "
            "(mailgate calls each hook once and awaits its answer)",
        ),
        (
            "hookwrapper",
            "hook on_mail: hookimpl option hookwrapper is not supported "
            "(mailgate calls each hook once and awaits its answer)",
        ),
    ],
)
def test_a_plugin_that_breaks_the_contract_is_a_configuration_error(
    contract_plugins: Path, conf: Path, plugin: str, message: str
) -> None:
    source = conf / f"20-{plugin}.toml"
    source.write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert str(err.value) == f"{source}: plugin {plugin}: {message}"
    assert isinstance(err.value, PluginError)
    assert (err.value.file, err.value.key, err.value.plugin) == (str(source), "plugin", plugin)


def test_a_broken_plugin_can_be_switched_off(contract_plugins: Path, conf: Path) -> None:
    (conf / "20-misspelled_hook.toml").write_text("enabled = false\n")
    (conf / "30-good_contract.toml").write_text("")
    config = load_config(conf)
    assert config.disabled == [("misspelled_hook", str(conf / "20-misspelled_hook.toml"))]
    assert [p.name for p in config.pipeline().plugins][-1] == "good_contract"


def test_what_pluggy_still_refuses_names_the_file_and_plugin(
    contract_plugins: Path, conf: Path
) -> None:
    source = conf / "20-sneaky.toml"
    source.write_text("")
    config = load_config(conf)  # the class is fine; its instance adds a hook
    with pytest.raises(PluginError) as err:
        config.pipeline()
    text = str(err.value)
    assert text.startswith(f"{source}: plugin sneaky: refused by pluggy: ")
    assert "rcpt" in text


def test_a_plugin_that_cannot_start_is_a_configuration_error(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_start(self: AddHeader, settings: object = None) -> None:
        raise RuntimeError("no licence file")

    monkeypatch.setattr(AddHeader, "__init__", cannot_start)
    source = conf / "20-add_header.toml"
    source.write_text("")
    config = load_config(conf)
    with pytest.raises(PluginError) as err:
        config.pipeline()
    expected = f"{source}: plugin add_header: __init__: raised RuntimeError: no licence file"
    assert str(err.value) == expected


def test_every_installed_plugin_keeps_the_contract() -> None:
    for name, entry_point in installed_plugins().items():
        try:
            check_plugin_class(entry_point.load())
        except ContractError as exc:
            pytest.fail(f"{name}: {exc}")


def test_hooks_are_listed_in_smtp_order_with_their_arguments() -> None:
    hooks = hook_arguments()
    assert list(hooks)[:3] == ["on_connect", "on_helo", "authenticate"]
    assert list(hooks)[-1] == "on_disconnect"
    assert hooks["on_rcpt"] == ("session", "transaction", "recipient")


# -- the contract, class by class ---------------------------------------------------------------


@dataclasses.dataclass
class TagSettings:
    tag: str = "x"


class Keeps:
    """Uses every option the contract allows."""

    Settings = TagSettings
    reads = frozenset({"headers"})
    concurrent = True

    def __init__(self, settings: TagSettings, *, dns: object = None) -> None:
        self.settings = settings

    @hookimpl
    async def on_message(self, transaction: Transaction) -> None:
        """A scanner."""

    @hookimpl(specname="on_rcpt")
    def check_recipient(self, recipient: Address) -> Verdict | None:
        """Named after what it does; `specname` says which hook it is."""
        return None

    @hookimpl(optionalhook=True)
    def on_future_stage(self, session: Session) -> None:
        """A hook a later mailgate may have: never called by this one."""

    @staticmethod
    @hookimpl
    def on_helo(name: str) -> None:
        """A static method needs no `self`."""

    def helper(self, anything: int) -> None:
        """Not a hook: anything goes."""


def test_a_class_that_keeps_the_contract_passes() -> None:
    check_plugin_class(Keeps)


class TryFirst:
    @hookimpl(tryfirst=True)
    def on_rcpt(self) -> None: ...


class WithDefault:
    @hookimpl
    def on_rcpt(self, recipient: Address | None = None) -> None: ...


class StarArgs:
    @hookimpl
    def on_rcpt(self, **kwargs: object) -> None: ...


class KeywordOnly:
    @hookimpl
    def on_rcpt(self, *, recipient: Address) -> None: ...


class NotMarked:
    def on_rcpt(self, recipient: Address) -> None: ...


class Faraway:
    @hookimpl
    def on_quit(self) -> None: ...


class SettingsNotADataclass:
    class Settings:
        tag = "x"


class ConcurrentString:
    concurrent = "yes"


class AnswersNotAMethod:
    answers = False


class NoSettingsArgument:
    Settings = TagSettings

    def __init__(self) -> None: ...


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (TryFirst, "hook on_rcpt: hookimpl option tryfirst is not supported (plugins run in"),
        (WithDefault, "hook on_rcpt: argument 'recipient' has a default value, so it would never"),
        (StarArgs, "hook on_rcpt: argument '**kwargs' is not supported: name the ones you use"),
        (KeywordOnly, "hook on_rcpt: argument 'recipient' is keyword-only"),
        (NotMarked, "hook on_rcpt: not marked @hookimpl, so it would never be called"),
        (Faraway, "hook on_quit: no such hook (the hooks are on_connect, on_helo,"),
        (SettingsNotADataclass, "Settings: must be a dataclass (or None), not <class"),
        (ConcurrentString, "concurrent: must be True or False, not 'yes'"),
        (AnswersNotAMethod, "answers: must be a method answers(hook, ingress), not False"),
        (NoSettingsArgument, "__init__: cannot be called with its Settings as its one argument"),
    ],
)
def test_each_way_of_breaking_the_contract_is_named(cls: type, message: str) -> None:
    with pytest.raises(ContractError) as err:
        check_plugin_class(cls)
    assert str(err.value).startswith(message)


def test_every_attribute_of_the_protocol_is_checked() -> None:
    bad = {"Settings": int, "reads": "body", "concurrent": 1}
    assert set(PluginClass.__annotations__) == set(bad)
    for attribute, value in bad.items():
        cls = type("Bad", (), {attribute: value})
        with pytest.raises(ContractError, match=attribute):
            check_plugin_class(cls)
