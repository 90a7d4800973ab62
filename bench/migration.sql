-- pg_dscsa migration benchmark: protecting a column of :rows rows in place and online,
-- and re-encrypting it after a key rotation, against a plain rewrite of the same column
-- (UPDATE t SET c = c || '') measured in the same run on identical tables.
-- Run through scripts/bench.sh (make bench), which runs it MIG_ROUNDS times (default 3)
-- and reports the median of each ratio. psql variables: mrows (default 1000000), round.
\set ON_ERROR_STOP 1
\if :{?mrows} \else \set mrows 1000000 \endif
\if :{?round} \else \set round 1 \endif
SET search_path = public, dscsa;
SET client_min_messages = warning;
SET dscsa.key_name = 'bench';
SELECT dscsa.load_key('bench') AS versions_loaded;
SELECT dscsa.create_blind_index_key('bench_bidx') WHERE NOT EXISTS (SELECT 1 FROM dscsa.keyring WHERE key_name = 'bench_bidx');
SELECT dscsa.load_key('bench_bidx') AS versions_loaded;

\echo Preparing four identical tables of :mrows units...
DROP TABLE IF EXISTS mig_rewrite, mig_in_place, mig_online, mig_online_bidx, mig_online_alone;
CREATE TABLE mig_rewrite (id bigint PRIMARY KEY, lot_id int NOT NULL, serial text NOT NULL, status text NOT NULL);
INSERT INTO mig_rewrite SELECT i, 1 + i % 1000, 'SN' || lpad(i::text, 18, '0'), 'commissioned' FROM generate_series(1, :mrows) i;
CREATE TABLE mig_in_place (LIKE mig_rewrite INCLUDING ALL);
INSERT INTO mig_in_place SELECT * FROM mig_rewrite;
CREATE TABLE mig_online (LIKE mig_rewrite INCLUDING ALL);
INSERT INTO mig_online SELECT * FROM mig_rewrite;
CREATE TABLE mig_online_bidx (LIKE mig_rewrite INCLUDING ALL);
INSERT INTO mig_online_bidx SELECT * FROM mig_rewrite;
CREATE TABLE mig_online_alone (LIKE mig_rewrite INCLUDING ALL);
INSERT INTO mig_online_alone SELECT * FROM mig_rewrite;
VACUUM ANALYZE mig_rewrite, mig_in_place, mig_online, mig_online_bidx, mig_online_alone;
-- No autovacuum in the middle of a timed step (each step leaves a million dead rows).
ALTER TABLE mig_rewrite SET (autovacuum_enabled = false);
ALTER TABLE mig_in_place SET (autovacuum_enabled = false);
ALTER TABLE mig_online SET (autovacuum_enabled = false);
ALTER TABLE mig_online_bidx SET (autovacuum_enabled = false);
ALTER TABLE mig_online_alone SET (autovacuum_enabled = false);
CREATE TEMP TABLE mig_results (step int, name text, ms numeric);

\echo 1/6 baseline: UPDATE t SET serial = serial || ''
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
UPDATE mig_rewrite SET serial = serial || '';
INSERT INTO mig_results SELECT 1, 'plain rewrite UPDATE c = c || ''''', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;

\echo 2/6 protect_column in place
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
CALL dscsa.protect_column('mig_in_place', 'serial', kind => 'serial', mode => 'in_place');
INSERT INTO mig_results SELECT 2, 'protect_column in place', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;

\echo 3/6 protect_column online
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
CALL dscsa.protect_column('mig_online', 'serial', kind => 'serial', batch_size => 50000);
INSERT INTO mig_results SELECT 3, 'protect_column online', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;

\echo 4/6 protect_column online with a blind index
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
CALL dscsa.protect_column('mig_online_bidx', 'serial', kind => 'serial', blind_index_key => 'bench_bidx', batch_size => 50000);
INSERT INTO mig_results SELECT 4, 'protect_column online + blind index', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;

\echo 5/6 rotate the data key, re-encrypt the in-place table
SELECT dscsa.rotate_key('bench') AS new_key_id;
SELECT dscsa.load_key('bench') AS versions_loaded;
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
CALL dscsa.reencrypt('mig_in_place', 'serial', NULL, 50000);
INSERT INTO mig_results SELECT 5, 'reencrypt to the new version', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;

\echo 6/6 protect_column online with a blind index, the session alone (dscsa.backfill_workers = 0)
SET dscsa.backfill_workers = 0;
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
CALL dscsa.protect_column('mig_online_alone', 'serial', kind => 'serial', blind_index_key => 'bench_bidx', batch_size => 50000);
INSERT INTO mig_results SELECT 6, 'protect_column online + blind index, no workers', extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;
RESET dscsa.backfill_workers;

-- Correctness of what was timed, so a fast wrong run cannot pass for a result.
DO $$
DECLARE
    bad bigint;
BEGIN
    SELECT count(*) INTO bad
      FROM mig_rewrite r JOIN mig_in_place p USING (id) JOIN mig_online o USING (id) JOIN mig_online_bidx b USING (id)
     JOIN mig_online_alone a USING (id)
     WHERE dscsa.dscsa_decrypt(p.serial) <> r.serial OR dscsa.dscsa_decrypt(o.serial) <> r.serial
        OR dscsa.dscsa_decrypt(b.serial) <> r.serial OR dscsa.dscsa_decrypt(a.serial) <> r.serial;
    IF bad > 0 OR (SELECT count(*) FROM mig_online_bidx) <> (SELECT count(*) FROM mig_rewrite)
       OR (SELECT count(*) FROM mig_online_alone) <> (SELECT count(*) FROM mig_rewrite) THEN
        RAISE EXCEPTION 'protected tables differ from the plaintext: % rows', bad;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS mig_history (round int, step int, name text, ms numeric, vs_plain_rewrite numeric);
INSERT INTO mig_history SELECT :round, step, name, ms, ms / (SELECT ms FROM mig_results WHERE step = 1) FROM mig_results;

\echo
\echo Migration of :mrows rows, round :round, ratios against the plain rewrite of the same round:
SELECT step, name, round(ms) AS ms,
       round(ms * 1000 / :mrows, 2) AS us_per_row,
       round(ms / (SELECT ms FROM mig_results WHERE step = 1), 2) AS vs_plain_rewrite
  FROM mig_results ORDER BY step;
