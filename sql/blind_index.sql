-- pg_dscsa: blind indexes, integrity checks and imports (the Rust side is src/blind.rs,
-- src/triggers.rs and src/audit.rs; the format is docs/BLIND_INDEX.md).
--
-- Blind-index functions are STABLE (same answer within a statement for the same loaded
-- key, so the planner can use them as index scan keys) and PARALLEL RESTRICTED (keys
-- live in the leader backend only), like decrypt.

CREATE OR REPLACE FUNCTION dscsa.blind_index(value text, key_name text, kind text DEFAULT 'generic')
    RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_wrapper';
COMMENT ON FUNCTION dscsa.blind_index(text, text, text) IS
    'Blind index (key id || truncated HMAC-SHA-256) of a plaintext under the active version of a blind-index key.';

CREATE OR REPLACE FUNCTION dscsa.blind_index_candidates(value text, key_name text, kind text DEFAULT 'generic')
    RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_candidates_wrapper';
COMMENT ON FUNCTION dscsa.blind_index_candidates(text, text, text) IS
    'Blind indexes of a plaintext under every loaded version of a blind-index key: WHERE col_bidx = ANY (...) keeps working during a blind-index key rotation. Kind any: under every field kind too.';
-- For IN lists; the planner adds it for `decrypted IN (...)` (src/lookup.rs).
CREATE OR REPLACE FUNCTION dscsa.blind_index_candidates(value text[], key_name text, kind text DEFAULT 'generic')
    RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_candidates_array_wrapper';
COMMENT ON FUNCTION dscsa.blind_index_candidates(text[], text, text) IS
    'Blind indexes of each element (NULLs skipped) under every loaded version of a blind-index key.';

-- One candidate by position (NULL past the last): the planner spells the candidates as
-- separate slots, `slots` of them (one per key version loaded when it planned, times the
-- kinds), so that partition pruning and the index scan can use each (src/lookup). Raises
-- (22023) when more versions are loaded than its plan has slots, rather than miss rows.
CREATE OR REPLACE FUNCTION dscsa._blind_index_slot(value text, key_name text, kind text, slot integer, slots integer)
    RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_slot_wrapper';

CREATE OR REPLACE FUNCTION dscsa.normalize_identifier(value text, kind text)
    RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'normalize_identifier_wrapper';
COMMENT ON FUNCTION dscsa.normalize_identifier(text, text) IS
    'The normalized form a blind index hashes: trimmed; GTIN-8/12/13 padded to GTIN-14; ISO expiry dates as YYMMDD.';

-- Row triggers; created by dscsa.protect_column(), not meant to be attached by hand.
CREATE OR REPLACE FUNCTION dscsa.protect_sync_trigger() RETURNS trigger
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'protect_sync_trigger';
CREATE OR REPLACE FUNCTION dscsa.blind_index_trigger() RETURNS trigger
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'blind_index_trigger';

-- 'ok', 'failed' or 'malformed', never the plaintext.
CREATE OR REPLACE FUNCTION dscsa.authenticate(value dscsa.encrypted) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_authenticate';
CREATE OR REPLACE FUNCTION dscsa.authenticate(value dscsa.encrypted, context text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_authenticate';
-- As authenticate, naming where the value is (table, column, primary key) in the audit
-- record of a failure: used by dscsa.verify_column.
CREATE OR REPLACE FUNCTION dscsa._authenticate_at(value dscsa.encrypted, context text, location jsonb) RETURNS text
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_authenticate_at';
COMMENT ON FUNCTION dscsa.authenticate(dscsa.encrypted, text) IS
    'Checks a value''s GCM tag under its key version: ok, failed (modified / wrong context) or malformed. Reveals nothing else.';

-- {"nonce": base64, "ciphertext": base64} sealed by another application -> envelope.
CREATE OR REPLACE FUNCTION dscsa.import_json(value jsonb, import_key text, kind text DEFAULT 'generic')
    RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_import_json';
CREATE OR REPLACE FUNCTION dscsa.import_json(value jsonb, import_key text, kind text, context text)
    RETURNS dscsa.encrypted
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_import_json';
COMMENT ON FUNCTION dscsa.import_json(jsonb, text, text, text) IS
    'Converts an application''s AES-256-GCM {"nonce","ciphertext"} value into an envelope under the active data key, without the plaintext leaving memory.';
COMMENT ON FUNCTION dscsa.authenticate(dscsa.encrypted) IS
    'As authenticate(value, context) for a value encrypted without a context.';
COMMENT ON FUNCTION dscsa.import_json(jsonb, text, text) IS
    'As import_json(value, import_key, kind, context) without a context.';
COMMENT ON FUNCTION dscsa.protect_sync_trigger() IS
    'Row trigger of an online dscsa.protect_column: keeps the twin column (and blind index) in step with the plaintext. Created and dropped by it.';
COMMENT ON FUNCTION dscsa.blind_index_trigger() IS
    'Row trigger of a protected column with a blind index: computes the index from the value written. Created by dscsa.protect_column.';
