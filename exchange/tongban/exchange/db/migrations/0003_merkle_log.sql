-- The tamper-evident access log: entries are the leaves of an RFC 6962 Merkle tree.
--
-- Entries written before this migration (no leaf, no index) stay, frozen, in
-- access_log_v0; they are outside the tree.

ALTER TABLE access_log RENAME TO access_log_v0;
ALTER INDEX access_log_subject RENAME TO access_log_v0_subject;
ALTER INDEX access_log_caller RENAME TO access_log_v0_caller;

-- One row per entry. `leaf` is the exact leaf (docs/audit-log.md); the other columns are
-- decoded from it for search. `idx` is assigned by the sequencer, contiguous from 0.
CREATE TABLE access_log (
    idx          bigint PRIMARY KEY CHECK (idx >= 0),
    leaf         bytea NOT NULL,
    at           timestamptz NOT NULL,
    node         text NOT NULL,
    caller       text NOT NULL,
    officer      text,
    action       text NOT NULL,
    dataset      text,
    fields       text[] NOT NULL DEFAULT '{}',
    purpose      text,
    case_id      text,
    subject_hmac bytea,
    decision     text NOT NULL CHECK (decision IN ('allowed', 'denied')),
    reason       text
);
CREATE INDEX access_log_subject ON access_log (subject_hmac, idx) WHERE subject_hmac IS NOT NULL;
CREATE INDEX access_log_caller ON access_log (caller, at);
CREATE INDEX access_log_at ON access_log (at);
CREATE INDEX access_log_case ON access_log (case_id) WHERE case_id IS NOT NULL;

-- Hashes of every perfect subtree: (level, idx) covers leaves [idx·2^level, (idx+1)·2^level).
CREATE TABLE log_node (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
    idx   bigint NOT NULL CHECK (idx >= 0),
    hash  bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- The tree head: size, root and the frontier (perfect-subtree roots, largest first).
-- One row; batches serialise on it (SELECT ... FOR UPDATE).
CREATE TABLE log_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    size      bigint NOT NULL CHECK (size >= 0),
    root      bytea NOT NULL CHECK (length(root) = 32),
    frontier  bytea[] NOT NULL
);
INSERT INTO log_state (size, root, frontier) VALUES (0, sha256(''::bytea), '{}');

-- Signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note), kept forever.
CREATE TABLE log_checkpoint (
    size      bigint PRIMARY KEY CHECK (size >= 0),
    root      bytea NOT NULL CHECK (length(root) = 32),
    note      text NOT NULL,
    signed_at timestamptz NOT NULL,
    signer    text NOT NULL
);

-- Investigations may keep their accesses from the subject's view until an end date.
CREATE TABLE covert_case (
    caller      text NOT NULL REFERENCES department (code),
    case_id     text NOT NULL,
    until       timestamptz NOT NULL,
    legal_basis text NOT NULL,
    declared_at timestamptz NOT NULL,
    declared_by text,
    PRIMARY KEY (caller, case_id)
);

-- Append-only, whoever asks: no UPDATE, DELETE or TRUNCATE of entries, nodes, checkpoints.
CREATE TRIGGER access_log_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();
CREATE TRIGGER log_node_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON log_node
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();
CREATE TRIGGER log_checkpoint_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON log_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- The tree head only grows.
CREATE FUNCTION log_state_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size THEN
        RAISE EXCEPTION 'log_state only grows' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER log_state_only_grows BEFORE UPDATE OR DELETE ON log_state
    FOR EACH ROW EXECUTE FUNCTION log_state_grows();
CREATE TRIGGER log_state_no_truncate BEFORE TRUNCATE ON log_state
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- The node works as role tongban_node, which may read and append to the log tables but
-- not change them; triggers stop even the owner. Creating the role needs CREATEROLE; on a
-- database where the migrating user lacks it, create the role beforehand (docs/deploy).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        CREATE ROLE tongban_node NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create role tongban_node; the node will run with its login role';
END;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT USAGE ON SCHEMA public TO tongban_node;
        GRANT SELECT, INSERT, UPDATE, DELETE ON
            department, dataset, dataset_version, record, data_grant, covert_case
            TO tongban_node;
        GRANT SELECT ON schema_migration, access_log_v0 TO tongban_node;
        GRANT SELECT, INSERT ON access_log, log_node, log_checkpoint TO tongban_node;
        GRANT SELECT, UPDATE ON log_state TO tongban_node;
    END IF;
END;
$$;
