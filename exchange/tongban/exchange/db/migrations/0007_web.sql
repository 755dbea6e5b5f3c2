-- The web console's one-time links (docs/web.md): a department officer's login link
-- (`tongban web login-link`) and a data subject's link to their own accesses
-- (`tongban subject link`). Only the SHA-256 of the random token is stored, so a copy of
-- the table opens nothing; a link is consumed on first use and expires regardless.
CREATE TABLE web_link (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    kind        text NOT NULL CHECK (kind IN ('login', 'subject')),
    -- 'login': the department code; 'subject': the subject id (USCC or citizen id).
    principal   text NOT NULL CHECK (length(principal) BETWEEN 1 AND 64),
    officer     text CHECK (officer IS NULL OR length(officer) <= 64),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL CHECK (expires_at > created_at),
    used_at     timestamptz
);
CREATE INDEX web_link_expires ON web_link (expires_at);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON web_link TO tongban_node;
    END IF;
END;
$$;
