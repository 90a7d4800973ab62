-- pg_dscsa 0.1.0 -> 0.2.0: blind indexes, column protection (in place and online),
-- generated views, KEK rotation, blind-index key rotation, verification report, import
-- of values encrypted by other applications (CHANGELOG.md).
--
-- Every object created or replaced here is identical to a fresh 0.2.0 installation; the
-- integration test itest/tests/upgrade.rs compares the two catalog by catalog. Existing
-- keys and data are untouched: envelope format 1 and KMS protocol 1 are unchanged (the
-- protocol gains the optional "import" operation).

\echo Use "ALTER EXTENSION pg_dscsa UPDATE TO '0.2.0'" to load this file. \quit

-- Keyring: two more key purposes, and their columns.
ALTER TABLE dscsa.keyring DROP CONSTRAINT keyring_purpose_check;
ALTER TABLE dscsa.keyring ADD CONSTRAINT keyring_purpose_check
    CHECK (purpose IN ('data', 'blind_index', 'import'));
ALTER TABLE dscsa.keyring
    ADD COLUMN blind_index_length smallint CHECK ((purpose = 'blind_index') = (blind_index_length IS NOT NULL)
                                                 AND blind_index_length BETWEEN 8 AND 32),
    ADD COLUMN external_ref text CHECK ((purpose = 'import') = (external_ref IS NOT NULL)),
    ADD COLUMN rewrapped_at timestamptz;

-- Functions and procedures of 0.1.0 whose definition changed.

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
    RETURN new_id;
END
$$;

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
    RETURN new_id;
END
$$;

COMMENT ON FUNCTION dscsa.rotate_key(text, text) IS
    'Adds a new active version of a data or blind-index key; the previous active version becomes decrypt-only.';

-- Used once per transaction by encryption and blind-index lookups to notice a rotation
-- made by another session. PL/pgSQL so that its query plan is cached per session.
CREATE OR REPLACE FUNCTION dscsa._active_key_id(key_name text) RETURNS integer
    LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT k.key_id FROM dscsa.keyring k
             WHERE k.key_name = _active_key_id.key_name AND k.status = 'active');
END
$$;

-- Where each key version is used: every column of dscsa.encrypted or one of its domains
-- in every table, counted by envelope key id. Runs as the extension owner so that the
-- count covers rows the caller cannot see (row-level security, missing grants); it
-- returns only counts, never values.
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

-- Moves the values of one encrypted column from older key versions to the active version
-- of dscsa.key_name, in committed batches. Idempotent and resumable: rows already on the
-- active version are skipped, so a killed run is simply called again. Rows are locked
-- while they are rewritten (FOR UPDATE SKIP LOCKED, then retried), so concurrent INSERT,
-- UPDATE and DELETE stay correct. Plaintext exists only transiently inside each UPDATE.
-- The caller needs dscsa_reader and dscsa_writer, UPDATE on the table, and the key loaded.
-- It runs with the caller's rights (not SECURITY DEFINER) and has no SET clause because a
-- procedure with one cannot COMMIT; every object it names is schema-qualified instead.
CREATE OR REPLACE PROCEDURE dscsa.reencrypt(tbl regclass, col name, context text DEFAULT NULL, batch_size integer DEFAULT 5000)
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

-- New keyring functions.

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

-- ===== sql/blind_index.sql =====
-- pg_dscsa: blind indexes, integrity checks and imports (the Rust side is src/blind.rs,
-- src/triggers.rs and src/audit.rs; the format is docs/BLIND_INDEX.md).
--
-- Blind-index functions are STABLE (same answer within a statement for the same loaded
-- key, so the planner can use them as index scan keys) and PARALLEL RESTRICTED (keys
-- live in the leader backend only), like decrypt.

CREATE FUNCTION dscsa.blind_index(value text, key_name text, kind text DEFAULT 'generic')
    RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_wrapper';
COMMENT ON FUNCTION dscsa.blind_index(text, text, text) IS
    'Blind index (key id || truncated HMAC-SHA-256) of a plaintext under the active version of a blind-index key.';

CREATE FUNCTION dscsa.blind_index_candidates(value text, key_name text, kind text DEFAULT 'generic')
    RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_candidates_wrapper';
COMMENT ON FUNCTION dscsa.blind_index_candidates(text, text, text) IS
    'Blind indexes of a plaintext under every loaded version of a blind-index key: WHERE col_bidx = ANY (...) keeps working during a blind-index key rotation.';

CREATE FUNCTION dscsa.normalize_identifier(value text, kind text)
    RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'normalize_identifier_wrapper';
COMMENT ON FUNCTION dscsa.normalize_identifier(text, text) IS
    'The normalized form a blind index hashes: trimmed; GTIN-8/12/13 padded to GTIN-14; ISO expiry dates as YYMMDD.';

-- Row triggers; created by dscsa.protect_column(), not meant to be attached by hand.
CREATE FUNCTION dscsa.protect_sync_trigger() RETURNS trigger
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'protect_sync_trigger';
CREATE FUNCTION dscsa.blind_index_trigger() RETURNS trigger
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_trigger';

