-- Rotating the access log's checkpoint key (docs/audit-log.md, "Rotating the checkpoint
-- key"). Each row says: checkpoints at sizes from from_size on are signed by the key of
-- verifier_key. announcement is a C2SP signed note saying so, signed by the key it
-- replaces, so a verifier that trusts the first key follows every change without
-- trusting this table. No rows: one key signed every checkpoint. Append-only like the log.
CREATE TABLE log_key_change (
    from_size    bigint PRIMARY KEY CHECK (from_size >= 1),
    verifier_key text NOT NULL CHECK (length(verifier_key) BETWEEN 1 AND 1000),
    announcement text NOT NULL CHECK (length(announcement) BETWEEN 1 AND 10000),
    changed_at   timestamptz NOT NULL
);

CREATE TRIGGER log_key_change_no_update
    BEFORE UPDATE OR DELETE OR TRUNCATE ON log_key_change
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- The operator rotates the key (tongban key rotate checkpoint, with the node's login: the
-- same login that signs checkpoints may announce a change, under the same lock).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON log_key_change TO tongban_node;
    END IF;
END;
$$;
