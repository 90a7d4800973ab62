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
    dscsa.loaded_keys(), dscsa._key_exists(integer), dscsa._active_key_id(text),
    dscsa._key_meta(integer), dscsa.normalize_identifier(text, text),
    dscsa._in_transaction_block(), dscsa._require_own_transaction(text)
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
