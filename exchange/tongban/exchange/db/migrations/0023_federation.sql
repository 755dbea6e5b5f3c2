-- Federation with peer exchanges (docs/federation.md).
--
-- `peer`: the other Tongban exchanges this one links to, added by the operator after the
-- root certificates were swapped out of band. Like the department registry it is the
-- operator's (`tongban peer add|suspend|remove` write it with the schema owner's login);
-- a node only reads it: which CAs its gRPC server accepts client certificates from, and
-- where to reach each peer. A change tells every node at once (NOTIFY tongban_peer).
CREATE TABLE peer (
    name           text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{1,62}$'),
    level          text NOT NULL
                   CHECK (level IN ('province', 'city', 'county', 'township')),
    -- This peer is the exchange above ours in the tree (county -> city -> province).
    is_parent      boolean NOT NULL DEFAULT false,
    endpoint       text NOT NULL CHECK (length(endpoint) BETWEEN 3 AND 300),
    -- The peer's root CA certificate (PEM) and the SHA-256 of its DER.
    ca_pem         text NOT NULL CHECK (length(ca_pem) BETWEEN 100 AND 20000),
    ca_fingerprint bytea NOT NULL UNIQUE CHECK (length(ca_fingerprint) = 32),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- An exchange has at most one parent.
CREATE UNIQUE INDEX peer_one_parent ON peer ((true)) WHERE is_parent;

CREATE FUNCTION peer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_peer', COALESCE(NEW.name, OLD.name));
    RETURN NULL;
END;
$$;
CREATE TRIGGER peer_notify AFTER INSERT OR UPDATE OR DELETE ON peer
    FOR EACH ROW EXECUTE FUNCTION peer_changed();

-- Datasets their owners offer to peers. A row makes the dataset federated: offered to
-- every active peer when `peers` is empty, else to the peers named (while it is
-- published). Written by the node on the owner's call.
CREATE TABLE dataset_federation (
    dataset    text PRIMARY KEY REFERENCES dataset (code),
    peers      text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL,
    updated_by text
);

CREATE FUNCTION dataset_federation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_federation', COALESCE(NEW.dataset, OLD.dataset));
    RETURN NULL;
END;
$$;
CREATE TRIGGER dataset_federation_notify AFTER INSERT OR UPDATE OR DELETE ON dataset_federation
    FOR EACH ROW EXECUTE FUNCTION dataset_federation_changed();

-- Catalogue entries peers offer us, as last pulled: the signed entry as received (compact
-- JWS, kept as evidence) and the fields the catalogue shows. A withdrawn entry is deleted.
CREATE TABLE remote_dataset (
    peer         text NOT NULL REFERENCES peer (name) ON DELETE CASCADE,
    code         text NOT NULL
                 CHECK (code ~ '^[a-z][a-z0-9-]{1,62}\.[a-z][a-z0-9_]{0,62}$'),
    owner        text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    share_class  text NOT NULL
                 CHECK (share_class IN ('unconditional', 'conditional', 'not_shared')),
    title        text NOT NULL,
    entry        jsonb NOT NULL,
    signed_entry text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (peer, code)
);

-- The last catalogue pull from each peer: when it last succeeded, and the refusal or
-- failure of the last attempt that did not (a reason code and a sentence).
CREATE TABLE peer_sync (
    peer          text PRIMARY KEY REFERENCES peer (name) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL,
    synced_at     timestamptz,
    error_reason  text,
    error_message text
);

-- Nonces of forwarded requests a peer sent us, kept for their time window, so a replay
-- is refused (docs/federation.md, "Forwarded queries").
CREATE TABLE peer_nonce (
    peer       text NOT NULL REFERENCES peer (name) ON DELETE CASCADE,
    nonce      text NOT NULL CHECK (length(nonce) BETWEEN 16 AND 64),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (peer, nonce)
);
CREATE INDEX peer_nonce_expiry ON peer_nonce (expires_at);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT ON peer TO tongban_node;
        GRANT SELECT, INSERT, UPDATE, DELETE ON dataset_federation, remote_dataset, peer_sync
            TO tongban_node;
        GRANT SELECT, INSERT, DELETE ON peer_nonce TO tongban_node;
    END IF;
END;
$$;
