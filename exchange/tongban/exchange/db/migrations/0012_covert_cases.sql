-- Covert cases (docs/audit-log.md, "The subject view and covert cases"): only a department
-- with the `covert` role declares one, each declaration is an access-log entry, and the
-- declarations are kept as an append-only history that the node cannot change.

ALTER TABLE department DROP CONSTRAINT department_roles_check;
ALTER TABLE department ADD CONSTRAINT department_roles_check
    CHECK (roles <@ ARRAY['auditor', 'covert']::text[]);

-- One row per declaration, not per case: declaring a case again (to extend or shorten its
-- embargo) adds a row, and the latest row of a case is the one in force.
ALTER TABLE covert_case DROP CONSTRAINT covert_case_pkey;
ALTER TABLE covert_case ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE covert_case ADD PRIMARY KEY (id);
CREATE INDEX covert_case_latest ON covert_case (caller, case_id, id DESC);

CREATE VIEW covert_case_current AS
    SELECT DISTINCT ON (caller, case_id)
           id, caller, case_id, until, legal_basis, declared_at, declared_by
    FROM covert_case
    ORDER BY caller, case_id, id DESC;

-- Append-only, whoever asks (as the log tables).
CREATE TRIGGER covert_case_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON covert_case
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        REVOKE UPDATE, DELETE, TRUNCATE ON covert_case FROM tongban_node;
        GRANT SELECT, INSERT ON covert_case TO tongban_node;
        GRANT USAGE ON SEQUENCE covert_case_id_seq TO tongban_node;
        GRANT SELECT ON covert_case_current TO tongban_node;
    END IF;
END;
$$;
