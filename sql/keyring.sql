-- pg_dscsa: key administration, per-key grants and session key management.
--
-- Routines only (tables are in sql/tables.sql), each CREATE OR REPLACE so that upgrade
-- scripts replay this file. Every routine written in SQL or PL/pgSQL pins
-- search_path = pg_catalog, pg_temp. The SECURITY DEFINER ones touch only the
-- extension's own tables, except dscsa.key_usage (see there).

-- Rust: generate a data key, have the hook wrap it, prove it unwraps; return only the
-- wrapped form. Not granted to anyone: called by create_key/rotate_key below.
CREATE OR REPLACE FUNCTION dscsa._wrap_new_key(key_id integer, key_name text, version integer, kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'wrap_new_key_wrapper';

-- Queues a relcache invalidation of dscsa.keyring, delivered to every backend at commit:
-- sessions then bring their loaded keys in step with the keyring (src/rotation.rs).
CREATE OR REPLACE FUNCTION dscsa._keyring_changed() RETURNS void
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'keyring_changed_wrapper';

-- Whether the statement runs inside a transaction block (BEGIN, or several statements
-- sent as one), where the procedures that commit per batch cannot run.
CREATE OR REPLACE FUNCTION dscsa._in_transaction_block() RETURNS boolean
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'in_transaction_block_wrapper';

-- Refuses, before anything changes, to run a procedure that commits per batch inside a
-- transaction block (where its first COMMIT would fail half-way).
CREATE OR REPLACE FUNCTION dscsa._require_own_transaction(what text) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF dscsa._in_transaction_block() THEN
        RAISE EXCEPTION '% commits after every batch and cannot run inside a transaction block', what
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Run the CALL as a statement of its own, outside BEGIN ... COMMIT and not batched with other statements.';
    END IF;
END
$$;

-- Locks the keyring against concurrent key creation and checks a new key's name: well
-- formed and not taken (by a key of any purpose). Shared by the create_* functions.
CREATE OR REPLACE FUNCTION dscsa._claim_key_name(key_name text) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    LOCK TABLE dscsa.keyring IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_name = _claim_key_name.key_name) THEN
        RAISE EXCEPTION 'key "%" already exists', _claim_key_name.key_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use dscsa.rotate_key() to add a new version.';
    END IF;
    IF _claim_key_name.key_name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid key name'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A key name is 1 to 63 characters of A-Z a-z 0-9 _ . : -';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION dscsa.create_key(key_name text, kek text DEFAULT 'dev')
    RETURNS integer
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
    w record;
BEGIN
    PERFORM dscsa._claim_key_name(create_key.key_name);
    new_id := nextval('dscsa.keyring_key_id_seq');
    SELECT * INTO STRICT w FROM dscsa._wrap_new_key(new_id, create_key.key_name, 1, create_key.kek);
    INSERT INTO dscsa.keyring (key_id, key_name, version, status, kek_ref, wrapped_key, key_check)
    VALUES (new_id, create_key.key_name, 1, 'active', w.kek_ref, w.wrapped_key, w.key_check);
    PERFORM dscsa._audit_key_event('create_key', create_key.key_name, new_id, 1, NULL,
        jsonb_build_object('purpose', 'data', 'status', 'active', 'kek_ref', w.kek_ref));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.create_key(text, text) IS
    'Creates key version 1 (active): a fresh data key wrapped by the KMS hook under kek. No role may use it until dscsa.grant_key().';