-- 'ok', 'failed' or 'malformed', never the plaintext.
CREATE FUNCTION dscsa.authenticate(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_authenticate';
CREATE FUNCTION dscsa.authenticate(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_authenticate';
COMMENT ON FUNCTION dscsa.authenticate(dscsa.encrypted, text) IS
    'Checks a value''s GCM tag under its key version: ok, failed (modified / wrong context) or malformed. Reveals nothing else.';

-- {"nonce": base64, "ciphertext": base64} sealed by another application -> envelope.
CREATE FUNCTION dscsa.import_json(value jsonb, import_key text, kind text DEFAULT 'generic')
    RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_import_json';
CREATE FUNCTION dscsa.import_json(value jsonb, import_key text, kind text, context text)
    RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_import_json';
COMMENT ON FUNCTION dscsa.import_json(jsonb, text, text, text) IS
    'Converts an application''s AES-256-GCM {"nonce","ciphertext"} value into an envelope under the active data key, without the plaintext leaving memory.';

-- ===== sql/protect.sql =====
-- pg_dscsa: protecting columns of existing tables (docs/PROTECT.md).
--
-- dscsa.protect_column() turns a plaintext column into an encrypted one, in place (one
-- ALTER TABLE, for small tables) or online (twin column, batched backfill kept in sync
-- by a trigger, short cutover lock). dscsa.protected_columns records what was done, so
-- that a killed run resumes, views can be generated, keys rotated and columns verified.
--
-- The procedures run with the caller's rights (no SECURITY DEFINER: they alter the
-- caller's tables) and have no SET clause, because a procedure with one cannot COMMIT;
-- every object they name is schema-qualified instead, and every generated statement
-- quotes identifiers with format('%I') / regclass output.

CREATE TABLE dscsa.protected_columns (
    relid               regclass NOT NULL,
    column_name         name NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('generic', 'gtin', 'serial', 'lot', 'expiry')),
    context             text NOT NULL DEFAULT '',
    data_key            text NOT NULL,
    original_type       text NOT NULL,
    original_attnum     smallint NOT NULL,
    original_not_null   boolean NOT NULL,
    blind_index_column  name,
    blind_index_key     text,
    -- name and uniqueness of the constraint or index carried over to the blind index
    carried_index       name,
    carried_unique      boolean,
    carried_constraint  boolean,
    mode                text NOT NULL CHECK (mode IN ('in_place', 'online')),
    state               text NOT NULL CHECK (state IN ('backfilling', 'protected')),
    twin_column         name,
    backfill_end_block  bigint,
    next_block          bigint,
    rows_done           bigint NOT NULL DEFAULT 0,
    view_name           regclass,
    started_at          timestamptz NOT NULL DEFAULT now(),
    protected_at        timestamptz,
    protected_by        name NOT NULL DEFAULT session_user,
    PRIMARY KEY (relid, column_name),
    CHECK ((blind_index_column IS NULL) = (blind_index_key IS NULL))
);
COMMENT ON TABLE dscsa.protected_columns IS
    'Columns protected by dscsa.protect_column(): field kind, context, keys, blind index, migration progress.';
SELECT pg_catalog.pg_extension_config_dump('dscsa.protected_columns', '');

CREATE FUNCTION dscsa._encrypt_function(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.dscsa_encrypt' ELSE 'dscsa.dscsa_encrypt_' || kind END;

CREATE FUNCTION dscsa._encrypted_type(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.encrypted' ELSE 'dscsa.' || kind || '_encrypted' END;

-- The plaintext of column `col` as text, the way the triggers see it: dates as ISO
-- YYYY-MM-DD whatever DateStyle is, char(n) without padding.
CREATE FUNCTION dscsa._plaintext_expr(col name, col_type regtype, prefix text DEFAULT '') RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN col_type = 'date'::regtype
                THEN pg_catalog.format('pg_catalog.to_char(%s%I, ''YYYY-MM-DD'')', prefix, col)
                ELSE pg_catalog.format('%s%I::text', prefix, col) END;

-- Everything that would stop a column from being protected, as one message per line,
-- before anything changes. The column's own single-column UNIQUE constraint or plain
-- btree index is carried over to the blind index (so needs a blind-index key); every
-- other dependency is refused with its description.
CREATE FUNCTION dscsa.protect_column_problems(tbl regclass, col name, blind_index_key text DEFAULT NULL)
    RETURNS SETOF text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    att pg_catalog.pg_attribute;
    rel pg_catalog.pg_class;
    d record;
BEGIN
    SELECT * INTO rel FROM pg_catalog.pg_class WHERE oid = tbl;
    SELECT * INTO att FROM pg_catalog.pg_attribute
     WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RETURN NEXT pg_catalog.format('column %I of %s does not exist', col, tbl);
        RETURN;
    END IF;
    IF rel.relkind <> 'r' THEN
        RETURN NEXT pg_catalog.format('%s is not an ordinary table (partitioned tables, views and foreign tables are not supported)', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid = tbl OR inhparent = tbl) THEN
        RETURN NEXT pg_catalog.format('%s takes part in table inheritance', tbl);
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RETURN NEXT pg_catalog.format('you do not own %s', tbl);
    END IF;
    IF att.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'date'::regtype) THEN
        RETURN NEXT pg_catalog.format('column %I is of type %s; text, varchar, char and date can be protected',
                                      col, pg_catalog.format_type(att.atttypid, att.atttypmod));
    END IF;
    IF att.atthasdef OR att.attgenerated <> '' OR att.attidentity <> '' THEN
        RETURN NEXT pg_catalog.format('column %I has a default, identity or generation expression; drop it first (a default cannot be encrypted once for all rows)', col);
    END IF;
    FOR d IN
        SELECT dep.classid, dep.objid,
               pg_catalog.pg_describe_object(dep.classid, dep.objid, dep.objsubid) AS what
          FROM pg_catalog.pg_depend dep
         WHERE dep.refclassid = 'pg_catalog.pg_class'::regclass AND dep.refobjid = tbl
           AND dep.refobjsubid = att.attnum AND dep.deptype IN ('n', 'a')
    LOOP
        IF d.classid = 'pg_catalog.pg_constraint'::regclass THEN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                        WHERE c.oid = d.objid AND c.contype = 'u' AND c.conrelid = tbl
                          AND c.conkey = ARRAY[att.attnum]
                          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f
                                           WHERE f.contype = 'f' AND f.conindid = c.conindid)) THEN
                IF blind_index_key IS NULL THEN
                    RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
                END IF;
            ELSE
                RETURN NEXT d.what || ' depends on the column (primary keys, foreign keys, CHECK and multi-column constraints cannot be carried over; drop or change it first)';
            END IF;
        ELSIF d.classid = 'pg_catalog.pg_class'::regclass
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                                      JOIN pg_catalog.pg_am am ON am.oid = ic.relam
                           WHERE i.indexrelid = d.objid AND i.indnatts = 1 AND i.indkey[0] = att.attnum
                             AND i.indpred IS NULL AND i.indexprs IS NULL AND am.amname = 'btree') THEN
            IF blind_index_key IS NULL THEN
                RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
            END IF;
        ELSIF d.classid = 'pg_catalog.pg_trigger'::regclass
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid
                             AND t.tgname = pg_catalog.left('dscsa_sync_' || col, 63)) THEN
            NULL;  -- our own backfill trigger (a resumed run)
        ELSE
            RETURN NEXT d.what || ' depends on the column; drop it first and recreate it over the generated view';
        END IF;
    END LOOP;
    IF (SELECT count(*) FROM pg_catalog.pg_index i
         WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indkey[0] = att.attnum
           AND i.indpred IS NULL AND i.indexprs IS NULL) > 1 THEN
        RETURN NEXT pg_catalog.format('column %I has more than one index; keep one', col);
    END IF;
