-- pg_dscsa demo: DSCSA product identifiers encrypted field by field.
-- Every step that must fail is checked: if the extension misbehaved, this script stops
-- with an error (ON_ERROR_STOP) instead of printing a success it did not earn.
\pset footer off
SET client_min_messages = notice;

\echo
\echo '== 1. A table of DSCSA product identifiers with encrypted columns =='
CREATE EXTENSION pg_dscsa;
-- This database also holds the audit trail (dscsa.audit_database): its background worker
-- starts writing once the extension exists. Until then key changes and decryptions are
-- refused (fail closed, SQLSTATE SA001), so wait for it.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT worker_ready FROM dscsa.audit_status());
        PERFORM pg_sleep(0.1);
    END LOOP;
    IF NOT (SELECT worker_ready FROM dscsa.audit_status()) THEN
        RAISE EXCEPTION 'the pg_dscsa audit worker is not ready: see the server log';
    END IF;
END $$;
CREATE TABLE serialized_unit (
    id          bigserial PRIMARY KEY,
    gtin        dscsa.gtin_encrypted   NOT NULL,   -- AI (01)
    serial      dscsa.serial_encrypted NOT NULL,   -- AI (21)
    lot         dscsa.lot_encrypted    NOT NULL,   -- AI (10)
    expiry      dscsa.expiry_encrypted NOT NULL,   -- AI (17)
    biz_step    text NOT NULL,                     -- EPCIS metadata stays plaintext
    event_time  timestamptz NOT NULL DEFAULT now()
);

-- Three application roles: a packaging line (encrypt only), a pharmacist (decrypt),
-- and a role with no pg_dscsa privileges at all.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demo_packaging_line') THEN
        CREATE ROLE demo_packaging_line LOGIN IN ROLE dscsa_writer;
        CREATE ROLE demo_pharmacist LOGIN IN ROLE dscsa_reader;
        CREATE ROLE demo_intruder LOGIN;
    END IF;
END $$;
GRANT SELECT, INSERT ON serialized_unit TO demo_packaging_line;
GRANT USAGE ON SEQUENCE serialized_unit_id_seq TO demo_packaging_line;
GRANT SELECT ON serialized_unit TO demo_pharmacist, demo_intruder;

\echo
\echo '== 2. A data key, created and wrapped through the bundled development KMS hook =='
SELECT dscsa.create_key('default') AS key_id;
-- The keyring holds only the wrapped key; the KEK never enters the database.
SELECT key_id, key_name, version, status, kek_ref, octet_length(wrapped_key) AS wrapped_bytes
  FROM dscsa.keyring;
-- A new key is usable by nobody until a key administrator grants it, per role and purpose.
SELECT dscsa.grant_key('default', 'demo_packaging_line', 'encrypt'),
       dscsa.grant_key('default', 'demo_pharmacist', 'decrypt');
-- A second tenant's key, granted to nobody here: the roles above cannot load it.
SELECT dscsa.create_key('other_tenant') AS other_key_id;

\echo
\echo '== 3. The packaging line loads the key through the hook and inserts rows =='
\c - demo_packaging_line
SET search_path = public, dscsa;
SELECT dscsa.load_key('default') AS versions_loaded;
-- Which keys this role may use, and what for (never key material).
SELECT key_name, version, status, my_privileges FROM dscsa.keys;
DO $$
BEGIN
    PERFORM dscsa.load_key('other_tenant');
    RAISE EXCEPTION 'a role loaded a key not granted to it';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'packaging line refused another tenant''s key: %', SQLERRM;
END $$;
INSERT INTO serialized_unit (gtin, serial, lot, expiry, biz_step)
SELECT dscsa_encrypt_gtin('00300010123455'),
       dscsa_encrypt_serial('SN' || lpad(i::text, 10, '0')),
       dscsa_encrypt_lot('A1B2C3'),
       dscsa_encrypt_expiry('270331'),
       'commissioning'
  FROM generate_series(1, 5) i;
