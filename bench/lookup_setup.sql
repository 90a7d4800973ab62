-- Transparent-lookup benchmark data (issue 10): :rows units protected with a blind index
-- and read through the generated view by the application's unchanged query, and the same
-- units in a plaintext table with a unique index on serial as the baseline. Serials are
-- 18 digits (GS1 allows up to 20 characters), so that pgbench can bind one as the
-- query's parameter, as an application does (`WHERE serial = $1`).
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 1000000 \endif
SET search_path = public;
SET client_min_messages = warning;
SET dscsa.key_name = 'bench';
SELECT dscsa.create_blind_index_key('lookup_bidx') WHERE NOT EXISTS (SELECT 1 FROM dscsa.keyring WHERE key_name = 'lookup_bidx');
SELECT dscsa.load_key('bench') + dscsa.load_key('lookup_bidx') AS versions_loaded;
DROP VIEW IF EXISTS lookup_unit_plain;
DROP TABLE IF EXISTS lookup_unit, lookup_plain;
CREATE TABLE lookup_plain (id bigint PRIMARY KEY, lot_id int NOT NULL, serial text NOT NULL UNIQUE, status text NOT NULL);
INSERT INTO lookup_plain SELECT i, 1 + i % 1000, (100000000000000000 + i)::text, 'commissioned' FROM generate_series(1, :rows) i;
CREATE TABLE lookup_unit (LIKE lookup_plain INCLUDING ALL);
INSERT INTO lookup_unit SELECT * FROM lookup_plain;
CALL dscsa.protect_column('lookup_unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'lookup_bidx');
SELECT dscsa.create_view('lookup_unit');
VACUUM ANALYZE lookup_plain, lookup_unit;
-- The timed query must use the blind index and find the unit (a fast wrong answer is
-- not a result).
DO $$
DECLARE
    plan text;
    found bigint;
BEGIN
    EXECUTE 'EXPLAIN SELECT id, lot_id, status FROM lookup_unit_plain WHERE serial = ''100000000000000042''' INTO plan;
    IF plan NOT LIKE '%Index%' THEN
        RAISE EXCEPTION 'the view lookup does not use the blind index: %', plan;
    END IF;
    SELECT count(*) INTO found FROM lookup_unit_plain u JOIN lookup_plain p USING (id)
     WHERE u.serial IN ('100000000000000042', '100000000000000777') AND u.serial = p.serial;
    IF found <> 2 THEN
        RAISE EXCEPTION 'the view lookup found % of 2 units', found;
    END IF;
END
$$;
-- The lookup's plan without pg_dscsa (the instruction part's bound, BENCH_ONLY=
-- instructions): the same units with the serial's bytes in a bytea column under a unique
-- index, read through a security_invoker view that converts them back, and queried with
-- the two conditions the planner adds to the view's lookup written out (an index
-- condition on a function of the parameter, the converted column compared as the
-- recheck), with builtin functions of trivial cost in place of the HMAC and AES-GCM.
-- What PostgreSQL alone does for that shape.
DROP VIEW IF EXISTS lookup_shape_plain;
DROP TABLE IF EXISTS lookup_shape;
CREATE TABLE lookup_shape (id bigint PRIMARY KEY, lot_id int NOT NULL, serial_bytes bytea NOT NULL UNIQUE, status text NOT NULL);
INSERT INTO lookup_shape SELECT id, lot_id, convert_to(serial, 'UTF8'), status FROM lookup_plain;
CREATE VIEW lookup_shape_plain WITH (security_invoker = true) AS
    SELECT t.id, t.lot_id, convert_from(t.serial_bytes, 'UTF8') AS serial, t.serial_bytes, t.status FROM lookup_shape t;
VACUUM ANALYZE lookup_shape;
DO $$
DECLARE
    plan text;
    found bigint;
BEGIN
    -- As pgbench runs it: prepared, with the generic plan (the key computed at run time).
    SET LOCAL plan_cache_mode = force_generic_plan;
    EXECUTE 'PREPARE shape(text, text) AS SELECT id, lot_id, status FROM lookup_shape_plain'
            ' WHERE serial_bytes = convert_to($1, ''UTF8'') AND serial = $2';
    EXECUTE 'EXPLAIN EXECUTE shape(''100000000000000042'', ''100000000000000042'')' INTO plan;
    DEALLOCATE shape;
    IF plan NOT LIKE 'Index Scan using lookup_shape_serial_bytes_key%' THEN
        RAISE EXCEPTION 'the plan-shape lookup does not scan the bytea index: %', plan;
    END IF;
    SELECT count(*) INTO found FROM lookup_shape_plain
     WHERE serial_bytes = convert_to('100000000000000042', 'UTF8') AND serial = '100000000000000042';
    IF found <> 1 THEN
        RAISE EXCEPTION 'the plan-shape lookup found % of 1 unit', found;
    END IF;
END
$$;
