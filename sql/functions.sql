-- pg_dscsa: encrypt and decrypt.
--
-- Volatility, strictness and parallel safety are chosen on purpose:
-- * encrypt is VOLATILE: every call draws a fresh random nonce.
-- * decrypt is STABLE: same answer within a statement for the same loaded keys.
-- * both are PARALLEL RESTRICTED: data keys live only in the leader backend's private
--   memory and are never copied to shared memory, so they must run in the leader
--   (docs/SECURITY.md, "Parallel query").
-- * all are STRICT: NULL in, NULL out.
-- * decrypt costs 100 (x cpu_operator_cost): an AES-GCM open and a key lookup per call.
--   With the default of 1 the planner would rather hash-join on decrypted values of
--   every row than probe a blind index once per outer row (src/lookup.rs).
-- One C symbol serves the one- and two-argument forms (the second is the context).

-- generic
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt(plaintext text) RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt(plaintext text, context text) RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
-- The same functions over raw envelope bytes (bytea); malformed bytes raise 22P02.
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value bytea) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value bytea, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value bytea) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value bytea, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt';

-- gtin
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_gtin(plaintext text) RETURNS dscsa.gtin_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_gtin';
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_gtin(plaintext text, context text) RETURNS dscsa.gtin_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_gtin';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.gtin_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_gtin';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.gtin_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_gtin';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.gtin_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_gtin';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.gtin_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_gtin';

-- serial
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_serial(plaintext text) RETURNS dscsa.serial_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_serial';
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_serial(plaintext text, context text) RETURNS dscsa.serial_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_serial';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.serial_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_serial';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.serial_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_serial';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.serial_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_serial';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.serial_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_serial';

-- lot
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_lot(plaintext text) RETURNS dscsa.lot_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_lot';
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_lot(plaintext text, context text) RETURNS dscsa.lot_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_lot';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.lot_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_lot';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.lot_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_lot';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.lot_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_lot';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.lot_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_lot';

-- expiry
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_expiry(plaintext text) RETURNS dscsa.expiry_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_expiry';
CREATE OR REPLACE FUNCTION dscsa.dscsa_encrypt_expiry(plaintext text, context text) RETURNS dscsa.expiry_encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypt_expiry';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.expiry_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_expiry';
CREATE OR REPLACE FUNCTION dscsa.dscsa_decrypt(value dscsa.expiry_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_decrypt_expiry';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.expiry_encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_expiry';
CREATE OR REPLACE FUNCTION dscsa.dscsa_try_decrypt(value dscsa.expiry_encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_try_decrypt_expiry';

COMMENT ON FUNCTION dscsa.dscsa_encrypt(text) IS
    'Encrypts with the active version of the key named by dscsa.key_name (loaded with dscsa.load_key).';
COMMENT ON FUNCTION dscsa.dscsa_encrypt(text, text) IS
    'As dscsa_encrypt(text), binding a context (e.g. erp.stock_lot.serial) that decryption must repeat.';
COMMENT ON FUNCTION dscsa.dscsa_decrypt(dscsa.encrypted) IS
    'Decrypts; raises XX001 if the value was modified or is decrypted under the wrong key or context.';
COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(dscsa.encrypted) IS
    'As dscsa_decrypt, but returns NULL for a value that fails authentication or is malformed.';

-- Descriptions of the field functions (\df+ and \dd show them), one pattern per form
-- for the four DSCSA fields; COMMENT ON takes only a literal, hence the DO block.
DO $comments$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('gtin', 'a GTIN (AI 01; GTIN-8, -12, -13 or -14 with a correct check digit, stored as GTIN-14)'),
        ('serial', 'a serial number (AI 21; 1-20 characters of GS1 CSET 82)'),
        ('lot', 'a lot or batch number (AI 10; 1-20 characters of GS1 CSET 82)'),
        ('expiry', 'an expiry date (AI 17; YYMMDD, day 00 = end of month, or YYYY-MM-DD)')) AS v(kind, what)
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_encrypt_%s(text) IS %L', f.kind,
            pg_catalog.format('Validates and encrypts %s with the active version of the key named by dscsa.key_name; 22023 names a violated GS1 rule without echoing the value.', f.what));
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_encrypt_%s(text, text) IS %L', f.kind,
            pg_catalog.format('As dscsa_encrypt_%s(text), binding a context that decryption must repeat.', f.kind));
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_decrypt(dscsa.%s_encrypted) IS %L', f.kind,
            pg_catalog.format('Decrypts %s; XX001 if the value was modified or was encrypted with another context.', f.what));
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_decrypt(dscsa.%s_encrypted, text) IS %L', f.kind,
            'As dscsa_decrypt(value), with the context the value was encrypted with.');
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(dscsa.%s_encrypted) IS %L', f.kind,
            'As dscsa_decrypt(value), but NULL for a value that fails authentication (recorded in the audit trail as tampering) or is malformed.');
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(dscsa.%s_encrypted, text) IS %L', f.kind,
            'As dscsa_try_decrypt(value), with the context the value was encrypted with.');
    END LOOP;
