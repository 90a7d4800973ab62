-- pg_dscsa: protecting columns of existing tables (docs/PROTECT.md).
--
-- dscsa.protect_column() turns a plaintext column into an encrypted one, in place (one
-- ALTER TABLE, for small tables) or online (twin column, batched backfill kept in sync
-- by a trigger, short cutover lock). dscsa.protected_columns records what was done, so
-- that a killed run resumes, views can be generated, keys rotated and columns verified.
--
-- Everything runs with the caller's rights (no SECURITY DEFINER: it alters the caller's
-- tables). Routines pin search_path = pg_catalog, pg_temp, except dscsa.protect_column
-- itself: a procedure that COMMITs cannot have a SET clause, so it is a shell that only
-- calls the phase functions below (see sql/rewrite.sql for the rule it follows).
-- Generated statements quote identifiers with format('%I') / regclass output and pass
-- values with %L.

CREATE OR REPLACE FUNCTION dscsa._encrypt_function(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.dscsa_encrypt'
                     WHEN 'gtin' THEN 'dscsa.dscsa_encrypt_gtin'
                     WHEN 'serial' THEN 'dscsa.dscsa_encrypt_serial'
                     WHEN 'lot' THEN 'dscsa.dscsa_encrypt_lot'
                     WHEN 'expiry' THEN 'dscsa.dscsa_encrypt_expiry' END;

CREATE OR REPLACE FUNCTION dscsa._encrypted_type(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.encrypted'
                     WHEN 'gtin' THEN 'dscsa.gtin_encrypted'
                     WHEN 'serial' THEN 'dscsa.serial_encrypted'
                     WHEN 'lot' THEN 'dscsa.lot_encrypted'
                     WHEN 'expiry' THEN 'dscsa.expiry_encrypted' END;

-- The plaintext of column `col` as text, the way the triggers see it: dates as ISO
-- YYYY-MM-DD whatever DateStyle is, char(n) without padding.
CREATE OR REPLACE FUNCTION dscsa._plaintext_expr(col name, col_type regtype, prefix text DEFAULT '') RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN CASE WHEN col_type = 'date'::regtype
                THEN format('pg_catalog.to_char(%s%I, ''YYYY-MM-DD'')', prefix, col)
                ELSE format('%s%I::pg_catalog.text', prefix, col) END;

-- The type a protected column is reverted to, checked: only the types protect_column
-- accepts, spelled as format_type spells them. A registry row can name nothing else.
CREATE OR REPLACE FUNCTION dscsa._original_type(original_type text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF original_type !~ '^(text|date|character varying(\([0-9]{1,8}\))?|character(\([0-9]{1,8}\))?)$' THEN
        RAISE EXCEPTION 'invalid original type in dscsa.protected_columns'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Protected columns were text, varchar, char or date.';
    END IF;
    RETURN original_type;
END
$$;

-- Every name pg_dscsa derives from a protected column, computed in this one place.
CREATE OR REPLACE FUNCTION dscsa._derived_names(tbl regclass, col name,
    OUT schema_name name, OUT table_name name,
    OUT twin name, OUT twin_check name, OUT sync_trigger name,
    OUT bidx_column name, OUT bidx_trigger name, OUT bidx_index name, OUT bidx_index_building name)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname, c.relname,
           left(col || '_dscsa_new', 63),
           left(left(col || '_dscsa_new', 63) || '_check', 63),
           left('dscsa_sync_' || col, 63),
           left(col || '_bidx', 63),
           left('dscsa_bidx_' || col, 63),
           left(format('%s_%s_bidx', c.relname, col), 63),
           left(format('%s_%s_bidx_new', c.relname, col), 63)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

-- The name under which an online protection builds the carried index `index_name`
-- before the cutover renames it (derived here, beside the other names).
CREATE OR REPLACE FUNCTION dscsa._building_name(index_name name) RETURNS name
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN left(left(index_name, 53) || '_dscsa_new', 63);

-- The name of an index of `tbl` whose key includes column `col` (valid or not, as asked).
CREATE OR REPLACE FUNCTION dscsa._index_on(tbl regclass, col name, valid boolean) RETURNS name
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ic.relname
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND a.attname = col AND i.indisvalid = valid
     ORDER BY 1
     LIMIT 1
$$;

-- Everything that would stop a column from being protected, as one message per line,
-- before anything changes. UNIQUE constraints and btree indexes that contain the column
-- (alone or with other columns) are carried over to the blind-index column (so need a
-- blind-index key); every other dependency is refused with its description and reason.
CREATE OR REPLACE FUNCTION dscsa.protect_column_problems(tbl regclass, col name, blind_index_key text DEFAULT NULL)
    RETURNS SETOF text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    att pg_attribute;
    rel pg_class;
    d record;
    con record;
    why text;
BEGIN
    SELECT * INTO rel FROM pg_class WHERE oid = tbl;
    SELECT * INTO att FROM pg_attribute
     WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RETURN NEXT format('column %I of %s does not exist', col, tbl);
        RETURN;
    END IF;
    IF rel.relkind <> 'r' THEN
        RETURN NEXT format('%s is not an ordinary table (partitioned tables, views and foreign tables are not supported)', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = tbl OR inhparent = tbl) THEN
        RETURN NEXT format('%s takes part in table inheritance', tbl);
    END IF;
    IF NOT pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RETURN NEXT format('you do not own %s', tbl);
    END IF;
    IF att.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'date'::regtype) THEN
        RETURN NEXT format('column %I is of type %s; text, varchar, char and date can be protected',
                           col, format_type(att.atttypid, att.atttypmod));
    END IF;
    IF att.atthasdef OR att.attgenerated <> '' OR att.attidentity <> '' THEN
        RETURN NEXT format('column %I has a default, identity or generation expression; drop it first (a default cannot be encrypted once for all rows)', col);
    END IF;
    FOR d IN
        SELECT dep.classid, dep.objid,
               pg_describe_object(dep.classid, dep.objid, dep.objsubid) AS what
          FROM pg_depend dep
         WHERE dep.refclassid = 'pg_class'::regclass AND dep.refobjid = tbl
           AND dep.refobjsubid = att.attnum AND dep.deptype IN ('n', 'a')
    LOOP
        IF d.classid = 'pg_constraint'::regclass THEN
            SELECT c.contype, c.conrelid, c.conindid INTO con FROM pg_constraint c WHERE c.oid = d.objid;
            IF con.contype IN ('u', 'p', 'x') THEN
                why := dscsa._index_problem(tbl, con.conindid);
                IF why IS NOT NULL THEN
                    RETURN NEXT d.what || ' ' || why;
                ELSIF blind_index_key IS NULL THEN
                    RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
                END IF;
            ELSIF con.contype = 'f' AND con.conrelid = tbl THEN
                RETURN NEXT d.what || ' compares the column with another table''s: a foreign key cannot compare encrypted values; drop it first (a trigger over the generated view can check it)';
            ELSIF con.contype = 'f' THEN
                RETURN NEXT d.what || ' of ' || con.conrelid::regclass::text || ' references the column: a foreign key cannot reference encrypted values; drop it first';
            ELSE
                RETURN NEXT d.what || ' depends on the column (CHECK constraints and other expressions cannot be evaluated on encrypted values; drop or change it first)';
            END IF;
        ELSIF d.classid = 'pg_class'::regclass
              AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = d.objid) THEN
            why := dscsa._index_problem(tbl, d.objid);
            IF why IS NOT NULL THEN
                RETURN NEXT d.what || ' ' || why;
            ELSIF blind_index_key IS NULL THEN
                RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
            END IF;
        ELSIF d.classid = 'pg_trigger'::regclass
              AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.oid = d.objid
                             AND t.tgname = (dscsa._derived_names(tbl, col)).sync_trigger) THEN
            NULL;  -- our own backfill trigger (a resumed run)
        ELSE
            RETURN NEXT d.what || ' depends on the column; drop it first and recreate it over the generated view';
        END IF;
    END LOOP;
    FOR why IN SELECT dscsa._row_type_users(tbl) LOOP
        RETURN NEXT why || format(' stores values of the row type of %s: its column types cannot change; drop that column first', tbl);
    END LOOP;
    IF (SELECT count(*) FROM pg_index i
         WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indkey[0] = att.attnum
           AND i.indpred IS NULL AND i.indexprs IS NULL) > 1 THEN
        RETURN NEXT format('column %I has more than one index; keep one', col);
    END IF;
