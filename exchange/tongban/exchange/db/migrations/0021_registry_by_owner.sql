-- The department registry belongs to the operator (docs/deploy.md, "Database logins"):
-- `tongban dept add|roles|limits|suspend|activate`, `tongban seal enrol` and the demo's
-- enrolment write it with the schema owner's login, and a node only reads it. Migration
-- 0003 gave tongban_node INSERT, UPDATE and DELETE on it, so SQL run in a node session
-- could give a department the covert or auditor role, re-activate a suspended one or
-- change its certificate fingerprints. It keeps SELECT (authentication, roles, limits).

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON department
            FROM tongban_node;
        GRANT SELECT ON department TO tongban_node;
    END IF;
END;
$$;
