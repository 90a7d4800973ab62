-- The complete installation script of pg_dscsa 0.1.0 as released (the generated script
-- is exactly sql/{types,functions,keyring,privileges}.sql of commit 8c8139b, in that order).
-- Kept to test upgrades: scripts/test.sh installs it next to the current version.

-- pg_dscsa: the encrypted base type and the DSCSA field domains.
-- Values of dscsa.encrypted are only ever v1 envelopes (docs/FORMAT.md); there are no
-- casts to or from text and no comparison operators, by design.

CREATE TYPE dscsa.encrypted;

CREATE FUNCTION dscsa.encrypted_in(cstring) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_in';
CREATE FUNCTION dscsa.encrypted_out(dscsa.encrypted) RETURNS cstring
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_out';
CREATE FUNCTION dscsa.encrypted_recv(internal) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_recv';
CREATE FUNCTION dscsa.encrypted_send(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_send';

CREATE TYPE dscsa.encrypted (
    INPUT = dscsa.encrypted_in,
    OUTPUT = dscsa.encrypted_out,
    RECEIVE = dscsa.encrypted_recv,
    SEND = dscsa.encrypted_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = int4,
    -- Ciphertext does not compress: never try.
    STORAGE = external,
    CATEGORY = 'U'
);
COMMENT ON TYPE dscsa.encrypted IS
    'AES-256-GCM envelope (docs/FORMAT.md). Text form: dscsa:<base64url>. Decrypt with dscsa_decrypt().';

-- Read-only views of the public envelope header; no key needed.
CREATE FUNCTION dscsa.envelope_version(dscsa.encrypted) RETURNS smallint
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_version_wrapper';
CREATE FUNCTION dscsa.envelope_kind(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_kind_wrapper';
CREATE FUNCTION dscsa.envelope_key_id(dscsa.encrypted) RETURNS bigint
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_key_id_wrapper';
CREATE FUNCTION dscsa.envelope_nonce(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_nonce_wrapper';

-- Raw bytes in and out, for tools that move envelopes as bytea. The input is checked.
CREATE FUNCTION dscsa.envelope_bytes(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_send';
CREATE FUNCTION dscsa.to_encrypted(bytea) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_from_bytea';

-- One domain per DSCSA product-identifier field. The field kind sits in the
-- authenticated header, so a value of one kind fails the CHECK of another's domain
-- and cannot be decrypted as another kind.
CREATE DOMAIN dscsa.gtin_encrypted AS dscsa.encrypted
    CONSTRAINT gtin_envelope CHECK (dscsa.envelope_kind(VALUE) = 'gtin');
CREATE DOMAIN dscsa.serial_encrypted AS dscsa.encrypted
    CONSTRAINT serial_envelope CHECK (dscsa.envelope_kind(VALUE) = 'serial');
CREATE DOMAIN dscsa.lot_encrypted AS dscsa.encrypted
    CONSTRAINT lot_envelope CHECK (dscsa.envelope_kind(VALUE) = 'lot');
CREATE DOMAIN dscsa.expiry_encrypted AS dscsa.encrypted
    CONSTRAINT expiry_envelope CHECK (dscsa.envelope_kind(VALUE) = 'expiry');
COMMENT ON DOMAIN dscsa.gtin_encrypted IS 'Encrypted GTIN (AI 01); made by dscsa_encrypt_gtin().';
COMMENT ON DOMAIN dscsa.serial_encrypted IS 'Encrypted serial number (AI 21); made by dscsa_encrypt_serial().';
COMMENT ON DOMAIN dscsa.lot_encrypted IS 'Encrypted lot/batch (AI 10); made by dscsa_encrypt_lot().';
COMMENT ON DOMAIN dscsa.expiry_encrypted IS 'Encrypted expiry (AI 17); made by dscsa_encrypt_expiry().';

-- The armored text form as explicit functions. Casts to and from text are refused (below),
-- so that `col::text` can never be mistaken for decryption and `'...'::text::dscsa.encrypted`
-- never for encryption.
CREATE FUNCTION dscsa.armor(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_armor';
CREATE FUNCTION dscsa.dearmor(text) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_dearmor';
COMMENT ON FUNCTION dscsa.armor(dscsa.encrypted) IS 'The dscsa:... text form of an envelope (not a decryption).';
COMMENT ON FUNCTION dscsa.dearmor(text) IS 'Parses the dscsa:... text form (not an encryption); rejects anything else.';

-- PostgreSQL would otherwise allow explicit I/O-conversion casts between any type and
-- the string types. These casts take precedence and refuse with a clear message.
CREATE FUNCTION dscsa._refuse_cast_from_text(text) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cannot cast text to dscsa.encrypted'
        USING ERRCODE = 'cannot_coerce',
              HINT = 'Encrypt with dscsa_encrypt(); parse the dscsa:... text form with dscsa.dearmor().';
END
$$;
CREATE FUNCTION dscsa._refuse_cast_to_text(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cannot cast dscsa.encrypted to text'
        USING ERRCODE = 'cannot_coerce',
              HINT = 'Decrypt with dscsa_decrypt(); get the dscsa:... text form with dscsa.armor().';
END
$$;
CREATE FUNCTION dscsa._refuse_cast_from_varchar(varchar) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql RETURN dscsa._refuse_cast_from_text($1::text);
CREATE FUNCTION dscsa._refuse_cast_to_varchar(dscsa.encrypted) RETURNS varchar
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql RETURN dscsa._refuse_cast_to_text($1);
CREATE CAST (text AS dscsa.encrypted) WITH FUNCTION dscsa._refuse_cast_from_text(text);
CREATE CAST (dscsa.encrypted AS text) WITH FUNCTION dscsa._refuse_cast_to_text(dscsa.encrypted);
CREATE CAST (varchar AS dscsa.encrypted) WITH FUNCTION dscsa._refuse_cast_from_varchar(varchar);
CREATE CAST (dscsa.encrypted AS varchar) WITH FUNCTION dscsa._refuse_cast_to_varchar(dscsa.encrypted);

-- pg_dscsa: encrypt and decrypt.
--
-- Volatility, strictness and parallel safety are chosen on purpose:
-- * encrypt is VOLATILE: every call draws a fresh random nonce.
-- * decrypt is STABLE: same answer within a statement for the same loaded keys.
-- * both are PARALLEL RESTRICTED: data keys live only in the leader backend's private
--   memory and are never copied to shared memory, so they must run in the leader
--   (docs/SECURITY.md, "Parallel query").
-- * all are STRICT: NULL in, NULL out.
-- One C symbol serves the one- and two-argument forms (the second is the context).

-- generic
CREATE FUNCTION dscsa.dscsa_encrypt(plaintext text) RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt';
CREATE FUNCTION dscsa.dscsa_encrypt(plaintext text, context text) RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
-- The same functions over raw envelope bytes (bytea); malformed bytes raise 22P02.
CREATE FUNCTION dscsa.dscsa_decrypt(value bytea) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE FUNCTION dscsa.dscsa_decrypt(value bytea, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value bytea) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value bytea, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';

-- gtin
CREATE FUNCTION dscsa.dscsa_encrypt_gtin(plaintext text) RETURNS dscsa.gtin_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_gtin';
CREATE FUNCTION dscsa.dscsa_encrypt_gtin(plaintext text, context text) RETURNS dscsa.gtin_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_gtin';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.gtin_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_gtin';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.gtin_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_gtin';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.gtin_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_gtin';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.gtin_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_gtin';

-- serial
CREATE FUNCTION dscsa.dscsa_encrypt_serial(plaintext text) RETURNS dscsa.serial_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_serial';
CREATE FUNCTION dscsa.dscsa_encrypt_serial(plaintext text, context text) RETURNS dscsa.serial_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_serial';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.serial_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_serial';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.serial_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_serial';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.serial_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_serial';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.serial_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_serial';

-- lot
CREATE FUNCTION dscsa.dscsa_encrypt_lot(plaintext text) RETURNS dscsa.lot_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_lot';
CREATE FUNCTION dscsa.dscsa_encrypt_lot(plaintext text, context text) RETURNS dscsa.lot_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_lot';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.lot_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_lot';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.lot_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_lot';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.lot_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_lot';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.lot_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_lot';

-- expiry
CREATE FUNCTION dscsa.dscsa_encrypt_expiry(plaintext text) RETURNS dscsa.expiry_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_expiry';
CREATE FUNCTION dscsa.dscsa_encrypt_expiry(plaintext text, context text) RETURNS dscsa.expiry_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_expiry';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.expiry_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_expiry';
CREATE FUNCTION dscsa.dscsa_decrypt(value dscsa.expiry_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_expiry';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.expiry_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_expiry';
CREATE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.expiry_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_expiry';

COMMENT ON FUNCTION dscsa.dscsa_encrypt(text) IS
    'Encrypts with the active version of the key named by dscsa.key_name (loaded with dscsa.load_key).';
COMMENT ON FUNCTION dscsa.dscsa_encrypt(text, text) IS
    'As dscsa_encrypt(text), binding a context (e.g. erp.stock_lot.serial) that decryption must repeat.';
COMMENT ON FUNCTION dscsa.dscsa_decrypt(dscsa.encrypted) IS
    'Decrypts; raises XX001 if the value was modified or is decrypted under the wrong key or context.';
COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(dscsa.encrypted) IS
    'As dscsa_decrypt, but returns NULL for a value that fails authentication or is malformed.';

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
    -- 'blind_index' keys (HMAC, never used to encrypt) fit here without a format change.
    purpose         text NOT NULL DEFAULT 'data' CHECK (purpose IN ('data', 'blind_index')),
    status          text NOT NULL CHECK (status IN ('active', 'decrypt_only', 'retired')),
    kek_ref         text NOT NULL,
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

CREATE FUNCTION dscsa.create_key(key_name text, kek text DEFAULT 'dev')
    RETURNS integer
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
    w record;
BEGIN
    LOCK TABLE dscsa.keyring IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_name = create_key.key_name) THEN
        RAISE EXCEPTION 'key "%" already exists', create_key.key_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use dscsa.rotate_key() to add a new version.';
    END IF;
    IF create_key.key_name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid key name'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A key name is 1 to 63 characters of A-Z a-z 0-9 _ . : -';
    END IF;
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
     WHERE k.key_name = rotate_key.key_name AND k.purpose = 'data' AND k.status = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key "%" does not exist or has no active version', rotate_key.key_name
            USING ERRCODE = 'undefined_object';
    END IF;
    SELECT max(k.version) + 1 INTO new_version FROM dscsa.keyring k WHERE k.key_name = rotate_key.key_name;
    new_id := nextval('dscsa.keyring_key_id_seq');
    SELECT * INTO STRICT w
      FROM dscsa._wrap_new_key(new_id, rotate_key.key_name, new_version, coalesce(rotate_key.kek, cur.kek_ref));
    UPDATE dscsa.keyring SET status = 'decrypt_only', deactivated_at = now() WHERE keyring.key_id = cur.key_id;
    INSERT INTO dscsa.keyring (key_id, key_name, version, status, kek_ref, wrapped_key, key_check)
    VALUES (new_id, rotate_key.key_name, new_version, 'active', w.kek_ref, w.wrapped_key, w.key_check);
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION dscsa.rotate_key(text, text) IS
    'Adds a new active version of a key; the previous active version becomes decrypt-only.';

-- Used on the decrypt error path to tell "key not loaded" from "no such key id".
CREATE FUNCTION dscsa._key_exists(key_id integer) RETURNS boolean
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    RETURN EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_id = _key_exists.key_id);

-- Used once per transaction by encryption to notice a rotation made by another session.
CREATE FUNCTION dscsa._active_key_id(key_name text) RETURNS integer
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    RETURN (SELECT k.key_id FROM dscsa.keyring k
             WHERE k.key_name = _active_key_id.key_name AND k.purpose = 'data' AND k.status = 'active');

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
    ctx text := CASE WHEN context IS NULL THEN '' ELSE ', $3' END;
    total bigint;
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
    stmt := pg_catalog.format(
        'WITH batch AS (SELECT ctid FROM %1$s WHERE %2$I IS NOT NULL AND dscsa.envelope_key_id(%2$I) <> $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %2$I = %3$s(dscsa.dscsa_decrypt(t.%2$I%4$s)%4$s)
           FROM batch WHERE t.ctid = batch.ctid',
        tbl, col, encrypt_fn, ctx);
    LOOP
        EXECUTE stmt USING active_id, batch_size, context;
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

-- pg_dscsa: roles and privileges. PUBLIC gets nothing.
--
--   dscsa_admin   key administration: create/rotate keys, read the keyring metadata.
--   dscsa_writer  encrypt only (a packaging line): cannot decrypt.
--   dscsa_reader  decrypt only. An application that does both is granted both roles.
-- Roles are cluster-wide, so they are created only if missing and are not dropped
-- with the extension.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['dscsa_admin', 'dscsa_writer', 'dscsa_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- Created meanwhile by CREATE EXTENSION in another database.
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON SCHEMA dscsa FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA dscsa FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA dscsa FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dscsa FROM PUBLIC;
REVOKE ALL ON TYPE dscsa.encrypted, dscsa.gtin_encrypted, dscsa.serial_encrypted,
    dscsa.lot_encrypted, dscsa.expiry_encrypted FROM PUBLIC;

GRANT USAGE ON SCHEMA dscsa TO dscsa_admin, dscsa_writer, dscsa_reader;
GRANT USAGE ON TYPE dscsa.encrypted, dscsa.gtin_encrypted, dscsa.serial_encrypted,
    dscsa.lot_encrypted, dscsa.expiry_encrypted TO dscsa_admin, dscsa_writer, dscsa_reader;

-- Header inspection needs no key; the domain CHECKs call envelope_kind on every write.
GRANT EXECUTE ON FUNCTION
    dscsa.envelope_version(dscsa.encrypted), dscsa.envelope_kind(dscsa.encrypted),
    dscsa.envelope_key_id(dscsa.encrypted), dscsa.envelope_nonce(dscsa.encrypted),
    dscsa.envelope_bytes(dscsa.encrypted), dscsa.to_encrypted(bytea),
    dscsa.armor(dscsa.encrypted), dscsa.dearmor(text),
    dscsa.load_key(text, text), dscsa.unload_key(text), dscsa.unload_all_keys(),
    dscsa.loaded_keys(), dscsa._key_exists(integer), dscsa._active_key_id(text)
    TO dscsa_admin, dscsa_writer, dscsa_reader;

GRANT EXECUTE ON FUNCTION
    dscsa.dscsa_encrypt(text), dscsa.dscsa_encrypt(text, text),
    dscsa.dscsa_encrypt_gtin(text), dscsa.dscsa_encrypt_gtin(text, text),
    dscsa.dscsa_encrypt_serial(text), dscsa.dscsa_encrypt_serial(text, text),
    dscsa.dscsa_encrypt_lot(text), dscsa.dscsa_encrypt_lot(text, text),
    dscsa.dscsa_encrypt_expiry(text), dscsa.dscsa_encrypt_expiry(text, text)
    TO dscsa_writer;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'dscsa'::regnamespace
           AND p.proname IN ('dscsa_decrypt', 'dscsa_try_decrypt')
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO dscsa_reader', f);
    END LOOP;
END
$$;

GRANT EXECUTE ON FUNCTION dscsa.create_key(text, text), dscsa.rotate_key(text, text),
    dscsa.retire_key(text, integer), dscsa.key_usage(text) TO dscsa_admin;
GRANT SELECT ON dscsa.keyring TO dscsa_admin;
-- Re-encryption decrypts and encrypts as the caller, who needs both roles.
GRANT EXECUTE ON PROCEDURE dscsa.reencrypt(regclass, name, text, integer) TO dscsa_reader, dscsa_writer;

