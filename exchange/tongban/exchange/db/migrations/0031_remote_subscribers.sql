-- Subscriptions across exchanges (docs/federation.md, "Subscriptions across exchanges"):
-- a peer's department subscribes to one of our datasets through its node, and we keep
-- its subscription (its acknowledged position) under its full name, `county-a/approval`,
-- as grants name it (migration 0029). A local consumer must still be a registered
-- department: the foreign key becomes a trigger that checks names without a `/`.
ALTER TABLE subscription DROP CONSTRAINT subscription_consumer_fkey;
ALTER TABLE subscription ADD CONSTRAINT subscription_consumer_form CHECK (
    consumer ~ '^[a-z][a-z0-9-]{1,62}(/[a-z][a-z0-9-]{1,62}){0,8}$'
);

CREATE FUNCTION subscription_local_consumer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('/' IN NEW.consumer) = 0
       AND NOT EXISTS (SELECT FROM department WHERE code = NEW.consumer) THEN
        RAISE EXCEPTION 'subscription consumer % is not a registered department', NEW.consumer
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER subscription_local_consumer BEFORE INSERT OR UPDATE OF consumer ON subscription
    FOR EACH ROW EXECUTE FUNCTION subscription_local_consumer();
