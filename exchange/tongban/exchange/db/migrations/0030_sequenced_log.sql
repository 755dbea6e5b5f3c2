-- Sequence first, integrate after (docs/audit-log.md, "Sequencing and integration").
--
-- An append is durable once its row is in access_log with its index: the sequencer
-- takes the next indices from log_sequence (a row lock held to the commit, so indices
-- are given and committed in order, contiguous from 0) and writes nothing else. One
-- integrator per exchange then folds the entries past the tree head into the Merkle
-- tree (log_node, log_state) and copies their searchable columns into
-- access_log_search, whose indexes only auditors use, in one transaction.

-- The next index to give. Only grows; the node's role moves it (with each append).
CREATE TABLE log_sequence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next      bigint NOT NULL CHECK (next >= 0)
);
-- Every entry so far was written with the tree (the log before this migration).
INSERT INTO log_sequence (next) SELECT size FROM log_state;

CREATE FUNCTION log_sequence_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.next < OLD.next THEN
        RAISE EXCEPTION 'log_sequence only grows' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER log_sequence_only_grows BEFORE UPDATE OR DELETE ON log_sequence
    FOR EACH ROW EXECUTE FUNCTION log_sequence_grows();
CREATE TRIGGER log_sequence_no_truncate BEFORE TRUNCATE ON log_sequence
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- What auditors search by, for the entries the tree covers (idx < log_state.size),
-- written by the integrator in the transaction that moves the head. The columns equal
-- access_log's (audit verify checks it); the leaf and the rest stay there.
CREATE TABLE access_log_search (
    idx          bigint PRIMARY KEY CHECK (idx >= 0),
    at           timestamptz NOT NULL,
    caller       text NOT NULL,
    officer      text,
    action       text NOT NULL,
    dataset      text,
    purpose      text,
    case_id      text,
    subject_hmac bytea,
    decision     text NOT NULL
);
INSERT INTO access_log_search
    SELECT idx, at, caller, officer, action, dataset, purpose, case_id, subject_hmac, decision
    FROM access_log;
CREATE INDEX access_log_search_subject ON access_log_search (subject_hmac, idx)
    WHERE subject_hmac IS NOT NULL;
CREATE INDEX access_log_search_caller ON access_log_search (caller, at);
CREATE INDEX access_log_search_at ON access_log_search (at);
CREATE INDEX access_log_search_case ON access_log_search (case_id) WHERE case_id IS NOT NULL;
CREATE TRIGGER access_log_search_no_update
    BEFORE UPDATE OR DELETE OR TRUNCATE ON access_log_search
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- The hot path keeps only the primary key: the search indexes moved above.
DROP INDEX access_log_subject;
DROP INDEX access_log_caller;
DROP INDEX access_log_at;
DROP INDEX access_log_case;

-- Every entry, integrated or not, by its searchable columns: the indexed table for what
-- the tree covers, and the few rows past the head read by index. One statement reads
-- both under one snapshot, and the integrator moves rows from one part to the other in
-- one transaction, so each entry appears exactly once.
CREATE VIEW access_log_searchable AS
    SELECT idx, at, caller, officer, action, dataset, purpose, case_id, subject_hmac, decision
    FROM access_log_search
    UNION ALL
    SELECT idx, at, caller, officer, action, dataset, purpose, case_id, subject_hmac, decision
    FROM access_log
    WHERE idx >= (SELECT size FROM log_state);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, UPDATE ON log_sequence TO tongban_node;
        GRANT SELECT, INSERT ON access_log_search TO tongban_node;
        GRANT SELECT ON access_log_searchable TO tongban_node;
    END IF;
END;
$$;
