-- A department's SM2 seal (docs/keys.md, "A department's SM2 seal"): chosen by the
-- department, enrolled by the operator (`tongban seal sm2 DEPT`), it signs each licence's
-- SD-JWT beside the department's ES256 seal, since JOSE has no SM2 algorithm that
-- verifiers outside Tongban accept. The key is PKCS#8 encrypted with the node key
-- passphrase, as seal_key's; PKCS#11 has no SM2 mechanism, so it is never in a token.
CREATE TABLE sm2_seal_key (
    fingerprint       bytea PRIMARY KEY CHECK (length(fingerprint) = 32),
    holder            text NOT NULL CHECK (holder ~ '^[a-z][a-z0-9-]{1,62}$'),
    key_pem           bytea NOT NULL,
    -- The SM2 seal certificate, PEM (the SM2 root signs it directly).
    chain_pem         bytea NOT NULL,
    created_at        timestamptz NOT NULL,
    revoked_at        timestamptz,
    revocation_reason text CHECK (revocation_reason IS NULL
                                  OR length(revocation_reason) BETWEEN 1 AND 500),
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX sm2_seal_key_holder ON sm2_seal_key (holder, created_at DESC);

-- The SM2 signature of a licence version's SD-JWT (a detached JWS-shaped token over the
-- issuer-signed JWT), when its issuer had an SM2 seal at the time; NULL otherwise.
ALTER TABLE licence ADD COLUMN sd_jwt_sm2 text
    CHECK (sd_jwt_sm2 IS NULL OR length(sd_jwt_sm2) BETWEEN 1 AND 16384);

-- The node signs with these keys; only the operator (the schema owner) enrols or revokes.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN
        GRANT SELECT ON sm2_seal_key TO tongban_node;
    END IF;
END;
$$;