-- A scanner's string (any GS1 spelling) parsed and encrypted field by field; GS1 rules
-- are checked where identifiers enter (docs/GS1.md).
SELECT * FROM dscsa.parse_identifier(']d2010030001012345517270331' || chr(29) || '10A1B2C3' || chr(29) || '21SN9000000001');
INSERT INTO serialized_unit (gtin, serial, lot, expiry, biz_step)
SELECT dscsa_encrypt_gtin(p.gtin14), dscsa_encrypt_serial(p.serial), dscsa_encrypt_lot(p.lot),
       dscsa_encrypt_expiry(p.expiry), 'commissioning'
  FROM dscsa.parse_identifier('https://id.gs1.org/01/00300010123455/10/A1B2C3/21/SN9000000002?17=270331') p;
DO $$
BEGIN
    PERFORM dscsa_encrypt_gtin('00300010123454');
    RAISE EXCEPTION 'a GTIN with a wrong check digit was accepted';
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE 'refused: % (SQLSTATE %)', SQLERRM, SQLSTATE;
END $$;
-- What is stored, and what anyone with SELECT sees: ciphertext only.
SELECT id, armor(serial) AS stored_serial FROM serialized_unit ORDER BY id LIMIT 2;
-- The packaging line can encrypt but not decrypt.
DO $$
BEGIN
    PERFORM dscsa_decrypt(serial) FROM serialized_unit;
    RAISE EXCEPTION 'the encrypt-only role was able to decrypt';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'packaging line refused to decrypt: % (SQLSTATE %)', SQLERRM, SQLSTATE;
END $$;

\echo
\echo '== 4. An authorized read: the pharmacist decrypts just in time =='
\c - demo_pharmacist
SET search_path = public, dscsa;
SELECT dscsa.load_key('default') AS versions_loaded;
SELECT id, dscsa_decrypt(gtin) AS gtin, dscsa_decrypt(serial) AS serial,
       dscsa_decrypt(lot) AS lot, dscsa_decrypt(expiry) AS expiry, biz_step
  FROM serialized_unit ORDER BY id;

