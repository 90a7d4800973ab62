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
