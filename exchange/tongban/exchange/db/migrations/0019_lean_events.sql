-- Change events point at the record version they announce instead of carrying a second
-- copy of its data (docs/events.md, "What an event row holds"). A bulk load wrote every
-- record's JSON twice, once into record and once into event_outbox, and checked both
-- rows' dataset against the catalogue: half of its write-ahead log and a third of its
-- statement time went on copies and checks that prove nothing the record row does not.
--
-- * data: readers join record on (dataset, key, version), its primary key; change_event
--   below is that join. Every event is written by the statement that writes its record
--   version (sharing/records.py, _WRITE_VERSIONS), and record rows are never deleted.
-- * the dataset foreign key: the record row of the same statement already references the
--   dataset.
-- * UNIQUE (event_id): the id is the UUIDv5 of (dataset, key, version), which record's
--   primary key already keeps unique; nothing looks an event up by its id.
ALTER TABLE event_outbox DROP CONSTRAINT IF EXISTS event_outbox_dataset_fkey;
ALTER TABLE event_outbox DROP CONSTRAINT IF EXISTS event_outbox_event_id_key;
ALTER TABLE event_outbox DROP COLUMN data;

CREATE VIEW change_event AS
    SELECT e.dataset, e.position, e.event_id, e.key, e.version, e.op, r.data, e.at,
           e.published_at
    FROM event_outbox e
    JOIN record r ON r.dataset = e.dataset AND r.key = e.key AND r.version = e.version;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT ON change_event TO tongban_node;
    END IF;
END;
$$;
