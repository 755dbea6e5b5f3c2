-- Department registry (部门): who may call the exchange, known by certificate.

CREATE TABLE department (
    code            text PRIMARY KEY
                    CHECK (code ~ '^[a-z][a-z0-9-]{1,62}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    level           text NOT NULL
                    CHECK (level IN ('province', 'city', 'county', 'township')),
    parent          text REFERENCES department (code),
    roles           text[] NOT NULL DEFAULT '{}'
                    CHECK (roles <@ ARRAY['auditor']::text[]),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'suspended')),
    -- SHA-256 of the DER of the department's current TLS client certificate.
    tls_fingerprint bytea NOT NULL UNIQUE CHECK (length(tls_fingerprint) = 32),
    -- SHA-256 of the DER of its seal certificate (licences, document seals).
    seal_fingerprint bytea CHECK (length(seal_fingerprint) = 32),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (parent IS NULL OR parent <> code)
);

-- Nodes cache the registry; any change tells every node on this database at once.
CREATE FUNCTION department_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_department', COALESCE(NEW.code, OLD.code));
    RETURN NULL;
END;
$$;

CREATE TRIGGER department_notify
    AFTER INSERT OR UPDATE OR DELETE ON department
    FOR EACH ROW EXECUTE FUNCTION department_changed();
