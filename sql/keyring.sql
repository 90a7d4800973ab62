-- pg_dscsa: the keyring and session key management.
--
-- The keyring holds data keys only in wrapped form (encrypted by a KEK that stays in the
-- KMS/HSM). key_id is what every envelope names; it is never reused. The table is part
-- of pg_dump output (pg_extension_config_dump), so restored data stays decryptable.

CREATE SEQUENCE dscsa.keyring_key_id_seq AS integer MINVALUE 1;

CREATE TABLE dscsa.keyring (
    key_id          integer PRIMARY KEY DEFAULT nextval('dscsa.keyring_key_id_seq'),
    key_name        text NOT NULL CHECK (key_name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    version         integer NOT NULL CHECK (version > 0),
    -- data: encrypts envelopes. blind_index: HMAC key of blind indexes, never encrypts.
    -- import: another application's AES-GCM key, only used to convert its values.
    purpose         text NOT NULL DEFAULT 'data' CHECK (purpose IN ('data', 'blind_index', 'import')),
    blind_index_length smallint CHECK ((purpose = 'blind_index') = (blind_index_length IS NOT NULL)
                                       AND blind_index_length BETWEEN 8 AND 32),
    -- import keys: the KMS reference the key was fetched by.
    external_ref    text CHECK ((purpose = 'import') = (external_ref IS NOT NULL)),
    status          text NOT NULL CHECK (status IN ('active', 'decrypt_only', 'retired')),
    kek_ref         text NOT NULL,
    rewrapped_at    timestamptz,
    wrapped_key     bytea NOT NULL,
    key_check       bytea NOT NULL CHECK (length(key_check) = 16),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      name NOT NULL DEFAULT session_user,
    deactivated_at  timestamptz,
    retired_at      timestamptz,
    UNIQUE (key_name, version)
);
ALTER SEQUENCE dscsa.keyring_key_id_seq OWNED BY dscsa.keyring.key_id;
CREATE UNIQUE INDEX keyring_one_active_version ON dscsa.keyring (key_name, purpose) WHERE status = 'active';
COMMENT ON TABLE dscsa.keyring IS
    'Wrapped data keys. Readable by dscsa_admin only; changed only through dscsa.create_key() and dscsa.rotate_key().';

SELECT pg_catalog.pg_extension_config_dump('dscsa.keyring', '');
SELECT pg_catalog.pg_extension_config_dump('dscsa.keyring_key_id_seq', '');

-- Rust: generate a data key, have the hook wrap it, prove it unwraps; return only the
-- wrapped form. Not granted to anyone: called by create_key/rotate_key below.
CREATE FUNCTION dscsa._wrap_new_key(key_id integer, key_name text, version integer, kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'wrap_new_key_wrapper';

-- Queues a relcache invalidation of dscsa.keyring, delivered to every backend at commit:
-- sessions then re-read the active version of the keys they use (src/rotation.rs).
CREATE FUNCTION dscsa._keyring_changed() RETURNS void
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'keyring_changed_wrapper';

-- Locks the keyring against concurrent key creation and checks a new key's name: well
-- formed and not taken (by a key of any purpose). Shared by the create_* functions.
-- Whether the statement runs inside a transaction block (BEGIN, or several statements
-- sent as one), where the procedures that commit per batch cannot run.
CREATE FUNCTION dscsa._in_transaction_block() RETURNS boolean
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'in_transaction_block_wrapper';

-- Refuses, before anything changes, to run a procedure that commits per batch inside a
-- transaction block (where its first COMMIT would fail half-way).
CREATE FUNCTION dscsa._require_own_transaction(what text) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
AS $$
BEGIN
    IF dscsa._in_transaction_block() THEN
        RAISE EXCEPTION '% commits after every batch and cannot run inside a transaction block', what
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Run the CALL as a statement of its own, outside BEGIN ... COMMIT and not batched with other statements.';
    END IF;
END
$$;

CREATE FUNCTION dscsa._claim_key_name(key_name text) RETURNS void
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

CREATE FUNCTION dscsa.create_key(key_name text, kek text DEFAULT 'dev')
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
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.create_key(text, text) IS
    'Creates key version 1 (active): a fresh data key wrapped by the KMS hook under kek.';

CREATE FUNCTION dscsa.rotate_key(key_name text, kek text DEFAULT NULL)
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
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.rotate_key(text, text) IS
    'Adds a new active version of a data or blind-index key; the previous active version becomes decrypt-only.';

-- The other two purposes. A key name has one purpose for all its versions.
CREATE FUNCTION dscsa.create_blind_index_key(key_name text, length integer DEFAULT 16, kek text DEFAULT 'dev')
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
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.create_blind_index_key(text, integer, text) IS
    'Creates a blind-index (HMAC-SHA-256) key whose index values keep length bytes of the MAC.';

CREATE FUNCTION dscsa._wrap_imported_key(key_id integer, key_name text, version integer, reference text, kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'wrap_imported_key_wrapper';

CREATE FUNCTION dscsa.import_key(key_name text, reference text, kek text DEFAULT 'dev')
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
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.import_key(text, text, text) IS
    'Fetches another application''s AES-256-GCM key from the KMS (hook operation import) and keeps it wrapped, for dscsa.import_json().';

-- KEK rotation: every keyring entry that can still be loaded is unwrapped under its
-- current KEK and wrapped under new_kek by the hook, checked, and updated in place. No
-- data is rewritten. All or nothing: one failing entry rolls the whole rotation back.
CREATE FUNCTION dscsa._rewrap_key(key_id integer, key_name text, version integer, kek_ref text,
                                  wrapped_key bytea, key_check bytea, new_kek text)
    RETURNS TABLE (wrapped_key bytea, kek_ref text, key_check bytea)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'rewrap_key_wrapper';

CREATE FUNCTION dscsa.rotate_kek(new_kek text DEFAULT 'dev', from_kek_ref text DEFAULT NULL)
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
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dscsa.rotate_kek(text, text) IS
    'Re-wraps every non-retired keyring entry (or those under from_kek_ref) under new_kek through the KMS hook; no data is rewritten. Returns the number of entries.';

-- Metadata of a key id for reports (never key material).
CREATE FUNCTION dscsa._key_meta(key_id integer)
    RETURNS TABLE (key_name text, version integer, status text, purpose text)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT k.key_name, k.version, k.status, k.purpose FROM dscsa.keyring k WHERE k.key_id = _key_meta.key_id $$;

-- Used on the decrypt error path to tell "key not loaded" from "no such key id".
CREATE FUNCTION dscsa._key_exists(key_id integer) RETURNS boolean
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    RETURN EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_id = _key_exists.key_id);

-- Used once per transaction by encryption and blind-index lookups to notice a rotation
-- made by another session. PL/pgSQL so that its query plan is cached per session.
CREATE FUNCTION dscsa._active_key_id(key_name text) RETURNS integer
    LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT k.key_id FROM dscsa.keyring k
             WHERE k.key_name = _active_key_id.key_name AND k.status = 'active');
END
$$;

-- Session key management. load_key reads the keyring as the extension owner, so it is
-- SECURITY DEFINER with a pinned search_path; the keys land in the caller's backend only.
CREATE FUNCTION dscsa.load_key(key_name text, scope text DEFAULT 'session')
    RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'load_key_wrapper';
COMMENT ON FUNCTION dscsa.load_key(text, text) IS
    'Unwraps every usable version of a key through the KMS hook into this session (scope session or transaction); returns the number of versions.';

CREATE FUNCTION dscsa.unload_key(key_name text) RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'unload_key_wrapper';
CREATE FUNCTION dscsa.unload_all_keys() RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'unload_all_keys_wrapper';
CREATE FUNCTION dscsa.loaded_keys()
    RETURNS TABLE (key_name text, version integer, key_id integer, active boolean, scope text)
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'loaded_keys_wrapper';
COMMENT ON FUNCTION dscsa.unload_key(text) IS 'Zeroizes and forgets every loaded version of a key.';
COMMENT ON FUNCTION dscsa.loaded_keys() IS 'Which key versions this session holds (never the key bytes).';

-- Where each key version is used: every column of dscsa.encrypted or one of its domains
-- in every table, counted by envelope key id. Runs as the extension owner so that the
-- count covers rows the caller cannot see (row-level security, missing grants); it
-- returns only counts, never values.
CREATE FUNCTION dscsa.key_usage(key_name text)
    RETURNS TABLE (key_id integer, version integer, status text,
                   table_name regclass, column_name name, rows bigint)
    LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.oid::regclass AS rel, a.attname
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          JOIN pg_type t ON t.oid = a.atttypid
         WHERE c.relkind IN ('r', 'p', 'm')
           AND NOT c.relispartition            -- counted through their parent
           AND c.relnamespace <> 'pg_catalog'::regnamespace
           -- Other sessions' temporary tables cannot be read (nor can they outlive them).
           AND (c.relpersistence <> 't' OR c.relnamespace = pg_catalog.pg_my_temp_schema())
           AND (t.oid = 'dscsa.encrypted'::regtype OR t.typbasetype = 'dscsa.encrypted'::regtype)
         ORDER BY 1, 2
    LOOP
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT k.key_id, k.version, k.status, %L::regclass, %L::name, u.n
               FROM (SELECT dscsa.envelope_key_id(%I) AS id, count(*) AS n
                       FROM %s WHERE %I IS NOT NULL GROUP BY 1) u
               JOIN dscsa.keyring k ON k.key_id = u.id
              WHERE k.key_name = $1',
            col.rel, col.attname, col.attname, col.rel, col.attname)
        USING key_usage.key_name;
    END LOOP;
    -- Blind-index columns of protected columns: the key id is the first 4 bytes.
    IF pg_catalog.to_regclass('dscsa.protected_columns') IS NOT NULL THEN
        FOR col IN
            SELECT p.relid AS rel, p.blind_index_column AS attname
              FROM dscsa.protected_columns p
             WHERE p.blind_index_key = key_usage.key_name
             ORDER BY 1, 2
        LOOP
            RETURN QUERY EXECUTE pg_catalog.format(
                'SELECT k.key_id, k.version, k.status, %L::regclass, %L::name, u.n
                   FROM (SELECT (''x'' || pg_catalog.encode(pg_catalog.substr(%I, 1, 4), ''hex''))::bit(32)::integer AS id,
                                count(*) AS n
                           FROM %s WHERE %I IS NOT NULL GROUP BY 1) u
                   JOIN dscsa.keyring k ON k.key_id = u.id
                  WHERE k.key_name = $1',
                col.rel, col.attname, col.attname, col.rel, col.attname)
            USING key_usage.key_name;
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION dscsa.key_usage(text) IS
    'Rows per key version, table and column for a key (counts only; scans every encrypted column).';