CREATE OR REPLACE FUNCTION dscsa.rotate_key(key_name text, kek text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur dscsa.keyring;
    new_id integer;
    new_version integer;
    w record;
BEGIN
    LOCK TABLE dscsa.keyring IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO cur FROM dscsa.keyring k
     WHERE k.key_name = rotate_key.key_name AND k.status = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key "%" does not exist or has no active version', rotate_key.key_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF cur.purpose = 'import' THEN
        RAISE EXCEPTION 'key "%" is an imported key; it cannot be rotated here', rotate_key.key_name
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Import the application''s new key under a new name with dscsa.import_key().';
    END IF;
    SELECT max(k.version) + 1 INTO new_version FROM dscsa.keyring k WHERE k.key_name = rotate_key.key_name;
    new_id := nextval('dscsa.keyring_key_id_seq');
    SELECT * INTO STRICT w
      FROM dscsa._wrap_new_key(new_id, rotate_key.key_name, new_version, coalesce(rotate_key.kek, cur.kek_ref));
    UPDATE dscsa.keyring SET status = 'decrypt_only', deactivated_at = now() WHERE keyring.key_id = cur.key_id;
    INSERT INTO dscsa.keyring (key_id, key_name, version, purpose, blind_index_length, status,
                               kek_ref, wrapped_key, key_check)
    VALUES (new_id, rotate_key.key_name, new_version, cur.purpose, cur.blind_index_length, 'active',
            w.kek_ref, w.wrapped_key, w.key_check);
    PERFORM dscsa._keyring_changed();
    PERFORM dscsa._audit_key_event('rotate_key', rotate_key.key_name, new_id, new_version,
        jsonb_build_object('active_key_id', cur.key_id, 'active_version', cur.version),
        jsonb_build_object('active_key_id', new_id, 'active_version', new_version,
                           'previous_version_status', 'decrypt_only', 'kek_ref', w.kek_ref));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.rotate_key(text, text) IS
    'Adds a new active version of a data or blind-index key; the previous active version becomes decrypt-only.';

-- The other two purposes. A key name has one purpose for all its versions.
CREATE OR REPLACE FUNCTION dscsa.create_blind_index_key(key_name text, length integer DEFAULT 16, kek text DEFAULT 'dev')
    RETURNS integer
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
    w record;
BEGIN
    IF length NOT BETWEEN 8 AND 32 THEN
        RAISE EXCEPTION 'blind index length must be 8 to 32 bytes'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'See docs/BLIND_INDEX.md for choosing it; 16 suits tables up to billions of rows.';
    END IF;
    PERFORM dscsa._claim_key_name(create_blind_index_key.key_name);
    new_id := nextval('dscsa.keyring_key_id_seq');
    SELECT * INTO STRICT w FROM dscsa._wrap_new_key(new_id, create_blind_index_key.key_name, 1, kek);
    INSERT INTO dscsa.keyring (key_id, key_name, version, purpose, blind_index_length, status,
                               kek_ref, wrapped_key, key_check)
    VALUES (new_id, create_blind_index_key.key_name, 1, 'blind_index', length, 'active',
            w.kek_ref, w.wrapped_key, w.key_check);
    PERFORM dscsa._audit_key_event('create_key', create_blind_index_key.key_name, new_id, 1, NULL,
        jsonb_build_object('purpose', 'blind_index', 'length', length, 'status', 'active', 'kek_ref', w.kek_ref));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.create_blind_index_key(text, integer, text) IS
    'Creates a blind-index (HMAC-SHA-256) key whose index values keep length bytes of the MAC.';

CREATE OR REPLACE FUNCTION dscsa._wrap_imported_key(key_id integer, key_name text, version integer, reference text, kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'wrap_imported_key_wrapper';

CREATE OR REPLACE FUNCTION dscsa.import_key(key_name text, reference text, kek text DEFAULT 'dev')
    RETURNS integer
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
    w record;
BEGIN
    PERFORM dscsa._claim_key_name(import_key.key_name);
    new_id := nextval('dscsa.keyring_key_id_seq');
    SELECT * INTO STRICT w FROM dscsa._wrap_imported_key(new_id, import_key.key_name, 1, reference, kek);
    INSERT INTO dscsa.keyring (key_id, key_name, version, purpose, external_ref, status,
                               kek_ref, wrapped_key, key_check)
    VALUES (new_id, import_key.key_name, 1, 'import', reference, 'active',
            w.kek_ref, w.wrapped_key, w.key_check);
    PERFORM dscsa._audit_key_event('import_key', import_key.key_name, new_id, 1, NULL,
        jsonb_build_object('purpose', 'import', 'reference', reference, 'status', 'active', 'kek_ref', w.kek_ref));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.import_key(text, text, text) IS
    'Fetches another application''s AES-256-GCM key from the KMS (hook operation import) and keeps it wrapped, for dscsa.import_json().';

-- KEK rotation: every keyring entry that can still be loaded is unwrapped under its
-- current KEK and wrapped under new_kek by the hook, checked, and updated in place. No
-- data is rewritten. All or nothing: one failing entry rolls the whole rotation back.
CREATE OR REPLACE FUNCTION dscsa._rewrap_key(key_id integer, key_name text, version integer, kek_ref text,
                                             wrapped_key bytea, key_check bytea, new_kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'rewrap_key_wrapper';

CREATE OR REPLACE FUNCTION dscsa.rotate_kek(new_kek text DEFAULT 'dev', from_kek_ref text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k dscsa.keyring;
    w record;
    n integer := 0;
BEGIN
    LOCK TABLE dscsa.keyring IN SHARE ROW EXCLUSIVE MODE;
    IF new_kek IS NULL THEN
        RAISE EXCEPTION 'new_kek must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR k IN SELECT * FROM dscsa.keyring
              WHERE status <> 'retired' AND (from_kek_ref IS NULL OR keyring.kek_ref = from_kek_ref)
              ORDER BY key_id LOOP
        SELECT * INTO STRICT w
          FROM dscsa._rewrap_key(k.key_id, k.key_name, k.version, k.kek_ref, k.wrapped_key, k.key_check, new_kek);
        IF w.key_check <> k.key_check THEN
            RAISE EXCEPTION 'rewrapping key id % changed its check value', k.key_id
                USING ERRCODE = 'external_routine_exception';
        END IF;
        UPDATE dscsa.keyring SET wrapped_key = w.wrapped_key, kek_ref = w.kek_ref, rewrapped_at = now()
         WHERE keyring.key_id = k.key_id;
        PERFORM dscsa._audit_key_event('rotate_kek', k.key_name, k.key_id, k.version,
            jsonb_build_object('kek_ref', k.kek_ref), jsonb_build_object('kek_ref', w.kek_ref));
        n := n + 1;
    END LOOP;
    -- Cached copies of these keys leave the cluster's key cache (unwrapped again under
    -- the new KEK on next use).
    PERFORM dscsa._keyring_changed();
    RETURN n;
END
$$;
COMMENT ON FUNCTION dscsa.rotate_kek(text, text) IS
    'Re-wraps every non-retired keyring entry (or those under from_kek_ref) under new_kek through the KMS hook; no data is rewritten. Returns the number of entries.';

-- Per-key authorization. A data key can be granted for encrypt and decrypt, a
-- blind-index key for blind_index, an import key for decrypt (opening the other
-- application's values during dscsa.import_json).
CREATE OR REPLACE FUNCTION dscsa.grant_key(key_name text, role regrole, privilege text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_purpose text;
BEGIN
    SELECT k.purpose INTO key_purpose FROM dscsa.keyring k WHERE k.key_name = grant_key.key_name LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key "%" does not exist', grant_key.key_name USING ERRCODE = 'undefined_object';
    END IF;
    IF privilege NOT IN ('encrypt', 'decrypt', 'blind_index') THEN
        RAISE EXCEPTION 'privilege must be one of encrypt, decrypt, blind_index'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (key_purpose = 'data' AND privilege IN ('encrypt', 'decrypt')
            OR key_purpose = 'blind_index' AND privilege = 'blind_index'
            OR key_purpose = 'import' AND privilege = 'decrypt') THEN
        RAISE EXCEPTION 'a % key cannot be granted for %', replace(key_purpose, '_', '-'), privilege
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Data keys: encrypt, decrypt. Blind-index keys: blind_index. Import keys: decrypt.';
    END IF;
    INSERT INTO dscsa.key_grants (key_name, grantee, privilege)
    VALUES (grant_key.key_name, grant_key.role, grant_key.privilege)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM dscsa._audit_key_event('grant_key', grant_key.key_name, NULL, NULL, NULL,
            jsonb_build_object('grantee', grant_key.role::text, 'privilege', grant_key.privilege));
    END IF;
END
$$;
COMMENT ON FUNCTION dscsa.grant_key(text, regrole, text) IS
    'Lets role (and its members) load key key_name for encrypt, decrypt or blind_index; role-level grants still apply.';

-- Takes effect in sessions that hold the key at their next use of any key (keyring
-- invalidation): versions the loader may no longer use are unloaded and zeroized.
CREATE OR REPLACE FUNCTION dscsa.revoke_key(key_name text, role regrole, privilege text DEFAULT NULL)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    IF key_name IS NULL OR role IS NULL THEN
        RAISE EXCEPTION 'key_name and role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM dscsa.key_grants g
     WHERE g.key_name = revoke_key.key_name AND g.grantee = revoke_key.role
       AND (revoke_key.privilege IS NULL OR g.privilege = revoke_key.privilege);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM dscsa._keyring_changed();
    IF n > 0 THEN
        PERFORM dscsa._audit_key_event('revoke_key', revoke_key.key_name, NULL, NULL,
            jsonb_build_object('grantee', revoke_key.role::text, 'privilege', coalesce(revoke_key.privilege, 'all')),
            NULL);
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dscsa.revoke_key(text, regrole, text) IS
    'Withdraws a grant of dscsa.grant_key (all privileges when privilege is NULL); sessions holding the key lose it at their next key use.';

-- Keyring metadata without key material: all keys for key administrators, the keys a
-- role holds a grant on for everyone else. A view (not security_invoker): it reads the
-- keyring as its owner, and current_user inside it is the querying role.
CREATE OR REPLACE VIEW dscsa.keys WITH (security_barrier = true) AS
SELECT k.key_id, k.key_name, k.version, k.purpose, k.status, k.blind_index_length, k.kek_ref,
       k.created_at, k.created_by, k.deactivated_at, k.retired_at, k.rewrapped_at,
       ARRAY(SELECT DISTINCT g.privilege FROM dscsa.key_grants g
              WHERE g.key_name = k.key_name AND pg_catalog.pg_has_role(CURRENT_USER, g.grantee, 'USAGE')
              ORDER BY 1) AS my_privileges
  FROM dscsa.keyring k
 WHERE pg_catalog.pg_has_role(CURRENT_USER, 'dscsa_admin', 'USAGE')
    OR EXISTS (SELECT 1 FROM dscsa.key_grants g
                WHERE g.key_name = k.key_name AND pg_catalog.pg_has_role(CURRENT_USER, g.grantee, 'USAGE'));
COMMENT ON VIEW dscsa.keys IS
    'Keyring metadata (never key material): every key for dscsa_admin, otherwise the keys the role holds a grant on, with my_privileges.';

-- Who holds which grant (key administrators only).
CREATE OR REPLACE VIEW dscsa.key_grant_list AS
SELECT g.key_name, g.grantee, g.privilege, g.granted_at, g.granted_by FROM dscsa.key_grants g;
COMMENT ON VIEW dscsa.key_grant_list IS 'The grants of dscsa.grant_key(), for key administrators.';

-- Session key management. load_key runs with the caller's rights: the key is bound to
-- the caller and carries the caller's key grants; it reads the keyring as the extension
-- owner internally (src/owner.rs). The keys land in the caller's backend only.
CREATE OR REPLACE FUNCTION dscsa.load_key(key_name text, scope text DEFAULT 'session')
    RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE
    LANGUAGE c AS 'MODULE_PATHNAME', 'load_key_for_caller_wrapper';
COMMENT ON FUNCTION dscsa.load_key(text, text) IS
    'Unwraps every usable version of a key through the KMS hook into this session, bound to the current role (scope session or transaction); returns the number of versions.';

CREATE OR REPLACE FUNCTION dscsa.unload_key(key_name text) RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'unload_key_wrapper';
CREATE OR REPLACE FUNCTION dscsa.unload_all_keys() RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'unload_all_keys_wrapper';
CREATE OR REPLACE FUNCTION dscsa.loaded_keys()
    RETURNS TABLE (key_name text, version integer, key_id integer, active boolean, scope text,
                   loaded_by regrole, privileges text[])
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'loaded_key_details_wrapper';
COMMENT ON FUNCTION dscsa.unload_key(text) IS 'Zeroizes and forgets every loaded version of a key.';
COMMENT ON FUNCTION dscsa.unload_all_keys() IS 'Zeroizes and forgets every key of this session (as DISCARD ALL and RESET ALL do).';
COMMENT ON FUNCTION dscsa.loaded_keys() IS 'Which key versions this session holds, for which role, with which key privileges (never the key bytes).';

-- The arguments of a trigger (pg_trigger.tgargs: each argument ends with a zero byte).
CREATE OR REPLACE FUNCTION dscsa._trigger_args(tgargs bytea) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args text[] := '{}';
    rest bytea := tgargs;
    cut integer;
BEGIN
    LOOP
        cut := position('\x00'::bytea IN rest);
        EXIT WHEN cut = 0;
        args := args || convert_from(substr(rest, 1, cut - 1), getdatabaseencoding());
        rest := substr(rest, cut + 1);
    END LOOP;
    RETURN args;
END
$$;

-- Where each key version is used: every column of dscsa.encrypted or one of its domains
-- in every plain table, and every blind-index column that pg_dscsa's own triggers name,
-- counted by key id. Runs as the extension owner so that the count covers rows the
-- caller cannot see (row-level security, missing grants); it returns only counts.
--
-- Because it runs with the owner's rights it reads user tables only after checking them:
-- the candidates come from the system catalogs alone (pg_class, pg_attribute, pg_type,
-- pg_trigger; never from a table a role can write), each is a plain table (relkind r:
-- no view, foreign table or partitioned parent, whose reading could run someone's code)
-- scanned with ONLY (no inheritance child), and the only function applied to its rows is
-- dscsa.envelope_key_id (or substr on a bytea blind-index column).
CREATE OR REPLACE FUNCTION dscsa.key_usage(key_name text)
    RETURNS TABLE (key_id integer, version integer, status text,
                   table_name regclass, column_name name, rows bigint)
    LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col record;
BEGIN
    FOR col IN
        WITH RECURSIVE encrypted_types(oid) AS (
            SELECT 'dscsa.encrypted'::regtype::oid
            UNION
            SELECT t.oid FROM pg_type t JOIN encrypted_types e ON t.typbasetype = e.oid WHERE t.typtype = 'd')
        SELECT c.oid::regclass AS rel, a.attname
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          JOIN encrypted_types e ON e.oid = a.atttypid
         WHERE c.relkind = 'r'
           AND c.relnamespace <> 'pg_catalog'::regnamespace
           -- Other sessions' temporary tables cannot be read (nor can they outlive them).
           AND (c.relpersistence <> 't' OR c.relnamespace = pg_my_temp_schema())
         ORDER BY 1, 2
    LOOP
        RETURN QUERY EXECUTE format(
            'SELECT k.key_id, k.version, k.status, %L::regclass, %L::name, u.n
               FROM (SELECT dscsa.envelope_key_id(%I) AS id, count(*) AS n
                       FROM ONLY %s WHERE %I IS NOT NULL GROUP BY 1) u
               JOIN dscsa.keyring k ON k.key_id = u.id
              WHERE k.key_name = $1',
            col.rel, col.attname, col.attname, col.rel, col.attname)
        USING key_usage.key_name;
    END LOOP;
    -- Blind-index columns: the key id is their first 4 bytes. Named by the arguments of
    -- the blind-index trigger (column 2, key 3) and of the online-protection trigger
    -- (column 6, key 7).
    FOR col IN
        SELECT DISTINCT t.tgrelid::regclass AS rel, a.attname
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid AND c.relkind = 'r'
          CROSS JOIN LATERAL (SELECT dscsa._trigger_args(t.tgargs) AS args) x
          JOIN pg_attribute a ON a.attrelid = t.tgrelid AND NOT a.attisdropped AND a.attnum > 0
                             AND a.atttypid = 'bytea'::regtype
         WHERE (t.tgfoid = 'dscsa.blind_index_trigger()'::regprocedure
                AND a.attname = x.args[2] AND x.args[3] = key_usage.key_name)
            OR (t.tgfoid = 'dscsa.protect_sync_trigger()'::regprocedure
                AND a.attname = x.args[6] AND x.args[7] = key_usage.key_name)
         ORDER BY 1, 2
    LOOP
        RETURN QUERY EXECUTE format(
            'SELECT k.key_id, k.version, k.status, %L::regclass, %L::name, u.n
               FROM (SELECT (''x'' || encode(substr(%I, 1, 4), ''hex''))::bit(32)::integer AS id,
                            count(*) AS n
                       FROM ONLY %s WHERE %I IS NOT NULL GROUP BY 1) u
               JOIN dscsa.keyring k ON k.key_id = u.id
              WHERE k.key_name = $1',
            col.rel, col.attname, col.attname, col.rel, col.attname)
        USING key_usage.key_name;
    END LOOP;
END
$$;
COMMENT ON FUNCTION dscsa.key_usage(text) IS
    'Rows per key version, table and column for a key (counts only; scans every encrypted column of every plain table).';

-- Retires a decrypt-only version that no row uses any more. Retired versions are never
-- loaded again, so this is refused while any value still names the version.
CREATE OR REPLACE FUNCTION dscsa.retire_key(key_name text, version integer)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target dscsa.keyring;
    in_use bigint;
    where_used text;
BEGIN
    LOCK TABLE dscsa.keyring IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO target FROM dscsa.keyring k
     WHERE k.key_name = retire_key.key_name AND k.version = retire_key.version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key "%" has no version %', retire_key.key_name, retire_key.version
            USING ERRCODE = 'undefined_object';
    END IF;
    IF target.status = 'active' THEN
        RAISE EXCEPTION 'key "%" version % is the active version', retire_key.key_name, retire_key.version
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Rotate the key first with dscsa.rotate_key().';
    END IF;
    IF target.status = 'retired' THEN
        RETURN;
    END IF;
    IF target.purpose = 'audit' THEN
        RAISE EXCEPTION 'audit key versions are never retired: the trail names them for as long as it is kept'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT coalesce(sum(u.rows), 0),
           string_agg(format('%s.%I: %s', u.table_name, u.column_name, u.rows), ', ')
      INTO in_use, where_used
      FROM dscsa.key_usage(retire_key.key_name) u
     WHERE u.key_id = target.key_id;
    IF in_use > 0 THEN
        RAISE EXCEPTION 'key "%" version % is still used by % rows', retire_key.key_name, retire_key.version, in_use
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Rows per column: ' || where_used,
                  HINT = 'Re-encrypt those values under the active version first.';
    END IF;
    UPDATE dscsa.keyring SET status = 'retired', retired_at = now() WHERE keyring.key_id = target.key_id;
    PERFORM dscsa._keyring_changed();
    PERFORM dscsa._audit_key_event('retire_key', retire_key.key_name, target.key_id, target.version,
        jsonb_build_object('status', target.status), jsonb_build_object('status', 'retired'));
END
$$;
COMMENT ON FUNCTION dscsa.retire_key(text, integer) IS
    'Retires a decrypt-only key version; refused with the row count while any value uses it.';
