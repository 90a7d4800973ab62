-- Worked example: a VRS (Verification Router Service) responder over encrypted
-- product identifiers (docs/PROTECT.md, "VRS lookups"; docs/GS1.md).
--
-- A verification request carries GTIN, serial, lot and expiry (YYMMDD), as four fields or
-- as one identifier in any GS1 spelling (element string, scanner string, Digital Link
-- URI). The answer is verified true/false and, when false, the GS1
-- verificationFailureReason. The unit is found with ONE probe of the product-identifier
-- index: a unique blind index of the canonical (GTIN-14, serial) pair, so GTIN-12 and
-- GTIN-14 spellings, percent-escapes and element-string forms all find the same row. The
-- pair is then confirmed on that row's decrypted GTIN and serial, and only then are its
-- lot and expiry decrypted to choose the reason.
--
-- Prerequisites: the pg_dscsa extension, a data key named by dscsa.key_name, and a
-- blind-index key 'vrs_bidx', granted to the roles that use them (dscsa.grant_key: the
-- responder needs decrypt on the data key and blind_index on 'vrs_bidx'). Run as a role
-- with dscsa_admin and dscsa_writer:
--   \i examples/vrs.sql
--   INSERT INTO vrs.product_units (gtin, serial, lot, expiry) VALUES (...);   -- plaintext
--   CALL vrs.protect();                                                          -- encrypt
--   SELECT * FROM vrs.verify('00300010123455', 'SN123', 'A123', '260331');
--   SELECT * FROM vrs.verify('(01)00300010123455(17)260331(10)A123(21)SN123');

CREATE SCHEMA IF NOT EXISTS vrs;

CREATE TABLE IF NOT EXISTS vrs.product_units (
    id       bigserial PRIMARY KEY,
    gtin     text NOT NULL,
    serial   text NOT NULL,
    lot      text NOT NULL,
    expiry   date NOT NULL,
    status   text NOT NULL DEFAULT 'active',
    -- dscsa.identifier_index(gtin, serial): DSCSA's "serial unique within its GTIN" as a
    -- UNIQUE constraint that still holds once gtin and serial are encrypted.
    pi       bytea
);

-- Indexes the product identifiers, then encrypts the four identifier columns (in place:
-- the example table is loaded first). Refused (22023, counts per rule) if a row breaks a
-- GS1 rule: see dscsa.gs1_problems.
CREATE OR REPLACE PROCEDURE vrs.protect(mode text DEFAULT 'in_place')
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE vrs.product_units SET pi = dscsa.identifier_index(gtin, serial, 'vrs_bidx') WHERE pi IS NULL;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'product_units_pi_key') THEN
        ALTER TABLE vrs.product_units ALTER COLUMN pi SET NOT NULL,
            ADD CONSTRAINT product_units_pi_key UNIQUE (pi);
    END IF;
    CALL dscsa.protect_column('vrs.product_units', 'gtin', kind => 'gtin', mode => mode);
    CALL dscsa.protect_column('vrs.product_units', 'serial', kind => 'serial', mode => mode);
    CALL dscsa.protect_column('vrs.product_units', 'lot', kind => 'lot', mode => mode);
    CALL dscsa.protect_column('vrs.product_units', 'expiry', kind => 'expiry', mode => mode);
END
$$;

