-- What authentication reads on every request, in one statement: the session's
-- or API key's row joined to the member's account and the tenant's settings,
-- after which last_seen_at / last_used_at move (at most every p_touch_after).
-- Called through infra/db.py's call_for_credential, which sets app.tenant_id
-- from credential_tenant() in the same statement. SECURITY INVOKER: RLS
-- applies, and each function refuses to run unless app.tenant_id is p_tenant.
-- NULL: no such live credential.
CREATE FUNCTION session_principal(p_tenant uuid, p_hash bytea, p_now timestamptz,
                                  p_touch_after interval)
RETURNS jsonb
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public
AS $$
DECLARE
    cred record;
BEGIN
    IF p_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    IF current_setting('app.tenant_id', true) IS DISTINCT FROM p_tenant::text THEN
        RAISE EXCEPTION 'session_principal: app.tenant_id is not the tenant asked for'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT s.session_id, s.member_id, s.last_seen_at, s.authenticated_at, s.idle_timeout,
           s.expires_at, a.role, a.active, a.totp_confirmed, d.mfa_required
      INTO cred
      FROM session s
      JOIN account a ON a.tenant_id = s.tenant_id AND a.member_id = s.member_id
      JOIN tenant_directory d ON d.tenant_id = s.tenant_id
     WHERE s.tenant_id = p_tenant AND s.token_hash = p_hash AND s.stage = 'full'
       AND s.ended_at IS NULL;
    IF NOT FOUND OR NOT cred.active OR p_now >= cred.expires_at
       OR p_now >= cred.last_seen_at + cred.idle_timeout THEN
        RETURN NULL;
    END IF;
    IF p_now - cred.last_seen_at >= p_touch_after THEN
        UPDATE session SET last_seen_at = p_now
         WHERE tenant_id = p_tenant AND session_id = cred.session_id;
    END IF;
    RETURN jsonb_build_object(
        'credential_id', cred.session_id, 'member_id', cred.member_id,
        'authenticated_at', cred.authenticated_at, 'role', cred.role,
        'totp_confirmed', cred.totp_confirmed, 'mfa_required', cred.mfa_required);
END;
$$;

CREATE FUNCTION api_key_principal(p_tenant uuid, p_hash bytea, p_now timestamptz,
                                  p_touch_after interval)
RETURNS jsonb
LANGUAGE plpgsql SECURITY INVOKER SET search_path = public
AS $$
DECLARE
    cred record;
BEGIN
    IF p_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    IF current_setting('app.tenant_id', true) IS DISTINCT FROM p_tenant::text THEN
        RAISE EXCEPTION 'api_key_principal: app.tenant_id is not the tenant asked for'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT k.key_id, k.member_id, k.scopes, k.expires_at, k.revoked_at, k.last_used_at,
           a.role, a.active, a.totp_confirmed, d.mfa_required
      INTO cred
      FROM api_key k
      JOIN account a ON a.tenant_id = k.tenant_id AND a.member_id = k.member_id
      JOIN tenant_directory d ON d.tenant_id = k.tenant_id
     WHERE k.tenant_id = p_tenant AND k.token_hmac = p_hash;
    IF NOT FOUND OR cred.revoked_at IS NOT NULL OR NOT cred.active
       OR (cred.expires_at IS NOT NULL AND p_now >= cred.expires_at) THEN
        RETURN NULL;
    END IF;
    IF cred.last_used_at IS NULL OR p_now - cred.last_used_at >= p_touch_after THEN
        UPDATE api_key SET last_used_at = p_now
         WHERE tenant_id = p_tenant AND key_id = cred.key_id;
    END IF;
    RETURN jsonb_build_object(
        'credential_id', cred.key_id, 'member_id', cred.member_id,
        'scopes', to_jsonb(cred.scopes), 'role', cred.role,
        'totp_confirmed', cred.totp_confirmed, 'mfa_required', cred.mfa_required);
END;
$$;

REVOKE ALL ON FUNCTION session_principal(uuid, bytea, timestamptz, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION api_key_principal(uuid, bytea, timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION session_principal(uuid, bytea, timestamptz, interval) TO strongroom_app;
GRANT EXECUTE ON FUNCTION api_key_principal(uuid, bytea, timestamptz, interval) TO strongroom_app;
