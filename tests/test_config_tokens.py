"""HL7GW_API_TOKENS: ``name:token:role`` and ``token:role`` entries, and errors that never quote a token."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ApiToken, Role, legacy_token_name, load_settings, parse_tokens
from gateway.errors import ConfigError

NAME_CHARS = string.ascii_letters + string.digits + "._-"
names = st.text(NAME_CHARS, min_size=1, max_size=64).filter(lambda name: name[0].isalnum())
# A token: no ',' (the entry separator) and no surrounding blanks; it may contain ':'.
tokens = st.text(string.ascii_letters + string.digits + "-_.~+/=:!$", min_size=1, max_size=80)
roles = st.sampled_from(list(Role))


@given(names, tokens, roles)
def test_a_named_entry_keeps_its_name_token_and_role(name: str, token: str, role: Role) -> None:
    assert parse_tokens(f"{name}:{token}:{role.value}") == [ApiToken(name, token, role)]


@given(tokens.filter(lambda token: ":" not in token), roles)
def test_a_token_role_entry_is_named_by_a_digest_of_its_token(token: str, role: Role) -> None:
    (entry,) = parse_tokens(f"{token}:{role.value}")

    assert (entry.token, entry.role) == (token, role)
    assert entry.name == legacy_token_name(token)
    assert entry.name.startswith("token-") and len(entry.name) == len("token-") + 8
    assert set(entry.name.removeprefix("token-")) <= set("0123456789abcdef")


@given(st.lists(st.tuples(names, tokens, roles), min_size=1, max_size=5, unique_by=(lambda t: t[0], lambda t: t[1])))
def test_several_entries_in_order(entries: list[tuple[str, str, Role]]) -> None:
    value = " , ".join(f"{name}:{token}:{role.value}" for name, token, role in entries)

    assert parse_tokens(value) == [ApiToken(name, token, role) for name, token, role in entries]


def test_legacy_and_named_entries_mix() -> None:
    parsed = parse_tokens("legacytoken:reader,ci-bot:s3cr3t:operator,,")

    assert [(e.name, e.role) for e in parsed] == [(legacy_token_name("legacytoken"), "reader"), ("ci-bot", "operator")]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3cr3t", "entry 1 is not name:token:role or token:role"),
        (":reader", "entry 1 is not name:token:role"),
        ("ok:reader,s3cr3t:superuser", "entry 2: the role"),
        ("alice:s3cr3t", "entry 1: the role"),  # the forgotten role would be the token: not quoted
        ("bad name:s3cr3t:admin", "entry 1: a token name is"),
        ("-alice:s3cr3t:admin", "entry 1: a token name is"),
        (f"{'a' * 65}:s3cr3t:admin", "entry 1: a token name is"),
        ("alice::admin", "entry 1: the token is empty"),
        ("alice:s3cr3t:admin,alice:other:reader", "entries 1 and 2 have the same name 'alice'"),
        ("alice:s3cr3t:admin,bob:s3cr3t:reader", "entries 1 and 2 have the same token"),
        ("s3cr3t:admin,bob:s3cr3t:reader", "entries 1 and 2 have the same token"),
    ],
)
def test_bad_entries_are_named_by_position_without_the_token(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem) as caught:
        parse_tokens(value)
    assert "s3cr3t" not in str(caught.value)

    with pytest.raises(ConfigError, match="HL7GW_API_TOKENS") as caught_config:
        load_settings(api_tokens=value)
    assert "s3cr3t" not in str(caught_config.value)


def test_the_repr_of_an_entry_leaves_the_token_out() -> None:
    entry = ApiToken("alice", "s3cr3t", Role.admin)

    assert "s3cr3t" not in repr(entry)
    assert "alice" in repr(entry)