-- Commissions one unit from its identifier as a scanner or a packaging line sends it.
CREATE OR REPLACE FUNCTION vrs.commission(identifier text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    new_id bigint;
BEGIN
    SELECT * INTO p FROM dscsa.parse_identifier(identifier);
    IF p.serial IS NULL OR p.lot IS NULL OR p.expiry IS NULL THEN
        RAISE EXCEPTION 'a unit needs serial (21), lot (10) and expiry (17)' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO vrs.product_units (gtin, serial, lot, expiry, pi)
    VALUES (dscsa.dscsa_encrypt_gtin(p.gtin14), dscsa.dscsa_encrypt_serial(p.serial),
            dscsa.dscsa_encrypt_lot(p.lot), dscsa.dscsa_encrypt_expiry(vrs.expiry_date(p.expiry)),
            dscsa.identifier_index(p.gtin14, p.serial, 'vrs_bidx'))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- GS1 YYMMDD (day 00: the month's last day) as the ISO date a date column holds.
CREATE OR REPLACE FUNCTION vrs.expiry_date(yymmdd text) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT to_char(CASE WHEN right(yymmdd, 2) = '00'
                        THEN (to_date(left(yymmdd, 4) || '01', 'YYMMDD') + interval '1 month' - interval '1 day')::date
                        ELSE to_date(yymmdd, 'YYMMDD') END, 'YYYY-MM-DD')
$$;

-- One SQL query, no SET clause: a SQL function without SET clauses whose body is one
-- SELECT is inlined into the caller's query, so a prepared
-- `SELECT * FROM vrs.verify($1, $2, $3, $4)` is planned once and runs as one plan,
-- without a PL/pgSQL call and without saving and restoring settings on every request
-- (that alone was about a quarter of the responder's CPU time, docs/BENCHMARKS.md).
-- Without `SET search_path` the body must not depend on the caller's search_path: every
-- table and function is schema-qualified and every operator spelled
-- OPERATOR(pg_catalog.=), so a caller's schema cannot put its own in their place. (A
-- SQL-standard BEGIN ATOMIC body would bind its names at creation, but it would also bind
-- the columns' plaintext types before vrs.protect() encrypts them.)
--
-- The unit is the one row whose identifier index is among the candidates (one per loaded
-- version of 'vrs_bidx', so that lookups keep working while the key is rotated) and
-- which dscsa.identifier_matches confirms: its decrypted GTIN and serial are the
-- requested ones (the index is a truncated HMAC). Only that row's lot and expiry are
-- decrypted, by dscsa.verification_failure_reason, which applies GS1's rules (YYMMDD,
-- day 00 for the month's last day) and returns NULL or the PI-VRS reason. The two
-- functions do in two calls what a dozen dscsa_decrypt/normalize_identifier calls and
-- date arithmetic did before (docs/GS1.md, "Verification"). A GTIN or serial that breaks
-- the GS1 rules identifies no unit: try_identifier_index_candidates gives no candidates
-- for it (identifier_index_candidates would raise 22023), and the probe finds nothing.
-- The planner spells the candidates as one slot per loaded key version (a support
-- function, src/lookup/support.rs), so the probe is one index scan, also in a generic
-- plan.
--
-- The body reads the columns as vrs.protect() leaves them (encrypted); it is checked
-- when first used, not now, while they may still hold plaintext.
SET check_function_bodies = off;
CREATE OR REPLACE FUNCTION vrs.verify(gtin text, serial text, lot text, expiry text)
    RETURNS TABLE (verified boolean, verification_failure_reason text)
    LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$
    SELECT m.matched IS NOT NULL AND m.reason IS NULL,
           CASE WHEN m.matched IS NULL THEN 'No_match_GTIN_Serial' ELSE m.reason END
      FROM (SELECT 1) AS req
      LEFT JOIN LATERAL (
          SELECT true AS matched,
                 dscsa.verification_failure_reason(u.lot, u.expiry, $3, $4) AS reason
            FROM vrs.product_units u
           WHERE u.pi OPERATOR(pg_catalog.=) ANY (dscsa.try_identifier_index_candidates($1, $2, 'vrs_bidx'))
             AND dscsa.identifier_matches(u.gtin, u.serial, $1, $2)
           LIMIT 1) AS m ON true
$$;
RESET check_function_bodies;

-- The same request as one identifier in any GS1 spelling that carries all four fields.
CREATE OR REPLACE FUNCTION vrs.verify(identifier text)
    RETURNS TABLE (verified boolean, verification_failure_reason text)
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
BEGIN
    SELECT * INTO p FROM dscsa.parse_identifier(identifier);
    IF p.serial IS NULL OR p.lot IS NULL OR p.expiry IS NULL THEN
        RAISE EXCEPTION 'a verification request needs serial (21), lot (10) and expiry (17)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT * FROM vrs.verify(p.gtin14, p.serial, p.lot, p.expiry);
END
$$;
