-- VRS lookup benchmark data: :rows product units, encrypted (examples/vrs.sql) and the
-- same units in a plaintext table with a unique (gtin, serial) index as the baseline.
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
SET search_path = public;
SET client_min_messages = notice;
SET dscsa.key_name = 'bench';
SELECT dscsa.create_blind_index_key('vrs_bidx') WHERE NOT EXISTS (SELECT 1 FROM dscsa.keyring WHERE key_name = 'vrs_bidx');
SELECT dscsa.load_key('bench') + dscsa.load_key('vrs_bidx') AS versions_loaded;
DROP SCHEMA IF EXISTS vrs CASCADE;
\ir ../examples/vrs.sql
INSERT INTO vrs.product_units (gtin, serial, lot, expiry)
SELECT '00300010123455', 'SN' || i, 'L' || (i % 1000), date '2027-01-01' + (i % 365)
  FROM generate_series(1, :rows) i;
CALL vrs.protect();
VACUUM ANALYZE vrs.product_units;

DROP TABLE IF EXISTS vrs_plain;
CREATE TABLE vrs_plain (id bigserial PRIMARY KEY, gtin text NOT NULL, serial text NOT NULL, lot text NOT NULL,
                        expiry date NOT NULL, UNIQUE (gtin, serial));
INSERT INTO vrs_plain (gtin, serial, lot, expiry)
SELECT '00300010123455', 'SN' || i, 'L' || (i % 1000), date '2027-01-01' + (i % 365)
  FROM generate_series(1, :rows) i;
VACUUM ANALYZE vrs_plain;
-- The same decision logic without encryption, written the same way as vrs.verify (a
-- SQL-standard body the planner inlines into the caller's prepared statement), so that
-- the ratio measures what encryption adds, not a difference in how the SQL is run.
DROP FUNCTION IF EXISTS verify_plain_gtin(text);
CREATE OR REPLACE FUNCTION vrs_plain_verify(gtin text, serial text, lot text, expiry text)
    RETURNS TABLE (verified boolean, verification_failure_reason text)
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT CASE WHEN m.matched THEN m.lot_ok AND m.expiry_ok ELSE false END,
           CASE WHEN m.matched IS NULL THEN 'No_match_GTIN_Serial'
                WHEN m.lot_ok AND m.expiry_ok THEN NULL
                WHEN NOT m.lot_ok AND NOT m.expiry_ok THEN 'No_match_GTIN_Serial_Lot_Expiry'
                WHEN NOT m.lot_ok THEN 'No_match_GTIN_Serial_Lot'
                ELSE 'No_match_GTIN_Serial_Expiry' END
      FROM (SELECT 1) AS req
      LEFT JOIN LATERAL (
          SELECT true AS matched,
                 p.lot = vrs_plain_verify.lot AS lot_ok,
                 -- The same rule as examples/vrs.sql, including day 00.
                 to_char(p.expiry, 'YYMMDD') = vrs_plain_verify.expiry
                   OR (right(vrs_plain_verify.expiry, 2) = '00'
                       AND to_char(p.expiry, 'YYMM') = left(vrs_plain_verify.expiry, 4)
                       AND extract(day FROM p.expiry + 1) = 1) AS expiry_ok
            FROM vrs_plain p
           WHERE p.gtin = lpad(vrs_plain_verify.gtin, 14, '0') AND p.serial = vrs_plain_verify.serial
           LIMIT 1) AS m ON true;
END;
-- Both answer the same on a sample of existing units and of near misses; the run stops
-- here otherwise (a fast wrong answer is not a result).
DO $$
DECLARE
    n_rows bigint := (SELECT count(*) FROM vrs_plain);
    disagreements bigint;
    verified bigint;
BEGIN
    SELECT count(*) FILTER (WHERE e.verified IS DISTINCT FROM p.verified
                               OR e.verification_failure_reason IS DISTINCT FROM p.verification_failure_reason),
           count(*) FILTER (WHERE e.verified)
      INTO disagreements, verified
      FROM generate_series(1, 200) i,
           LATERAL (SELECT (i * 4999) % n_rows + 1 AS n) u,
           LATERAL (SELECT 'L' || (u.n % 1000 + CASE WHEN i % 4 = 1 THEN 1 ELSE 0 END) AS lot,
                           to_char(date '2027-01-01' + (u.n % 365)::int + CASE WHEN i % 4 = 2 THEN 1 ELSE 0 END, 'YYMMDD') AS exp,
                           'SN' || (u.n + CASE WHEN i % 4 = 3 THEN n_rows ELSE 0 END) AS serial) q,
           LATERAL (SELECT * FROM vrs.verify('00300010123455', q.serial, q.lot, q.exp)) e,
           LATERAL (SELECT * FROM vrs_plain_verify('00300010123455', q.serial, q.lot, q.exp)) p;
    IF disagreements > 0 OR verified <> 50 THEN
        RAISE EXCEPTION 'encrypted and plaintext VRS answers differ: % disagreements, % verified of 50', disagreements, verified;
    END IF;
    RAISE NOTICE 'encrypted and plaintext VRS answers agree on 200 requests (50 verified)';
END
$$;
