"""C2SP tlog-cosignature (Ed25519, type 0x04): key IDs against a published witness key,
the signed message built independently of the code under test, tampering, unknown
witnesses and the quorum rule."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tongban.exchange.audit.cosignature import (
    CosignatureInvalid,
    Cosignatures,
    WitnessKey,
    WitnessKeyInvalid,
    WitnessQuorumNotMet,
    WitnessUnknown,
    cosign,
    open_cosignatures,
    require_quorum,
)
from tongban.exchange.audit.note import checkpoint_body, key_hash, sign_note, verifier_key

ORIGIN = "tongban.example/audit/test-node"
ROOT = hashlib.sha256(b"a root").digest()
BODY = checkpoint_body(ORIGIN, 12, ROOT)
# A witness's published cosignature/v1 verifier key (transparency-dev/formats,
# note_cosigv1_test.go, "native algEd25519CosignatureV1 verifier").
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def seeded(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"cosig key {n}".encode()).digest())


LOG_KEY = seeded(0)
W1_KEY, W2_KEY, W3_KEY = seeded(1), seeded(2), seeded(3)
W1 = WitnessKey("witness.example/w1", W1_KEY.public_key())
W2 = WitnessKey("witness.example/w2", W2_KEY.public_key())
W3 = WitnessKey("witness.example/w3", W3_KEY.public_key())
LOG_IDS = [(ORIGIN, key_hash(ORIGIN, LOG_KEY.public_key()))]


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def log_note() -> str:
    return sign_note(BODY, ORIGIN, LOG_KEY)


def test_a_published_witness_key_parses_and_round_trips() -> None:
    witness = WitnessKey.parse(REMORA_VKEY)
    assert witness.name == "remora.n621.de"
    assert witness.key_id == bytes.fromhex("da77ade7")
    assert witness.vkey == REMORA_VKEY


def test_the_signature_line_is_the_spec_s_structure_over_the_spec_s_message() -> None:
    line = cosign(BODY, W1, W1_KEY, 1679315147)
    em, name, encoded = line.rstrip("\n").split(" ")
    assert (em, name) == ("\u2014", "witness.example/w1")
    blob = base64.b64decode(encoded)
    kid = hashlib.sha256(b"witness.example/w1\n\x04" + raw(W1_KEY)).digest()[:4]
    assert blob[:4] == kid == W1.key_id
    assert int.from_bytes(blob[4:12], "big") == 1679315147
    # The message, spelled out as tlog-cosignature does.
    message = f"cosignature/v1\ntime 1679315147\n{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n"
    W1_KEY.public_key().verify(blob[12:], message.encode())
    # The witness key ID is not the same key's log (0x01) key ID.
    assert W1.key_id != key_hash(W1.name, W1_KEY.public_key())


def test_cosignatures_verify_and_unknown_ones_are_set_aside() -> None:
    note = log_note() + cosign(BODY, W1, W1_KEY, 100) + cosign(BODY, W2, W2_KEY, 101)
    found = open_cosignatures(note, [W1], log_keys=LOG_IDS)
    assert [(c.witness, c.timestamp) for c in found.valid] == [(W1, 100)]
    assert found.unknown == (W2.label,)
    both = open_cosignatures(note, [W1, W2], log_keys=LOG_IDS)
    assert {c.witness for c in both.valid} == {W1, W2}
    assert both.unknown == ()
    # Without the log's key named, its own line is just another unknown signer.
    assert f"{ORIGIN}+" in open_cosignatures(note, [W1]).unknown[0]


def test_one_witness_counts_once_and_its_latest_cosignature_is_kept() -> None:
    note = log_note() + cosign(BODY, W1, W1_KEY, 100) + cosign(BODY, W1, W1_KEY, 200)
    found = open_cosignatures(note, [W1], log_keys=LOG_IDS)
    assert [c.timestamp for c in found.valid] == [200]


@pytest.mark.parametrize("change", ["body", "timestamp", "truncated"])
def test_a_tampered_cosignature_by_a_known_witness_is_refused(change: str) -> None:
    line = cosign(BODY, W1, W1_KEY, 100)
    name, encoded = line.rstrip("\n").split(" ")[1:]
    blob = bytearray(base64.b64decode(encoded))
    note = log_note()
    if change == "body":
        note = sign_note(checkpoint_body(ORIGIN, 13, ROOT), ORIGIN, LOG_KEY)
    elif change == "timestamp":
        blob[11] ^= 1
    else:
        del blob[-1]
    tampered = f"\u2014 {name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(CosignatureInvalid) as refused:
        open_cosignatures(note + tampered, [W1], log_keys=LOG_IDS)
    assert refused.value.reason == "COSIGNATURE_INVALID"
    assert W1.label in refused.value.message


def test_the_quorum_rule_names_unknown_witnesses() -> None:
    note = log_note() + cosign(BODY, W1, W1_KEY, 1) + cosign(BODY, W3, W3_KEY, 1)
    trusted = open_cosignatures(note, [W1, W2], log_keys=LOG_IDS)
    require_quorum(trusted, 1, what="The checkpoint at size 12")
    with pytest.raises(WitnessUnknown) as unknown:
        require_quorum(trusted, 2, what="The checkpoint at size 12")
    assert unknown.value.reason == "WITNESS_UNKNOWN"
    assert W3.label in unknown.value.message
    assert "1 valid cosignature" in unknown.value.message
    only_known = open_cosignatures(note, [W1, W3], log_keys=LOG_IDS)
    with pytest.raises(WitnessQuorumNotMet) as short:
        require_quorum(only_known, 3, what="The checkpoint at size 12")
    assert short.value.reason == "WITNESS_QUORUM_NOT_MET"
    with pytest.raises(ValueError, match="at least 1"):
        require_quorum(Cosignatures((), ()), 0, what="x")


@pytest.mark.parametrize(
    "text",
    [
        verifier_key("witness.example/w1", W1_KEY.public_key()),  # a log key (0x01)
        REMORA_VKEY.replace("da77ade7", "da77ade8"),  # key ID of another key
        REMORA_VKEY.replace("+BOvN", "+BOvn"),  # another key under the same ID
        "remora.n621.de+da77ade7",
        "remora n621+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
        REMORA_VKEY[:-1] + "3",  # non-canonical base64
    ],
)
def test_malformed_witness_keys_are_refused(text: str) -> None:
    with pytest.raises(WitnessKeyInvalid) as refused:
        WitnessKey.parse(text)
    assert refused.value.reason == "WITNESS_KEY_INVALID"


def test_a_witness_cannot_sign_for_another() -> None:
    with pytest.raises(ValueError, match="not the key of witness"):
        cosign(BODY, W1, W2_KEY, 1)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        cosign(BODY, W1, W1_KEY, 2**63)
