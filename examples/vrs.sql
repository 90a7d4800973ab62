-- Worked example: a VRS (Verification Router Service) responder over encrypted
-- product identifiers (docs/PROTECT.md, "VRS lookups").
--
-- A verification request carries GTIN, serial, lot and expiry (YYMMDD). The answer is
-- verified true/false and, when false, the GS1 verificationFailureReason. The lookup
-- goes through the blind index of the serial number (an index scan), confirms the
-- canonical (GTIN-14, serial) pair by decrypting the candidate's GTIN and serial, and
-- only then decrypts lot and expiry of that one row to choose the reason.
--
-- Prerequisites: the pg_dscsa extension, a data key named by dscsa.key_name, and a
-- blind-index key 'vrs_bidx', granted to the roles that use them (dscsa.grant_key: the
-- responder needs decrypt on the data key and blind_index on 'vrs_bidx'). Run as a role
-- with dscsa_admin and dscsa_writer:
--   \i examples/vrs.sql
--   INSERT INTO vrs.product_units (gtin, serial, lot, expiry) VALUES (...);   -- plaintext
--   CALL vrs.protect();                                                          -- encrypt
--   SELECT * FROM vrs.verify('00300010123455', 'SN123', 'A123', '260331');

CREATE SCHEMA IF NOT EXISTS vrs;

CREATE TABLE IF NOT EXISTS vrs.product_units (
    id       bigserial PRIMARY KEY,
    gtin     text NOT NULL,
    serial   text NOT NULL,
    lot      text NOT NULL,
    expiry   date NOT NULL,
    status   text NOT NULL DEFAULT 'active'
);

-- Encrypts the four identifier columns (in place: the example table is loaded first).
CREATE OR REPLACE PROCEDURE vrs.protect(mode text DEFAULT 'in_place')
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CALL dscsa.protect_column('vrs.product_units', 'gtin', kind => 'gtin', mode => mode);
    CALL dscsa.protect_column('vrs.product_units', 'serial', kind => 'serial', mode => mode,
                              blind_index_key => 'vrs_bidx');
    CALL dscsa.protect_column('vrs.product_units', 'lot', kind => 'lot', mode => mode);
    CALL dscsa.protect_column('vrs.product_units', 'expiry', kind => 'expiry', mode => mode);
END
$$;

CREATE OR REPLACE FUNCTION vrs.verify(gtin text, serial text, lot text, expiry text)
    RETURNS TABLE (verified boolean, verification_failure_reason text)
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Computed once, then passed to the query as plain scalar parameters, so that
    -- PL/pgSQL keeps one generic plan (an index scan) instead of planning every call.
    want_serial text := dscsa.normalize_identifier(verify.serial, 'serial');
    want_gtin text := dscsa.normalize_identifier(verify.gtin, 'gtin');
    candidate bytea;
    matched boolean := false;
    unit record;
    stored_expiry text;
    want_expiry text := dscsa.normalize_identifier(verify.expiry, 'expiry');
    lot_ok boolean;
    expiry_ok boolean;
BEGIN
    -- One blind index per loaded key version, active first: normally one iteration; two
    -- while the blind-index key is being rotated.
    FOREACH candidate IN ARRAY dscsa.blind_index_candidates(verify.serial, 'vrs_bidx', 'serial') LOOP
        SELECT u.lot, u.expiry INTO unit
          FROM vrs.product_units u
         WHERE u.serial_bidx = candidate
           -- The blind index is truncated: confirm the pair on the decrypted values.
           AND dscsa.dscsa_decrypt(u.serial) = want_serial
           AND dscsa.normalize_identifier(dscsa.dscsa_decrypt(u.gtin), 'gtin') = want_gtin
         LIMIT 1;
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
