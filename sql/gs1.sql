-- pg_dscsa: GS1 product identifiers (docs/GS1.md; the Rust side is src/gs1.rs over the
-- core's parser and rules, core/src/gs1/).
--
-- Validation itself happens inside dscsa_encrypt_gtin/_serial/_lot/_expiry (and the
-- triggers that encrypt): this file holds what a DBA and an application call around it.
-- Messages name the rule a value breaks, never the value.

-- The rule a value breaks as a gtin/serial/lot/expiry field, or NULL when it is valid.
-- STABLE: the expiry's century window follows the current year.
CREATE OR REPLACE FUNCTION dscsa.gs1_violation(value text, kind text) RETURNS text
    STABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'gs1_violation_wrapper';
COMMENT ON FUNCTION dscsa.gs1_violation(text, text) IS
    'The GS1 rule a value breaks as a gtin, serial, lot or expiry field (NULL: valid); never echoes the value.';

CREATE OR REPLACE FUNCTION dscsa.parse_identifier(identifier text,
    OUT gtin14 text, OUT serial text, OUT lot text, OUT expiry text)
    RETURNS record
    STABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_parse_identifier';
COMMENT ON FUNCTION dscsa.parse_identifier(text) IS
    'GTIN-14, serial, lot and expiry (YYMMDD) of a unit written as a GS1 element string (bracketed, or as a scanner sends it), a GS1 Digital Link URI or an EPC URN; every field validated.';

-- The product-identifier blind index (docs/BLIND_INDEX.md): the same value for every
-- spelling of one unit, under the blind-index key named by dscsa.identifier_index_key.
CREATE OR REPLACE FUNCTION dscsa.identifier_index(identifier text) RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_of_wrapper';
CREATE OR REPLACE FUNCTION dscsa.identifier_index(gtin text, serial text) RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_pair_wrapper';
CREATE OR REPLACE FUNCTION dscsa.identifier_index_candidates(identifier text) RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_candidates_of_wrapper';
CREATE OR REPLACE FUNCTION dscsa.identifier_index_candidates(gtin text, serial text) RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_candidates_pair_wrapper';
-- The same under a blind-index key named by the caller instead of the session's
-- dscsa.identifier_index_key (for SQL that must not depend on a session setting).
CREATE OR REPLACE FUNCTION dscsa.identifier_index(gtin text, serial text, key_name text) RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_pair_with_key_wrapper';
-- The planner spells identifier_index_candidates(gtin, serial, key_name) with a constant
-- key as ARRAY[slot 1, ...], one slot per loaded version, so that `pi = ANY (...)` is one
-- index scan with a known number of probes (src/lookup/support.rs).
CREATE OR REPLACE FUNCTION dscsa._identifier_candidates_support(internal) RETURNS internal
    STABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_candidates_support';
CREATE OR REPLACE FUNCTION dscsa._identifier_index_slot(gtin text, serial text, key_name text, slot integer, slots integer)
    RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'identifier_index_slot_wrapper';
CREATE OR REPLACE FUNCTION dscsa.identifier_index_candidates(gtin text, serial text, key_name text) RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c
    SUPPORT dscsa._identifier_candidates_support
    AS 'MODULE_PATHNAME', 'identifier_index_candidates_pair_with_key_wrapper';
-- The same, without candidates (NULL, or NULL slots as the planner spells it: `pi = ANY
-- (...)` finds nothing) when the pair breaks a GS1 rule: for a lookup whose answer to a
-- malformed request is "no such unit" (a VRS responder, examples/vrs.sql), without
-- validating the request twice.
CREATE OR REPLACE FUNCTION dscsa._try_identifier_index_slot(gtin text, serial text, key_name text, slot integer, slots integer)
    RETURNS bytea
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'try_identifier_index_slot_wrapper';
CREATE OR REPLACE FUNCTION dscsa.try_identifier_index_candidates(gtin text, serial text, key_name text) RETURNS bytea[]
    STABLE STRICT PARALLEL RESTRICTED LANGUAGE c
    SUPPORT dscsa._identifier_candidates_support
    AS 'MODULE_PATHNAME', 'try_identifier_index_candidates_wrapper';
COMMENT ON FUNCTION dscsa.try_identifier_index_candidates(text, text, text) IS
    'dscsa.identifier_index_candidates(gtin, serial, key_name), or no candidates (NULL: nothing matches) when the pair breaks a GS1 rule.';
COMMENT ON FUNCTION dscsa.identifier_index(text, text, text) IS
    'dscsa.identifier_index(gtin, serial) under the blind-index key named, not dscsa.identifier_index_key.';
COMMENT ON FUNCTION dscsa.identifier_index_candidates(text, text, text) IS
    'dscsa.identifier_index_candidates(gtin, serial) under the blind-index key named, not dscsa.identifier_index_key.';
COMMENT ON FUNCTION dscsa.identifier_index(text) IS
    'Blind index of the canonical (GTIN-14, serial) pair of a unit in any spelling, under the active version of the key dscsa.identifier_index_key names.';
COMMENT ON FUNCTION dscsa.identifier_index(text, text) IS
    'Blind index of the canonical (GTIN-14, serial) pair; equal to dscsa.identifier_index(any spelling of the same unit).';
COMMENT ON FUNCTION dscsa.identifier_index_candidates(text) IS
    'dscsa.identifier_index under every loaded key version, active first: = ANY (...) keeps lookups working during a key rotation.';
COMMENT ON FUNCTION dscsa.identifier_index_candidates(text, text) IS
    'dscsa.identifier_index(gtin, serial) under every loaded key version, active first.';

-- Rows of a plaintext column per GS1 rule they break, before dscsa.protect_column()
-- encrypts it as that kind. Reads the table with the caller's rights.
CREATE OR REPLACE FUNCTION dscsa.gs1_problems(tbl regclass, col name, kind text)
    RETURNS TABLE (rule text, rows bigint)
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
BEGIN
    IF kind IS NULL OR kind NOT IN ('gtin', 'serial', 'lot', 'expiry') THEN
        RAISE EXCEPTION 'kind must be one of gtin, serial, lot, expiry' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT a.atttypid INTO col_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column % of % does not exist', quote_ident(col), tbl USING ERRCODE = 'undefined_column';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT v.rule, pg_catalog.count(*) FROM (SELECT dscsa.gs1_violation(%s, $1) AS rule FROM %s) v
          WHERE v.rule IS NOT NULL GROUP BY v.rule ORDER BY 2 DESC, 1',
        dscsa._plaintext_expr(col, col_type), tbl) USING kind;
