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
