-- How far each tenant's log is published to NATS JetStream: every event with
-- seq <= published_seq has been acknowledged by the stream. Written by the
-- appending process (after its publishes are acknowledged) and by the relay.
CREATE TABLE relay_cursor (
    tenant_id      uuid PRIMARY KEY,
    published_seq  bigint NOT NULL CHECK (published_seq >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE relay_cursor ENABLE ROW LEVEL SECURITY;
ALTER TABLE relay_cursor FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON relay_cursor
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE ON relay_cursor TO strongroom_app;

-- The platform reads heads and cursors across tenants: this role (the owner of
-- the schema), read-only, and the app role only through the SECURITY DEFINER
-- functions below, which return tenant ids and positions, never rows' content.
CREATE POLICY platform_read ON tenant_log FOR SELECT TO CURRENT_USER USING (true);
CREATE POLICY platform_read ON relay_cursor FOR SELECT TO CURRENT_USER USING (true);

-- Tenants whose log is ahead of what was published, and whose cursor has not
-- moved for p_idle (the appending process publishes and moves it itself; the
-- relay steps in when it did not: NATS down, process died, multi-process gaps).
CREATE FUNCTION relay_backlog(p_idle interval, p_limit integer)
RETURNS TABLE (tenant_id uuid, size bigint, published_seq bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT t.tenant_id, t.size, COALESCE(c.published_seq, 0)
    FROM tenant_log t LEFT JOIN relay_cursor c ON c.tenant_id = t.tenant_id
    WHERE t.size > COALESCE(c.published_seq, 0)
      AND COALESCE(c.updated_at, t.created_at) <= now() - p_idle
    ORDER BY COALESCE(c.updated_at, t.created_at)
    LIMIT p_limit
$$;
REVOKE ALL ON FUNCTION relay_backlog(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relay_backlog(interval, integer) TO strongroom_app;