END
$$;
COMMENT ON FUNCTION dscsa.protect_column_problems(regclass, name, text) IS
    'Why dscsa.protect_column() would refuse this column (no rows: it would proceed).';

-- The single-column UNIQUE constraint or btree index carried over to the blind index.
CREATE FUNCTION dscsa._carried_index(tbl regclass, col name,
    OUT index_name name, OUT is_unique boolean, OUT is_constraint boolean)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$
    SELECT ic.relname, i.indisunique,
           EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'u')
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = col
     WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indkey[0] = a.attnum
       AND i.indpred IS NULL AND i.indexprs IS NULL
     LIMIT 1
$$;

CREATE FUNCTION dscsa._raise_problems(tbl regclass, col name, blind_index_key text) RETURNS void
    LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    problems text;
BEGIN
    SELECT string_agg(p, E'\n') INTO problems FROM dscsa.protect_column_problems(tbl, col, blind_index_key) p;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'column %.% cannot be protected', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = problems,
                  HINT = 'Nothing was changed.';
    END IF;
END
$$;

-- After the protected column exists: blind-index trigger, index (carried name), the
-- UNIQUE constraint (carried name) and the registry row.
CREATE FUNCTION dscsa._finish_protection(r dscsa.protected_columns) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    idx name;
BEGIN
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I, %I ON %s FOR EACH ROW
             EXECUTE FUNCTION dscsa.blind_index_trigger(%L, %L, %L, %L, %L)',
            pg_catalog.left('dscsa_bidx_' || r.column_name, 63), r.column_name, r.blind_index_column, r.relid,
            r.column_name, r.blind_index_column, r.blind_index_key, r.context, r.data_key);
        idx := coalesce(r.carried_index, pg_catalog.left(pg_catalog.format('%s_%s_bidx', (SELECT relname FROM pg_catalog.pg_class WHERE oid = r.relid), r.column_name), 63));
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                        WHERE i.indrelid = r.relid AND a.attname = r.blind_index_column AND i.indisvalid) THEN
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, idx, r.relid, r.blind_index_column);
        END IF;
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                r.relid, r.carried_index,
                (SELECT ic.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                  WHERE i.indrelid = r.relid AND a.attname = r.blind_index_column LIMIT 1));
        END IF;
    END IF;
    r.state := 'protected';
    r.protected_at := pg_catalog.now();
    DELETE FROM dscsa.protected_columns p WHERE p.relid = r.relid AND p.column_name = r.column_name;
    INSERT INTO dscsa.protected_columns SELECT r.*;
END
$$;

CREATE PROCEDURE dscsa.protect_column(
    tbl regclass,
    col name,
    kind text DEFAULT NULL,
    mode text DEFAULT 'online',
    blind_index_key text DEFAULT NULL,
    context text DEFAULT '',
    batch_size integer DEFAULT 10000)
    LANGUAGE plpgsql
AS $$
DECLARE
    r dscsa.protected_columns;
    att pg_catalog.pg_attribute;
    carried record;
    data_key text := pg_catalog.current_setting('dscsa.key_name');
    col_type regtype;
    plain text;
    bidx name;
    step bigint;
    n bigint;
    total_pages bigint;
    started timestamptz := pg_catalog.clock_timestamp();
    attempts integer := 0;
    sweep_needed boolean := false;
    backfill text;