END
$$;
COMMENT ON FUNCTION dscsa.gs1_problems(regclass, name, text) IS
    'Rows of a plaintext column per GS1 rule they break as a gtin, serial, lot or expiry field (no rows: all valid); never shows values.';

-- Refuses to protect a column as a GS1 kind while rows break the rules (unless
-- dscsa.gs1_validation is off, which only a superuser can set): the detail counts rows
-- per rule. Called by dscsa._protect_prepare before anything changes.
CREATE OR REPLACE FUNCTION dscsa._raise_gs1_problems(tbl regclass, col name, kind text) RETURNS void
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problems text;
BEGIN
    IF kind = 'generic' OR NOT current_setting('dscsa.gs1_validation')::boolean THEN
        RETURN;
    END IF;
    SELECT string_agg(format('%s: %s row%s', p.rule, p.rows, CASE WHEN p.rows = 1 THEN '' ELSE 's' END), E'\n') INTO problems
      FROM dscsa.gs1_problems(tbl, col, kind) p;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'column %.% holds values that are not valid GS1 % data', tbl, quote_ident(col), kind
            USING ERRCODE = 'invalid_parameter_value', DETAIL = problems,
                  HINT = 'Nothing was changed. Correct the rows (dscsa.gs1_problems lists the rules), protect the column as kind => ''generic'', or have a superuser SET dscsa.gs1_validation = off to store them as they are.';
    END IF;
END
$$;

-- A VRS responder's decision on one unit, in one call each (docs/GS1.md, "Verification"):
-- only a verdict leaves, but each field is authorized and recorded as a decryption (the
-- verdict says whether its plaintext equals the request). For fields sealed without a
-- context. PARALLEL RESTRICTED like dscsa_decrypt: keys are loaded per session.
CREATE OR REPLACE FUNCTION dscsa.identifier_matches(gtin dscsa.gtin_encrypted, serial dscsa.serial_encrypted,
    request_gtin text, request_serial text) RETURNS boolean
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_identifier_matches';
COMMENT ON FUNCTION dscsa.identifier_matches(dscsa.gtin_encrypted, dscsa.serial_encrypted, text, text) IS
    'Whether an encrypted unit is the requested one: serial number exactly, GTIN as GTIN-14 (any length requested).';
CREATE OR REPLACE FUNCTION dscsa.verification_failure_reason(lot dscsa.lot_encrypted, expiry dscsa.expiry_encrypted,
    request_lot text, request_expiry text) RETURNS text
    STABLE STRICT PARALLEL RESTRICTED COST 100 LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_verification_failure_reason';
COMMENT ON FUNCTION dscsa.verification_failure_reason(dscsa.lot_encrypted, dscsa.expiry_encrypted, text, text) IS
    'NULL when an encrypted unit''s lot and expiry match the request (YYMMDD; day 00: the month''s last day), else the PI-VRS reason No_match_GTIN_Serial_Lot, _Expiry or _Lot_Expiry.';