END
$$;
COMMENT ON FUNCTION dscsa.protect_column_problems(regclass, name, text) IS
    'Why dscsa.protect_column() would refuse this column (no rows: it would proceed).';

-- Columns of other relations that store values of `tbl`'s row type (directly, in an
-- array, a domain or a composite type over it): ALTER COLUMN TYPE refuses a table whose
-- row type is used this way, because such stored values would keep the old column type
-- unchecked. The online cutover's catalog change (dscsa._retype_twin_apply) refuses it too.
CREATE OR REPLACE FUNCTION dscsa._row_type_users(tbl regclass) RETURNS SETOF text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE used(typ) AS (
        SELECT c.reltype FROM pg_class c WHERE c.oid = tbl
      UNION
        -- arrays, domains and ranges over a used type, and composite types with a column of one
        SELECT CASE WHEN dep.classid = 'pg_type'::regclass THEN dep.objid ELSE holder.reltype END
          FROM used
          JOIN pg_depend dep ON dep.refclassid = 'pg_type'::regclass AND dep.refobjid = used.typ
          LEFT JOIN pg_class holder ON dep.classid = 'pg_class'::regclass AND holder.oid = dep.objid
         WHERE dep.classid = 'pg_type'::regclass
            OR (holder.relkind = 'c' AND dep.objsubid > 0)
    )
    SELECT pg_describe_object(dep.classid, dep.objid, dep.objsubid)
      FROM used
      JOIN pg_depend dep ON dep.refclassid = 'pg_type'::regclass AND dep.refobjid = used.typ
      JOIN pg_class holder ON dep.classid = 'pg_class'::regclass AND holder.oid = dep.objid
     WHERE dep.objsubid > 0 AND holder.relkind IN ('r', 'm', 'p', 'f') AND holder.oid <> tbl
     ORDER BY 1
$$;

-- Why the index `idx` of `tbl` (which contains the protected column) cannot be carried
-- over to the blind-index column, or NULL when it can: a btree index or UNIQUE
-- constraint over plain columns with default operator classes, not partial.
CREATE OR REPLACE FUNCTION dscsa._index_problem(tbl regclass, idx regclass) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN i.indisprimary THEN
            'is the primary key: a primary key cannot be carried over to a blind index; make another column the primary key first'
        WHEN EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'x') THEN
            'is an exclusion constraint, which cannot be evaluated on encrypted values'
        WHEN EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'f') THEN
            'is referenced by a foreign key, which cannot reference encrypted values; drop the foreign key first'
        WHEN EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'u' AND c.condeferrable) THEN
            'is a deferrable constraint: make it NOT DEFERRABLE first'
        WHEN am.amname <> 'btree' THEN
            format('is a %s index: only btree indexes can be carried over to the blind index', am.amname)
        WHEN i.indpred IS NOT NULL THEN
            'is a partial index: its WHERE clause cannot be carried over; drop it, protect the column, then create it again with the blind-index column in place of the column'
        WHEN i.indexprs IS NOT NULL OR 0 = ANY (i.indkey::int2[]) THEN
            'is an expression index, which cannot be computed on encrypted values; drop it first'
        WHEN EXISTS (SELECT 1 FROM unnest(i.indclass::oid[]) oc JOIN pg_opclass o ON o.oid = oc WHERE NOT o.opcdefault) THEN
            'uses a non-default operator class; drop it, protect the column, then create it again'
    END
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am am ON am.oid = ic.relam
     WHERE i.indexrelid = idx AND i.indrelid = tbl
$$;

-- The indexes and UNIQUE constraints of `tbl` that contain column `col`, as carried over
-- to the blind-index column (a JSON array: name, unique, constraint, nulls_not_distinct,
-- keys [{column, desc, nulls_first}], include [columns]). Rebuilt from this description
-- (never from stored SQL text) by dscsa._carried_index_ddl.
CREATE OR REPLACE FUNCTION dscsa._carried_indexes(tbl regclass, col name) RETURNS jsonb
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', ic.relname,
               'unique', i.indisunique,
               'constraint', EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'u'),
               'nulls_not_distinct', i.indnullsnotdistinct,
               'keys', (SELECT jsonb_agg(jsonb_build_object('column', a.attname,
                                                            'desc', (k.opt & 1) = 1,
                                                            'nulls_first', (k.opt & 2) = 2) ORDER BY k.n)
                          FROM unnest(i.indkey::int2[], i.indoption::int2[]) WITH ORDINALITY AS k(attnum, opt, n)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE k.n <= i.indnkeyatts),
               'include', (SELECT coalesce(jsonb_agg(a.attname ORDER BY k.n), '[]'::jsonb)
                             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                            WHERE k.n > i.indnkeyatts))
             ORDER BY ic.relname), '[]'::jsonb)
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_attribute c ON c.attrelid = i.indrelid AND c.attname = col
     WHERE i.indrelid = tbl AND c.attnum = ANY (i.indkey::int2[])
       AND dscsa._index_problem(tbl, i.indexrelid) IS NULL
$$;

