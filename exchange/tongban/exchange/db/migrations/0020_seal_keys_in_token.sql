-- Seal keys in a PKCS#11 token (docs/keys.md). A custodial key is held either here,
-- encrypted with the node key passphrase (key_pem), or by the exchange's token under a
-- label (key_label), never both: with a token, the database holds the certificate chain
-- and the label only, and every node signs through the same token.
ALTER TABLE seal_key ALTER COLUMN key_pem DROP NOT NULL;
ALTER TABLE seal_key ADD COLUMN key_label text
    CHECK (key_label IS NULL OR key_label ~ '^[ -~]{1,64}$');
ALTER TABLE seal_key ADD CONSTRAINT seal_key_one_home
    CHECK ((key_pem IS NULL) <> (key_label IS NULL));
