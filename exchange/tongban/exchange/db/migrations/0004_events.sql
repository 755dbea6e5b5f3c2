-- Change events (enter once): written in the same transaction as the record change.

-- Per-dataset event positions, contiguous from 0. Publishers of one dataset serialise on
-- its row, so a reader that has seen position p never misses a later commit below p.
CREATE TABLE dataset_stream (
    dataset       text PRIMARY KEY REFERENCES dataset (code),
    next_position bigint NOT NULL DEFAULT 0 CHECK (next_position >= 0)
);

CREATE TABLE event_outbox (
    dataset      text NOT NULL REFERENCES dataset (code),
    position     bigint NOT NULL CHECK (position >= 0),
    -- Deterministic: UUIDv5 of dataset, key and record version, so a replay has the same id.
    event_id     uuid NOT NULL UNIQUE,
    key          text NOT NULL,
    version      integer NOT NULL,
    op           text NOT NULL CHECK (op IN ('upsert', 'delete')),
    data         jsonb,
    at           timestamptz NOT NULL,
    -- Set by the Kafka relay once the broker has acknowledged the event.
    published_at timestamptz,
    PRIMARY KEY (dataset, position)
);

CREATE TABLE subscription (
    id             uuid PRIMARY KEY,
    consumer       text NOT NULL REFERENCES department (code),
    dataset        text NOT NULL REFERENCES dataset (code),
    fields         text[] NOT NULL,
    purpose        text NOT NULL,
    -- The last position the consumer acknowledged (-1: none yet).
    acked_position bigint NOT NULL DEFAULT -1,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (consumer, dataset, purpose)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, UPDATE ON dataset_stream, event_outbox, subscription TO tongban_node;
    END IF;
END;
$$;