-- The carried indexes of a registry row; a row written by 0.3.0 named at most one
-- single-column index or UNIQUE constraint in carried_index.
CREATE OR REPLACE FUNCTION dscsa._carried_list(r dscsa.protected_columns) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN r.carried_indexes IS NOT NULL THEN r.carried_indexes
        WHEN r.carried_index IS NOT NULL THEN jsonb_build_array(jsonb_build_object(
            'name', r.carried_index, 'unique', coalesce(r.carried_unique, false),
            'constraint', coalesce(r.carried_constraint, false), 'nulls_not_distinct', false,
            'keys', jsonb_build_array(jsonb_build_object('column', r.column_name, 'desc', false, 'nulls_first', false)),
            'include', '[]'::jsonb))
        ELSE '[]'::jsonb END
$$;

-- Does a valid index of `tbl` have column `col` as its first key column?
CREATE OR REPLACE FUNCTION dscsa._index_leads_with(tbl regclass, col name) RETURNS boolean
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = col
                    WHERE i.indrelid = tbl AND i.indkey[0] = a.attnum AND i.indisvalid)
$$;

-- CREATE INDEX for a carried index `idx` named `index_name`, with column `col` replaced
-- by `replacement` (the blind-index column when protecting; the column itself when
-- restoring the original). Every name is quoted with %I.
CREATE OR REPLACE FUNCTION dscsa._carried_index_ddl(tbl regclass, col name, replacement name, idx jsonb, index_name name)
    RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE %sINDEX %I ON %s USING btree (%s)%s%s',
        CASE WHEN (idx->>'unique')::boolean THEN 'UNIQUE ' ELSE '' END, index_name, tbl,
        (SELECT string_agg(format('%I%s%s',
                    CASE WHEN k->>'column' = col THEN replacement ELSE k->>'column' END,
                    CASE WHEN (k->>'desc')::boolean THEN ' DESC' ELSE '' END,
                    CASE WHEN (k->>'nulls_first')::boolean AND NOT (k->>'desc')::boolean THEN ' NULLS FIRST'
                         WHEN NOT (k->>'nulls_first')::boolean AND (k->>'desc')::boolean THEN ' NULLS LAST'
                         ELSE '' END), ', ' ORDER BY n)
           FROM jsonb_array_elements(idx->'keys') WITH ORDINALITY AS e(k, n)),
        CASE WHEN jsonb_array_length(idx->'include') > 0 THEN
            format(' INCLUDE (%s)', (SELECT string_agg(format('%I',
                    CASE WHEN c = col THEN replacement ELSE c END), ', ' ORDER BY n)
                FROM jsonb_array_elements_text(idx->'include') WITH ORDINALITY AS e(c, n)))
        ELSE '' END,
        CASE WHEN (idx->>'nulls_not_distinct')::boolean THEN ' NULLS NOT DISTINCT' ELSE '' END)
$$;

CREATE OR REPLACE FUNCTION dscsa._raise_problems(tbl regclass, col name, blind_index_key text) RETURNS void
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problems text;
BEGIN
    SELECT string_agg(p, E'\n') INTO problems FROM dscsa.protect_column_problems(tbl, col, blind_index_key) p;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'column %.% cannot be protected', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = problems,
                  HINT = 'Nothing was changed.';
    END IF;
END
$$;

-- Writes to the registry: through this invoker-rights C function, which checks that the
-- current role owns the table and then runs dscsa._registry_apply as the extension owner.
-- action 'save' (insert or replace r) or 'delete'.
CREATE OR REPLACE FUNCTION dscsa._registry(action text, tbl regclass, col name, r dscsa.protected_columns DEFAULT NULL)
    RETURNS void
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_registry';

-- Validates a registry row against the catalog and writes it. Executable by the extension
-- owner only (src/registry.rs calls it after its ownership check).
CREATE OR REPLACE FUNCTION dscsa._registry_apply(action text, tbl regclass, col name, r dscsa.protected_columns)
    RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
BEGIN
    IF action = 'delete' THEN
        DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
        RETURN;
    END IF;
    IF action IS DISTINCT FROM 'save' THEN
        RAISE EXCEPTION 'unknown registry action' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF r IS NULL OR r.relid IS DISTINCT FROM tbl OR r.column_name IS DISTINCT FROM col THEN
        RAISE EXCEPTION 'registry row does not describe %.%', tbl, col USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = tbl) IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION '% is not a plain table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    PERFORM dscsa._original_type(r.original_type);
    IF octet_length(r.context) > 255 THEN
        RAISE EXCEPTION 'context is longer than 255 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_name = r.data_key AND k.purpose = 'data') THEN
        RAISE EXCEPTION 'data key "%" does not exist', r.data_key USING ERRCODE = 'undefined_object';
    END IF;
    IF r.blind_index_key IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_name = r.blind_index_key AND k.purpose = 'blind_index') THEN
        RAISE EXCEPTION 'blind-index key "%" does not exist', r.blind_index_key USING ERRCODE = 'undefined_object';
    END IF;
    SELECT a.atttypid INTO col_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF r.state = 'protected' AND dscsa._kind_of_type(col_type) IS DISTINCT FROM r.kind
       OR r.state = 'backfilling' AND col_type NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'date'::regtype)
       OR col_type IS NULL THEN
        RAISE EXCEPTION 'column %.% is not in the state the registry row describes', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- The twin is added as dscsa.encrypted (its domain type comes at the cutover,
    -- dscsa._retype_twin); a run started by 0.3.0 added it with its domain type.
    IF r.twin_column IS NOT NULL AND coalesce(dscsa._kind_of_type(
           (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = r.twin_column AND NOT a.attisdropped)),
           'missing') NOT IN (r.kind, 'generic') THEN
        RAISE EXCEPTION 'twin column %.% is missing', tbl, r.twin_column USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF r.blind_index_column IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = r.blind_index_column
              AND a.atttypid = 'bytea'::regtype AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'blind-index column %.% is missing', tbl, r.blind_index_column
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF r.view_name IS NOT NULL AND (SELECT c.relkind FROM pg_class c WHERE c.oid = r.view_name) IS DISTINCT FROM 'v' THEN
        RAISE EXCEPTION '% is not a view', r.view_name USING ERRCODE = 'wrong_object_type';
    END IF;
    DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    INSERT INTO dscsa.protected_columns SELECT r.*;
END
$$;

