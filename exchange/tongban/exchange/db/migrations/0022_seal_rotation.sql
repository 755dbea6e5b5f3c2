-- Seal rotation without downtime (docs/keys.md, "Rotation"). A holder may now have several
-- keys: each row is one seal certificate and its key, signing from active_from on; the
-- signing key is the not-revoked row with the latest active_from in the past. A rotation
-- inserts the next key with active_from after an overlap, during which the trust list
-- already names the new certificate beside the old one, so verifiers have it before the
-- first licence it signs. Older keys are retired, not deleted: their certificates stay in
-- the trust list until they expire, so what they signed keeps verifying. A revoked key
-- (revoked_at) leaves the trust list's seal certificates and is listed as revoked, so
-- what it signed fails with SEAL_REVOKED.
ALTER TABLE seal_key DROP CONSTRAINT seal_key_pkey;
ALTER TABLE seal_key ADD PRIMARY KEY (holder, fingerprint);
ALTER TABLE seal_key ADD COLUMN active_from timestamptz;
UPDATE seal_key SET active_from = created_at;
ALTER TABLE seal_key ALTER COLUMN active_from SET NOT NULL;
ALTER TABLE seal_key ADD COLUMN revoked_at timestamptz;
ALTER TABLE seal_key ADD COLUMN revocation_reason text
    CHECK (revocation_reason IS NULL OR length(revocation_reason) BETWEEN 1 AND 500);
ALTER TABLE seal_key ADD CONSTRAINT seal_key_revoked_with_reason
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL));
CREATE INDEX seal_key_by_holder ON seal_key (holder, active_from DESC);
