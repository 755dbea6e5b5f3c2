-- Witnessed checkpoints (docs/audit-log.md, "Witnesses"). After each checkpoint it signs,
-- a node asks the witnesses of TONGBAN_WITNESSES to cosign it (C2SP tlog-witness) and
-- keeps here each cosignature it verified: the note signature line as the witness
-- returned it, served appended to the checkpoint's note. One per checkpoint and witness
-- key. Append-only like the log: the node's role may read and insert, and a trigger
-- refuses UPDATE, DELETE and TRUNCATE even to the owner.
CREATE TABLE witness_cosignature (
    size        bigint NOT NULL REFERENCES log_checkpoint (size),
    witness     text NOT NULL CHECK (length(witness) BETWEEN 1 AND 500),  -- its key name
    key_id      bytea NOT NULL CHECK (length(key_id) = 4),
    signed_time bigint NOT NULL CHECK (signed_time >= 0),  -- the cosignature's timestamp
    line        text NOT NULL CHECK (line LIKE '— %'),
    received_at timestamptz NOT NULL,
    received_by text NOT NULL,  -- the node that asked
    PRIMARY KEY (size, witness, key_id)
);
CREATE INDEX witness_cosignature_by_witness ON witness_cosignature (witness, key_id, size);

CREATE TRIGGER witness_cosignature_no_update
    BEFORE UPDATE OR DELETE OR TRUNCATE ON witness_cosignature
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON witness_cosignature TO tongban_node;
    END IF;
END;
$$;