BEGIN
    IF mode NOT IN ('in_place', 'online') THEN
        RAISE EXCEPTION 'mode must be ''in_place'' or ''online''' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode = 'online' THEN
        PERFORM dscsa._require_own_transaction('dscsa.protect_column(..., mode => ''online'')');
    END IF;
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF FOUND AND r.state = 'protected' THEN
        RAISE NOTICE 'dscsa.protect_column: %.% is already protected', tbl, col;
        RETURN;
    END IF;
    IF FOUND THEN
        -- A killed online run: resume it with the options it was started with.
        IF r.mode <> mode OR r.kind <> coalesce(protect_column.kind, r.kind)
           OR r.blind_index_key IS DISTINCT FROM protect_column.blind_index_key
           OR r.context <> protect_column.context THEN
            RAISE EXCEPTION 'a protection of %.% with other options is in progress', tbl, col
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Call it again with the same options to resume, or CALL dscsa.abort_protect_column() first.';
        END IF;
        RAISE NOTICE 'dscsa.protect_column %.%: resuming at block % of %', tbl, col, r.next_block, r.backfill_end_block;
    ELSE
        IF data_key = '' THEN
            RAISE EXCEPTION 'dscsa.key_name is not set' USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        IF dscsa._active_key_id(data_key) IS NULL THEN
            RAISE EXCEPTION 'data key "%" has no active version', data_key USING ERRCODE = 'undefined_object';
        END IF;
        PERFORM dscsa._raise_problems(tbl, col, blind_index_key);
        SELECT * INTO att FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        col_type := att.atttypid;
        r.relid := tbl;
        r.column_name := col;
        r.kind := coalesce(protect_column.kind, CASE WHEN col_type = 'date'::regtype THEN 'expiry' ELSE 'generic' END);
        IF r.kind NOT IN ('generic', 'gtin', 'serial', 'lot', 'expiry') THEN
            RAISE EXCEPTION 'kind must be one of generic, gtin, serial, lot, expiry' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        r.context := protect_column.context;
        r.data_key := data_key;
        r.original_type := pg_catalog.format_type(att.atttypid, att.atttypmod);
        r.original_attnum := att.attnum;
        r.original_not_null := att.attnotnull;
        r.mode := mode;
        r.state := 'backfilling';
        r.rows_done := 0;
        r.started_at := pg_catalog.now();
        r.protected_by := session_user;
        IF blind_index_key IS NOT NULL THEN
            IF NOT EXISTS (SELECT 1 FROM dscsa._key_meta(dscsa._active_key_id(blind_index_key)) m
                            WHERE m.purpose = 'blind_index') THEN
                RAISE EXCEPTION 'blind-index key "%" has no active version', blind_index_key
                    USING ERRCODE = 'undefined_object',
                          HINT = 'Create it with dscsa.create_blind_index_key().';
            END IF;
            r.blind_index_key := blind_index_key;
            r.blind_index_column := pg_catalog.left(col || '_bidx', 63);
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = r.blind_index_column AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'column %.% already exists', tbl, r.blind_index_column USING ERRCODE = 'duplicate_column';
            END IF;
            SELECT * INTO carried FROM dscsa._carried_index(tbl, col);
            r.carried_index := carried.index_name;
            r.carried_unique := coalesce(carried.is_unique, false);
            r.carried_constraint := coalesce(carried.is_constraint, false);
        END IF;
    END IF;
    col_type := (SELECT a.atttypid FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped);
    plain := dscsa._plaintext_expr(col, col_type);

    IF mode = 'in_place' THEN
        -- One transaction, one table rewrite: the USING expressions read the old row.
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, r.carried_index);
        ELSIF r.carried_index IS NOT NULL THEN
            EXECUTE pg_catalog.format('DROP INDEX %s', pg_catalog.quote_ident((SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)) || '.' || pg_catalog.quote_ident(r.carried_index));
        END IF;
        IF r.blind_index_column IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I bytea', tbl, r.blind_index_column);
            EXECUTE pg_catalog.format(
                'ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L),
                                  ALTER COLUMN %7$I TYPE bytea USING dscsa.blind_index(%5$s, %8$L, %9$L)',
                tbl, col, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context,
                r.blind_index_column, r.blind_index_key, r.kind);
        ELSE
            EXECUTE pg_catalog.format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L)',
                tbl, col, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context);
        END IF;
        PERFORM dscsa._finish_protection(r);
        RAISE NOTICE 'dscsa.protect_column %.%: protected in place', tbl, col;
        RETURN;
    END IF;

    -- Online. Phase 1 (once): twin column, blind-index column, sync trigger, NOT NULL check.
    IF r.twin_column IS NULL THEN
        r.twin_column := pg_catalog.left(col || '_dscsa_new', 63);
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', tbl, r.twin_column, dscsa._encrypted_type(r.kind));
        IF r.blind_index_column IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I bytea', tbl, r.blind_index_column);
        END IF;
        -- Inserts, and updates that write the plaintext column: the twin (and index)
        -- follow the plaintext in the same statement. The backfill writes only the twin,
        -- so it does not pay for the trigger.
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW
             EXECUTE FUNCTION dscsa.protect_sync_trigger(%L, %L, %L, %L, %L, %L, %L)',
            pg_catalog.left('dscsa_sync_' || col, 63), col,
            tbl, col, r.twin_column, r.kind, r.context, r.data_key,
            coalesce(r.blind_index_column, ''), coalesce(r.blind_index_key, ''));
        -- Rows added after this point get their twin from the trigger; the backfill
        -- walks the blocks that exist now.
        r.backfill_end_block := pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint;
        r.next_block := 0;
        INSERT INTO dscsa.protected_columns SELECT r.*;
        COMMIT;
        RAISE NOTICE 'dscsa.protect_column %.%: twin column and sync trigger in place; backfilling % blocks',
            tbl, col, r.backfill_end_block;
    END IF;

    -- Phase 2: backfill block ranges (TID range scans), one committed batch at a time.
    -- The UPDATE encrypts the row's current plaintext under the row lock (it does not
    -- write the plaintext column, so the sync trigger does not fire): a concurrent UPDATE
    -- of the plaintext either ran before (twin set by the trigger, row skipped) or waits,
    -- and then the WHERE clause and the twin are re-evaluated on the new row version.
    -- Blocks per batch, from the rows per block of the first blocks (statistics may be
    -- missing on a table that was never analyzed).
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE ctid < ''(8,0)''::tid', tbl) INTO n;
    step := greatest(1, batch_size / greatest(n / greatest(least(r.backfill_end_block, 8), 1), 1));
    total_pages := greatest(r.backfill_end_block, 1);
    backfill := pg_catalog.format(
        'UPDATE %1$s SET %2$I = %3$s(%4$s, %5$L)%6$s
          WHERE ctid >= pg_catalog.format(''(%%s,0)'', $1::bigint)::tid
            AND ctid < pg_catalog.format(''(%%s,0)'', $2::bigint)::tid AND %2$I IS NULL AND %7$I IS NOT NULL',
        tbl, r.twin_column, dscsa._encrypt_function(r.kind), plain, r.context,
        CASE WHEN r.blind_index_column IS NULL THEN ''
             ELSE pg_catalog.format(', %I = dscsa.blind_index(%s, %L, %L)', r.blind_index_column, plain, r.blind_index_key, r.kind) END,
        col);
    WHILE r.next_block < r.backfill_end_block LOOP
        EXECUTE backfill USING r.next_block, r.next_block + step;
        GET DIAGNOSTICS n = ROW_COUNT;
        r.next_block := r.next_block + step;
        r.rows_done := r.rows_done + n;
        UPDATE dscsa.protected_columns p SET next_block = r.next_block, rows_done = r.rows_done
         WHERE p.relid = tbl AND p.column_name = col;
        COMMIT;
        RAISE NOTICE 'dscsa.protect_column %.%: % rows, % %% of blocks, % rows/s', tbl, col, r.rows_done,
            round(100.0 * least(r.next_block, total_pages) / total_pages, 1),
            round(r.rows_done / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - started), 0.001));
    END LOOP;

    -- Phase 3: prove every row has its twin. A NOT VALID check "plaintext present =>
    -- twin present" (for a NOT NULL column: "twin present", the form SET NOT NULL can
    -- use) is added under a brief lock, then validated under SHARE UPDATE EXCLUSIVE
    -- (reads and writes go on). Rows the block walk could not see (written with
    -- triggers disabled) fail the proof; they are swept and it is retried.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = tbl AND conname = pg_catalog.left(r.twin_column || '_check', 63)) THEN
        LOOP
            BEGIN
                SET LOCAL lock_timeout = '2s';
                EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s) NOT VALID',
                    tbl, pg_catalog.left(r.twin_column || '_check', 63),
                    CASE WHEN r.original_not_null THEN pg_catalog.format('%I IS NOT NULL', r.twin_column)
                         ELSE pg_catalog.format('%I IS NULL OR %I IS NOT NULL', col, r.twin_column) END);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                attempts := attempts + 1;
                IF attempts >= 30 THEN
                    RAISE EXCEPTION 'could not lock % to add the completeness check after % attempts', tbl, attempts
                        USING ERRCODE = 'lock_not_available',
                              HINT = 'The backfill is complete and kept in sync; call dscsa.protect_column again when the table is less busy.';
                END IF;
            END;
            PERFORM pg_catalog.pg_sleep(0.5);
        END LOOP;
        COMMIT;
        attempts := 0;
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
    EXCEPTION WHEN check_violation THEN
        sweep_needed := true;
    END;
    IF sweep_needed THEN
        EXECUTE pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NULL AND %I IS NOT NULL',
            tbl, col, col, r.twin_column, col);
        EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
    END IF;
    COMMIT;
    IF r.blind_index_column IS NOT NULL THEN
        bidx := pg_catalog.left(pg_catalog.format('%s_%s_bidx_new', (SELECT relname FROM pg_catalog.pg_class WHERE oid = tbl), col), 63);
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                      ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                    WHERE i.indrelid = tbl AND a.attname = r.blind_index_column AND NOT i.indisvalid) THEN
            RAISE EXCEPTION 'an invalid index exists on %.%', tbl, r.blind_index_column
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'A CREATE INDEX CONCURRENTLY failed; drop that index and call again.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                        WHERE i.indrelid = tbl AND a.attname = r.blind_index_column AND i.indisvalid) THEN
            -- Blocks writes (not reads) while it builds; build it yourself with CREATE
            -- INDEX CONCURRENTLY on the blind-index column beforehand to avoid that.
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, bidx, tbl, r.blind_index_column);
            COMMIT;
        END IF;
    END IF;

    -- Phase 4: cutover under a short ACCESS EXCLUSIVE lock, retried if it cannot be had
    -- within lock_timeout (so waiting here never queues the application behind us).
    LOOP
        BEGIN
            SET LOCAL lock_timeout = '2s';
            EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
            -- No scan here: the validated check proves every row has its twin.
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', pg_catalog.left('dscsa_sync_' || col, 63), tbl);
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, col);
            EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, r.twin_column, col);
            IF r.original_not_null THEN
                EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, col);
                EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
            END IF;
            -- (For a nullable column the check named the dropped column and went with it.)
            IF bidx IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                             WHERE c.relname = bidx AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = tbl)) THEN
                EXECUTE pg_catalog.format('ALTER INDEX %s RENAME TO %I',
                    pg_catalog.quote_ident((SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)) || '.' || pg_catalog.quote_ident(bidx),
                    coalesce(r.carried_index, pg_catalog.left(pg_catalog.format('%s_%s_bidx', (SELECT relname FROM pg_catalog.pg_class WHERE oid = tbl), col), 63)));
            END IF;
            r.twin_column := NULL;
            r.next_block := NULL;
            PERFORM dscsa._finish_protection(r);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            attempts := attempts + 1;
            IF attempts >= 30 THEN
                RAISE EXCEPTION 'could not lock % for the cutover after % attempts', tbl, attempts
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'The backfill is complete and kept in sync; call dscsa.protect_column again when the table is less busy.';
            END IF;
            RAISE NOTICE 'dscsa.protect_column %.%: table busy, cutover retried (%)', tbl, col, attempts;
        END;
        PERFORM pg_catalog.pg_sleep(0.5);
    END LOOP;
    COMMIT;
    RAISE NOTICE 'dscsa.protect_column %.%: protected online, % rows backfilled', tbl, col, r.rows_done;
