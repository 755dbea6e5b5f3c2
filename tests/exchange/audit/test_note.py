"""C2SP signed notes and checkpoints: the reference implementation's published key and
note, round trips, tampering, unknown signers, malformed keys and notes, and limits."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tongban.exchange.audit.merkle import EMPTY_ROOT
from tongban.exchange.audit.note import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteInvalid,
    checkpoint_body,
    key_hash,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_note,
    verifier_key,
)

EM_DASH = "\u2014"

# The example keys and note of golang.org/x/mod/sumdb/note, note_test.go (TestNewVerifier,
# TestSign, TestOpen). The signer key's payload is 0x01 followed by the Ed25519 seed.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM_DASH} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM_DASH} EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# The example checkpoint body of c2sp.org/tlog-checkpoint.
SPEC_CHECKPOINT_BODY = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_CHECKPOINT_SIG = (
    f"{EM_DASH} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4"
    "URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)
# The example note text of c2sp.org/signed-note: it has a blank line of its own.
SPEC_NOTE_TEXT = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed \u00e8 subito sera.\n"
)

ORIGIN = "tongban.example/audit/test-node"
ROOT = hashlib.sha256(b"a root").digest()
P = 2**255 - 19


def seeded_key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"test key {n}".encode()).digest())


LOG_KEY = seeded_key(1)
WITNESS_KEY = seeded_key(2)


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def peter_private_key() -> Ed25519PrivateKey:
    payload = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert payload[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(payload[1:])


def signature_line(note: str) -> str:
    return note[note.rindex("\n\n") + 2 :]


def vkey_for(name: str, key_bytes: bytes, alg: int = 0x01) -> str:
    """A verifier key text with a correct key ID, computed independently of note.py."""
    kid = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + key_bytes).digest()[:4]
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([alg]) + key_bytes).decode()}"


def signed_checkpoint(size: int = 12, extensions: tuple[str, ...] = ()) -> str:
    return sign_note(checkpoint_body(ORIGIN, size, ROOT, extensions), ORIGIN, LOG_KEY)


# --- the reference implementation's vectors -------------------------------------------------


def test_go_verifier_key_round_trips() -> None:
    name, key = parse_verifier_key(PETER_VKEY)
    assert name == "PeterNeumann"
    assert key_hash(name, key) == bytes.fromhex("c74f20a3")
    assert verifier_key(name, key) == PETER_VKEY
    assert raw(peter_private_key().public_key()) == raw(key)


def test_sign_note_reproduces_the_go_signature_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, "PeterNeumann", peter_private_key()) == f"{GO_TEXT}\n{PETER_SIG}"


def test_open_go_note_with_known_and_unknown_signers() -> None:
    note = f"{GO_TEXT}\n{PETER_SIG}{ENOCH_SIG}"
    peter = parse_verifier_key(PETER_VKEY)
    enoch = parse_verifier_key(ENOCH_VKEY)
    assert open_note(note, [peter]) == GO_TEXT
    assert open_note(note, [enoch]) == GO_TEXT
    assert open_note(note, dict([peter, enoch])) == GO_TEXT
    # Repeated lines, and a corrupted line by a key we do not know, are fine.
    corrupted_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    repeated = f"{GO_TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{corrupted_enoch}"
    assert open_note(repeated, [peter]) == GO_TEXT
    with pytest.raises(NoteInvalid):
        open_note(repeated, [enoch])  # now the corrupted line is by a known key


def test_go_malformed_notes_are_refused() -> None:
    peter = [parse_verifier_key(PETER_VKEY)]
    bad = [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        "\ud800" + GO_TEXT + "\n" + PETER_SIG,  # not encodable: Python's stand-in for \xff
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:],  # invalid signature
        GO_TEXT + "\n" + PETER_SIG * 101,  # too many signatures
        GO_TEXT + "\n" + ENOCH_SIG,  # no signature by a known key
    ]
    for note in bad:
        with pytest.raises(NoteInvalid) as info:
            open_note(note, peter)
        assert info.value.reason == "NOTE_INVALID"
        assert info.value.status == "INVALID_ARGUMENT"


def test_go_verifier_key_manglings_are_refused() -> None:
    # Every proper substring, and every single character bumped by one (note_test.go).
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteInvalid):
                    parse_verifier_key(PETER_VKEY[i:j])
    for i, c in enumerate(PETER_VKEY):
        with pytest.raises(NoteInvalid):
            parse_verifier_key(PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1 :])
    bad = [
        # wrong key length, with adjusted key hash
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        # unknown algorithm, with adjusted key hash
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]
    for text in bad:
        with pytest.raises(NoteInvalid):
            parse_verifier_key(text)


# --- the C2SP examples ----------------------------------------------------------------------


def test_checkpoint_body_reproduces_the_spec_example() -> None:
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint_body("example.com/behind-the-sofa", 20852163, root) == SPEC_CHECKPOINT_BODY


def test_spec_checkpoint_is_refused_without_its_key() -> None:
    # The spec does not publish the example's key: a verifier of the same name but another
    # key does not match its key ID, so the line is ignored and nothing known signed it.
    note = SPEC_CHECKPOINT_BODY + "\n" + SPEC_CHECKPOINT_SIG
    with pytest.raises(NoteInvalid):
        open_checkpoint(
            note,
            {"example.com/behind-the-sofa": LOG_KEY.public_key()},
            origin="example.com/behind-the-sofa",
        )
    cosigned = note + signature_line(sign_note(SPEC_CHECKPOINT_BODY, "witness", WITNESS_KEY))
    checkpoint = open_checkpoint(
        cosigned, {"witness": WITNESS_KEY.public_key()}, origin="example.com/behind-the-sofa"
    )
    assert checkpoint.size == 20852163


def test_note_text_may_hold_blank_lines() -> None:
    note = sign_note(SPEC_NOTE_TEXT, "quasimodo.example/salvatore", LOG_KEY)
    assert open_note(note, {"quasimodo.example/salvatore": LOG_KEY.public_key()}) == SPEC_NOTE_TEXT


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip() -> None:
    note = signed_checkpoint()
    assert note.startswith(f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\n{EM_DASH} ")
    checkpoint = open_checkpoint(note, {ORIGIN: LOG_KEY.public_key()}, origin=ORIGIN)
    assert checkpoint == Checkpoint(origin=ORIGIN, size=12, root=ROOT, extensions=(), note=note)


def test_checkpoint_with_extensions_and_empty_tree() -> None:
    note = sign_note(checkpoint_body(ORIGIN, 0, EMPTY_ROOT, ["ext one", "x"]), ORIGIN, LOG_KEY)
    checkpoint = open_checkpoint(note, [(ORIGIN, LOG_KEY.public_key())], origin=ORIGIN)
    assert (checkpoint.size, checkpoint.root) == (0, EMPTY_ROOT)
    assert checkpoint.extensions == ("ext one", "x")


def test_largest_tree_size() -> None:
    note = signed_checkpoint(size=2**64 - 1)
    assert open_checkpoint(note, {ORIGIN: LOG_KEY.public_key()}, origin=ORIGIN).size == 2**64 - 1


def test_tampering_with_any_character_fails() -> None:
    note = signed_checkpoint(extensions=("ext",))
    verifiers = {ORIGIN: LOG_KEY.public_key()}
    for i, c in enumerate(note):
        replaced = note[:i] + ("A" if c != "A" else "B") + note[i + 1 :]
        with pytest.raises(NoteInvalid):
            open_checkpoint(replaced, verifiers, origin=ORIGIN)
        with pytest.raises(NoteInvalid):
            open_checkpoint(note[:i] + note[i + 1 :], verifiers, origin=ORIGIN)


def test_non_canonical_signature_base64_fails() -> None:
    # 68 bytes of key ID and signature leave two unused bits in the last base64 digit
    # before '='; setting them changes no byte but is not the canonical encoding.
    note = signed_checkpoint()
    digit = note[-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    altered = alphabet[alphabet.index(digit) ^ 1]
    with pytest.raises(NoteInvalid):
        open_checkpoint(
            note[:-3] + altered + note[-2:], {ORIGIN: LOG_KEY.public_key()}, origin=ORIGIN
        )


def test_unknown_signers_are_ignored_and_cosigners_accepted() -> None:
    body = checkpoint_body(ORIGIN, 12, ROOT)
    note = sign_note(body, ORIGIN, LOG_KEY)
    witness_line = signature_line(sign_note(body, "witness.example", WITNESS_KEY))
    garbage_line = f"{EM_DASH} stranger.example {base64.b64encode(bytes(68)).decode()}\n"
    cosigned = note + witness_line + garbage_line
    log = {ORIGIN: LOG_KEY.public_key()}
    witness = {"witness.example": WITNESS_KEY.public_key()}
    assert open_checkpoint(cosigned, log, origin=ORIGIN).note == cosigned
    assert open_checkpoint(cosigned, witness, origin=ORIGIN).size == 12
    assert open_checkpoint(cosigned, {**log, **witness}, origin=ORIGIN).size == 12
    # An impostor with the log's name but another key has another key ID: ignored.
    impostor = seeded_key(3)
    impostor_note = sign_note(body, ORIGIN, impostor)
    with pytest.raises(NoteInvalid):
        open_checkpoint(impostor_note, log, origin=ORIGIN)
    assert open_checkpoint(impostor_note + signature_line(note), log, origin=ORIGIN).size == 12


def test_key_rotation_with_several_keys_per_name() -> None:
    old, new = seeded_key(4), seeded_key(5)
    verifiers = [(ORIGIN, old.public_key()), (ORIGIN, new.public_key())]
    body = checkpoint_body(ORIGIN, 3, ROOT)
    for key in (old, new):
        assert open_checkpoint(sign_note(body, ORIGIN, key), verifiers, origin=ORIGIN).size == 3


def test_bad_signature_by_a_known_key_rejects_the_note() -> None:
    body = checkpoint_body(ORIGIN, 12, ROOT)
    good = sign_note(body, ORIGIN, LOG_KEY)
    forged = sign_note(checkpoint_body(ORIGIN, 13, ROOT), ORIGIN, LOG_KEY)
    with pytest.raises(NoteInvalid) as info:
        open_checkpoint(
            good + signature_line(forged), {ORIGIN: LOG_KEY.public_key()}, origin=ORIGIN
        )
    assert "key" in info.value.metadata


def test_wrong_origin_fails() -> None:
    note = signed_checkpoint()
    with pytest.raises(NoteInvalid) as info:
        open_checkpoint(note, {ORIGIN: LOG_KEY.public_key()}, origin="other.example/log")
    assert info.value.metadata == {"origin": "other.example/log"}


def test_no_verifiers_is_an_error_not_a_pass() -> None:
    with pytest.raises(NoteInvalid):
        open_checkpoint(signed_checkpoint(), {}, origin=ORIGIN)
    with pytest.raises(NoteInvalid):
        open_checkpoint(signed_checkpoint(), [], origin=ORIGIN)


def test_repeated_verifiers_and_bad_verifier_names() -> None:
    key = LOG_KEY.public_key()
    note = signed_checkpoint()
    assert open_checkpoint(note, [(ORIGIN, key), (ORIGIN, key)], origin=ORIGIN).size == 12
    with pytest.raises(NoteInvalid):
        open_checkpoint(note, [(ORIGIN, key), ("bad name", key)], origin=ORIGIN)


def test_key_id_collisions() -> None:
    # seeded_key(1702) and seeded_key(5199) share the key ID 9cedbd42 under the name "c"
    # (found by a birthday search). Such a pair in the verifiers is ambiguous; a note signed
    # by the other key only earns a failed signature check, as the spec explains.
    first, second = seeded_key(1702), seeded_key(5199)
    assert key_hash("c", first.public_key()) == key_hash("c", second.public_key())
    body = checkpoint_body("c", 1, ROOT)
    with pytest.raises(NoteInvalid):
        open_checkpoint(
            sign_note(body, "c", first),
            [("c", first.public_key()), ("c", second.public_key())],
            origin="c",
        )
    with pytest.raises(NoteInvalid):
        open_checkpoint(sign_note(body, "c", second), {"c": first.public_key()}, origin="c")
    assert open_checkpoint(sign_note(body, "c", first), {"c": first.public_key()}, origin="c")


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n012\n{base64.b64encode(ROOT).decode()}\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n+1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n 1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n1.0\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n\uff11\n{base64.b64encode(ROOT).decode()}\n",  # fullwidth digit one
        f"{ORIGIN}\n1_0\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",  # unpadded
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT).hex()}\n",
        f"{ORIGIN}\n1\n",  # no root
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\next\n",  # empty extension line
    ],
)
def test_malformed_checkpoint_bodies_fail_even_when_signed(body: str) -> None:
    note = sign_note(body, ORIGIN, LOG_KEY)
    with pytest.raises(NoteInvalid):
        open_checkpoint(note, {ORIGIN: LOG_KEY.public_key()}, origin=ORIGIN)


def test_size_limit() -> None:
    verifiers = {ORIGIN: LOG_KEY.public_key()}
    overhead = len(signed_checkpoint(extensions=("x",)).encode()) - 1
    fits = signed_checkpoint(extensions=("x" * (MAX_NOTE_BYTES - overhead),))
    assert len(fits.encode()) == MAX_NOTE_BYTES
    assert open_checkpoint(fits, verifiers, origin=ORIGIN).extensions[0][0] == "x"
    too_big = signed_checkpoint(extensions=("x" * (MAX_NOTE_BYTES - overhead + 1),))
    with pytest.raises(NoteInvalid):
        open_checkpoint(too_big, verifiers, origin=ORIGIN)
    # The limit is in bytes, not characters.
    wide = signed_checkpoint(extensions=("\u00e9" * (MAX_NOTE_BYTES // 2),))
    assert len(wide) < MAX_NOTE_BYTES
    with pytest.raises(NoteInvalid):
        open_checkpoint(wide, verifiers, origin=ORIGIN)


def test_signature_count_limit() -> None:
    verifiers = {ORIGIN: LOG_KEY.public_key()}
    note = signed_checkpoint()
    stranger = f"{EM_DASH} stranger.example {base64.b64encode(bytes(68)).decode()}\n"
    assert open_checkpoint(note + stranger * 99, verifiers, origin=ORIGIN).size == 12
    with pytest.raises(NoteInvalid):
        open_checkpoint(note + stranger * 100, verifiers, origin=ORIGIN)


# --- producing notes and keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        (" padded", 1, ROOT, ()),
        ("padded ", 1, ROOT, ()),
        ("two\nlines", 1, ROOT, ()),
        (ORIGIN, -1, ROOT, ()),
        (ORIGIN, 2**64, ROOT, ()),
        (ORIGIN, 1, ROOT[:31], ()),
        (ORIGIN, 1, ROOT, ("",)),
        (ORIGIN, 1, ROOT, ("a\nb",)),
        (ORIGIN, 1, ROOT, ("tab\there",)),
    ],
)
def test_checkpoint_body_refuses_bad_fields(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(NoteInvalid):
        checkpoint_body(origin, size, root, extensions)


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ("no final newline", ORIGIN),
        ("", ORIGIN),
        ("bell \x07\n", ORIGIN),
        ("ok\n", ""),
        ("ok\n", "a b"),
        ("ok\n", "a+b"),
        ("ok\n", "a\u00a0b"),  # a Unicode space
    ],
)
def test_sign_note_refuses_bad_input(body: str, name: str) -> None:
    with pytest.raises(NoteInvalid):
        sign_note(body, name, LOG_KEY)


def test_verifier_key_round_trip_and_bad_names() -> None:
    key = LOG_KEY.public_key()
    name, parsed = parse_verifier_key(verifier_key(ORIGIN, key))
    assert (name, raw(parsed)) == (ORIGIN, raw(key))
    assert verifier_key(ORIGIN, key) == vkey_for(ORIGIN, raw(key))
    for bad in ("", "a b", "a+b", "tab\tname"):
        with pytest.raises(NoteInvalid):
            verifier_key(bad, key)
        with pytest.raises(NoteInvalid):
            key_hash(bad, key)


def test_malformed_verifier_keys() -> None:
    good = raw(LOG_KEY.public_key())
    kid = vkey_for(ORIGIN, good).split("+")[1]
    encoded = base64.b64encode(b"\x01" + good).decode()
    bad = [
        vkey_for(ORIGIN, good, alg=0x02),  # not Ed25519
        vkey_for(ORIGIN, good[:31]),  # short key
        vkey_for("a b", good),  # bad name
        f"{ORIGIN}+{kid.upper()}+{encoded}",  # upper-case hex
        f"{ORIGIN}+{kid}+{encoded[:-1]}",  # truncated
        f"{ORIGIN}+{kid}+{encoded} ",  # trailing space
        f"{ORIGIN}+{kid}+{encoded[:10]}-{encoded[11:]}",  # not the standard alphabet
        f"{ORIGIN}+{kid}",
        "",
    ]
    for text in bad:
        with pytest.raises(NoteInvalid):
            parse_verifier_key(text)


def edwards_y_from_montgomery_u(u: int) -> bytes:
    return ((u - 1) * pow(u + 1, -1, P) % P).to_bytes(32, "little")


# Points of small order (encoded Ed25519 public keys): the neutral point y = 1, the point
# of order 2 (y = -1), those of order 4 (y = 0) and of order 8, found from the Montgomery
# u-coordinates of order 8 listed in Bernstein's Curve25519 page ("points of small order").
WEAK_KEYS = [
    (1).to_bytes(32, "little"),
    (P - 1).to_bytes(32, "little"),
    bytes(32),
    edwards_y_from_montgomery_u(
        325606250916557431795983626356110631294008115727848805560023387167927233504
    ),
    edwards_y_from_montgomery_u(
        39382357235489614581723060781553021112529911719440698176882885853963445705823
    ),
    P.to_bytes(32, "little"),  # y = p: a non-canonical encoding of y = 0
    (P + 1).to_bytes(32, "little"),  # a non-canonical encoding of the neutral point
]


@pytest.mark.parametrize("key_bytes", WEAK_KEYS)
def test_small_order_and_non_canonical_keys_are_refused(key_bytes: bytes) -> None:
    with pytest.raises(NoteInvalid):
        parse_verifier_key(vkey_for(ORIGIN, key_bytes))
    key = Ed25519PublicKey.from_public_bytes(key_bytes)
    with pytest.raises(NoteInvalid):
        verifier_key(ORIGIN, key)
    with pytest.raises(NoteInvalid):
        open_checkpoint(signed_checkpoint(), [(ORIGIN, key)], origin=ORIGIN)


def test_ordinary_keys_are_not_mistaken_for_weak_ones() -> None:
    for n in range(50):
        key = seeded_key(100 + n).public_key()
        assert parse_verifier_key(verifier_key(f"k{n}", key))[0] == f"k{n}"
