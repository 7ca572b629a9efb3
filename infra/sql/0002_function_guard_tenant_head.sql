-- The tenant head only moves forward and is never deleted.
CREATE FUNCTION guard_tenant_head() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION '% on tenant_log is refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.tenant_id <> OLD.tenant_id OR NEW.origin <> OLD.origin OR NEW.size < OLD.size THEN
        RAISE EXCEPTION 'tenant_log may only grow' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