END
$$;
COMMENT ON PROCEDURE dscsa.protect_column(regclass, name, text, text, text, text, integer) IS
    'Encrypts a plaintext text/varchar/char/date column in place or online (resumable: call it again after an interruption).';

-- Rolls back an online protection that has not cut over: drops the twin, the blind-index
-- column, the trigger and the check. The plaintext column was never touched.
CREATE PROCEDURE dscsa.abort_protect_column(tbl regclass, col name)
    LANGUAGE plpgsql
AS $$
DECLARE
    r dscsa.protected_columns;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF NOT FOUND OR r.state <> 'backfilling' THEN
        RAISE EXCEPTION 'no online protection of %.% is in progress', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A protected column is reverted with dscsa.unprotect_column().';
    END IF;
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', pg_catalog.left('dscsa_sync_' || col, 63), tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.twin_column);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.blind_index_column);
    END IF;
    DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
END
$$;

-- The reverse operation (rollback): decrypts the column back to its original type in
-- one ALTER TABLE, and turns a carried blind index back into the original UNIQUE
-- constraint or index. Needs dscsa_reader (it decrypts) and the keys loaded.
CREATE PROCEDURE dscsa.unprotect_column(tbl regclass, col name)
    LANGUAGE plpgsql
AS $$
DECLARE
    r dscsa.protected_columns;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF NOT FOUND OR r.state <> 'protected' THEN
        RAISE EXCEPTION '%.% is not a protected column', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'An online protection in progress is rolled back with dscsa.abort_protect_column().';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = r.view_name) THEN
        RAISE EXCEPTION 'drop the generated view % first', r.view_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = pg_catalog.format('SELECT dscsa.drop_view(%L);', tbl::text);
    END IF;
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', pg_catalog.left('dscsa_bidx_' || col, 63), tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING dscsa.dscsa_decrypt(%2$I, %4$L)::%3$s',
        tbl, col, r.original_type, r.context);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, r.blind_index_column);
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE (%I)', tbl, r.carried_index, col);
        ELSIF r.carried_index IS NOT NULL THEN
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, r.carried_index, tbl, col);
        END IF;
    END IF;
    DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    RAISE NOTICE 'dscsa.unprotect_column %.%: back to %', tbl, col, r.original_type;
