-- GS1 parsing and the product-identifier index, per identifier (issue 10), against the
-- blind index of the serial alone and a plain md5 of the same text, in the same run.
-- psql variables: rows (default 1000000), reps (default 5): the median of reps runs.
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
\if :{?reps} \else \set reps 5 \endif
SET search_path = public;
SET client_min_messages = warning;
SELECT dscsa.create_blind_index_key('bench_pi') WHERE NOT EXISTS (SELECT 1 FROM dscsa.keyring WHERE key_name = 'bench_pi');
SELECT dscsa.load_key('bench_pi') AS versions_loaded;
SET dscsa.identifier_index_key = 'bench_pi';
DROP TABLE IF EXISTS gs1_input;
CREATE TABLE gs1_input AS
SELECT i, '(01)00300010123455(17)270331(10)L' || (i % 1000) || '(21)SN' || i AS element,
       'https://id.gs1.org/01/00300010123455/10/L' || (i % 1000) || '/21/SN' || i || '?17=270331' AS link,
       'SN' || i AS serial
  FROM generate_series(1, :rows) i;
VACUUM ANALYZE gs1_input;
CREATE TEMP TABLE gs1_results (step int, name text, ms numeric);
CREATE OR REPLACE FUNCTION pg_temp.time_ms(sql text) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    EXECUTE sql;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
SELECT format($f$
INSERT INTO gs1_results SELECT s.step, s.name, pg_temp.time_ms(s.sql)
  FROM generate_series(1, %s) r,
       (VALUES (1, 'baseline: md5(element string)', 'SELECT count(md5(element)) FROM gs1_input'),
               (2, 'baseline: blind_index(serial) alone', 'SELECT count(dscsa.blind_index(serial, ''bench_pi'', ''serial'')) FROM gs1_input'),
               (3, 'parse_identifier(element string)', 'SELECT count(p.gtin14) FROM gs1_input, dscsa.parse_identifier(element) p'),
               (4, 'parse_identifier(Digital Link)', 'SELECT count(p.gtin14) FROM gs1_input, dscsa.parse_identifier(link) p'),
               (5, 'identifier_index(element string)', 'SELECT count(dscsa.identifier_index(element)) FROM gs1_input'),
               (6, 'identifier_index(gtin, serial)', 'SELECT count(dscsa.identifier_index(''00300010123455'', serial)) FROM gs1_input')) s(step, name, sql)
 ORDER BY r, s.step$f$, :reps) AS timed \gset
:timed;
-- Correctness of what was timed: every spelling of a unit gives one index value.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM gs1_input WHERE i % 9973 = 0
                AND (dscsa.identifier_index(element) <> dscsa.identifier_index('00300010123455', serial)
                     OR dscsa.identifier_index(link) <> dscsa.identifier_index(element))) THEN
        RAISE EXCEPTION 'spellings of one unit give different identifier indexes';
    END IF;
END $$;
\echo
\echo GS1 parsing and product-identifier index of :rows identifiers, median of :reps runs:
SELECT step, name, round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)) AS ms,
       round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) * 1000 / :rows, 3) AS us_per_identifier,
       round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)
             / (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) FROM gs1_results WHERE step = 2), 2) AS vs_blind_index
  FROM gs1_results GROUP BY step, name ORDER BY step;
