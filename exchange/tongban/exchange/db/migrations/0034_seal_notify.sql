-- Nodes cache the seals their trust list names (docs/licences.md, "Verification"): any
-- change to a department seal or an SM2 seal (enrolled, rotated, revoked, retired) tells
-- every node on this database at once, as department changes do (0001).
CREATE FUNCTION seal_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tongban_seal', COALESCE(NEW.holder, OLD.holder));
    RETURN NULL;
END;
$$;

CREATE TRIGGER seal_key_notify
    AFTER INSERT OR UPDATE OR DELETE ON seal_key
    FOR EACH ROW EXECUTE FUNCTION seal_changed();

CREATE TRIGGER sm2_seal_key_notify
    AFTER INSERT OR UPDATE OR DELETE ON sm2_seal_key
    FOR EACH ROW EXECUTE FUNCTION seal_changed();