-- Retires a decrypt-only version that no row uses any more. Retired versions are never
-- loaded again, so this is refused while any value still names the version.
CREATE FUNCTION dscsa.retire_key(key_name text, version integer)
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
    SELECT coalesce(sum(u.rows), 0),
           string_agg(pg_catalog.format('%s.%I: %s', u.table_name, u.column_name, u.rows), ', ')
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
END
$$;
COMMENT ON FUNCTION dscsa.retire_key(text, integer) IS
    'Retires a decrypt-only key version; refused with the row count while any value uses it.';

-- Moves the values of one encrypted column from older key versions to the active version
-- of dscsa.key_name, in committed batches. Idempotent and resumable: rows already on the
-- active version are skipped, so a killed run is simply called again. Rows are locked
-- while they are rewritten (FOR UPDATE SKIP LOCKED, then retried), so concurrent INSERT,
-- UPDATE and DELETE stay correct. Plaintext exists only transiently inside each UPDATE.
-- The caller needs dscsa_reader and dscsa_writer, UPDATE on the table, and the key loaded.
-- It runs with the caller's rights (not SECURITY DEFINER) and has no SET clause because a
-- procedure with one cannot COMMIT; every object it names is schema-qualified instead.
CREATE PROCEDURE dscsa.reencrypt(tbl regclass, col name, context text DEFAULT NULL, batch_size integer DEFAULT 5000)
    LANGUAGE plpgsql
