-- pg_dscsa: roles and privileges. PUBLIC gets nothing. (docs/SECURITY.md has the role
-- matrix; tests/integration/tests/role_matrix.rs checks every cell of it.)
--
--   dscsa_admin   key administration: create/rotate/retire keys, grant them to roles,
--                 read all keyring metadata, protect columns of tables it owns.
--   dscsa_writer  encrypt only (a packaging line): cannot decrypt.
--   dscsa_reader  decrypt only. An application that does both is granted both roles.
--   dscsa_auditor reads and verifies the audit trail (docs/AUDIT.md).
--   dscsa_audit_forwarder  a hot standby's worker logs in with it to hand its records over.
--   dscsa_audit_owner      owns the audit trail; NOLOGIN, nobody acts as it.
--
-- Which key a role may use, and for what, is granted per key with dscsa.grant_key();
-- the grants below are the outer fence. Roles are cluster-wide, so they are created only
-- if missing and are not dropped with the extension. This file is replayed by every
-- upgrade: it first takes back everything, then grants exactly what the version needs.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['dscsa_admin', 'dscsa_writer', 'dscsa_reader', 'dscsa_auditor',
                             'dscsa_audit_forwarder', 'dscsa_audit_owner'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
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

REVOKE ALL ON SCHEMA dscsa FROM PUBLIC, dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;
REVOKE ALL ON ALL ROUTINES IN SCHEMA dscsa FROM PUBLIC, dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;
REVOKE ALL ON ALL TABLES IN SCHEMA dscsa FROM PUBLIC, dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dscsa FROM PUBLIC, dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;
REVOKE ALL ON TYPE dscsa.encrypted, dscsa.gtin_encrypted, dscsa.serial_encrypted,
    dscsa.lot_encrypted, dscsa.expiry_encrypted, dscsa._batch_job, dscsa._protect_job
    FROM PUBLIC, dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;

GRANT USAGE ON SCHEMA dscsa TO dscsa_admin, dscsa_writer, dscsa_reader, dscsa_auditor, dscsa_audit_forwarder;
GRANT USAGE ON TYPE dscsa.encrypted, dscsa.gtin_encrypted, dscsa.serial_encrypted,
    dscsa.lot_encrypted, dscsa.expiry_encrypted, dscsa._batch_job, dscsa._protect_job
    TO dscsa_admin, dscsa_writer, dscsa_reader;

-- Header inspection needs no key; the domain CHECKs call envelope_kind on every write.
-- Loading keys: the per-key grants decide which keys (src/keyring.rs).
GRANT EXECUTE ON FUNCTION
    dscsa.envelope_version(dscsa.encrypted), dscsa.envelope_kind(dscsa.encrypted),
    dscsa.envelope_key_id(dscsa.encrypted), dscsa.envelope_nonce(dscsa.encrypted),
    dscsa.envelope_bytes(dscsa.encrypted), dscsa.to_encrypted(bytea),
    dscsa.armor(dscsa.encrypted), dscsa.dearmor(text),
    dscsa.load_key(text, text), dscsa.unload_key(text), dscsa.unload_all_keys(),
    dscsa.loaded_keys(), dscsa.normalize_identifier(text, text),
    dscsa._in_transaction_block(), dscsa._require_own_transaction(text),
    dscsa._active_version(text, text)
    TO dscsa_admin, dscsa_writer, dscsa_reader;
-- Keyring metadata: all of it for admins; the keys a role holds a grant on for the others.
GRANT SELECT ON dscsa.keys TO dscsa_admin, dscsa_writer, dscsa_reader;

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
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'dscsa'::regnamespace
           AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY['dscsa_decrypt', 'dscsa_try_decrypt']::name[])
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO dscsa_reader', f);
    END LOOP;
END
$$;

-- Key administration. The keyring itself is readable by admins (wrapped keys only);
-- no role may write it or the grants directly.
GRANT EXECUTE ON FUNCTION dscsa.create_key(text, text), dscsa.rotate_key(text, text),
    dscsa.retire_key(text, integer), dscsa.key_usage(text),
    dscsa.create_blind_index_key(text, integer, text), dscsa.import_key(text, text, text),
    dscsa.rotate_kek(text, text), dscsa.grant_key(text, regrole, text),
    dscsa.revoke_key(text, regrole, text)
    TO dscsa_admin;
