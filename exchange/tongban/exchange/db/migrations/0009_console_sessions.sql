-- The web console's sessions (docs/web.md, "Signing in"). Opening a one-time link
-- (web_link) starts a session: the browser's cookie carries a random 256-bit token, and
-- only its SHA-256 is stored here, so a copy of the table opens nothing. Every node of an
-- exchange shares this table, so a session works on every node, and signing out sets
-- revoked_at, after which no node accepts the cookie. Rows are deleted once expired.
CREATE TABLE web_session (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    kind        text NOT NULL CHECK (kind IN ('login', 'subject')),
    -- 'login': the department code; 'subject': the subject id (USCC or citizen id).
    principal   text NOT NULL CHECK (length(principal) BETWEEN 1 AND 64),
    officer     text CHECK (officer IS NULL OR length(officer) <= 64),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL CHECK (expires_at > created_at),
    revoked_at  timestamptz
);
CREATE INDEX web_session_expires ON web_session (expires_at);

-- The node starts, finds, revokes (revoked_at only) and deletes expired sessions; it
-- cannot extend one or change whom it is for.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, DELETE ON web_session TO tongban_node;
        GRANT UPDATE (revoked_at) ON web_session TO tongban_node;
    END IF;
END;
$$;