END
$$;

-- ===== sql/views.sql =====
-- pg_dscsa: what sits on top of protected columns: the generated plaintext view, the
-- blind-index key rotation, and the auditor's verification report (docs/PROTECT.md).

-- Creates or regenerates a view presenting the table with its protected columns
-- decrypted (original names, types and column order; blind-index columns hidden).
-- It is security_invoker, so the caller's grants and the table's row-level security
-- apply; INSTEAD OF triggers encrypt on INSERT and UPDATE and delete by primary key.
-- Regenerating keeps the view's owner, grants and comment, and checks afterwards that
-- security_invoker is still set.
CREATE FUNCTION dscsa.create_view(tbl regclass, view_name name DEFAULT NULL)
    RETURNS regclass
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    nsp name;
    rel name;
    v text;
    fn text;
    qualified_tbl text;
    sel text;
    ins_cols text;
    ins_vals text;
    upd text;
    pk_cond text;
    old_acl aclitem[];
    old_owner oid;
    old_comment text;
    existing oid;
    g record;
    c record;
    result regclass;
BEGIN
    SELECT n.nspname, cl.relname INTO nsp, rel
      FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = tbl;
    IF NOT EXISTS (SELECT 1 FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.state = 'protected') THEN
        RAISE EXCEPTION '% has no protected column', tbl USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    view_name := coalesce(view_name, pg_catalog.left(rel || '_plain', 63));
    v := pg_catalog.format('%I.%I', nsp, view_name);
    -- The trigger function runs with a pinned search_path: name the table in full.
    qualified_tbl := pg_catalog.format('%I.%I', nsp, rel);
    fn := pg_catalog.format('%I.%I', nsp, pg_catalog.left(view_name || '_dscsa_write', 63));

    -- One row per visible column, in the table's original column order.
    sel := ''; ins_cols := ''; ins_vals := ''; upd := '';
    FOR c IN
        SELECT a.attname, a.atttypid::regtype AS typ, p.kind, p.context, p.original_type,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr
          FROM pg_catalog.pg_attribute a
          LEFT JOIN dscsa.protected_columns p ON p.relid = tbl AND p.column_name = a.attname AND p.state = 'protected'
          LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = tbl AND d.adnum = a.attnum
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname NOT IN (SELECT q.blind_index_column FROM dscsa.protected_columns q
                                  WHERE q.relid = tbl AND q.blind_index_column IS NOT NULL)
           AND a.attgenerated = ''
         ORDER BY coalesce(p.original_attnum, a.attnum), a.attnum
    LOOP
        IF sel <> '' THEN
            sel := sel || ', '; ins_cols := ins_cols || ', '; ins_vals := ins_vals || ', '; upd := upd || ', ';
        END IF;
        ins_cols := ins_cols || pg_catalog.quote_ident(c.attname);
        IF c.kind IS NULL THEN
            sel := sel || pg_catalog.format('t.%I', c.attname);
            ins_vals := ins_vals || pg_catalog.format('NEW.%I', c.attname);
            upd := upd || pg_catalog.format('%1$I = NEW.%1$I', c.attname);
        ELSE
            sel := sel || pg_catalog.format('dscsa.dscsa_decrypt(t.%1$I, %2$L)::%3$s AS %1$I', c.attname, c.context, c.original_type);
            ins_vals := ins_vals || pg_catalog.format('%s(%s, %L)', dscsa._encrypt_function(c.kind),
                dscsa._plaintext_expr(c.attname, c.original_type::regtype, 'NEW.'), c.context);
            -- An UPDATE that does not change the plaintext keeps the stored ciphertext.
            upd := upd || pg_catalog.format('%1$I = CASE WHEN NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I THEN t.%1$I ELSE %2$s(%3$s, %4$L) END',
                c.attname, dscsa._encrypt_function(c.kind),
                dscsa._plaintext_expr(c.attname, c.original_type::regtype, 'NEW.'), c.context);
        END IF;
    END LOOP;
    SELECT string_agg(pg_catalog.format('t.%1$I = OLD.%1$I', a.attname), ' AND ')
      INTO pk_cond
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;

    -- Keep what a regeneration must not lose.
    SELECT cl.oid, cl.relacl, cl.relowner, pg_catalog.obj_description(cl.oid, 'pg_class')
      INTO existing, old_acl, old_owner, old_comment
      FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = nsp AND cl.relname = view_name;
    IF existing IS NOT NULL THEN
        IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = existing) <> 'v' THEN
            RAISE EXCEPTION '% exists and is not a view', v USING ERRCODE = 'wrong_object_type';
        END IF;
        -- Fails (and changes nothing) if other views depend on it.
        EXECUTE pg_catalog.format('DROP VIEW %s', v);
    END IF;
    EXECUTE pg_catalog.format('CREATE VIEW %s WITH (security_invoker = true) AS SELECT %s FROM %s t', v, sel, tbl);
    -- Column defaults of the table, so that INSERT ... RETURNING through the view sees them.
    FOR c IN
        SELECT a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr
          FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attrdef d ON d.adrelid = tbl AND d.adnum = a.attnum
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
    LOOP
        EXECUTE pg_catalog.format('ALTER VIEW %s ALTER COLUMN %I SET DEFAULT %s', v, c.attname, c.default_expr);
    END LOOP;
    IF pk_cond IS NOT NULL THEN
        EXECUTE pg_catalog.format($f$
            CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
                LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
            AS $body$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    INSERT INTO %2$s (%3$s) VALUES (%4$s);
                    RETURN NEW;
                ELSIF TG_OP = 'UPDATE' THEN
                    UPDATE %2$s t SET %5$s WHERE %6$s;
                    IF NOT FOUND THEN RETURN NULL; END IF;
                    RETURN NEW;
                ELSE
                    DELETE FROM %2$s t WHERE %6$s;
                    IF NOT FOUND THEN RETURN NULL; END IF;
                    RETURN OLD;
                END IF;
            END
            $body$ $f$, fn, qualified_tbl, ins_cols, ins_vals, upd, pk_cond);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', fn);
        EXECUTE pg_catalog.format('CREATE TRIGGER dscsa_write INSTEAD OF INSERT OR UPDATE OR DELETE ON %s
                                   FOR EACH ROW EXECUTE FUNCTION %s()', v, fn);
    ELSE
        RAISE NOTICE '% has no primary key: the view % is read-only', tbl, v;
    END IF;
    result := v::regclass;
    IF existing IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO %I', v, (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = old_owner));
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', v);
        FOR g IN SELECT * FROM pg_catalog.aclexplode(old_acl) LOOP
            CONTINUE WHEN g.grantee = old_owner;
            EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', g.privilege_type, v,
                CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident((SELECT rolname FROM pg_catalog.pg_roles WHERE oid = g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        IF old_comment IS NOT NULL THEN
            EXECUTE pg_catalog.format('COMMENT ON VIEW %s IS %L', v, old_comment);
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = result AND 'security_invoker=true' = ANY (reloptions)) THEN
        RAISE EXCEPTION 'view % lost security_invoker', v USING ERRCODE = 'internal_error';
    END IF;
    UPDATE dscsa.protected_columns p SET view_name = result WHERE p.relid = tbl;
    RETURN result;
END
$$;
COMMENT ON FUNCTION dscsa.create_view(regclass, name) IS
    'Creates or regenerates the security_invoker view of a protected table (decrypted columns, writable through INSTEAD OF triggers); keeps grants, owner and comment.';

-- Drops the generated view of a table and its INSTEAD OF trigger function (which
-- DROP VIEW alone would leave behind). Fails, changing nothing, if other views depend on it.
CREATE FUNCTION dscsa.drop_view(tbl regclass)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
AS $$
DECLARE
    v oid;
    nsp name;
    vname name;
BEGIN
    SELECT c.oid, n.nspname, c.relname INTO v, nsp, vname
      FROM dscsa.protected_columns p
      JOIN pg_catalog.pg_class c ON c.oid = p.view_name
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE p.relid = tbl
     LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION '% has no generated view', tbl USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE pg_catalog.format('DROP VIEW %I.%I', nsp, vname);
    EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS %I.%I()', nsp, pg_catalog.left(vname || '_dscsa_write', 63));
    UPDATE dscsa.protected_columns p SET view_name = NULL WHERE p.relid = tbl;
END
$$;
COMMENT ON FUNCTION dscsa.drop_view(regclass) IS
    'Drops the generated view of a protected table and its trigger function.';

-- Blind-index key rotation: after dscsa.rotate_key(<blind-index key>), recomputes the
-- blind indexes still under older versions, in committed batches. Lookups written with
-- dscsa.blind_index_candidates() find rows under either version throughout.
CREATE PROCEDURE dscsa.reindex_blind(tbl regclass, col name, batch_size integer DEFAULT 5000)
    LANGUAGE plpgsql
AS $$
DECLARE
    r dscsa.protected_columns;
    active_prefix bytea;
    stmt text;
    n bigint;
    done bigint := 0;
    total bigint;
    remaining bigint;
    waits integer := 0;
    started timestamptz := pg_catalog.clock_timestamp();
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col AND p.state = 'protected';
    IF NOT FOUND OR r.blind_index_column IS NULL THEN
        RAISE EXCEPTION '%.% is not a protected column with a blind index', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM dscsa._require_own_transaction('dscsa.reindex_blind');
    active_prefix := pg_catalog.int4send(dscsa._active_key_id(r.blind_index_key));
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NOT NULL AND pg_catalog.substr(%I, 1, 4) <> $1',
        tbl, r.blind_index_column, r.blind_index_column) INTO total USING active_prefix;
    -- Setting the index to NULL makes the blind-index trigger recompute it under the
    -- active version from the decrypted value.
    stmt := pg_catalog.format(
        'WITH batch AS (SELECT ctid FROM %1$s WHERE %2$I IS NOT NULL AND pg_catalog.substr(%2$I, 1, 4) <> $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %2$I = NULL FROM batch WHERE t.ctid = batch.ctid',
        tbl, r.blind_index_column);
    LOOP
        EXECUTE stmt USING active_prefix, batch_size;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NOT NULL AND pg_catalog.substr(%I, 1, 4) <> $1',
                tbl, r.blind_index_column, r.blind_index_column) INTO remaining USING active_prefix;
            EXIT WHEN remaining = 0;
            waits := waits + 1;
            IF waits > 600 THEN
                RAISE WARNING '% rows of %.% are still locked by other transactions; call dscsa.reindex_blind again', remaining, tbl, col;
                EXIT;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.1);
            CONTINUE;
        END IF;
        done := done + n;
        COMMIT;
        RAISE NOTICE 'dscsa.reindex_blind %.%: % of % rows (% %%), % rows/s', tbl, col, done, total,
            CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) ELSE 100 END,
            round(done / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - started), 0.001));
    END LOOP;
