-- append_batch (0010) with the same behaviour, and lookups that stay O(batch):
-- under force_generic_plan the planner could not see that the replay and
-- erased-subject joins touch only the batch's command ids and subjects, and
-- scanned every command_log / subject_key row of the tenant on each append
-- (cost grew with the tenant's size). The explicit `= ANY (array)` conditions
-- let both joins use their primary key indexes. Privileges are unchanged
-- (CREATE OR REPLACE keeps them).
CREATE OR REPLACE FUNCTION append_batch(
    p_tenant uuid, p_origin text, p_size bigint, p_chain bytea,
    p_new_size bigint, p_new_chain bytea, p_new_frontier bytea, p_ts timestamptz,
    e_seq bigint[], e_stream text[], e_version integer[], e_id uuid[], e_type text[],
    e_leaf bytea[], e_leaf_hash bytea[], e_chain_hash bytea[],
    n_level smallint[], n_idx bigint[], n_hash bytea[],
    c_id uuid[], c_fingerprint bytea[], c_first_seq bigint[], c_count integer[],
    x_command integer[], x_stream text[], x_version integer[], x_any boolean[],
    p_hash bytea[], p_subject text[], p_command integer[], p_ciphertext bytea[]
) RETURNS jsonb
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = public
SET plan_cache_mode = force_generic_plan  -- array parameters: never worth re-planning
AS $$
DECLARE
    head tenant_log%ROWTYPE;
    replays jsonb;
    conflicts jsonb;
    erased jsonb;
BEGIN
    IF current_setting('app.tenant_id', true) IS DISTINCT FROM p_tenant::text THEN
        RAISE EXCEPTION 'append_batch: app.tenant_id is not the tenant appended to'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT * INTO head FROM tenant_log WHERE tenant_id = p_tenant FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO tenant_log (tenant_id, origin, size, chain_hash, frontier)
        VALUES (p_tenant, p_origin, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, '')
        ON CONFLICT DO NOTHING;
        SELECT * INTO head FROM tenant_log WHERE tenant_id = p_tenant FOR UPDATE;
    END IF;

    IF head.size IS DISTINCT FROM p_size OR head.chain_hash IS DISTINCT FROM p_chain
       OR (head.last_ts IS NOT NULL AND p_ts < head.last_ts) THEN
        RETURN jsonb_build_object(
            'status', 'stale', 'origin', head.origin, 'size', head.size,
            'chain', encode(head.chain_hash, 'hex'), 'frontier', encode(head.frontier, 'hex'),
            'last_ts', head.last_ts);
    END IF;

    SELECT jsonb_agg(jsonb_build_object(
               'command', c.ord - 1, 'fingerprint', encode(l.fingerprint, 'hex'),
               'first_seq', l.first_seq, 'count', l.event_count))
      INTO replays
      FROM unnest(c_id) WITH ORDINALITY AS c(id, ord)
      JOIN command_log l ON l.tenant_id = p_tenant AND l.command_id = c.id
     WHERE l.command_id = ANY (c_id);

    SELECT jsonb_agg(jsonb_build_object(
               'command', x.cmd, 'stream', x.stream, 'expected', x.version,
               'actual', x.actual, 'any', x.is_any))
      INTO conflicts
      FROM (
          SELECT u.cmd, u.stream, u.version, u.is_any,
                 COALESCE((SELECT e.stream_version FROM event_log e
                           WHERE e.tenant_id = p_tenant AND e.stream_id = u.stream
                           ORDER BY e.stream_version DESC LIMIT 1), 0) AS actual
            FROM unnest(x_command, x_stream, x_version, x_any) AS u(cmd, stream, version, is_any)
      ) AS x
     WHERE x.actual <> x.version;

    IF p_subject IS NOT NULL AND cardinality(p_subject) > 0 THEN
        -- Lock first, then look: a concurrent shred either committed before the
        -- lock (and the next statement's fresh snapshot sees it as erased) or
        -- waits for this batch and then erases its values too.
        PERFORM 1 FROM subject_key k
         WHERE k.tenant_id = p_tenant AND k.subject_id = ANY (p_subject) FOR SHARE;
        SELECT jsonb_agg(DISTINCT jsonb_build_object('command', p.cmd, 'subject', k.subject_id))
          INTO erased
          FROM unnest(p_subject, p_command) AS p(subject, cmd)
          JOIN subject_key k ON k.tenant_id = p_tenant AND k.subject_id = p.subject
         WHERE k.wrapped IS NULL AND k.subject_id = ANY (p_subject);
    END IF;

    IF replays IS NOT NULL OR conflicts IS NOT NULL OR erased IS NOT NULL THEN
        RETURN jsonb_build_object('status', 'rejected',
            'replays', COALESCE(replays, '[]'), 'conflicts', COALESCE(conflicts, '[]'),
            'erased', COALESCE(erased, '[]'));
    END IF;

    INSERT INTO event_log (tenant_id, seq, stream_id, stream_version, event_id, event_type,
                           recorded_at, leaf, leaf_hash, chain_hash)
    SELECT p_tenant, s, st, v, id, ty, p_ts, l, lh, ch
      FROM unnest(e_seq, e_stream, e_version, e_id, e_type, e_leaf, e_leaf_hash, e_chain_hash)
           AS t(s, st, v, id, ty, l, lh, ch);

    IF cardinality(n_level) > 0 THEN
        INSERT INTO merkle_node (tenant_id, level, idx, hash)
        SELECT p_tenant, lv, ix, h FROM unnest(n_level, n_idx, n_hash) AS t(lv, ix, h);
    END IF;

    INSERT INTO command_log (tenant_id, command_id, fingerprint, first_seq, event_count)
    SELECT p_tenant, c, f, s, n FROM unnest(c_id, c_fingerprint, c_first_seq, c_count) AS t(c, f, s, n);

    IF cardinality(p_hash) > 0 THEN
        INSERT INTO pii_value (tenant_id, value_hash, subject_id, ciphertext)
        SELECT p_tenant, h, s, c FROM unnest(p_hash, p_subject, p_ciphertext) AS t(h, s, c);
    END IF;

    UPDATE tenant_log
       SET size = p_new_size, chain_hash = p_new_chain, frontier = p_new_frontier, last_ts = p_ts
     WHERE tenant_id = p_tenant;
    RETURN jsonb_build_object('status', 'ok');
END;
$$;
