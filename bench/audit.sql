-- pg_dscsa audit-trail overhead (docs/AUDIT.md, docs/BENCHMARKS.md): the same
-- 1,000,000-row decryption with the trail off, on in async mode and on in sync mode,
-- interleaved run by run so that drift hits every mode alike, with the plaintext and
-- pgcrypto baselines of the same run. Run through scripts/bench.sh (BENCH_ONLY=audit).
--   psql variables: rows (default 1000000), reps (default 5)
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
\if :{?reps} \else \set reps 5 \endif
SET search_path = public, dscsa;
SET max_parallel_workers_per_gather = 0;
SET jit = off;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
SELECT dscsa.load_key('bench') AS versions_loaded;
SET dscsa.key_name = 'bench';

\echo Preparing :rows encrypted serial numbers...
DROP TABLE IF EXISTS bench_audit;
CREATE TABLE bench_audit AS
SELECT 'SN' || lpad(i::text, 18, '0') AS s,
       dscsa_encrypt('SN' || lpad(i::text, 18, '0')) AS c,
       encrypt(convert_to('SN' || lpad(i::text, 18, '0'), 'UTF8'),
               '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes') AS p
  FROM generate_series(1, :rows) i;
VACUUM ANALYZE bench_audit;
SELECT count(*) AS rows FROM bench_audit;

-- Wall time in ms of one run of `query` with the given audit settings.
CREATE OR REPLACE FUNCTION pg_temp.timed(audit text, durability text, query text) RETURNS numeric
    LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
BEGIN
    PERFORM set_config('dscsa.audit', audit, false);
    PERFORM set_config('dscsa.audit_durability', durability, false);
    t0 := clock_timestamp();
    EXECUTE query;
    RETURN (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
END
$$;

CREATE TEMP TABLE modes (step int, name text, audit text, durability text, query text);
INSERT INTO modes VALUES
 (1, 'plaintext: read text column', 'off', 'async', $q$SELECT sum(length(s)) FROM bench_audit$q$),
 (2, 'pgcrypto decrypt (aes-cbc)',  'off', 'async', $q$SELECT sum(length(decrypt(p, '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes'))) FROM bench_audit$q$),
 (3, 'dscsa_decrypt, trail off',     'off', 'async', $q$SELECT sum(length(dscsa_decrypt(c))) FROM bench_audit$q$),
 (4, 'dscsa_decrypt, trail async',   'on',  'async', $q$SELECT sum(length(dscsa_decrypt(c))) FROM bench_audit$q$),
 (5, 'dscsa_decrypt, trail sync',    'on',  'sync',  $q$SELECT sum(length(dscsa_decrypt(c))) FROM bench_audit$q$);
CREATE TEMP TABLE runs (step int, rep int, ms numeric);

\echo Timing (one warm-up round, then :reps rounds of every mode in turn, each run a statement of its own)...
SELECT format('INSERT INTO runs SELECT step, %s, pg_temp.timed(audit, durability, query) FROM modes WHERE step = %s',
              r, m.step)
  FROM generate_series(0, :reps) r, modes m ORDER BY r, m.step \gexec
DELETE FROM runs WHERE rep = 0;
RESET dscsa.audit;
RESET dscsa.audit_durability;

\echo
\echo Median per mode, and ratios (same run, same data):
WITH med AS (
    SELECT step, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM runs GROUP BY step
)
SELECT m.step, m.name, round(med.ms::numeric, 1) AS median_ms,
       round((med.ms / (SELECT ms FROM med WHERE step = 3))::numeric, 3) AS vs_trail_off,
       round((med.ms / (SELECT ms FROM med WHERE step = 2))::numeric, 2) AS vs_pgcrypto,
       round((med.ms / (SELECT ms FROM med WHERE step = 1))::numeric, 2) AS vs_plaintext
  FROM modes m JOIN med USING (step) ORDER BY m.step;
-- What the trail holds for these runs: one or a few records per 1,000,000-row statement.
SELECT count(*) AS audit_records_of_bench_runs, sum(count) AS decryptions_counted
  FROM dscsa.audit_log WHERE record_type = 'access' AND operation = 'decrypt' AND count >= :rows;
DROP TABLE bench_audit;
