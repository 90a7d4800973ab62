-- The transparent lookup's executor cost, without the client protocol and the scheduler:
-- one backend runs the application's query (bench/lookup_view.pgbench) and the plaintext
-- one (bench/lookup_plain.pgbench) :n times each in a PL/pgSQL loop, with the serial
-- bound as the statement's parameter and the same generic plans as pgbench -M prepared.
-- Five alternating repetitions after a warm-up; prints the median microseconds per
-- lookup of each and their ratio. Every lookup must find its unit. The whole loop is one
-- top-level statement, so the audit trail's per-statement record (one per lookup under
-- pgbench) is not in these figures. Needs bench/lookup_setup.sql's tables.
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
\if :{?n} \else \set n 100000 \endif
SET search_path = public;
SET client_min_messages = warning;
SELECT dscsa.load_key('bench') + dscsa.load_key('lookup_bidx') AS loaded \gset

CREATE TEMP TABLE loop_times (config text NOT NULL, rep integer NOT NULL, us_per_lookup float8 NOT NULL);

-- Microseconds per lookup over n lookups of spread serials, through the view or on the
-- plaintext table.
CREATE FUNCTION pg_temp.time_lookups(through_view boolean, n integer, rows integer) RETURNS float8
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    wanted text;
    unit record;
    started timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        wanted := (100000000000000000 + 1 + (i::bigint * 7919) % rows)::text;
        IF through_view THEN
            SELECT id, lot_id, status INTO unit FROM public.lookup_unit_plain WHERE serial = wanted;
        ELSE
            SELECT id, lot_id, status INTO unit FROM public.lookup_plain WHERE serial = wanted;
        END IF;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lookup % found no unit', i;
        END IF;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - started) * 1e6 / n;
END
$$;

-- Warm-up (caches, plans), not recorded.
SELECT pg_temp.time_lookups(false, :n, :rows) IS NOT NULL AND pg_temp.time_lookups(true, :n, :rows) IS NOT NULL AS warmed;
INSERT INTO loop_times
SELECT c.config, r, pg_temp.time_lookups(c.config = 'view', :n, :rows)
  FROM generate_series(1, 5) r,
       LATERAL (VALUES (CASE WHEN r % 2 = 1 THEN 'plaintext' ELSE 'view' END),
                       (CASE WHEN r % 2 = 1 THEN 'view' ELSE 'plaintext' END)) c(config);
\echo 'Lookup inside one backend, median of 5 repetitions of' :n 'lookups (µs per lookup):'
SELECT config, round(percentile_disc(0.5) WITHIN GROUP (ORDER BY us_per_lookup)::numeric, 2) AS us_per_lookup,
       string_agg(round(us_per_lookup::numeric, 2)::text, ' ' ORDER BY rep) AS each
  FROM loop_times GROUP BY config ORDER BY config;
SELECT round((p.m / v.m)::numeric, 2) AS "view/plaintext throughput (executor)",
       round((v.m - p.m)::numeric, 2) AS "µs more per lookup"
  FROM (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY us_per_lookup) m FROM loop_times WHERE config = 'plaintext') p,
       (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY us_per_lookup) m FROM loop_times WHERE config = 'view') v;
