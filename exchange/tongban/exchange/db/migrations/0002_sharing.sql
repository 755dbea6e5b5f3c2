-- Catalogue (政务信息资源目录), records with history, grants, and the access log.

CREATE TABLE dataset (
    code            text PRIMARY KEY
                    CHECK (code ~ '^[a-z][a-z0-9-]{1,62}\.[a-z][a-z0-9_]{0,62}$'),
    owner           text NOT NULL REFERENCES department (code),
    current_version integer NOT NULL CHECK (current_version >= 1),
    published       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Every version of every catalogue entry: schema changes keep their history.
CREATE TABLE dataset_version (
    dataset             text NOT NULL REFERENCES dataset (code),
    version             integer NOT NULL CHECK (version >= 1),
    title               text NOT NULL,
    description         text NOT NULL,
    schema              jsonb NOT NULL,
    key_field           text NOT NULL,
    subject_kind        text NOT NULL CHECK (subject_kind IN ('enterprise', 'person', 'other')),
    update_frequency    text NOT NULL,
    share_class         text NOT NULL
                        CHECK (share_class IN ('unconditional', 'conditional', 'not_shared')),
    conditions          text NOT NULL DEFAULT '',
    legal_basis_law     text,
    legal_basis_article text,
    -- Lower-cased text searched by keyword (code, title, description, field descriptions).
    search_text         text NOT NULL,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (dataset, version),
    -- Not sharing is the exception and must cite its legal basis.
    CHECK (share_class <> 'not_shared'
           OR (legal_basis_law IS NOT NULL AND legal_basis_article IS NOT NULL))
);

-- Records keep every version: [valid_from, valid_to); the current one has valid_to NULL.
-- A deletion is a version with deleted = true and no data.
CREATE TABLE record (
    dataset    text NOT NULL REFERENCES dataset (code),
    key        text NOT NULL,
    version    integer NOT NULL CHECK (version >= 1),
    data       jsonb,
    deleted    boolean NOT NULL DEFAULT false,
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz,
    PRIMARY KEY (dataset, key, version),
    CHECK (deleted = (data IS NULL))
);
CREATE UNIQUE INDEX record_current ON record (dataset, key) WHERE valid_to IS NULL;

-- "grant" is an SQL keyword.
CREATE TABLE data_grant (
    id               uuid PRIMARY KEY,
    dataset          text NOT NULL REFERENCES dataset (code),
    owner            text NOT NULL REFERENCES department (code),
    consumer         text NOT NULL REFERENCES department (code),
    requested_fields text[] NOT NULL,
    fields           text[] NOT NULL DEFAULT '{}',
    purpose          text NOT NULL,
    legal_basis      text NOT NULL,
    requested_expiry timestamptz NOT NULL,
    expires_at       timestamptz,
    status           text NOT NULL CHECK (status IN ('pending', 'approved', 'refused', 'revoked')),
    decision_reason  text NOT NULL DEFAULT '',
    requested_at     timestamptz NOT NULL,
    due_at           timestamptz NOT NULL,
    decided_at       timestamptz,
    requested_by     text,
    decided_by       text,
    CHECK (fields <@ requested_fields),
    CHECK (status <> 'approved' OR expires_at IS NOT NULL)
);
CREATE INDEX data_grant_consumer ON data_grant (consumer, dataset);
CREATE INDEX data_grant_owner ON data_grant (owner, status, due_at);

-- Nodes cache catalogue entries and grants; changes tell every node at once.
CREATE FUNCTION dataset_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_dataset', COALESCE(NEW.code, OLD.code));
    RETURN NULL;
END;
$$;
CREATE TRIGGER dataset_notify AFTER INSERT OR UPDATE OR DELETE ON dataset
    FOR EACH ROW EXECUTE FUNCTION dataset_changed();

CREATE FUNCTION grant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_grant', COALESCE(NEW.consumer, OLD.consumer) || ' '
                      || COALESCE(NEW.dataset, OLD.dataset));
    RETURN NULL;
END;
$$;
CREATE TRIGGER grant_notify AFTER INSERT OR UPDATE OR DELETE ON data_grant
    FOR EACH ROW EXECUTE FUNCTION grant_changed();

-- The access log: one entry per subject per decision, allowed or denied, written before
-- the answer leaves. Append-only: no UPDATE or DELETE, whoever asks.
CREATE TABLE access_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL,
    node         text NOT NULL,
    caller       text NOT NULL,
    officer      text,
    action       text NOT NULL,
    dataset      text,
    fields       text[] NOT NULL DEFAULT '{}',
    purpose      text,
    case_id      text,
    -- HMAC-SHA256 of the subject id under the exchange's log key; never the id itself.
    subject_hmac bytea,
    decision     text NOT NULL CHECK (decision IN ('allowed', 'denied')),
    reason       text
);
CREATE INDEX access_log_subject ON access_log (subject_hmac) WHERE subject_hmac IS NOT NULL;
CREATE INDEX access_log_caller ON access_log (caller, at);

CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER access_log_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();