-- Gives the twin column of an online protection its domain type (dscsa.<kind>_encrypted)
-- at the cutover. PostgreSQL 15 rewrites the whole table (and its indexes) to add a
-- column of a domain with a CHECK constraint, or to change a column to one, under ACCESS
-- EXCLUSIVE; the twin is therefore added as dscsa.encrypted, the domain's base type (same
-- storage, no rewrite), and changed here in the catalog, which is what ALTER COLUMN TYPE
-- does after checking every row. That every twin holds the domain's field kind is
-- proved by the completeness check validated before the cutover (dscsa._twin_check), or,
-- for a check of another definition, by a read of every twin under the cutover's lock.
-- Called through dscsa._retype_twin (an invoker-rights C function that checks that the
-- caller owns the table); executable by its owner only, who must be a superuser (the
-- extension's installer) to write pg_catalog. Acts only on the twin of a registry row
-- being backfilled.
CREATE OR REPLACE FUNCTION dscsa._retype_twin_apply(tbl regclass, col name) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
    twin_attnum int2;
    twin_type oid;
    domain oid;
    wrong bigint;
    used text;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col AND p.state = 'backfilling';
    IF NOT FOUND OR r.twin_column IS NULL OR r.kind = 'generic' THEN
        RAISE EXCEPTION 'no online protection of %.% with a field kind is in progress', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    domain := dscsa._encrypted_type(r.kind)::regtype;
    SELECT a.attnum, a.atttypid INTO twin_attnum, twin_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = r.twin_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF twin_type = domain THEN
        RETURN;  -- added with its domain type (a run started by 0.3.0)
    END IF;
    IF twin_type IS DISTINCT FROM 'dscsa.encrypted'::regtype THEN
        RAISE EXCEPTION 'twin column %.% is not of type dscsa.encrypted', tbl, r.twin_column
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Held already by the cutover: nothing writes the twin between the check and the change.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
    -- A column added since the protection started that stores this row type would keep
    -- the twin's values of the old type without the domain's check (ALTER COLUMN TYPE
    -- refuses the same, with the same check and the same race: PostgreSQL takes no lock
    -- on a type to use it, so a column added by a transaction committing meanwhile is
    -- not seen).
    used := (SELECT string_agg(u, '; ') FROM dscsa._row_type_users(tbl) u);
    IF used IS NOT NULL THEN
        RAISE EXCEPTION 'cannot finish the protection of %.%: % stores values of the row type of %', tbl, col, used, tbl
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Drop that column and call dscsa.protect_column again to finish, or abort with dscsa.abort_protect_column.';
    END IF;
    -- Every twin holds the field kind: proved by the completeness check validated before
    -- the cutover, if it is the one dscsa._protect_check made (its definition as
    -- PostgreSQL prints it; whoever owns the table could have replaced it); otherwise
    -- (a protection started by an earlier version) by reading every twin, under the lock.
    IF EXISTS (SELECT 1 FROM pg_constraint c
                WHERE c.conrelid = tbl AND c.conname = (dscsa._derived_names(tbl, col)).twin_check
                  AND c.contype = 'c' AND c.convalidated
                  AND pg_get_constraintdef(c.oid) = (dscsa._twin_check(r)).deparsed) THEN
        RAISE DEBUG 'dscsa.protect_column %.%: the validated completeness check proves that every twin holds %', tbl, col, r.kind;
    ELSE
        RAISE DEBUG 'dscsa.protect_column %.%: reading every twin to prove that it holds %', tbl, col, r.kind;
        EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NOT NULL AND dscsa.envelope_kind(%I) <> %L',
                       tbl, r.twin_column, r.twin_column, r.kind) INTO wrong;
        IF wrong > 0 THEN
            RAISE EXCEPTION '% rows of %.% hold a value of another field kind than %', wrong, tbl, r.twin_column, r.kind
                USING ERRCODE = 'check_violation',
                      HINT = 'The twin column was written other than by the protection; abort it with dscsa.abort_protect_column and start again.';
        END IF;
    END IF;
    UPDATE pg_attribute SET atttypid = domain
     WHERE attrelid = tbl AND attnum = twin_attnum AND atttypid = 'dscsa.encrypted'::regtype;
    -- The column's dependency on its type (what keeps DROP DOMAIN from leaving it behind).
    UPDATE pg_depend SET refobjid = domain
     WHERE classid = 'pg_class'::regclass AND objid = tbl AND objsubid = twin_attnum
       AND refclassid = 'pg_type'::regclass AND refobjid = 'dscsa.encrypted'::regtype;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the type dependency of %.% was not found', tbl, r.twin_column USING ERRCODE = 'internal_error';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION dscsa._retype_twin(tbl regclass, col name) RETURNS void
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_retype_twin';

-- After the protected column exists: blind-index trigger, index (carried name), the
-- UNIQUE constraint (carried name) and the registry row.
CREATE OR REPLACE FUNCTION dscsa._finish_protection(r dscsa.protected_columns) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names record := dscsa._derived_names(r.relid, r.column_name);
    carried jsonb;
BEGIN
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I, %I ON %s FOR EACH ROW
             EXECUTE FUNCTION dscsa.blind_index_trigger(%L, %L, %L, %L, %L)',
            names.bidx_trigger, r.column_name, r.blind_index_column, r.relid,
            r.column_name, r.blind_index_column, r.blind_index_key, r.context, r.data_key);
        -- Each carried index under its own name (online: built before the cutover and
        -- renamed then; in place: built now), and its UNIQUE constraint.
        FOR carried IN SELECT * FROM jsonb_array_elements(dscsa._carried_list(r)) LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = carried->>'name'
                              AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = r.relid)) THEN
                EXECUTE dscsa._carried_index_ddl(r.relid, r.column_name, r.blind_index_column, carried, carried->>'name');
            END IF;
            IF (carried->>'constraint')::boolean
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = r.relid AND c.conname = carried->>'name') THEN
                EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                    r.relid, carried->>'name', carried->>'name');
            END IF;
        END LOOP;
        -- Lookups need an index that starts with the blind-index column.
        IF NOT dscsa._index_leads_with(r.relid, r.blind_index_column) THEN
            EXECUTE format('CREATE INDEX %I ON %s (%I)', names.bidx_index, r.relid, r.blind_index_column);
        END IF;
    END IF;
    r.state := 'protected';
    r.protected_at := now();
    PERFORM dscsa._registry('save', r.relid, r.column_name, r);
END
$$;

-- Checks and records a new protection, or finds the one a killed run left: returns the
-- registry row (state 'backfilling' for an online run) after refusing anything that
-- would stop it.
CREATE OR REPLACE FUNCTION dscsa._protect_prepare(tbl regclass, col name, kind text, mode text,
                                                  blind_index_key text, context text)
    RETURNS dscsa.protected_columns
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
    att pg_attribute;
    data_key text := current_setting('dscsa.key_name');
