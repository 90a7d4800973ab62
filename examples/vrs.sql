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
    SET dscsa.identifier_index_key = 'vrs_bidx'
AS $$
BEGIN
    UPDATE vrs.product_units SET pi = dscsa.identifier_index(gtin, serial) WHERE pi IS NULL;
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
    SET dscsa.identifier_index_key = 'vrs_bidx'
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
            dscsa.identifier_index(p.gtin14, p.serial))
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

CREATE OR REPLACE FUNCTION vrs.verify(gtin text, serial text, lot text, expiry text)
    RETURNS TABLE (verified boolean, verification_failure_reason text)
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
    SET dscsa.identifier_index_key = 'vrs_bidx'
AS $$
DECLARE
    candidate bytea;
    matched boolean := false;
    want_gtin text := dscsa.normalize_identifier(verify.gtin, 'gtin');
    unit record;
    stored_expiry text;
    want_expiry text := dscsa.normalize_identifier(verify.expiry, 'expiry');
    lot_ok boolean;
    expiry_ok boolean;
BEGIN
    -- A GTIN or serial that breaks the GS1 rules identifies no unit.
    IF dscsa.gs1_violation(verify.gtin, 'gtin') IS NOT NULL
       OR dscsa.gs1_violation(verify.serial, 'serial') IS NOT NULL THEN
        RETURN QUERY SELECT false, 'No_match_GTIN_Serial';
        RETURN;
    END IF;
    -- One index value per loaded key version, active first: normally one iteration; two
    -- while the blind-index key is being rotated. Each is a scalar parameter of the
    -- query, which keeps one generic plan (with "= ANY (array)" the planner would guess
    -- ten elements for a generic plan and re-plan every call).
    FOREACH candidate IN ARRAY dscsa.identifier_index_candidates(verify.gtin, verify.serial) LOOP
        SELECT u.lot, u.expiry INTO unit
          FROM vrs.product_units u
         WHERE u.pi = candidate
           -- The index is a truncated HMAC: confirm the pair on the decrypted values.
           AND dscsa.dscsa_decrypt(u.serial) = verify.serial
           AND dscsa.dscsa_decrypt(u.gtin) = want_gtin;
        matched := FOUND;
        EXIT WHEN matched;
    END LOOP;
    -- (Not FOUND itself: the loop statement sets it.)
    IF NOT matched THEN
        RETURN QUERY SELECT false, 'No_match_GTIN_Serial';
        RETURN;
    END IF;
    lot_ok := dscsa.dscsa_decrypt(unit.lot) = dscsa.normalize_identifier(verify.lot, 'lot');
    -- Expiry: YYMMDD equal, or requested day 00 (GS1: the last day of that month) and the
    -- stored date is the last day of the requested month.
    stored_expiry := dscsa.dscsa_decrypt(unit.expiry);
    expiry_ok := dscsa.normalize_identifier(stored_expiry, 'expiry') = want_expiry
        OR (right(want_expiry, 2) = '00'
            AND left(dscsa.normalize_identifier(stored_expiry, 'expiry'), 4) = left(want_expiry, 4)
            AND extract(day FROM stored_expiry::date + 1) = 1);
    RETURN QUERY SELECT lot_ok AND expiry_ok,
        CASE WHEN lot_ok AND expiry_ok THEN NULL
             WHEN NOT lot_ok AND NOT expiry_ok THEN 'No_match_GTIN_Serial_Lot_Expiry'
             WHEN NOT lot_ok THEN 'No_match_GTIN_Serial_Lot'
             ELSE 'No_match_GTIN_Serial_Expiry' END;
END
$$;

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
