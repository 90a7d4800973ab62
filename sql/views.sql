-- pg_dscsa: what sits on top of protected columns: the generated plaintext view and the
-- auditor's verification report (docs/PROTECT.md). Routines only, replayed by upgrades.

-- Creates or regenerates a view presenting the table with its protected columns
-- decrypted (original names, types and column order; blind-index columns hidden).
-- It is security_invoker, so the caller's grants and the table's row-level security
-- apply; INSTEAD OF triggers encrypt on INSERT and UPDATE and delete by primary key.
-- Regenerating keeps the view's owner, grants and comment, and checks afterwards that
-- security_invoker is still set.
CREATE OR REPLACE FUNCTION dscsa.create_view(tbl regclass, view_name name DEFAULT NULL)
    RETURNS regclass
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp name;
    rel name;
    v text;
    fn text;
    qualified_tbl text;
    sel text;
    ins_cols text;
    ins_vals text;
    upd text;
    -- Columns the table computes itself (GENERATED ALWAYS identity, stored generated):
    -- left out of the trigger's INSERT and UPDATE, read back with RETURNING, and refused
    -- with PostgreSQL's own error when a statement gives them a value.
    ins_back text;
    ins_into text;
    upd_back text;
    upd_into text;
    ins_guard text;
    upd_guard text;
    ins_stmt text;
    upd_stmt text;
    pk_cond text;
    old_acl aclitem[];
    old_owner oid;
    old_comment text;
    existing oid;
    g record;
    c record;
    result regclass;
    r dscsa.protected_columns;