GRANT SELECT ON dscsa.keyring, dscsa.key_grant_list TO dscsa_admin;

-- Re-encryption decrypts and encrypts as the caller, who needs both roles.
GRANT EXECUTE ON PROCEDURE dscsa.reencrypt(regclass, name, text, integer) TO dscsa_reader, dscsa_writer;
GRANT EXECUTE ON FUNCTION dscsa._reencrypt_start(regclass, name, text, integer),
    dscsa._batch_start(regclass, name, text, integer, text, integer),
    dscsa._batch_step(dscsa._batch_job), dscsa._batch_statements(dscsa._batch_job),
    dscsa._batch_progress(dscsa._batch_job), dscsa._kind_of_type(regtype),
    dscsa._batch_range(regclass, name, text, integer, text, bigint, bigint),
    dscsa._batch_running(regclass, text, text),
    dscsa._batch_start_workers(regclass, text, text, integer, text, bigint, bigint, bigint, bigint),
    dscsa._backfill_claim(), dscsa._backfill_done(bigint), dscsa._backfill_finish(),
    dscsa._backfill_next(text, regclass, text),
    dscsa._encrypt_function(text)
    TO dscsa_admin, dscsa_reader, dscsa_writer;

-- Blind-index lookups (reveal an HMAC, never a value) for applications that read or write.
GRANT EXECUTE ON FUNCTION dscsa.blind_index(text, text, text),
    dscsa.blind_index_candidates(text, text, text),
    dscsa.blind_index_candidates(text[], text, text),
    dscsa._blind_index_slot(text, text, text, integer, integer) TO dscsa_reader, dscsa_writer;
-- Converting another application's ciphertext yields only ciphertext.
GRANT EXECUTE ON FUNCTION dscsa.import_json(jsonb, text, text),
    dscsa.import_json(jsonb, text, text, text) TO dscsa_writer;
-- Authenticating without decrypting: auditors (admin) and readers.
GRANT EXECUTE ON FUNCTION dscsa.authenticate(dscsa.encrypted), dscsa.authenticate(dscsa.encrypted, text),
    dscsa._authenticate_at(dscsa.encrypted, text, jsonb),
    dscsa.verify_column(regclass, name, text) TO dscsa_admin, dscsa_reader;

-- The audit trail: owned by a role nobody logs in as, append-only (triggers), read and
-- verified by auditors. The worker writes it; migration procedures report their jobs.
ALTER TABLE dscsa.audit_log OWNER TO dscsa_audit_owner;
GRANT SELECT ON dscsa.audit_log, dscsa.audit_unclosed_statements TO dscsa_auditor;
GRANT EXECUTE ON FUNCTION dscsa.audit_verify(text), dscsa.audit_export(bigint, bigint) TO dscsa_auditor;
GRANT EXECUTE ON FUNCTION dscsa.audit_status() TO dscsa_auditor, dscsa_admin;
-- Key management status and health: the key administrators.
GRANT SELECT ON dscsa.kms_status, dscsa.kms_cache TO dscsa_admin;
GRANT EXECUTE ON FUNCTION dscsa.kms_health(text), dscsa.flush_key_cache() TO dscsa_admin;
GRANT EXECUTE ON FUNCTION dscsa._audit_job_event(text, text, jsonb) TO dscsa_admin, dscsa_writer, dscsa_reader;
GRANT EXECUTE ON FUNCTION dscsa.audit_ingest(text) TO dscsa_audit_forwarder;