AS $$
DECLARE
    key_name text := pg_catalog.current_setting('dscsa.key_name');
    active_id integer := dscsa._active_key_id(key_name);
    col_type regtype;
    encrypt_fn text;
    stmt text;
    total bigint;
    end_block bigint;
    block bigint;
    step bigint;
    done bigint := 0;
    n bigint;
    remaining bigint;
    waits integer := 0;
    started timestamptz := pg_catalog.clock_timestamp();
BEGIN
    IF active_id IS NULL THEN
        RAISE EXCEPTION 'key "%" has no active version', key_name USING ERRCODE = 'undefined_object';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM dscsa._require_own_transaction('dscsa.reencrypt');
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    encrypt_fn := CASE col_type
        WHEN 'dscsa.encrypted'::regtype THEN 'dscsa.dscsa_encrypt'
        WHEN 'dscsa.gtin_encrypted'::regtype THEN 'dscsa.dscsa_encrypt_gtin'
        WHEN 'dscsa.serial_encrypted'::regtype THEN 'dscsa.dscsa_encrypt_serial'
        WHEN 'dscsa.lot_encrypted'::regtype THEN 'dscsa.dscsa_encrypt_lot'
        WHEN 'dscsa.expiry_encrypted'::regtype THEN 'dscsa.dscsa_encrypt_expiry'
    END;
    IF encrypt_fn IS NULL THEN
        RAISE EXCEPTION 'column %.% is not an encrypted column', tbl, col USING ERRCODE = 'wrong_object_type';
    END IF;
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NOT NULL AND dscsa.envelope_key_id(%I) <> $1',
                              tbl, col, col)
       INTO total USING active_id;
    -- Pass 1 walks the table's blocks once, in ranges (TID range scans), so that every
    -- batch reads only its own blocks; rewritten rows move elsewhere and are skipped when
    -- met again. Rows locked by other transactions are skipped (SKIP LOCKED: neither side
    -- waits, so no deadlock) and picked up by pass 2.
    end_block := pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint;
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE ctid < ''(8,0)''::tid', tbl) INTO n;
    step := greatest(1, batch_size / greatest(n / greatest(least(end_block, 8), 1), 1));
    stmt := pg_catalog.format(
        'WITH batch AS (SELECT ctid FROM %1$s
                         WHERE ctid >= pg_catalog.format(''(%%s,0)'', $3::bigint)::tid
                           AND ctid < pg_catalog.format(''(%%s,0)'', $4::bigint)::tid
                           AND %2$I IS NOT NULL AND dscsa.envelope_key_id(%2$I) <> $1
                         FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %2$I = %3$s(dscsa.dscsa_decrypt(t.%2$I%4$s)%4$s)
           FROM batch WHERE t.ctid = batch.ctid',
        tbl, col, encrypt_fn, CASE WHEN context IS NULL THEN '' ELSE ', $2' END);
    block := 0;
    WHILE block < end_block LOOP
        EXECUTE stmt USING active_id, context, block, block + step;
        GET DIAGNOSTICS n = ROW_COUNT;
        block := block + step;
        done := done + n;
        COMMIT;
        RAISE NOTICE 'dscsa.reencrypt %.%: % of % rows (% %%), % rows/s', tbl, col, done, total,
            CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) ELSE 100 END,
            round(done / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - started), 0.001));
    END LOOP;
    -- Pass 2: whatever pass 1 skipped (locked rows, rows written under an older version
    -- by a session mid-rotation), until none is left.
    stmt := pg_catalog.format(
        'WITH batch AS (SELECT ctid FROM %1$s WHERE %2$I IS NOT NULL AND dscsa.envelope_key_id(%2$I) <> $1
                         LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %2$I = %3$s(dscsa.dscsa_decrypt(t.%2$I%4$s)%4$s)
           FROM batch WHERE t.ctid = batch.ctid',
        tbl, col, encrypt_fn, CASE WHEN context IS NULL THEN '' ELSE ', $2' END);
    LOOP
        EXECUTE stmt USING active_id, context, batch_size;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            -- Nothing unlocked is left; rows locked by other transactions are retried.
            EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NOT NULL AND dscsa.envelope_key_id(%I) <> $1',
                                      tbl, col, col)
               INTO remaining USING active_id;
            EXIT WHEN remaining = 0;
            waits := waits + 1;
            IF waits > 600 THEN
                RAISE WARNING '% rows of %.% are still locked by other transactions; call dscsa.reencrypt again',
                    remaining, tbl, col;
                EXIT;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.1);
            CONTINUE;
        END IF;
        done := done + n;
        COMMIT;
        RAISE NOTICE 'dscsa.reencrypt %.%: % of % rows (% %%), % rows/s', tbl, col, done, total,
            CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) ELSE 100 END,
            round(done / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - started), 0.001));
    END LOOP;
    RAISE NOTICE 'dscsa.reencrypt %.%: done, % rows re-encrypted under key id %', tbl, col, done, active_id;
END
$$;
COMMENT ON PROCEDURE dscsa.reencrypt(regclass, name, text, integer) IS
    'Re-encrypts a column under the active key version in committed batches; idempotent, resumable, safe under concurrent writes.';
