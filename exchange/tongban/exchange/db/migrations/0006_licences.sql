-- Electronic licences (电子证照) and the unified seal service (统一电子印章系统): custodial
-- seal keys, status lists, licences with their versions, and the history of every status
-- change. See docs/licences.md.

-- Private keys the exchange holds on behalf of departments (their seals) and of itself
-- (the status-list key, holder '#status-list'), as passphrase-encrypted PKCS#8 PEM, so
-- that every node of one exchange can seal. The passphrase is the node key passphrase;
-- the database alone does not reveal a key.
CREATE TABLE seal_key (
    holder      text PRIMARY KEY CHECK (holder ~ '^(#status-list|[a-z][a-z0-9-]{1,62})$'),
    key_pem     bytea NOT NULL,
    -- The certificate chain, PEM, leaf first, root excluded.
    chain_pem   bytea NOT NULL,
    -- SHA-256 of the leaf certificate's DER.
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32),
    created_at  timestamptz NOT NULL
);

-- Token Status Lists (draft-ietf-oauth-status-list): the packed 2-bit statuses of one
-- list, and how many of its indices are handed out. `revision` grows with every change
-- of `data`, so a node knows when its signed token is stale.
CREATE TABLE status_list (
    id         integer PRIMARY KEY CHECK (id > 0),
    bits       smallint NOT NULL CHECK (bits IN (1, 2, 4, 8)),
    size       integer NOT NULL CHECK (size >= 131072),
    allocated  integer NOT NULL DEFAULT 0 CHECK (allocated BETWEEN 0 AND size),
    data       bytea NOT NULL CHECK (length(data) * 8 = size * bits),
    revision   bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- One row per version of a licence. Amending or renewing writes a new version with a new
-- status index and marks the old one 'superseded'; the number stays.
CREATE TABLE licence (
    number       text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    licence_type text NOT NULL,
    holder_id    text NOT NULL,
    holder_kind  text NOT NULL CHECK (holder_kind IN ('enterprise', 'person')),
    holder_name  text NOT NULL,
    issuer       text NOT NULL REFERENCES department (code),
    status       text NOT NULL
        CHECK (status IN ('valid', 'suspended', 'revoked', 'cancelled', 'superseded')),
    status_list  integer NOT NULL REFERENCES status_list (id),
    status_index integer NOT NULL CHECK (status_index >= 0),
    not_before   timestamptz NOT NULL,
    expires      timestamptz CHECK (expires IS NULL OR expires > not_before),
    -- The normalised claims (tongban.licence.types.validate_claims).
    claims       jsonb NOT NULL,
    -- The issued SD-JWT VC with every disclosure, and the offline QR text.
    sd_jwt       text NOT NULL,
    qr           text NOT NULL CHECK (qr LIKE 'TB1:%'),
    case_id      text,
    officer      text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (number, version),
    -- Two licences never share a status bit, whichever node allocated it.
    UNIQUE (status_list, status_index)
);

CREATE INDEX licence_holder ON licence (holder_id, licence_type);
-- At most one version of a number is not superseded: the current one.
CREATE UNIQUE INDEX licence_current ON licence (number) WHERE status <> 'superseded';

-- Every issuance and status change, with its reason and who made it. Append-only.
CREATE TABLE licence_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      text NOT NULL,
    version     integer NOT NULL,
    action      text NOT NULL CHECK (action IN (
        'issue', 'amend', 'renew', 'suspend', 'reinstate', 'revoke', 'cancel'
    )),
    from_status text,
    to_status   text NOT NULL,
    reason      text NOT NULL,
    department  text NOT NULL,
    officer     text,
    at          timestamptz NOT NULL,
    FOREIGN KEY (number, version) REFERENCES licence (number, version)
);

CREATE INDEX licence_history_number ON licence_history (number, id);

CREATE FUNCTION licence_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'licence_history is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER licence_history_no_change
    BEFORE UPDATE OR DELETE ON licence_history
    FOR EACH ROW EXECUTE FUNCTION licence_history_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, UPDATE ON seal_key, status_list, licence TO tongban_node;
        GRANT SELECT, INSERT ON licence_history TO tongban_node;
        GRANT USAGE ON SEQUENCE licence_history_id_seq TO tongban_node;
    END IF;
END;
$$;
