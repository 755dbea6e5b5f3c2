-- Kafka mode: which outbox events the relay has yet to publish, and where each topic
-- partition ended at the relay's last acknowledged batch.

-- The relay reads unpublished events in position order; this index holds only those.
CREATE INDEX event_outbox_unpublished ON event_outbox (dataset, position)
    WHERE published_at IS NULL;

-- Per topic partition, the offset after the last event the relay saw acknowledged. A
-- stream that has read the outbox up to now starts its Kafka tail here: every event
-- committed later is written to Kafka after this offset (see docs/events.md).
CREATE TABLE kafka_progress (
    topic       text NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, UPDATE ON kafka_progress TO tongban_node;
    END IF;
END;
$$;
