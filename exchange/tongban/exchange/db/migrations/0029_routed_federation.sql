-- Routing over several hops (docs/federation.md, "Routing over several hops").
--
-- A peer re-offers the datasets it receives from its other peers; we store such an entry
-- under the peer's own name for it, the route of exchange names before the owner's code:
-- `province:hrss.social_insurance` as offered by the city (shown here as
-- `city:province:hrss.social_insurance`). At most seven names before the code.
ALTER TABLE remote_dataset DROP CONSTRAINT remote_dataset_code_check;
ALTER TABLE remote_dataset ADD CONSTRAINT remote_dataset_code_check CHECK (
    code ~ '^([a-z][a-z0-9-]{1,62}:){0,7}[a-z][a-z0-9-]{1,62}\.[a-z][a-z0-9_]{0,62}$'
);

-- The owner decides for the original department of a peer's exchange, by its full name
-- (`county-a/approval`, or `city/county-a/approval` two hops away), so a grant may name
-- such a consumer. A local consumer must still be a registered department: the foreign
-- key becomes a trigger that checks names without a `/`.
ALTER TABLE data_grant DROP CONSTRAINT data_grant_consumer_fkey;
ALTER TABLE data_grant ADD CONSTRAINT data_grant_consumer_form CHECK (
    consumer ~ '^[a-z][a-z0-9-]{1,62}(/[a-z][a-z0-9-]{1,62}){0,8}$'
);

CREATE FUNCTION data_grant_local_consumer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('/' IN NEW.consumer) = 0
       AND NOT EXISTS (SELECT FROM department WHERE code = NEW.consumer) THEN
        RAISE EXCEPTION 'grant consumer % is not a registered department', NEW.consumer
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER data_grant_local_consumer BEFORE INSERT OR UPDATE OF consumer ON data_grant
    FOR EACH ROW EXECUTE FUNCTION data_grant_local_consumer();