-- Column protection. The DBA who protects a column owns the table and also holds
-- dscsa_writer (dscsa_reader to revert it). The registry is written only through
-- dscsa._registry (ownership checked); dscsa._registry_apply is executable by its owner only,
-- and so is dscsa._retype_twin_apply (called by dscsa._retype_twin after the same check).
GRANT EXECUTE ON FUNCTION
    dscsa.protect_column_problems(regclass, name, text), dscsa.create_view(regclass, name),
    dscsa.drop_view(regclass),
    dscsa._encrypted_type(text), dscsa._plaintext_expr(name, regtype, text),
    dscsa._original_type(text), dscsa._derived_names(regclass, name), dscsa._index_on(regclass, name, boolean),
    dscsa._index_problem(regclass, regclass), dscsa._row_type_users(regclass), dscsa._carried_indexes(regclass, name),
    dscsa._carried_list(dscsa.protected_columns), dscsa._index_leads_with(regclass, name),
    dscsa._carried_index_ddl(regclass, name, name, jsonb, name), dscsa._building_name(name),
    dscsa._raise_problems(regclass, name, text),
    dscsa._registry(text, regclass, name, dscsa.protected_columns), dscsa._retype_twin(regclass, name),
    dscsa._finish_protection(dscsa.protected_columns), dscsa._twin_check(dscsa.protected_columns),
    dscsa._protect_prepare(regclass, name, text, text, text, text),
    dscsa._protect_in_place(dscsa.protected_columns), dscsa._protect_online_start(dscsa.protected_columns),
    dscsa._protect_begin(regclass, name, text, text, text, text, integer),
    dscsa._protect_step(dscsa._protect_job), dscsa._protect_backfill(dscsa._protect_job),
    dscsa._protect_backfill_range(regclass, name, bigint, bigint), dscsa._backfill_running(regclass, text),
    dscsa._backfill_start(regclass, text, bigint, bigint, bigint, text, text, bigint), dscsa._backfill_claim(),
    dscsa._backfill_done(bigint), dscsa._backfill_finish(),
    dscsa._protect_check(dscsa._protect_job), dscsa._protect_index(dscsa._protect_job),
    dscsa._protect_cutover(dscsa._protect_job), dscsa._with_lock_retries(regclass, text, text),
    dscsa._reindex_blind_start(regclass, name, integer),
    dscsa.protect_sync_trigger(), dscsa.blind_index_trigger()
    TO dscsa_admin;
GRANT EXECUTE ON PROCEDURE dscsa.protect_column(regclass, name, text, text, text, text, integer),
    dscsa.abort_protect_column(regclass, name), dscsa.unprotect_column(regclass, name),
    dscsa.reindex_blind(regclass, name, integer) TO dscsa_admin;
GRANT SELECT ON dscsa.protected_columns TO dscsa_admin, dscsa_writer, dscsa_reader;

-- GS1 identifiers (docs/GS1.md): checking and parsing reveal nothing beyond their input;
-- the counts per rule read the caller's own table with the caller's rights.
GRANT EXECUTE ON FUNCTION dscsa.gs1_violation(text, text), dscsa.parse_identifier(text)
    TO dscsa_admin, dscsa_writer, dscsa_reader;
GRANT EXECUTE ON FUNCTION dscsa.gs1_problems(regclass, name, text),
    dscsa._raise_gs1_problems(regclass, name, text) TO dscsa_admin;
-- The product-identifier blind index, like dscsa.blind_index (an HMAC, never a value).
GRANT EXECUTE ON FUNCTION dscsa.identifier_index(text), dscsa.identifier_index(text, text),
    dscsa.identifier_index(text, text, text),
    dscsa.identifier_index_candidates(text), dscsa.identifier_index_candidates(text, text),
    dscsa.identifier_index_candidates(text, text, text),
    dscsa._identifier_index_slot(text, text, text, integer, integer),
    dscsa.try_identifier_index_candidates(text, text, text),
    dscsa._try_identifier_index_slot(text, text, text, integer, integer)
    TO dscsa_reader, dscsa_writer;
-- A VRS verdict decrypts (each field is checked against the key's decrypt grant too).
GRANT EXECUTE ON FUNCTION
    dscsa.identifier_matches(dscsa.gtin_encrypted, dscsa.serial_encrypted, text, text),
    dscsa.verification_failure_reason(dscsa.lot_encrypted, dscsa.expiry_encrypted, text, text)
    TO dscsa_reader;