END
$comments$;
COMMENT ON FUNCTION dscsa.dscsa_decrypt(dscsa.encrypted, text) IS
    'As dscsa_decrypt(value), with the context the value was encrypted with.';
COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(dscsa.encrypted, text) IS
    'As dscsa_try_decrypt(value), with the context the value was encrypted with.';
COMMENT ON FUNCTION dscsa.dscsa_decrypt(bytea) IS
    'As dscsa_decrypt(dscsa.encrypted) over the raw envelope bytes; malformed bytes raise 22P02.';
COMMENT ON FUNCTION dscsa.dscsa_decrypt(bytea, text) IS
    'As dscsa_decrypt(bytea), with the context the value was encrypted with.';
COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(bytea) IS
    'As dscsa_try_decrypt(dscsa.encrypted) over the raw envelope bytes: NULL for malformed bytes too.';
COMMENT ON FUNCTION dscsa.dscsa_try_decrypt(bytea, text) IS
    'As dscsa_try_decrypt(bytea), with the context the value was encrypted with.';
-- The type's own functions and header accessors (sql/types.sql, created once).
COMMENT ON FUNCTION dscsa.encrypted_in(cstring) IS
    'Input of dscsa.encrypted: the armored form dscsa:<base64url>, checked (22P02 if it is not a well-formed envelope).';
COMMENT ON FUNCTION dscsa.encrypted_out(dscsa.encrypted) IS
    'Output of dscsa.encrypted: the armored form dscsa:<base64url> of the envelope (ciphertext, never plaintext).';
COMMENT ON FUNCTION dscsa.encrypted_recv(internal) IS
    'Binary input of dscsa.encrypted: the raw envelope, checked.';
COMMENT ON FUNCTION dscsa.encrypted_send(dscsa.encrypted) IS
    'Binary output of dscsa.encrypted: the raw envelope.';
COMMENT ON FUNCTION dscsa.envelope_version(dscsa.encrypted) IS
    'The envelope format version in the value''s public header (docs/FORMAT.md); no key needed.';
COMMENT ON FUNCTION dscsa.envelope_kind(dscsa.encrypted) IS
    'The field kind in the value''s authenticated header: generic, gtin, serial, lot or expiry; no key needed.';
COMMENT ON FUNCTION dscsa.envelope_key_id(dscsa.encrypted) IS
    'The key version (dscsa.keys.key_id) the value was encrypted with: what dscsa.reencrypt moves off; no key needed.';
COMMENT ON FUNCTION dscsa.envelope_nonce(dscsa.encrypted) IS
    'The value''s 12-byte AES-GCM nonce (public header); no key needed.';
COMMENT ON FUNCTION dscsa.envelope_bytes(dscsa.encrypted) IS
    'The raw envelope bytes, for tools that move envelopes as bytea.';
COMMENT ON FUNCTION dscsa.to_encrypted(bytea) IS
    'Raw envelope bytes back to dscsa.encrypted, checked (22P02 if they are not a well-formed envelope).';