END
$$;

-- The auditor's report on one encrypted column, without revealing any plaintext: one
-- row per key version (rows, how many authenticate, which fail, by primary key) and
-- one row (key_id NULL) counting NULLs. Every value is checked with its GCM tag, so the
-- caller needs the keys loaded (a version that cannot be loaded is an error, not a
-- "failed" row). With no primary key, failing rows are identified by ctid.
CREATE FUNCTION dscsa.verify_column(tbl regclass, col name, context text DEFAULT NULL)
    RETURNS TABLE (key_id integer, key_name text, key_version integer, key_status text,
                   rows bigint, authenticated bigint, failed bigint, failed_rows jsonb)
    LANGUAGE plpgsql STABLE PARALLEL UNSAFE
AS $$
DECLARE
    ctx text := coalesce(context, (SELECT p.context FROM dscsa.protected_columns p
                                    WHERE p.relid = tbl AND p.column_name = col), '');
    pk text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                    WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped
                      AND (t.oid = 'dscsa.encrypted'::regtype OR t.typbasetype = 'dscsa.encrypted'::regtype)) THEN
        RAISE EXCEPTION 'column %.% is not an encrypted column', tbl, col USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT 'pg_catalog.jsonb_build_object(' || string_agg(pg_catalog.format('%L, x.%I', a.attname, a.attname), ', ') || ')'
      INTO pk
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;
    pk := coalesce(pk, 'pg_catalog.jsonb_build_object(''ctid'', x.ctid::text)');
    RETURN QUERY EXECUTE pg_catalog.format(
        'WITH checked AS (
             SELECT CASE WHEN v.verdict = ''malformed'' THEN NULL ELSE dscsa.envelope_key_id(x.%1$I)::integer END AS kid,
                    v.verdict, %2$s AS pk
               FROM %3$s x, LATERAL (SELECT dscsa.authenticate(x.%1$I, $1) AS verdict) v
              WHERE x.%1$I IS NOT NULL)
         SELECT c.kid, m.key_name, m.version, coalesce(m.status, CASE WHEN c.kid IS NULL THEN ''malformed'' ELSE ''unknown key id'' END),
                count(*), count(*) FILTER (WHERE c.verdict = ''ok''), count(*) FILTER (WHERE c.verdict <> ''ok''),
                coalesce(pg_catalog.jsonb_agg(c.pk) FILTER (WHERE c.verdict <> ''ok''), ''[]''::jsonb)
           FROM checked c LEFT JOIN LATERAL dscsa._key_meta(c.kid) m ON true
          GROUP BY c.kid, m.key_name, m.version, m.status
         UNION ALL
         SELECT NULL, NULL, NULL, ''null'', count(*), NULL, NULL, NULL FROM %3$s x WHERE x.%1$I IS NULL
         ORDER BY 1 NULLS LAST',
        col, pk, tbl) USING ctx;
