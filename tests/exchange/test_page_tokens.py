"""Page tokens: only the exact token a node issued opens, for the listing it was issued for."""

from __future__ import annotations

import base64

import pytest

from tongban.exchange.pagetokens import PageTokenInvalid, PageTokens, peek_unverified

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def altered_token(token: str, at: int | None = None) -> str:
    """``token`` with one character (the middle one by default) changed to another."""
    at = len(token) // 2 if at is None else at
    return token[:at] + ("B" if token[at] == "A" else "A") + token[at + 1 :]


@pytest.mark.parametrize("position", ["samr.a", "0", "12345", "食品经营许可", "x" * 40])
def test_every_one_character_change_is_refused(position: str) -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.issue("datasets", position)
    assert tokens.open("datasets", token) == position
    for at in range(len(token)):
        for char in _ALPHABET:
            if char == token[at]:
                continue
            changed = token[:at] + char + token[at + 1 :]
            with pytest.raises(PageTokenInvalid):
                tokens.open("datasets", changed)


def test_a_spelling_with_stray_bits_is_not_the_token() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.issue("datasets", "samr.a")
    data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(data) % 3 != 0, "the test needs a token whose last character has spare bits"
    last = _ALPHABET.index(token[-1])
    stray = token[:-1] + _ALPHABET[last | 1]
    assert stray != token
    assert base64.urlsafe_b64decode(stray + "=" * (-len(stray) % 4)) == data
    with pytest.raises(PageTokenInvalid):
        tokens.open("datasets", stray)


def test_tokens_belong_to_one_listing_and_one_key() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.issue("datasets", "samr.a")
    with pytest.raises(PageTokenInvalid):
        tokens.open("items", token)
    with pytest.raises(PageTokenInvalid):
        PageTokens(b"j" * 32).open("datasets", token)
    assert tokens.open("datasets", "") is None
    with pytest.raises(PageTokenInvalid) as error:
        tokens.open("items", "!!!", field="cursor")
    assert error.value.metadata == {"field": "cursor"}
    assert (
        PageTokens.from_log_key(b"l" * 32).open(
            "datasets", PageTokens.from_log_key(b"l" * 32).issue("datasets", "7")
        )
        == "7"
    )


def test_peek_reads_the_position_without_the_key() -> None:
    token = PageTokens.ephemeral().issue("datasets", "samr.a")
    assert peek_unverified(token) == "samr.a"
    assert peek_unverified("") is None
    with pytest.raises(PageTokenInvalid):
        peek_unverified("!!!")
