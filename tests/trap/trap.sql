-- A booby-trapped schema for the search_path pass of the test suite (scripts/test.sh runs
-- the whole pg_regress and integration suite a second time with DSCSA_TEST_TRAP=1: this
-- file is installed into template1, so every database the tests create has it, and every
-- test session puts dscsa_trap first in its search_path).
--
-- It holds what an attacker with CREATE on a schema in other roles' search_path would
-- plant: operators and functions for argument types that pg_catalog has no exact match
-- for (oid vs regclass, name vs text, format(text, text), ...). PostgreSQL prefers an
-- exact match from any schema in the path over a pg_catalog candidate that needs an
-- implicit cast, so a pg_dscsa routine that does not pin search_path and writes `=` or
-- `format(...)` would call these. Each one logs 'dscsa_trap_sprung' and raises;
-- scripts/test.sh fails the run if the server log shows the marker, even where a test
-- expected some error.
--
-- Only types the extension's own catalog code handles are trapped, against each other
-- and against text (not integer or bytea: a quoted literal next to an integer column
-- would resolve to the trap's string-category argument, hijacking the tests' own
-- queries rather than testing the extension).

CREATE SCHEMA IF NOT EXISTS dscsa_trap;
GRANT USAGE ON SCHEMA dscsa_trap TO PUBLIC;

CREATE OR REPLACE FUNCTION dscsa_trap.sprung(what text) RETURNS void
    LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog
AS $$
BEGIN
    RAISE LOG 'dscsa_trap_sprung: % reached as %', what, current_user;
    RAISE EXCEPTION 'dscsa_trap_sprung: % reached', what USING ERRCODE = 'TR001';
END
$$;

DO $trap$
DECLARE
    catalog_types text[] := ARRAY['oid', 'regclass', 'regtype', 'regproc', 'regprocedure',
                                  'regnamespace', 'regrole', 'name', '"char"', 'tid'];
    other_types text[] := ARRAY['text'];
    l text;
    r text;
    op text;
    fn text;
    n integer := 0;
BEGIN
    -- Binary operators between a catalog type and any type (in either order).
    FOREACH l IN ARRAY catalog_types || other_types LOOP
        FOREACH r IN ARRAY catalog_types || other_types LOOP
            CONTINUE WHEN NOT (l = ANY (catalog_types) OR r = ANY (catalog_types));
            fn := pg_catalog.format('dscsa_trap.cmp_%s_%s', pg_catalog.translate(l, '"', ''), pg_catalog.translate(r, '"', ''));
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION %s(%s, %s) RETURNS boolean LANGUAGE plpgsql AS $f$
                 BEGIN PERFORM dscsa_trap.sprung(%L); RETURN NULL; END $f$',
                fn, l, r, pg_catalog.format('comparison (%s, %s)', l, r));
            FOREACH op IN ARRAY ARRAY['=', '<>', '<', '>', '<=', '>='] LOOP
                EXECUTE pg_catalog.format('CREATE OPERATOR dscsa_trap.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)',
                                          op, l, r, fn);
                n := n + 1;
            END LOOP;
        END LOOP;
    END LOOP;
    -- Concatenation of names and text (not of oid or regclass: integers cast to those
    -- implicitly, and 'SN' || i would then resolve to the trap).
    FOR l, r IN VALUES ('name', 'text'), ('text', 'name'), ('name', 'name') LOOP
        fn := pg_catalog.format('dscsa_trap.cat_%s_%s', l, r);
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION %s(%s, %s) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN PERFORM dscsa_trap.sprung(%L); RETURN NULL; END $f$',
            fn, l, r, pg_catalog.format('operator || (%s, %s)', l, r));
        EXECUTE pg_catalog.format('CREATE OPERATOR dscsa_trap.|| (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)', l, r, fn);
        n := n + 1;
    END LOOP;
    -- String functions with argument types pg_catalog matches only through a cast, and
    -- format(), whose pg_catalog form is variadic "any" (never an exact match).
    FOR fn, l IN VALUES
        ('lower', 'name'), ('upper', 'name'), ('length', 'name'), ('quote_ident', 'name'),
        ('quote_ident', 'regclass'), ('quote_literal', 'name'), ('quote_nullable', 'name'),
        ('left', 'name, int4'), ('right', 'name, int4'), ('substr', 'name, int4, int4'),
        ('replace', 'name, text, text'), ('concat', 'text, text'), ('concat', 'text, name'),
        ('format', 'text, text'), ('format', 'text, name'), ('format', 'text, regclass'),
        ('format', 'text, oid'), ('format', 'text, text, text'), ('format', 'text, regclass, name'),
        ('format', 'text, name, name'), ('format', 'text, regclass, text'),
        ('format', 'text, text, regclass'), ('format', 'text, name, regclass')
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION dscsa_trap.%I(%s) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN PERFORM dscsa_trap.sprung(%L); RETURN NULL; END $f$',
            fn, l, pg_catalog.format('%s(%s)', fn, l));
        n := n + 1;
    END LOOP;
    RAISE NOTICE 'dscsa_trap: % operators and functions planted', n;
END
$trap$;

-- Executable by everyone, as an attacker's would be.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA dscsa_trap TO PUBLIC;