BEGIN
    SELECT n.nspname, cl.relname INTO nsp, rel
      FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = tbl;
    IF NOT EXISTS (SELECT 1 FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.state = 'protected') THEN
        RAISE EXCEPTION '% has no protected column', tbl USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    view_name := coalesce(view_name, pg_catalog.left(rel || '_plain', 63));
    v := pg_catalog.format('%I.%I', nsp, view_name);
    -- The trigger function runs with a pinned search_path: name the table in full.
    qualified_tbl := pg_catalog.format('%I.%I', nsp, rel);
    fn := pg_catalog.format('%I.%I', nsp, pg_catalog.left(view_name || '_dscsa_write', 63));

    -- One row per visible column, in the table's original column order.
    sel := ''; ins_cols := ''; ins_vals := ''; upd := '';
    ins_back := ''; ins_into := ''; upd_back := ''; upd_into := ''; ins_guard := ''; upd_guard := '';
    FOR c IN
        SELECT a.attname, a.atttypid::regtype AS typ, p.kind, p.context, p.original_type,
               a.attidentity, a.attgenerated
          FROM pg_catalog.pg_attribute a
          LEFT JOIN dscsa.protected_columns p ON p.relid = tbl AND p.column_name = a.attname AND p.state = 'protected'
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname NOT IN (SELECT q.blind_index_column FROM dscsa.protected_columns q
                                  WHERE q.relid = tbl AND q.blind_index_column IS NOT NULL)
         ORDER BY coalesce(p.original_attnum, a.attnum), a.attnum
    LOOP
        IF sel <> '' THEN
            sel := sel || ', ';
        END IF;
        IF c.attidentity = 'a' OR c.attgenerated <> '' THEN
            sel := sel || pg_catalog.format('t.%I', c.attname);
            ins_back := ins_back || CASE WHEN ins_back = '' THEN '' ELSE ', ' END || pg_catalog.quote_ident(c.attname);
            ins_into := ins_into || CASE WHEN ins_into = '' THEN '' ELSE ', ' END || pg_catalog.format('NEW.%I', c.attname);
            ins_guard := ins_guard || pg_catalog.format(
                $g$IF NEW.%1$I IS NOT NULL THEN
                    RAISE EXCEPTION 'cannot insert a non-DEFAULT value into column "%%"', %1$L USING ERRCODE = 'generated_always';
                END IF;
                $g$, c.attname);
            IF c.attgenerated <> '' THEN
                upd_back := upd_back || CASE WHEN upd_back = '' THEN '' ELSE ', ' END || pg_catalog.quote_ident(c.attname);
                upd_into := upd_into || CASE WHEN upd_into = '' THEN '' ELSE ', ' END || pg_catalog.format('NEW.%I', c.attname);
            END IF;
            upd_guard := upd_guard || pg_catalog.format(
                $g$IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN
                    RAISE EXCEPTION 'column "%%" can only be updated to DEFAULT', %1$L USING ERRCODE = 'generated_always';
                END IF;
                $g$, c.attname);
            CONTINUE;
        END IF;
        IF ins_cols <> '' THEN
            ins_cols := ins_cols || ', '; ins_vals := ins_vals || ', '; upd := upd || ', ';
        END IF;
        ins_cols := ins_cols || pg_catalog.quote_ident(c.attname);
        IF c.kind IS NULL THEN
            sel := sel || pg_catalog.format('t.%I', c.attname);
            ins_vals := ins_vals || pg_catalog.format('NEW.%I', c.attname);
            upd := upd || pg_catalog.format('%1$I = NEW.%1$I', c.attname);
        ELSE
            sel := sel || pg_catalog.format('dscsa.dscsa_decrypt(t.%1$I, %2$L)::%3$s AS %1$I', c.attname, c.context,
                                            dscsa._original_type(c.original_type));
            ins_vals := ins_vals || pg_catalog.format('%s(%s, %L)', dscsa._encrypt_function(c.kind),
                dscsa._plaintext_expr(c.attname, c.original_type::regtype, 'NEW.'), c.context);
            -- An UPDATE that does not change the plaintext keeps the stored ciphertext.
            upd := upd || pg_catalog.format('%1$I = CASE WHEN NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I THEN t.%1$I ELSE %2$s(%3$s, %4$L) END',
                c.attname, dscsa._encrypt_function(c.kind),
                dscsa._plaintext_expr(c.attname, c.original_type::regtype, 'NEW.'), c.context);
        END IF;
    END LOOP;
    SELECT string_agg(pg_catalog.format('t.%1$I = OLD.%1$I', a.attname), ' AND ')
      INTO pk_cond
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;

    -- Keep what a regeneration must not lose.
    SELECT cl.oid, cl.relacl, cl.relowner, pg_catalog.obj_description(cl.oid, 'pg_class')
      INTO existing, old_acl, old_owner, old_comment
      FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = nsp AND cl.relname = view_name;
    IF existing IS NOT NULL THEN
        IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = existing) <> 'v' THEN
            RAISE EXCEPTION '% exists and is not a view', v USING ERRCODE = 'wrong_object_type';
        END IF;
        -- Fails (and changes nothing) if other views depend on it.
        EXECUTE pg_catalog.format('DROP VIEW %s', v);
    END IF;
    EXECUTE pg_catalog.format('CREATE VIEW %s WITH (security_invoker = true) AS SELECT %s FROM %s t', v, sel, tbl);
    -- Column defaults of the table, so that INSERT ... RETURNING through the view sees them
    -- (a GENERATED BY DEFAULT identity column's is its sequence; GENERATED ALWAYS ones are
    -- filled in by the table and read back).
    FOR c IN
        SELECT a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr
          FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attrdef d ON d.adrelid = tbl AND d.adnum = a.attnum
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        UNION ALL
        SELECT a.attname, pg_catalog.format('pg_catalog.nextval(%L::regclass)',
                                            pg_catalog.pg_get_serial_sequence(qualified_tbl, a.attname))
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'd'
    LOOP
        EXECUTE pg_catalog.format('ALTER VIEW %s ALTER COLUMN %I SET DEFAULT %s', v, c.attname, c.default_expr);
    END LOOP;
    ins_stmt := CASE WHEN ins_cols = '' THEN pg_catalog.format('INSERT INTO %s DEFAULT VALUES', qualified_tbl)
                     ELSE pg_catalog.format('INSERT INTO %s (%s) VALUES (%s)', qualified_tbl, ins_cols, ins_vals) END
                || CASE WHEN ins_back = '' THEN '' ELSE pg_catalog.format(' RETURNING %s INTO %s', ins_back, ins_into) END;
    upd_stmt := pg_catalog.format('UPDATE %s t SET %s WHERE %s', qualified_tbl, upd, pk_cond)
                || CASE WHEN upd_back = '' THEN '' ELSE pg_catalog.format(' RETURNING %s INTO %s', upd_back, upd_into) END;
    IF pk_cond IS NOT NULL THEN
        EXECUTE pg_catalog.format($f$
            CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
                LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
            AS $body$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    %3$s%4$s;
                    RETURN NEW;
                ELSIF TG_OP = 'UPDATE' THEN
                    %5$s%6$s;
                    IF NOT FOUND THEN RETURN NULL; END IF;
                    RETURN NEW;
                ELSE
                    DELETE FROM %2$s t WHERE %7$s;
                    IF NOT FOUND THEN RETURN NULL; END IF;
                    RETURN OLD;
                END IF;
            END
            $body$ $f$, fn, qualified_tbl, ins_guard, ins_stmt, upd_guard, upd_stmt, pk_cond);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', fn);
        EXECUTE pg_catalog.format('CREATE TRIGGER dscsa_write INSTEAD OF INSERT OR UPDATE OR DELETE ON %s
                                   FOR EACH ROW EXECUTE FUNCTION %s()', v, fn);
    ELSE
        RAISE NOTICE '% has no primary key: the view % is read-only', tbl, v;
    END IF;
    result := v::regclass;
    IF existing IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO %I', v, (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = old_owner));
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', v);
        FOR g IN SELECT * FROM pg_catalog.aclexplode(old_acl) LOOP
            CONTINUE WHEN g.grantee = old_owner;
            EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', g.privilege_type, v,
                CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident((SELECT rolname FROM pg_catalog.pg_roles WHERE oid = g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        IF old_comment IS NOT NULL THEN
            EXECUTE pg_catalog.format('COMMENT ON VIEW %s IS %L', v, old_comment);
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = result AND 'security_invoker=true' = ANY (reloptions)) THEN
        RAISE EXCEPTION 'view % lost security_invoker', v USING ERRCODE = 'internal_error';
    END IF;
    FOR r IN SELECT * FROM dscsa.protected_columns p WHERE p.relid = tbl LOOP
        r.view_name := result;
        PERFORM dscsa._registry('save', tbl, r.column_name, r);
    END LOOP;
    RETURN result;
END
$$;
COMMENT ON FUNCTION dscsa.create_view(regclass, name) IS
    'Creates or regenerates the security_invoker view of a protected table (decrypted columns, writable through INSTEAD OF triggers); keeps grants, owner and comment.';

-- Drops the generated view of a table and its INSTEAD OF trigger function (which
-- DROP VIEW alone would leave behind). Fails, changing nothing, if other views depend on it.
CREATE OR REPLACE FUNCTION dscsa.drop_view(tbl regclass)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v oid;
    nsp name;
    vname name;
    r dscsa.protected_columns;
BEGIN
    SELECT c.oid, n.nspname, c.relname INTO v, nsp, vname
      FROM dscsa.protected_columns p
      JOIN pg_catalog.pg_class c ON c.oid = p.view_name
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE p.relid = tbl
     LIMIT 1;
    IF v IS NULL THEN
        RAISE EXCEPTION '% has no generated view', tbl USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE pg_catalog.format('DROP VIEW %I.%I', nsp, vname);
    EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS %I.%I()', nsp, pg_catalog.left(vname || '_dscsa_write', 63));
    FOR r IN SELECT * FROM dscsa.protected_columns p WHERE p.relid = tbl LOOP
        r.view_name := NULL;
        PERFORM dscsa._registry('save', tbl, r.column_name, r);
    END LOOP;
END
$$;
COMMENT ON FUNCTION dscsa.drop_view(regclass) IS
    'Drops the generated view of a protected table and its trigger function.';

-- The auditor's report on one encrypted column, without revealing any plaintext: one
-- row per key version (rows, how many authenticate, which fail, by primary key) and
-- one row (key_id NULL) counting NULLs. Every value is checked with its GCM tag, so the
-- caller needs the keys loaded (a version that cannot be loaded is an error, not a
-- "failed" row). With no primary key, failing rows are identified by ctid.
CREATE OR REPLACE FUNCTION dscsa.verify_column(tbl regclass, col name, context text DEFAULT NULL)
    RETURNS TABLE (key_id integer, key_name text, key_version integer, key_status text,
                   rows bigint, authenticated bigint, failed bigint, failed_rows jsonb)
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ctx text := coalesce(context, (SELECT p.context FROM dscsa.protected_columns p
                                    WHERE p.relid = tbl AND p.column_name = col), '');
    pk text;
    total_rows bigint := 0;
    total_failed bigint := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                    WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped
                      AND (t.oid = 'dscsa.encrypted'::regtype OR t.typbasetype = 'dscsa.encrypted'::regtype)) THEN
        RAISE EXCEPTION 'column %.% is not an encrypted column', tbl, col USING ERRCODE = 'wrong_object_type';
    END IF;
    PERFORM dscsa._audit_job_event('verify_column', 'started', jsonb_build_object('table', tbl::text, 'column', col));
    SELECT 'pg_catalog.jsonb_build_object(' || string_agg(pg_catalog.format('%L, x.%I', a.attname, a.attname), ', ') || ')'
      INTO pk
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;
    pk := coalesce(pk, 'pg_catalog.jsonb_build_object(''ctid'', x.ctid::text)');
    FOR key_id, key_name, key_version, key_status, rows, authenticated, failed, failed_rows IN EXECUTE pg_catalog.format(
        'WITH checked AS (
             SELECT CASE WHEN v.verdict = ''malformed'' THEN NULL ELSE dscsa.envelope_key_id(x.%1$I)::integer END AS kid,
                    v.verdict, %2$s AS pk
               FROM %3$s x, LATERAL (SELECT dscsa._authenticate_at(x.%1$I, $1, pg_catalog.jsonb_build_object(
                                     ''found_by'', ''verify_column'', ''table'', $2, ''column'', $3,
                                     ''primary_key'', %2$s)) AS verdict) v
              WHERE x.%1$I IS NOT NULL)
         SELECT c.kid, m.key_name, m.version, coalesce(m.status, CASE WHEN c.kid IS NULL THEN ''malformed'' ELSE ''unknown key id'' END),
                count(*), count(*) FILTER (WHERE c.verdict = ''ok''), count(*) FILTER (WHERE c.verdict <> ''ok''),
                coalesce(pg_catalog.jsonb_agg(c.pk) FILTER (WHERE c.verdict <> ''ok''), ''[]''::jsonb)
           FROM checked c LEFT JOIN dscsa.keys m ON m.key_id = c.kid
          GROUP BY c.kid, m.key_name, m.version, m.status
         UNION ALL
         SELECT NULL, NULL, NULL, ''null'', count(*), NULL, NULL, NULL FROM %3$s x WHERE x.%1$I IS NULL
         ORDER BY 1 NULLS LAST',
        col, pk, tbl) USING ctx, tbl::text, col::text
    LOOP
        -- (Each failing row was recorded as a tamper detection, with table, column and
        -- primary key, by dscsa._authenticate_at, and alerted.)
        total_rows := total_rows + rows;
        total_failed := total_failed + coalesce(failed, 0);
        RETURN NEXT;
    END LOOP;
    PERFORM dscsa._audit_job_event('verify_column', 'finished',
        jsonb_build_object('table', tbl::text, 'column', col, 'rows', total_rows, 'failed', total_failed));
END
$$;
COMMENT ON FUNCTION dscsa.verify_column(regclass, name, text) IS
    'Auditor''s report for an encrypted column: rows per key version, GCM-authenticated rows, failing rows by primary key (each also recorded in the audit trail as a tamper detection, and alerted), NULLs. Reveals no plaintext.';