BEGIN
    IF mode IS NULL OR mode NOT IN ('in_place', 'online') THEN
        RAISE EXCEPTION 'mode must be ''in_place'' or ''online''' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF FOUND THEN
        IF r.state = 'protected' THEN
            RETURN r;
        END IF;
        -- A killed online run: resume it with the options it was started with.
        IF r.mode <> mode OR r.kind <> coalesce(_protect_prepare.kind, r.kind)
           OR r.blind_index_key IS DISTINCT FROM _protect_prepare.blind_index_key
           OR r.context <> coalesce(_protect_prepare.context, '') THEN
            RAISE EXCEPTION 'a protection of %.% with other options is in progress', tbl, col
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Call it again with the same options to resume, or CALL dscsa.abort_protect_column() first.';
        END IF;
        RAISE NOTICE 'dscsa.protect_column %.%: resuming at block % of %', tbl, col, r.next_block, r.backfill_end_block;
        RETURN r;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = tbl AND pg_has_role(current_user, c.relowner, 'USAGE')) THEN
        RAISE EXCEPTION 'must be owner of table %', tbl
            USING ERRCODE = 'insufficient_privilege', HINT = 'Nothing was changed.';
    END IF;
    IF data_key = '' THEN
        RAISE EXCEPTION 'dscsa.key_name is not set' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM dscsa._active_version(data_key, 'data');
    PERFORM dscsa._raise_problems(tbl, col, blind_index_key);
    SELECT * INTO att FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    r.relid := tbl;
    r.column_name := col;
    r.kind := coalesce(_protect_prepare.kind, CASE WHEN att.atttypid = 'date'::regtype THEN 'expiry' ELSE 'generic' END);
    IF r.kind NOT IN ('generic', 'gtin', 'serial', 'lot', 'expiry') THEN
        RAISE EXCEPTION 'kind must be one of generic, gtin, serial, lot, expiry' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM dscsa._raise_gs1_problems(tbl, col, r.kind);
    r.context := coalesce(_protect_prepare.context, '');
    r.data_key := data_key;
    r.original_type := format_type(att.atttypid, att.atttypmod);
    r.original_attnum := att.attnum;
    r.original_not_null := att.attnotnull;
    r.mode := mode;
    r.state := 'backfilling';
    r.rows_done := 0;
    r.started_at := now();
    r.protected_by := session_user;
    IF blind_index_key IS NOT NULL THEN
        PERFORM dscsa._active_version(blind_index_key, 'blind_index');
        r.blind_index_key := blind_index_key;
        r.blind_index_column := (dscsa._derived_names(tbl, col)).bidx_column;
        IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = r.blind_index_column AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'column %.% already exists', tbl, r.blind_index_column USING ERRCODE = 'duplicate_column';
        END IF;
        r.carried_indexes := dscsa._carried_indexes(tbl, col);
    END IF;
    RETURN r;
END
$$;

-- In place: one transaction, one table rewrite; the USING expressions read the old row.
CREATE OR REPLACE FUNCTION dscsa._protect_in_place(r dscsa.protected_columns) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names record := dscsa._derived_names(r.relid, r.column_name);
    plain text := dscsa._plaintext_expr(r.column_name,
        (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = r.relid AND a.attname = r.column_name AND NOT a.attisdropped));
    carried jsonb;
BEGIN
    PERFORM dscsa._with_lock_retries(r.relid, format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.relid),
                                     'the rewrite in place');
    -- The indexes and UNIQUE constraints that contain the column: rebuilt over the
    -- blind-index column by _finish_protection, under their own names.
    FOR carried IN SELECT * FROM jsonb_array_elements(dscsa._carried_list(r)) LOOP
        IF (carried->>'constraint')::boolean THEN
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.relid, carried->>'name');
        ELSE
            EXECUTE format('DROP INDEX %I.%I', names.schema_name, carried->>'name');
        END IF;
    END LOOP;
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I bytea', r.relid, r.blind_index_column);
        EXECUTE format(
            'ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L),
                              ALTER COLUMN %7$I TYPE bytea USING dscsa.blind_index(%5$s, %8$L, %9$L)',
            r.relid, r.column_name, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context,
            r.blind_index_column, r.blind_index_key, r.kind);
    ELSE
        EXECUTE format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L)',
            r.relid, r.column_name, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context);
    END IF;
    PERFORM dscsa._finish_protection(r);
    RAISE NOTICE 'dscsa.protect_column %.%: protected in place', r.relid, r.column_name;
END
$$;

-- Online, phase 1 (once): twin column, blind-index column, sync trigger, registry row.
-- Inserts, and updates that write the plaintext column: the twin (and index) follow the
-- plaintext in the same statement. The backfill writes only the twin, so it does not
-- pay for the trigger. Rows added after this point get their twin from the trigger; the
-- backfill walks the blocks that exist now. The DDL needs ACCESS EXCLUSIVE for an
-- instant; it is taken first, under lock_timeout with retries, so that an application
-- transaction left open on the table makes this wait, not every query queued behind it.
CREATE OR REPLACE FUNCTION dscsa._protect_online_start(r dscsa.protected_columns) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names record := dscsa._derived_names(r.relid, r.column_name);
BEGIN
    PERFORM dscsa._with_lock_retries(r.relid, format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.relid),
                                     'adding the twin column');
    r.twin_column := names.twin;
    -- The domain's base type: adding a column of a domain with a CHECK constraint would
    -- rewrite the table under this lock (the cutover gives the twin its domain type).
    EXECUTE format('ALTER TABLE %s ADD COLUMN %I dscsa.encrypted', r.relid, r.twin_column);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I bytea', r.relid, r.blind_index_column);
    END IF;
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW
         EXECUTE FUNCTION dscsa.protect_sync_trigger(%L, %L, %L, %L, %L, %L, %L)',
        names.sync_trigger, r.column_name,
        r.relid, r.column_name, r.twin_column, r.kind, r.context, r.data_key,
        coalesce(r.blind_index_column, ''), coalesce(r.blind_index_key, ''));
    r.backfill_end_block := pg_relation_size(r.relid) / current_setting('block_size')::bigint;
    r.next_block := 0;
    PERFORM dscsa._registry('save', r.relid, r.column_name, r);
    RAISE NOTICE 'dscsa.protect_column %.%: twin column and sync trigger in place; backfilling % blocks',
        r.relid, r.column_name, r.backfill_end_block;
END
$$;

-- The first step of dscsa.protect_column: checks, then either protects in place or
-- starts (or resumes) an online protection; returns the job the procedure steps through.
CREATE OR REPLACE FUNCTION dscsa._protect_begin(tbl regclass, col name, kind text, mode text,
                                                blind_index_key text, context text, batch_size integer)
    RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
    job dscsa._protect_job;
    n bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode = 'online' THEN
        PERFORM dscsa._require_own_transaction('dscsa.protect_column(..., mode => ''online'')');
    END IF;
    r := dscsa._protect_prepare(tbl, col, kind, mode, blind_index_key, context);
    job.tbl := tbl;
    job.col := col;
    job.attempts := 0;
    job.started := clock_timestamp();
    job.finished := true;
    job.phase := 'done';
    IF r.state = 'protected' THEN
        RAISE NOTICE 'dscsa.protect_column: %.% is already protected', tbl, col;
        RETURN job;
    END IF;
    PERFORM dscsa._audit_job_event('protect_column', CASE WHEN r.twin_column IS NULL THEN 'started' ELSE 'resumed' END,
        jsonb_build_object('table', tbl::text, 'column', col, 'mode', mode, 'kind', r.kind,
                           'data_key', r.data_key, 'blind_index_key', r.blind_index_key));
    IF mode = 'in_place' THEN
        PERFORM dscsa._protect_in_place(r);
        PERFORM dscsa._audit_job_event('protect_column', 'finished',
            jsonb_build_object('table', tbl::text, 'column', col, 'mode', mode));
        RETURN job;
    END IF;
    IF r.twin_column IS NULL THEN
        PERFORM dscsa._protect_online_start(r);
        r := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col);
    END IF;
    -- Blocks per batch, from the rows per block of the first blocks (statistics may be
    -- missing on a table that was never analyzed).
    EXECUTE format('SELECT count(*) FROM %s WHERE ctid < ''(8,0)''::tid', tbl) INTO n;
    job.step := greatest(1, batch_size / greatest(n / greatest(least(r.backfill_end_block, 8), 1), 1));
    job.phase := 'backfill';
    job.finished := false;
    RETURN job;
