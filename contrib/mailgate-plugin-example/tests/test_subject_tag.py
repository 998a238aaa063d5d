"""subject_tag's tests, written with the fixtures mailgate ships for plugin authors."""

from __future__ import annotations

import smtplib

import pytest
from mailgate_plugin_example import SubjectTag, SubjectTagSettings

from mailgate.config import ConfigError
from mailgate.testing import ConfDir, Sink, make_message, make_session, make_transaction

MESSAGE = "From: alice@example.com\nTo: bob@example.org\nSubject: Hello\n\nHi Bob\n"


def test_the_subject_is_tagged(mailgate_conf: ConfDir, mailgate_try) -> None:
    mailgate_conf.plugin("subject_tag", tag="[EXT]")
    result = mailgate_try(MESSAGE)
    assert result.outcome == "accepted"
    assert result.header("Subject") == "[EXT] Hello"
    assert result.results["subject_tag"].reason == "[EXT]"


def test_the_tag_follows_the_rules(mailgate_conf: ConfDir, mailgate_try) -> None:
    mailgate_conf.plugin(
        "subject_tag",
        tag=[{"if": 'sender.domain == "partner.example"', "then": "[PARTNER]"}, {"else": "[EXT]"}],
    )
    assert mailgate_try(MESSAGE, sender="p@partner.example").header("Subject") == "[PARTNER] Hello"
    assert mailgate_try(MESSAGE).header("Subject") == "[EXT] Hello"


def test_a_tagged_subject_is_not_tagged_twice(mailgate_conf: ConfDir, mailgate_try) -> None:
    mailgate_conf.plugin("subject_tag", tag="[EXT]")
    result = mailgate_try(MESSAGE.replace("Subject: Hello", "Subject: [EXT] Hello"))
    assert result.header("Subject") == "[EXT] Hello"
    assert result.changes("subject_tag") == []


def test_matching_recipients_are_refused_and_the_rest_go_on(
    mailgate_conf: ConfDir, mailgate_try
) -> None:
    mailgate_conf.plugin("subject_tag", refuse_recipients="^noreply@")
    result = mailgate_try(MESSAGE, recipients=["noreply@example.org", "bob@example.org"])
    assert result.accepted
    assert result.recipients == ["bob@example.org"]
    assert result.refused == {"noreply@example.org": "550 5.7.1 Recipient refused by policy"}
    (verdict,) = result.verdicts("subject_tag")
    assert verdict.code == 550


def test_a_bad_pattern_is_a_configuration_error(mailgate_conf: ConfDir) -> None:
    mailgate_conf.plugin("subject_tag", refuse_recipients="(")
    with pytest.raises(ConfigError) as refused:
        mailgate_conf.load()
    assert str(refused.value) == (
        f'{mailgate_conf.path}/10-subject_tag.toml: refuse_recipients: found "(" (str), '
        "expected a regular expression (missing ), unterminated subpattern at position 0)"
    )


def test_the_hook_alone(mailgate_conf: ConfDir) -> None:
    plugin = SubjectTag(SubjectTagSettings())
    tx = make_transaction(message=make_message("Subject: Hi\n\nbody\n"))
    plugin.on_message(make_session(), tx, tx.message)
    (change,) = tx.modifications
    assert change.value == "[EXTERNAL] Hi"


def test_end_to_end_through_mailgate_serve(
    mailgate_conf: ConfDir, mailgate_sink: Sink, mailgate_server
) -> None:
    mailgate_conf.plugin("subject_tag", tag="[EXT]")
    server = mailgate_server()
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE.replace("\n", "\r\n"))
    (arrived,) = mailgate_sink.wait_for(1)
    assert arrived.header("Subject") == "[EXT] Hello"
    assert arrived.recipients == ("bob@example.org",)
