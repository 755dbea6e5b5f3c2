-- One trail per case (docs/federation.md, "One trail per case"): the verifier key of each
-- peer's access log, `<origin>+<key hash>+<base64 key>` as the peer's `tongban audit key`
-- prints it, swapped out of band like the root CA and set by the operator with
-- `tongban peer log-key`. The trail checks a peer's checkpoints against this key only,
-- never against a key the peer sends with them. NULL: not set yet (the trail says so).
ALTER TABLE peer ADD COLUMN log_key text
    CHECK (log_key IS NULL OR length(log_key) BETWEEN 10 AND 1000);