END
$$;

-- Phase 2, one block range (TID range scan), run by the session and by its backfill
-- workers alike (src/backfill/). The UPDATE encrypts the row's current plaintext under
-- the row lock (it does not write the plaintext column, so the sync trigger does not
-- fire): a concurrent UPDATE of the plaintext either ran before (twin set by the
-- trigger, row skipped) or waits, and then the WHERE clause and the twin are
-- re-evaluated on the new row version. Returns the rows encrypted.
CREATE OR REPLACE FUNCTION dscsa._protect_backfill_range(tbl regclass, col name, first_block bigint, end_block bigint)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col);
    plain text;
    n bigint;
BEGIN
    IF r.state IS DISTINCT FROM 'backfilling' THEN
        RAISE EXCEPTION 'no online protection of %.% is in progress', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    plain := dscsa._plaintext_expr(col,
        (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped));
    EXECUTE format(
        'UPDATE %1$s SET %2$I = %3$s(%4$s, %5$L)%6$s
          WHERE ctid >= format(''(%%s,0)'', $1::bigint)::tid
            AND ctid < format(''(%%s,0)'', $2::bigint)::tid AND %2$I IS NULL AND %7$I IS NOT NULL',
        tbl, r.twin_column, dscsa._encrypt_function(r.kind), plain, r.context,
        CASE WHEN r.blind_index_column IS NULL THEN ''
             ELSE format(', %I = dscsa.blind_index(%s, %L, %L)', r.blind_index_column, plain, r.blind_index_key, r.kind) END,
        col)
    USING first_block, end_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Backfill workers (src/backfill/): the job of this session's backfill, shared with the
-- workers that help it (dscsa.backfill_workers). Internal: called by dscsa._protect_backfill.
CREATE OR REPLACE FUNCTION dscsa._backfill_running(tbl regclass, col text) RETURNS boolean
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_backfill_running_wrapper';
CREATE OR REPLACE FUNCTION dscsa._backfill_start(tbl regclass, col text, first_block bigint, end_block bigint,
                                                 step bigint, data_key text, blind_index_key text, rows_before bigint)
    RETURNS integer
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_backfill_start_wrapper';
CREATE OR REPLACE FUNCTION dscsa._backfill_claim() RETURNS bigint
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_backfill_claim_wrapper';
CREATE OR REPLACE FUNCTION dscsa._backfill_done(rows bigint) RETURNS bigint[]
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_backfill_done_wrapper';
CREATE OR REPLACE FUNCTION dscsa._backfill_finish() RETURNS bigint[]
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_backfill_finish_wrapper';

-- The next block range of this session's backfill job (its first block), or NULL when
-- every range is done: the job is then finished (its workers have exited), `rows_done` is
-- its total, and workers that stopped early are reported. `what` names the caller.
-- Shared by online protection and by dscsa.reencrypt / dscsa.reindex_blind.
CREATE OR REPLACE FUNCTION dscsa._backfill_next(what text, tbl regclass, col text,
                                                OUT first_block bigint, OUT rows_done bigint)
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    progress bigint[];
BEGIN
    first_block := dscsa._backfill_claim();
    IF first_block IS NULL THEN
        progress := dscsa._backfill_finish();
        IF progress[3] > 0 THEN
            RAISE NOTICE '% %.%: % of % backfill workers stopped early (the server log says why); this session did their blocks',
                what, tbl, col, progress[3], progress[2];
        END IF;
        rows_done := progress[1];
    END IF;
END
$$;

-- Phase 2: one backfill step of this session: the next block range it takes (the
-- backfill workers take theirs from the same job), committed with the registry's resume
-- point, the block below which every range is done.
CREATE OR REPLACE FUNCTION dscsa._protect_backfill(job dscsa._protect_job) RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = job.tbl AND p.column_name = job.col);
    total_pages bigint := greatest(r.backfill_end_block, 1);
    workers integer;
    claim record;
    first_block bigint;
    progress bigint[];
BEGIN
    IF NOT dscsa._backfill_running(job.tbl, job.col) THEN
        workers := dscsa._backfill_start(job.tbl, job.col, r.next_block, r.backfill_end_block, job.step,
                                         current_setting('dscsa.key_name'), r.blind_index_key, r.rows_done);
        IF workers > 0 THEN
            RAISE NOTICE 'dscsa.protect_column %.%: % backfill workers help this session', job.tbl, job.col, workers;
        END IF;
    END IF;
    SELECT * INTO claim FROM dscsa._backfill_next('dscsa.protect_column', job.tbl, job.col);
    first_block := claim.first_block;
    IF first_block IS NULL THEN
        r.next_block := greatest(r.next_block, r.backfill_end_block);
        r.rows_done := claim.rows_done;
        PERFORM dscsa._registry('save', r.relid, r.column_name, r);
        job.phase := 'check';
        RETURN job;
    END IF;
    progress := dscsa._backfill_done(dscsa._protect_backfill_range(job.tbl, job.col, first_block, first_block + job.step));
    r.next_block := progress[1];
    r.rows_done := progress[2];
    PERFORM dscsa._registry('save', r.relid, r.column_name, r);
    RAISE NOTICE 'dscsa.protect_column %.%: % rows, % %% of blocks, % rows/s', job.tbl, job.col, r.rows_done,
        round(100.0 * least(r.next_block, total_pages) / total_pages, 1),
        round(r.rows_done / greatest(extract(epoch FROM clock_timestamp() - job.started), 0.001));
    RETURN job;
END
$$;

