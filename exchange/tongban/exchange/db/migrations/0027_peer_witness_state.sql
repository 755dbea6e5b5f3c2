-- This exchange as a witness of its peers' access logs (docs/audit-log.md, "Witnesses";
-- docs/federation.md, "Peers as witnesses"). Every node of the exchange cosigns with the
-- one witness key, so they share what it remembers: per log, the latest checkpoint
-- cosigned. A node advances a row by compare-and-swap (UPDATE ... WHERE size and root are
-- those it checked against; INSERT ... ON CONFLICT DO NOTHING for a log's first), so two
-- nodes can never cosign two different checkpoints of one size. The trigger holds the
-- same rule for every login: a row only grows, keeps its exchange, and at an equal size
-- keeps its root; it is never deleted.
CREATE TABLE peer_witness_state (
    origin      text PRIMARY KEY CHECK (length(origin) BETWEEN 1 AND 1000),
    -- the peer's exchange (SHA-256 of its root CA): only that peer submits this log
    exchange    bytea NOT NULL CHECK (length(exchange) = 32),
    size        numeric(20, 0) NOT NULL CHECK (size BETWEEN 0 AND 18446744073709551615),
    root        bytea NOT NULL CHECK (length(root) = 32),
    note        text NOT NULL,  -- the checkpoint text cosigned (no signature lines)
    cosigned_at timestamptz NOT NULL,
    cosigned_by text NOT NULL   -- the node
);

CREATE FUNCTION peer_witness_state_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.origin <> OLD.origin OR NEW.exchange <> OLD.exchange
        OR NEW.size < OLD.size OR (NEW.size = OLD.size AND NEW.root <> OLD.root) THEN
        RAISE EXCEPTION 'peer_witness_state only grows' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER peer_witness_state_only_grows BEFORE UPDATE OR DELETE ON peer_witness_state
    FOR EACH ROW EXECUTE FUNCTION peer_witness_state_grows();
CREATE TRIGGER peer_witness_state_no_truncate BEFORE TRUNCATE ON peer_witness_state
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();

-- Validly signed checkpoints the witness refused (a split view, a proof that does not
-- verify): possible evidence that the peer's log misbehaved. The newest 1,000 are kept.
CREATE TABLE peer_witness_refusal (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin      text NOT NULL,
    exchange    bytea NOT NULL CHECK (length(exchange) = 32),
    received_at timestamptz NOT NULL,
    received_by text NOT NULL,
    old_size    numeric(20, 0) NOT NULL,
    reason      text NOT NULL,
    note        text NOT NULL  -- the signed checkpoint as received
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT, INSERT, UPDATE ON peer_witness_state TO tongban_node;
        GRANT SELECT, INSERT, DELETE ON peer_witness_refusal TO tongban_node;
        GRANT USAGE ON SEQUENCE peer_witness_refusal_id_seq TO tongban_node;
    END IF;
END;
$$;