END
$$;
COMMENT ON FUNCTION dscsa.verify_column(regclass, name, text) IS
    'Auditor''s report for an encrypted column: rows per key version, GCM-authenticated rows, failing rows by primary key, NULLs. Reveals no plaintext.';

-- ===== privileges (sql/privileges.sql) =====
REVOKE ALL ON ALL ROUTINES IN SCHEMA dscsa FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA dscsa FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dscsa._key_meta(integer), dscsa.normalize_identifier(text, text),
    dscsa._in_transaction_block(), dscsa._require_own_transaction(text)
    TO dscsa_admin, dscsa_writer, dscsa_reader;
-- Blind-index lookups (reveal an HMAC, never a value) for applications that read or write.
GRANT EXECUTE ON FUNCTION dscsa.blind_index(text, text, text),
    dscsa.blind_index_candidates(text, text, text) TO dscsa_reader, dscsa_writer;
-- Converting another application's ciphertext yields only ciphertext.
GRANT EXECUTE ON FUNCTION dscsa.import_json(jsonb, text, text),
    dscsa.import_json(jsonb, text, text, text) TO dscsa_writer;
-- Authenticating without decrypting: auditors (admin) and readers.
GRANT EXECUTE ON FUNCTION dscsa.authenticate(dscsa.encrypted), dscsa.authenticate(dscsa.encrypted, text),
    dscsa.verify_column(regclass, name, text) TO dscsa_admin, dscsa_reader;

-- Column protection and key administration. The DBA who protects a column owns the
-- table and also holds dscsa_writer (dscsa_reader to revert it).
GRANT EXECUTE ON FUNCTION dscsa.create_blind_index_key(text, integer, text),
    dscsa.import_key(text, text, text), dscsa.rotate_kek(text, text),
    dscsa.protect_column_problems(regclass, name, text), dscsa.create_view(regclass, name),
    dscsa.drop_view(regclass),
    dscsa._encrypt_function(text), dscsa._encrypted_type(text), dscsa._plaintext_expr(name, regtype, text),
    dscsa._carried_index(regclass, name), dscsa._raise_problems(regclass, name, text),
    dscsa._finish_protection(dscsa.protected_columns),
    dscsa.protect_sync_trigger(), dscsa.blind_index_trigger()
    TO dscsa_admin;
GRANT EXECUTE ON PROCEDURE dscsa.protect_column(regclass, name, text, text, text, text, integer),
    dscsa.abort_protect_column(regclass, name), dscsa.unprotect_column(regclass, name),
    dscsa.reindex_blind(regclass, name, integer) TO dscsa_admin;
GRANT SELECT ON dscsa.protected_columns TO dscsa_admin, dscsa_writer, dscsa_reader;
GRANT INSERT, UPDATE, DELETE ON dscsa.protected_columns TO dscsa_admin;
