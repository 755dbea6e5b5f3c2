"""Event ids are RFC 9562 UUIDv5s of (dataset, key, record version), computed without
``uuid.UUID`` on the bulk-load path (``tongban.signing.ids``): the same id for any key."""

from __future__ import annotations

import random
import uuid

from tongban.exchange.sharing.records import EVENT_NAMESPACE, event_id
from tongban.signing.ids import uuid5_text


def test_the_fast_event_id_is_the_uuid5_of_dataset_key_and_version() -> None:
    rng = random.Random(7)
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY企业登记\n é"
    for _ in range(2_000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        version = rng.randint(1, 2**31 - 1)
        expected = uuid.uuid5(EVENT_NAMESPACE, f"samr.enterprise\n{key}\n{version}")
        assert event_id("samr.enterprise", key, version) == expected.hex
        name = f"samr.enterprise\n{key}\n{version}".encode()
        assert uuid5_text(EVENT_NAMESPACE, name) == str(expected)
        assert expected.version == 5