-- Runs `stmt` under lock_timeout 2 s, retrying up to 30 times (0.5 s apart) while the
-- table is busy, so that waiting for a lock never queues the application behind us.
-- Used by every step of protect_column, abort_protect_column and unprotect_column that
-- needs a lock stronger than the application's.
CREATE OR REPLACE FUNCTION dscsa._with_lock_retries(tbl regclass, stmt text, what text) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
    -- A SET clause, not SET LOCAL: the caller's own setting is back when this returns
    -- (in place and unprotect_column may run inside the caller's transaction).
    SET lock_timeout = '2s'
AS $$
DECLARE
    attempts integer := 0;
BEGIN
    LOOP
        BEGIN
            EXECUTE stmt;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            attempts := attempts + 1;
            IF attempts >= 30 THEN
                RAISE EXCEPTION 'could not lock % for % after % attempts', tbl, what, attempts
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'Nothing was lost: call the procedure again when the table is less busy (dscsa.protect_column resumes where it stopped).';
            END IF;
            RAISE NOTICE 'dscsa: table % busy, % retried (%)', tbl, what, attempts;
        END;
        PERFORM pg_sleep(0.5);
    END LOOP;
END
$$;

-- The completeness check of an online protection (added NOT VALID after the backfill,
-- validated without blocking writes): every row with a plaintext has its twin, and for a
-- field kind every twin holds that kind, which is what lets the cutover give the twin its
-- domain type without reading the table under its lock. `deparsed` is the text
-- pg_get_constraintdef() gives for `source` under search_path pg_catalog (NULL for
-- generic): dscsa._retype_twin_apply trusts the check only if the constraint reads so.
CREATE OR REPLACE FUNCTION dscsa._twin_check(r dscsa.protected_columns, OUT source text, OUT deparsed text)
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN r.original_not_null THEN format('(%I IS NOT NULL)', r.twin_column)
                ELSE format('(%I IS NULL OR %I IS NOT NULL)', r.column_name, r.twin_column) END
           || CASE WHEN r.kind = 'generic' THEN ''
                   ELSE format(' AND (%I IS NULL OR dscsa.envelope_kind(%I) = %L)', r.twin_column, r.twin_column, r.kind) END,
           CASE WHEN r.kind = 'generic' THEN NULL
                WHEN r.original_not_null
                THEN format('CHECK (((%I IS NOT NULL) AND ((%I IS NULL) OR (dscsa.envelope_kind(%I) = %L::text))))',
                            r.twin_column, r.twin_column, r.twin_column, r.kind)
                ELSE format('CHECK ((((%I IS NULL) OR (%I IS NOT NULL)) AND ((%I IS NULL) OR (dscsa.envelope_kind(%I) = %L::text))))',
                            r.column_name, r.twin_column, r.twin_column, r.twin_column, r.kind) END
$$;

-- Phase 3: prove every row has its twin. A NOT VALID check "plaintext present => twin
-- present" (for a NOT NULL column: "twin present", the form SET NOT NULL can use; for a
-- field kind also "the twin holds that kind", dscsa._twin_check) is
-- added under a brief lock, then validated under SHARE UPDATE EXCLUSIVE (reads and
-- writes go on). Rows the block walk could not see (written with triggers disabled) fail
-- the proof; they are swept and it is retried.
CREATE OR REPLACE FUNCTION dscsa._protect_check(job dscsa._protect_job) RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = job.tbl AND p.column_name = job.col);
    names record := dscsa._derived_names(job.tbl, job.col);
BEGIN
    IF job.phase = 'check' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = job.tbl AND conname = names.twin_check) THEN
            PERFORM dscsa._with_lock_retries(job.tbl,
                format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s) NOT VALID', job.tbl, names.twin_check,
                       (dscsa._twin_check(r)).source),
                'adding the completeness check');
        END IF;
        job.phase := 'validate';
        RETURN job;
    END IF;
    BEGIN
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', job.tbl, names.twin_check);
    EXCEPTION WHEN check_violation THEN
        -- Rows written with the sync trigger disabled: writing their plaintext again fires it.
        EXECUTE format('UPDATE %s SET %I = %I WHERE %I IS NULL AND %I IS NOT NULL',
            job.tbl, job.col, job.col, r.twin_column, job.col);
        BEGIN
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', job.tbl, names.twin_check);
        EXCEPTION WHEN check_violation THEN
            IF r.kind = 'generic' THEN
                RAISE;
            END IF;
            -- Every row with a plaintext has its twin now: what fails is a twin's kind.
            RAISE EXCEPTION 'twin column %.% holds values of another field kind than %', job.tbl, r.twin_column, r.kind
                USING ERRCODE = 'check_violation',
                      HINT = 'The twin column was written other than by the protection; abort it with dscsa.abort_protect_column and start again.';
        END;
    END;
    job.phase := 'index';
    RETURN job;
END
$$;

-- Phase 4: the blind index. Blocks writes (not reads) while it builds; build it yourself
-- with CREATE INDEX CONCURRENTLY on the blind-index column beforehand to avoid that. Its
-- SHARE lock is taken first under lock_timeout with retries, so that waiting for it (for
-- a transaction left open) does not queue the application's writes too.
CREATE OR REPLACE FUNCTION dscsa._protect_index(job dscsa._protect_job) RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = job.tbl AND p.column_name = job.col);
    names record := dscsa._derived_names(job.tbl, job.col);
    carried jsonb;
BEGIN
    IF r.blind_index_column IS NOT NULL THEN
        PERFORM dscsa._with_lock_retries(job.tbl, format('LOCK TABLE %s IN SHARE MODE', job.tbl),
                                         'building the blind index');
        IF dscsa._index_on(job.tbl, r.blind_index_column, false) IS NOT NULL THEN
            RAISE EXCEPTION 'an invalid index exists on %.%', job.tbl, r.blind_index_column
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'A CREATE INDEX CONCURRENTLY failed; drop that index and call again.';
        END IF;
        -- Every carried index, over the blind-index column in place of the column, under
        -- a building name (the originals still exist until the cutover drops the column).
        FOR carried IN SELECT * FROM jsonb_array_elements(dscsa._carried_list(r)) LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = dscsa._building_name(carried->>'name')
                              AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = job.tbl)) THEN
                EXECUTE dscsa._carried_index_ddl(job.tbl, job.col, r.blind_index_column, carried,
                                                 dscsa._building_name(carried->>'name'));
            END IF;
        END LOOP;
        IF NOT dscsa._index_leads_with(job.tbl, r.blind_index_column) THEN
            EXECUTE format('CREATE INDEX %I ON %s (%I)', names.bidx_index_building, job.tbl, r.blind_index_column);
        END IF;
    END IF;
    job.phase := 'cutover';
    RETURN job;
END
$$;

-- Phase 5: cutover under a short ACCESS EXCLUSIVE lock, retried if it cannot be had
-- within lock_timeout. No scan here: the validated check proves every row has its twin.
CREATE OR REPLACE FUNCTION dscsa._protect_cutover(job dscsa._protect_job) RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns := (SELECT p FROM dscsa.protected_columns p WHERE p.relid = job.tbl AND p.column_name = job.col);
    names record := dscsa._derived_names(job.tbl, job.col);
    carried jsonb;
