-- pg_dscsa benchmark: per-row cost of encrypt/decrypt against baselines measured in the
-- same run on the same data. Run through scripts/bench.sh (make bench).
--   psql variables: rows (default 1000000), reps (default 5)
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
\if :{?reps} \else \set reps 5 \endif
SET search_path = public, dscsa;
SET max_parallel_workers_per_gather = 0;
SET jit = off;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
SELECT dscsa.create_key('bench') WHERE NOT EXISTS (SELECT 1 FROM dscsa.keyring WHERE key_name = 'bench');
SELECT dscsa.load_key('bench') AS versions_loaded;
SET dscsa.key_name = 'bench';

\echo Preparing :rows serial numbers of 20 characters...
DROP TABLE IF EXISTS bench_serials;
CREATE TABLE bench_serials AS
SELECT 'SN' || lpad(i::text, 18, '0') AS s,
       dscsa_encrypt('SN' || lpad(i::text, 18, '0')) AS c,
       encrypt(convert_to('SN' || lpad(i::text, 18, '0'), 'UTF8'),
               '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes') AS p
  FROM generate_series(1, :rows) i;
VACUUM ANALYZE bench_serials;
-- Warm the cache so every query reads from shared buffers.
SELECT count(*) AS rows FROM bench_serials;

-- Median wall time in ms of `reps` runs of a query (after one warm-up run).
CREATE OR REPLACE FUNCTION pg_temp.bench(query text, reps int) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    times numeric[] := '{}';
BEGIN
    EXECUTE query;
    FOR i IN 1..reps LOOP
        t0 := clock_timestamp();
        EXECUTE query;
        times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
    END LOOP;
    RETURN (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x);
END
$$;

CREATE TEMP TABLE results (step int, name text, query text, ms numeric);
INSERT INTO results VALUES
 (1, 'plaintext: text -> bytea copy', $q$SELECT sum(length(convert_to(s, 'UTF8'))) FROM bench_serials$q$, NULL),
 (2, 'pgcrypto encrypt(aes-cbc)',     $q$SELECT sum(length(encrypt(convert_to(s, 'UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes'))) FROM bench_serials$q$, NULL),
 (3, 'dscsa_encrypt',                 $q$SELECT sum(pg_column_size(dscsa_encrypt(s))) FROM bench_serials$q$, NULL),
 (4, 'plaintext: read text column',   $q$SELECT sum(length(s)) FROM bench_serials$q$, NULL),
 (5, 'pgcrypto decrypt(aes-cbc)',     $q$SELECT sum(length(decrypt(p, '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes'))) FROM bench_serials$q$, NULL),
 (6, 'dscsa_decrypt',                 $q$SELECT sum(length(dscsa_decrypt(c))) FROM bench_serials$q$, NULL),
 (7, 'pgcrypto round trip',           $q$SELECT sum(length(decrypt(encrypt(convert_to(s, 'UTF8'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes'), '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'aes'))) FROM bench_serials$q$, NULL),
 (8, 'dscsa round trip',              $q$SELECT sum(length(dscsa_decrypt(dscsa_encrypt(s)))) FROM bench_serials$q$, NULL);

\echo Timing each query (median of :reps runs after a warm-up)...
UPDATE results SET ms = pg_temp.bench(query, :reps);

\echo
\echo Per-row cost (microseconds) and ratios, same run, same data:
SELECT step, name,
       round(ms, 1) AS total_ms,
       round(ms * 1000 / :rows, 3) AS us_per_row
  FROM results ORDER BY step;

SELECT 'dscsa_encrypt' AS operation,
       round((SELECT ms FROM results WHERE step = 3) / (SELECT ms FROM results WHERE step = 2), 2) AS vs_pgcrypto,
       round((SELECT ms FROM results WHERE step = 3) / (SELECT ms FROM results WHERE step = 1), 2) AS vs_plaintext
UNION ALL
SELECT 'dscsa_decrypt',
       round((SELECT ms FROM results WHERE step = 6) / (SELECT ms FROM results WHERE step = 5), 2),
       round((SELECT ms FROM results WHERE step = 6) / (SELECT ms FROM results WHERE step = 4), 2)
UNION ALL
SELECT 'round trip',
       round((SELECT ms FROM results WHERE step = 8) / (SELECT ms FROM results WHERE step = 7), 2),
       round((SELECT ms FROM results WHERE step = 8) / (SELECT ms FROM results WHERE step = 1), 2);
DROP TABLE bench_serials;
