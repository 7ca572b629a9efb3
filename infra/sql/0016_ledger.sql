-- Signed checkpoints of each tenant log, written by the notary only after it
-- checked that the stored log extends its own last checkpoint. Insert-only:
-- `note` is the whole signed note (log signatures and witness cosignatures);
-- `frontier` is the notary's Merkle frontier at `size`, which it extends next
-- time from the new leaves' own bytes instead of trusting stored hashes.
CREATE TABLE checkpoint (
    tenant_id  uuid NOT NULL,
    size       bigint NOT NULL CHECK (size >= 1),
    root       bytea NOT NULL CHECK (length(root) = 32),
    note       text NOT NULL,
    frontier   bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, size)
);
ALTER TABLE checkpoint ENABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoint FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON checkpoint
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE TRIGGER checkpoint_append_only BEFORE UPDATE OR DELETE ON checkpoint
    FOR EACH ROW EXECUTE FUNCTION refuse_log_mutation();
CREATE TRIGGER checkpoint_no_truncate BEFORE TRUNCATE ON checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_mutation();
GRANT SELECT, INSERT ON checkpoint TO strongroom_app;

-- The notary keys that sign a tenant's checkpoints, with their validity: a
-- read model of the tenant's own `ledger.key_activated` / `ledger.key_retired`
-- events, written in the same transaction as the event (so it never disagrees
-- with the log). Only the end of validity ever changes.
CREATE TABLE ledger_key (
    tenant_id      uuid NOT NULL,
    name           text NOT NULL,
    key_id         bytea NOT NULL CHECK (length(key_id) = 4),
    public_key     bytea NOT NULL CHECK (length(public_key) = 32),
    valid_from     timestamptz NOT NULL,
    valid_until    timestamptz,
    activated_seq  bigint NOT NULL,
    retired_seq    bigint,
    PRIMARY KEY (tenant_id, name, key_id)
);
ALTER TABLE ledger_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_key FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ledger_key
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON ledger_key TO strongroom_app;
GRANT UPDATE (valid_until, retired_seq) ON ledger_key TO strongroom_app;

-- The notary's work list: tenants whose log has grown past their latest
-- checkpoint. Read across tenants by the owner through this function only,
-- which returns ids and sizes, never content.
CREATE POLICY platform_read ON checkpoint FOR SELECT TO CURRENT_USER USING (true);

CREATE FUNCTION checkpoint_backlog(p_limit integer, p_after uuid)
RETURNS TABLE (tenant_id uuid, size bigint, checkpoint_size bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT t.tenant_id, t.size, COALESCE(c.size, 0)
    FROM tenant_log t
    LEFT JOIN LATERAL (
        SELECT max(k.size) AS size FROM checkpoint k WHERE k.tenant_id = t.tenant_id
    ) c ON true
    WHERE (p_after IS NULL OR t.tenant_id > p_after)
      AND t.size > COALESCE(c.size, 0)
    ORDER BY t.tenant_id
    LIMIT p_limit
$$;
REVOKE ALL ON FUNCTION checkpoint_backlog(integer, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION checkpoint_backlog(integer, uuid) TO strongroom_app;