BEGIN
    PERFORM dscsa._with_lock_retries(job.tbl, format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', job.tbl), 'the cutover');
    EXECUTE format('DROP TRIGGER %I ON %s', names.sync_trigger, job.tbl);
    -- NOT NULL without a scan: PostgreSQL proves it from the validated check, but only
    -- while the twin still has the type the check was written for, so before the retype.
    IF r.original_not_null THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', job.tbl, r.twin_column);
    END IF;
    -- The twin's domain type, without the table rewrite ALTER COLUMN TYPE would make.
    IF r.kind <> 'generic' THEN
        PERFORM dscsa._retype_twin(job.tbl, job.col);
    END IF;
    EXECUTE format('ALTER TABLE %s DROP COLUMN %I', job.tbl, job.col);
    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', job.tbl, r.twin_column, job.col);
    IF r.original_not_null THEN
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', job.tbl, names.twin_check);
    END IF;
    -- (For a nullable column the check named the dropped column and went with it.)
    -- Dropping the column dropped the original indexes and constraints; the ones built
    -- over the blind-index column take their names.
    FOR carried IN SELECT * FROM jsonb_array_elements(dscsa._carried_list(r)) LOOP
        IF EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = dscsa._building_name(carried->>'name')
                      AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = job.tbl)) THEN
            EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', names.schema_name,
                           dscsa._building_name(carried->>'name'), carried->>'name');
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = names.bidx_index_building
                  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = job.tbl)) THEN
        EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', names.schema_name, names.bidx_index_building, names.bidx_index);
    END IF;
    r.twin_column := NULL;
    r.next_block := NULL;
    PERFORM dscsa._finish_protection(r);
    RAISE NOTICE 'dscsa.protect_column %.%: protected online, % rows backfilled', job.tbl, job.col, r.rows_done;
    PERFORM dscsa._audit_job_event('protect_column', 'finished',
        jsonb_build_object('table', job.tbl::text, 'column', job.col, 'mode', 'online', 'rows', r.rows_done));
    job.phase := 'done';
    job.finished := true;
    RETURN job;
END
$$;

-- One step of an online protection: the phase's function, after which the procedure
-- commits.
CREATE OR REPLACE FUNCTION dscsa._protect_step(job dscsa._protect_job) RETURNS dscsa._protect_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN CASE job.phase
        WHEN 'backfill' THEN dscsa._protect_backfill(job)
        WHEN 'check' THEN dscsa._protect_check(job)
        WHEN 'validate' THEN dscsa._protect_check(job)
        WHEN 'index' THEN dscsa._protect_index(job)
        WHEN 'cutover' THEN dscsa._protect_cutover(job)
    END;
END
$$;

CREATE OR REPLACE PROCEDURE dscsa.protect_column(
    tbl regclass,
    col name,
    kind text DEFAULT NULL,
    mode text DEFAULT 'online',
    blind_index_key text DEFAULT NULL,
    context text DEFAULT '',
    batch_size integer DEFAULT 10000)
    LANGUAGE plpgsql
AS $$
DECLARE
    job dscsa._protect_job;
BEGIN
    -- In place, the whole work is the first call (which may run inside a transaction
    -- block); online, every step is committed before the next.
    job := dscsa._protect_begin(tbl, col, kind, mode, blind_index_key, context, batch_size);
    WHILE NOT job.finished LOOP
        COMMIT;
        job := dscsa._protect_step(job);
    END LOOP;
END
$$;
COMMENT ON PROCEDURE dscsa.protect_column(regclass, name, text, text, text, text, integer) IS
    'Encrypts a plaintext text/varchar/char/date column in place or online (resumable: call it again after an interruption).';

-- Rolls back an online protection that has not cut over: drops the twin, the blind-index
-- column, the trigger and the check. The plaintext column was never touched.
CREATE OR REPLACE PROCEDURE dscsa.abort_protect_column(tbl regclass, col name)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF NOT FOUND OR r.state <> 'backfilling' THEN
        RAISE EXCEPTION 'no online protection of %.% is in progress', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A protected column is reverted with dscsa.unprotect_column().';
    END IF;
    PERFORM dscsa._with_lock_retries(tbl, format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl),
                                     'dropping the twin column');
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', (dscsa._derived_names(tbl, col)).sync_trigger, tbl);
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.twin_column);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.blind_index_column);
    END IF;
    PERFORM dscsa._registry('delete', tbl, col);
    PERFORM dscsa._audit_job_event('abort_protect_column', 'finished',
        jsonb_build_object('table', tbl::text, 'column', col, 'rows_backfilled', r.rows_done));
END
$$;
COMMENT ON PROCEDURE dscsa.abort_protect_column(regclass, name) IS
    'Rolls back an online protection that has not cut over yet; the plaintext column is untouched.';

-- The reverse operation (rollback): decrypts the column back to its original type in
-- one ALTER TABLE, and turns a carried blind index back into the original UNIQUE
-- constraint or index. Needs dscsa_reader (it decrypts) and the keys loaded.
CREATE OR REPLACE PROCEDURE dscsa.unprotect_column(tbl regclass, col name)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
    original text;
    carried jsonb;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF NOT FOUND OR r.state <> 'protected' THEN
        RAISE EXCEPTION '%.% is not a protected column', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'An online protection in progress is rolled back with dscsa.abort_protect_column().';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = r.view_name) THEN
        RAISE EXCEPTION 'drop the generated view % first', r.view_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = format('SELECT dscsa.drop_view(%L);', tbl::text);
    END IF;
    -- Only a type protect_column accepts, never text read from the registry as is.
    original := dscsa._original_type(r.original_type);
    -- The rewrite below holds ACCESS EXCLUSIVE for its length (in place, like protecting
    -- in place); waiting for the lock must not also queue the application behind it.
    PERFORM dscsa._with_lock_retries(tbl, format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl),
                                     'decrypting the column');
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', (dscsa._derived_names(tbl, col)).bidx_trigger, tbl);
    EXECUTE format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING dscsa.dscsa_decrypt(%2$I, %4$L)::%3$s',
        tbl, col, original, r.context);
    IF r.blind_index_column IS NOT NULL THEN
        -- Drops the carried indexes and constraints with it; the originals come back
        -- over the decrypted column, under their names.
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', tbl, r.blind_index_column);
        FOR carried IN SELECT * FROM jsonb_array_elements(dscsa._carried_list(r)) LOOP
            EXECUTE dscsa._carried_index_ddl(tbl, col, col, carried, carried->>'name');
            IF (carried->>'constraint')::boolean THEN
                EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                    tbl, carried->>'name', carried->>'name');
            END IF;
        END LOOP;
    END IF;
    PERFORM dscsa._registry('delete', tbl, col);
    PERFORM dscsa._audit_job_event('unprotect_column', 'finished',
        jsonb_build_object('table', tbl::text, 'column', col, 'original_type', original));
    RAISE NOTICE 'dscsa.unprotect_column %.%: back to %', tbl, col, original;
END
$$;
COMMENT ON PROCEDURE dscsa.unprotect_column(regclass, name) IS
    'Decrypts a protected column back to its original type and restores its UNIQUE constraint or index.';
