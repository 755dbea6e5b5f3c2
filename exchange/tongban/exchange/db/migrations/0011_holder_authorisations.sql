-- A holder's authorisation to use their licence (授权用证; docs/personal-data.md): a
-- one-time code the holder gives one department for one purpose and case, which lets it
-- fetch the holder's licences with their personal claims disclosed, until it expires.
-- Only the SHA-256 of the code is stored; using it sets used_at once.
CREATE TABLE holder_authorisation (
    id            uuid PRIMARY KEY,
    code_hash     bytea NOT NULL UNIQUE CHECK (length(code_hash) = 32),
    holder_id     text NOT NULL CHECK (length(holder_id) BETWEEN 1 AND 64),
    department    text NOT NULL REFERENCES department (code),
    purpose       text NOT NULL CHECK (length(purpose) BETWEEN 1 AND 200),
    case_id       text NOT NULL CHECK (length(case_id) BETWEEN 1 AND 64),
    -- NULL: any of the holder's licence types.
    licence_type  text CHECK (licence_type IS NULL OR length(licence_type) <= 64),
    -- Who made it: 'console' (the holder, signed in with their link) or 'cli' (an
    -- operator at the holder's request, `tongban subject authorise`).
    made_via      text NOT NULL CHECK (made_via IN ('console', 'cli')),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL CHECK (expires_at > created_at),
    used_at       timestamptz,
    used_number   text,
    CHECK ((used_at IS NULL) = (used_number IS NULL))
);
CREATE INDEX holder_authorisation_holder ON holder_authorisation (holder_id, created_at);

-- The node makes codes and spends them (used_at/used_number only, once); it cannot
-- re-open, extend or redirect one.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT ON holder_authorisation TO tongban_node;
        GRANT UPDATE (used_at, used_number) ON holder_authorisation TO tongban_node;
    END IF;
END;
$$;
