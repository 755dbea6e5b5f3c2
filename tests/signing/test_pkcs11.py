"""Keys in a PKCS#11 token (SoftHSM2): made and imported non-extractable, signing through
the ``Signer`` seam, and a clear error for each way the token can be out of reach."""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, ObjectClass

from tongban.signing import (
    TokenKeyExists,
    TokenKeyMissing,
    TokenPinWrong,
    TokenUnavailable,
    generate_private_key,
    public_key_fingerprint,
    sign_jws,
    verify_jws,
)
from tongban.signing.pkcs11 import Token, TokenConfig
from tongban.signing.softhsm import SOFTHSM_MODULE, SoftHsm


def _verify_es256(public: object, signature: bytes, data: bytes) -> None:
    assert isinstance(public, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_generated_keys_sign_and_are_listed(softhsm: SoftHsm) -> None:
    with Token(softhsm.new_token()) as token:
        made = token.generate("seal-samr")
        edwards = token.generate("checkpoint", "Ed25519")
        signer = token.signer("seal-samr")
        assert signer.algorithm == "ES256"
        data = b"a licence's signing input" * 40
        signature = signer.sign(data)
        _verify_es256(made.public_key, signature, data)
        assert signer.public_key() == made.public_key
        ed_signer = token.signer("checkpoint")
        assert ed_signer.algorithm == "EdDSA"
        assert isinstance(edwards.public_key, ed25519.Ed25519PublicKey)
        edwards.public_key.verify(ed_signer.sign(data), data)
        # The JOSE layer takes a token signer like any other.
        jws = sign_jws(b'{"ok":true}', signer, headers={"kid": "seal-samr"})
        assert verify_jws(jws, made.public_key).payload == b'{"ok":true}'
        listed = {key.label: key for key in token.key_pairs()}
        assert set(listed) == {"seal-samr", "checkpoint"}
        assert listed["checkpoint"].algorithm == "Ed25519"
        assert listed["seal-samr"].fingerprint == public_key_fingerprint(made.public_key).hex()


def test_imported_key_signs_as_the_file_key_did(softhsm: SoftHsm) -> None:
    key = generate_private_key("P-256")
    ed_key = generate_private_key("Ed25519")
    with Token(softhsm.new_token()) as token:
        token.import_key("node", key)
        token.import_key("checkpoint", ed_key)
        data = b"node answer"
        _verify_es256(key.public_key(), token.signer("node").sign(data), data)
        assert isinstance(ed_key, ed25519.Ed25519PrivateKey)
        ed_key.public_key().verify(token.signer("checkpoint").sign(data), data)
        with pytest.raises(TokenKeyExists):
            token.import_key("node", key)


def test_no_private_key_leaves_the_token(softhsm: SoftHsm) -> None:
    config = softhsm.new_token()
    with Token(config) as token:
        token.generate("made")
        token.import_key("imported", generate_private_key("P-256"))
    # Look as an outsider would, with python-pkcs11 directly.
    lib = pkcs11.lib(str(SOFTHSM_MODULE))
    with lib.get_token(token_label=config.token_label).open(user_pin=config.pin) as session:
        for label in ("made", "imported"):
            private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            assert private[Attribute.SENSITIVE] is True
            assert private[Attribute.EXTRACTABLE] is False
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                private[Attribute.VALUE]  # reading it is the attack
            # Nor may it be made extractable again (PKCS#11: EXTRACTABLE only goes false).
            with pytest.raises(pkcs11.exceptions.PKCS11Error):
                private[Attribute.EXTRACTABLE] = True


def test_each_way_the_token_is_out_of_reach(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = softhsm.new_token(pin="246810")
    with pytest.raises(TokenPinWrong, match=r"PIN .* is wrong"):
        Token(TokenConfig(config.module, config.token_label, "000000"))
    with pytest.raises(TokenUnavailable, match="does not exist"):
        Token(TokenConfig(tmp_path / "missing.so", config.token_label, config.pin))
    not_a_module = tmp_path / "not-a-module.so"
    not_a_module.write_bytes(b"\x7fELF garbage")
    with pytest.raises(TokenUnavailable, match="could not be loaded"):
        Token(TokenConfig(not_a_module, config.token_label, config.pin))
    with pytest.raises(TokenUnavailable, match="No token labelled"):
        Token(TokenConfig(config.module, "no-such-token", config.pin))
    with Token(config) as token:
        with pytest.raises(TokenKeyMissing, match="no private key labelled 'absent'"):
            token.signer("absent")
        token.generate("once")
        with pytest.raises(TokenKeyExists):
            token.generate("once")
        token.generate("twice")
        with pytest.raises(TokenKeyExists):
            token.relabel("once", "twice")
        with pytest.raises(TokenKeyMissing):
            token.relabel("absent", "anything")
        public = token.signer("once").public_key()
        token.relabel("once", "renamed")
        assert token.signer("renamed").public_key() == public
        with pytest.raises(TokenKeyMissing):
            token.signer("once")
        with pytest.raises(ValueError, match="label"):
            token.generate("")


def test_configuration_from_the_environment(tmp_path: Path) -> None:
    assert TokenConfig.from_environment({}) is None
    module = {"TONGBAN_PKCS11_MODULE": str(SOFTHSM_MODULE)}
    with pytest.raises(TokenUnavailable, match="TONGBAN_PKCS11_TOKEN"):
        TokenConfig.from_environment(module)
    with pytest.raises(TokenUnavailable, match="No PIN"):
        TokenConfig.from_environment({**module, "TONGBAN_PKCS11_TOKEN": "t"})
    with pytest.raises(TokenUnavailable, match="could not be read"):
        TokenConfig.from_environment(
            {**module, "TONGBAN_PKCS11_TOKEN": "t", "TONGBAN_PKCS11_PIN_FILE": str(tmp_path / "x")}
        )
    (tmp_path / "pin").write_text("4321\n")
    config = TokenConfig.from_environment(
        {**module, "TONGBAN_PKCS11_TOKEN": "t", "TONGBAN_PKCS11_PIN_FILE": str(tmp_path / "pin")}
    )
    assert config == TokenConfig(SOFTHSM_MODULE, "t", "4321")
    assert "4321" not in repr(config)