\echo
\echo '== 5. A tampered value is detected, never silently decrypted =='
\c - postgres
SET search_path = public, dscsa;
-- Flip one bit of row 2's serial ciphertext, as an attacker with write access to the table could.
UPDATE serialized_unit
   SET serial = to_encrypted(set_byte(envelope_bytes(serial), 25, get_byte(envelope_bytes(serial), 25) # 1))::serial_encrypted
 WHERE id = 2;
-- A serial ciphertext cannot be moved into the lot column either.
DO $$
BEGIN
    UPDATE serialized_unit SET lot = serial::encrypted::lot_encrypted WHERE id = 3;
    RAISE EXCEPTION 'a serial ciphertext was accepted as a lot';
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'serial ciphertext refused in the lot column: %', SQLERRM;
END $$;
\c - demo_pharmacist
SET search_path = public, dscsa;
SELECT dscsa.load_key('default') AS versions_loaded;
DO $$
BEGIN
    PERFORM dscsa_decrypt(serial) FROM serialized_unit WHERE id = 2;
    RAISE EXCEPTION 'tampering was not detected';
EXCEPTION WHEN data_corrupted THEN
    RAISE NOTICE 'tampered row 2 refused: % (SQLSTATE %)', SQLERRM, SQLSTATE;
END $$;
-- A scan that must go on uses the try variant: NULL for the tampered row only.
SELECT id, dscsa_try_decrypt(serial) AS serial FROM serialized_unit ORDER BY id;

\echo
\echo '== 6. An unauthorized role is refused =='
\c - demo_intruder
DO $$
BEGIN
    PERFORM dscsa.dscsa_decrypt(serial) FROM serialized_unit;
    RAISE EXCEPTION 'a role without privileges decrypted';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'intruder refused: % (SQLSTATE %)', SQLERRM, SQLSTATE;
END $$;
DO $$
BEGIN
    PERFORM count(*) FROM dscsa.keyring;
    RAISE EXCEPTION 'a role without privileges read the keyring';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'intruder cannot read the keyring: %', SQLERRM;
END $$;
-- All the intruder can read is ciphertext.
SELECT id, serial AS raw_serial FROM serialized_unit ORDER BY id LIMIT 2;

\echo
\echo '== 7. Encrypting a column of an existing ERP table, online, with a blind index =='
\c - postgres
SET search_path = public, dscsa;
SET dscsa.key_name = 'default';
SELECT dscsa.load_key('default') AS versions_loaded;
SELECT dscsa.create_blind_index_key('erp_serial_bidx') AS blind_index_key_id;
SELECT dscsa.grant_key('erp_serial_bidx', 'demo_pharmacist', 'blind_index');
SELECT dscsa.load_key('erp_serial_bidx') AS versions_loaded;
CREATE TABLE erp_unit (id bigint PRIMARY KEY, serial text NOT NULL CONSTRAINT erp_unit_serial_key UNIQUE,
                       status text NOT NULL DEFAULT 'commissioned');
INSERT INTO erp_unit SELECT i, 'SN' || lpad(i::text, 10, '0'), 'commissioned' FROM generate_series(1, 20000) i;
CREATE TEMP TABLE erp_unit_before AS SELECT * FROM erp_unit;
CALL dscsa.protect_column('erp_unit', 'serial', kind => 'serial', blind_index_key => 'erp_serial_bidx',
                          batch_size => 5000);
\d erp_unit
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM erp_unit u FULL JOIN erp_unit_before b USING (id)
                WHERE u.id IS NULL OR b.id IS NULL OR dscsa_decrypt(u.serial) <> b.serial) THEN
        RAISE EXCEPTION 'a row changed during protection';
    END IF;
    RAISE NOTICE 'all 20000 rows encrypted, each decrypts to its original serial';
END $$;
SELECT dscsa.create_view('erp_unit') AS generated_view;
GRANT SELECT ON erp_unit, erp_unit_plain TO demo_pharmacist;
-- The application's own lookup, unchanged, through the generated view: the planner adds
-- the blind-index condition (docs/BLIND_INDEX.md, "Transparent lookups").
EXPLAIN (COSTS OFF) SELECT id, status FROM erp_unit_plain WHERE serial = 'SN0000004242';
SELECT id, status FROM erp_unit_plain WHERE serial = 'SN0000004242';
-- The UNIQUE constraint now holds on the blind index, under its old name.
DO $$
BEGIN
    INSERT INTO erp_unit (id, serial) VALUES (99999, dscsa_encrypt_serial('SN0000000007'));
    RAISE EXCEPTION 'a duplicate serial was accepted';
EXCEPTION WHEN unique_violation THEN
    RAISE NOTICE 'duplicate serial refused by %', (SELECT conname FROM pg_constraint WHERE conname = 'erp_unit_serial_key');
END $$;
\c - demo_pharmacist
SET search_path = public, dscsa;
SELECT dscsa.load_key('default') AS versions_loaded;
SELECT * FROM erp_unit_plain ORDER BY id LIMIT 3;
-- What an auditor runs: rows per key version, authenticated, failing rows, NULLs.
SELECT key_version, key_status, rows, authenticated, failed FROM dscsa.verify_column('erp_unit', 'serial');

\echo
\echo '== 8. The audit trail: who decrypted what and when, chained and verifiable (docs/AUDIT.md) =='
\c - postgres
-- The background worker writes the records the sessions queued; wait until it has.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT worker_ready AND queued = 0 FROM dscsa.audit_status());
        PERFORM pg_sleep(0.1);
    END LOOP;
    PERFORM pg_sleep(0.5);
END $$;
-- One record per statement, key and operation: the pharmacist's reads, the tampered row.
SELECT seq, record_type, session_user_name AS who, operation, key_name, field_kind, outcome, count
  FROM dscsa.audit_log
 WHERE session_user_name IN ('demo_pharmacist', 'demo_intruder') AND record_type <> 'opened'
 ORDER BY seq LIMIT 12;
-- Key lifecycle changes, with what they changed.
SELECT seq, operation, key_name, detail::jsonb -> 'new' AS new_state
  FROM dscsa.audit_log WHERE record_type = 'key' AND operation IN ('create_key', 'grant_key') ORDER BY seq;
-- Every record is chained to the one before with an HMAC under a KMS-wrapped audit key.
SELECT verified, records, break_kind FROM dscsa.audit_verify();
-- Append-only, even for the table's owner: only a superuser disabling triggers could edit
-- it, and the chain would show it.
DO $$
BEGIN
    UPDATE dscsa.audit_log SET count = 0 WHERE record_type = 'access';
    RAISE EXCEPTION 'the audit trail was edited';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'audit trail edit refused: %', SQLERRM;
END $$;

\echo
\echo 'Demo complete: encrypted columns, a KMS-wrapped key, an authorized read, tamper detection, refusals,'
\echo 'an existing table encrypted online with a blind index and a generated view, and a verifiable audit trail.'
