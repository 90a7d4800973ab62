-- pg_dscsa: protecting columns of existing tables (docs/PROTECT.md).
--
-- dscsa.protect_column() turns a plaintext column into an encrypted one, in place (one
-- ALTER TABLE, for small tables) or online (twin column, batched backfill kept in sync
-- by a trigger, short cutover lock). dscsa.protected_columns records what was done, so
-- that a killed run resumes, views can be generated, keys rotated and columns verified.
--
-- The procedures run with the caller's rights (no SECURITY DEFINER: they alter the
-- caller's tables) and have no SET clause, because a procedure with one cannot COMMIT;
-- every object they name is schema-qualified instead, and every generated statement
-- quotes identifiers with format('%I') / regclass output.

CREATE TABLE dscsa.protected_columns (
    relid               regclass NOT NULL,
    column_name         name NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('generic', 'gtin', 'serial', 'lot', 'expiry')),
    context             text NOT NULL DEFAULT '',
    data_key            text NOT NULL,
    original_type       text NOT NULL,
    original_attnum     smallint NOT NULL,
    original_not_null   boolean NOT NULL,
    blind_index_column  name,
    blind_index_key     text,
    -- name and uniqueness of the constraint or index carried over to the blind index
    carried_index       name,
    carried_unique      boolean,
    carried_constraint  boolean,
    mode                text NOT NULL CHECK (mode IN ('in_place', 'online')),
    state               text NOT NULL CHECK (state IN ('backfilling', 'protected')),
    twin_column         name,
    backfill_end_block  bigint,
    next_block          bigint,
    rows_done           bigint NOT NULL DEFAULT 0,
    view_name           regclass,
    started_at          timestamptz NOT NULL DEFAULT now(),
    protected_at        timestamptz,
    protected_by        name NOT NULL DEFAULT session_user,
    PRIMARY KEY (relid, column_name),
    CHECK ((blind_index_column IS NULL) = (blind_index_key IS NULL))
);
COMMENT ON TABLE dscsa.protected_columns IS
    'Columns protected by dscsa.protect_column(): field kind, context, keys, blind index, migration progress.';
SELECT pg_catalog.pg_extension_config_dump('dscsa.protected_columns', '');

CREATE FUNCTION dscsa._encrypt_function(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.dscsa_encrypt' ELSE 'dscsa.dscsa_encrypt_' || kind END;

CREATE FUNCTION dscsa._encrypted_type(kind text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE kind WHEN 'generic' THEN 'dscsa.encrypted' ELSE 'dscsa.' || kind || '_encrypted' END;

-- The plaintext of column `col` as text, the way the triggers see it: dates as ISO
-- YYYY-MM-DD whatever DateStyle is, char(n) without padding.
CREATE FUNCTION dscsa._plaintext_expr(col name, col_type regtype, prefix text DEFAULT '') RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN col_type = 'date'::regtype
                THEN pg_catalog.format('pg_catalog.to_char(%s%I, ''YYYY-MM-DD'')', prefix, col)
                ELSE pg_catalog.format('%s%I::text', prefix, col) END;

-- Everything that would stop a column from being protected, as one message per line,
-- before anything changes. The column's own single-column UNIQUE constraint or plain
-- btree index is carried over to the blind index (so needs a blind-index key); every
-- other dependency is refused with its description.
CREATE FUNCTION dscsa.protect_column_problems(tbl regclass, col name, blind_index_key text DEFAULT NULL)
    RETURNS SETOF text
    LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    att pg_catalog.pg_attribute;
    rel pg_catalog.pg_class;
    d record;
BEGIN
    SELECT * INTO rel FROM pg_catalog.pg_class WHERE oid = tbl;
    SELECT * INTO att FROM pg_catalog.pg_attribute
     WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RETURN NEXT pg_catalog.format('column %I of %s does not exist', col, tbl);
        RETURN;
    END IF;
    IF rel.relkind <> 'r' THEN
        RETURN NEXT pg_catalog.format('%s is not an ordinary table (partitioned tables, views and foreign tables are not supported)', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid = tbl OR inhparent = tbl) THEN
        RETURN NEXT pg_catalog.format('%s takes part in table inheritance', tbl);
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RETURN NEXT pg_catalog.format('you do not own %s', tbl);
    END IF;
    IF att.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'date'::regtype) THEN
        RETURN NEXT pg_catalog.format('column %I is of type %s; text, varchar, char and date can be protected',
                                      col, pg_catalog.format_type(att.atttypid, att.atttypmod));
    END IF;
    IF att.atthasdef OR att.attgenerated <> '' OR att.attidentity <> '' THEN
        RETURN NEXT pg_catalog.format('column %I has a default, identity or generation expression; drop it first (a default cannot be encrypted once for all rows)', col);
    END IF;
    FOR d IN
        SELECT dep.classid, dep.objid,
               pg_catalog.pg_describe_object(dep.classid, dep.objid, dep.objsubid) AS what
          FROM pg_catalog.pg_depend dep
         WHERE dep.refclassid = 'pg_catalog.pg_class'::regclass AND dep.refobjid = tbl
           AND dep.refobjsubid = att.attnum AND dep.deptype IN ('n', 'a')
    LOOP
        IF d.classid = 'pg_catalog.pg_constraint'::regclass THEN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                        WHERE c.oid = d.objid AND c.contype = 'u' AND c.conrelid = tbl
                          AND c.conkey = ARRAY[att.attnum]
                          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f
                                           WHERE f.contype = 'f' AND f.conindid = c.conindid)) THEN
                IF blind_index_key IS NULL THEN
                    RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
                END IF;
            ELSE
                RETURN NEXT d.what || ' depends on the column (primary keys, foreign keys, CHECK and multi-column constraints cannot be carried over; drop or change it first)';
            END IF;
        ELSIF d.classid = 'pg_catalog.pg_class'::regclass
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                                      JOIN pg_catalog.pg_am am ON am.oid = ic.relam
                           WHERE i.indexrelid = d.objid AND i.indnatts = 1 AND i.indkey[0] = att.attnum
                             AND i.indpred IS NULL AND i.indexprs IS NULL AND am.amname = 'btree') THEN
            IF blind_index_key IS NULL THEN
                RETURN NEXT d.what || ' needs a blind index to be carried over: pass blind_index_key';
            END IF;
        ELSIF d.classid = 'pg_catalog.pg_trigger'::regclass
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid
                             AND t.tgname = pg_catalog.left('dscsa_sync_' || col, 63)) THEN
            NULL;  -- our own backfill trigger (a resumed run)
        ELSE
            RETURN NEXT d.what || ' depends on the column; drop it first and recreate it over the generated view';
        END IF;
    END LOOP;
    IF (SELECT count(*) FROM pg_catalog.pg_index i
         WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indkey[0] = att.attnum
           AND i.indpred IS NULL AND i.indexprs IS NULL) > 1 THEN
        RETURN NEXT pg_catalog.format('column %I has more than one index; keep one', col);
    END IF;
END
$$;
COMMENT ON FUNCTION dscsa.protect_column_problems(regclass, name, text) IS
    'Why dscsa.protect_column() would refuse this column (no rows: it would proceed).';

-- The single-column UNIQUE constraint or btree index carried over to the blind index.
CREATE FUNCTION dscsa._carried_index(tbl regclass, col name,
    OUT index_name name, OUT is_unique boolean, OUT is_constraint boolean)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$
    SELECT ic.relname, i.indisunique,
           EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'u')
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = col
     WHERE i.indrelid = tbl AND i.indnatts = 1 AND i.indkey[0] = a.attnum
       AND i.indpred IS NULL AND i.indexprs IS NULL
     LIMIT 1
$$;

CREATE FUNCTION dscsa._raise_problems(tbl regclass, col name, blind_index_key text) RETURNS void
    LANGUAGE plpgsql STABLE PARALLEL SAFE
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

-- After the protected column exists: blind-index trigger, index (carried name), the
-- UNIQUE constraint (carried name) and the registry row.
CREATE FUNCTION dscsa._finish_protection(r dscsa.protected_columns) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    idx name;
BEGIN
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I, %I ON %s FOR EACH ROW
             EXECUTE FUNCTION dscsa.blind_index_trigger(%L, %L, %L, %L, %L)',
            pg_catalog.left('dscsa_bidx_' || r.column_name, 63), r.column_name, r.blind_index_column, r.relid,
            r.column_name, r.blind_index_column, r.blind_index_key, r.context, r.data_key);
        idx := coalesce(r.carried_index, pg_catalog.left(pg_catalog.format('%s_%s_bidx', (SELECT relname FROM pg_catalog.pg_class WHERE oid = r.relid), r.column_name), 63));
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                        WHERE i.indrelid = r.relid AND a.attname = r.blind_index_column AND i.indisvalid) THEN
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, idx, r.relid, r.blind_index_column);
        END IF;
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                r.relid, r.carried_index,
                (SELECT ic.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                  WHERE i.indrelid = r.relid AND a.attname = r.blind_index_column LIMIT 1));
        END IF;
    END IF;
    r.state := 'protected';
    r.protected_at := pg_catalog.now();
    DELETE FROM dscsa.protected_columns p WHERE p.relid = r.relid AND p.column_name = r.column_name;
    INSERT INTO dscsa.protected_columns SELECT r.*;
END
$$;

CREATE PROCEDURE dscsa.protect_column(
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
    r dscsa.protected_columns;
    att pg_catalog.pg_attribute;
    carried record;
    data_key text := pg_catalog.current_setting('dscsa.key_name');
    col_type regtype;
    plain text;
    bidx name;
    step bigint;
    n bigint;
    total_pages bigint;
    started timestamptz := pg_catalog.clock_timestamp();
    attempts integer := 0;
    sweep_needed boolean := false;
    backfill text;
BEGIN
    IF mode NOT IN ('in_place', 'online') THEN
        RAISE EXCEPTION 'mode must be ''in_place'' or ''online''' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF mode = 'online' THEN
        PERFORM dscsa._require_own_transaction('dscsa.protect_column(..., mode => ''online'')');
    END IF;
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF FOUND AND r.state = 'protected' THEN
        RAISE NOTICE 'dscsa.protect_column: %.% is already protected', tbl, col;
        RETURN;
    END IF;
    IF FOUND THEN
        -- A killed online run: resume it with the options it was started with.
        IF r.mode <> mode OR r.kind <> coalesce(protect_column.kind, r.kind)
           OR r.blind_index_key IS DISTINCT FROM protect_column.blind_index_key
           OR r.context <> protect_column.context THEN
            RAISE EXCEPTION 'a protection of %.% with other options is in progress', tbl, col
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Call it again with the same options to resume, or CALL dscsa.abort_protect_column() first.';
        END IF;
        RAISE NOTICE 'dscsa.protect_column %.%: resuming at block % of %', tbl, col, r.next_block, r.backfill_end_block;
    ELSE
        IF data_key = '' THEN
            RAISE EXCEPTION 'dscsa.key_name is not set' USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        IF dscsa._active_key_id(data_key) IS NULL THEN
            RAISE EXCEPTION 'data key "%" has no active version', data_key USING ERRCODE = 'undefined_object';
        END IF;
        PERFORM dscsa._raise_problems(tbl, col, blind_index_key);
        SELECT * INTO att FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        col_type := att.atttypid;
        r.relid := tbl;
        r.column_name := col;
        r.kind := coalesce(protect_column.kind, CASE WHEN col_type = 'date'::regtype THEN 'expiry' ELSE 'generic' END);
        IF r.kind NOT IN ('generic', 'gtin', 'serial', 'lot', 'expiry') THEN
            RAISE EXCEPTION 'kind must be one of generic, gtin, serial, lot, expiry' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        r.context := protect_column.context;
        r.data_key := data_key;
        r.original_type := pg_catalog.format_type(att.atttypid, att.atttypmod);
        r.original_attnum := att.attnum;
        r.original_not_null := att.attnotnull;
        r.mode := mode;
        r.state := 'backfilling';
        r.rows_done := 0;
        r.started_at := pg_catalog.now();
        r.protected_by := session_user;
        IF blind_index_key IS NOT NULL THEN
            IF NOT EXISTS (SELECT 1 FROM dscsa._key_meta(dscsa._active_key_id(blind_index_key)) m
                            WHERE m.purpose = 'blind_index') THEN
                RAISE EXCEPTION 'blind-index key "%" has no active version', blind_index_key
                    USING ERRCODE = 'undefined_object',
                          HINT = 'Create it with dscsa.create_blind_index_key().';
            END IF;
            r.blind_index_key := blind_index_key;
            r.blind_index_column := pg_catalog.left(col || '_bidx', 63);
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = r.blind_index_column AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'column %.% already exists', tbl, r.blind_index_column USING ERRCODE = 'duplicate_column';
            END IF;
            SELECT * INTO carried FROM dscsa._carried_index(tbl, col);
            r.carried_index := carried.index_name;
            r.carried_unique := coalesce(carried.is_unique, false);
            r.carried_constraint := coalesce(carried.is_constraint, false);
        END IF;
    END IF;
    col_type := (SELECT a.atttypid FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = tbl AND a.attname = col AND NOT a.attisdropped);
    plain := dscsa._plaintext_expr(col, col_type);

    IF mode = 'in_place' THEN
        -- One transaction, one table rewrite: the USING expressions read the old row.
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, r.carried_index);
        ELSIF r.carried_index IS NOT NULL THEN
            EXECUTE pg_catalog.format('DROP INDEX %s', pg_catalog.quote_ident((SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)) || '.' || pg_catalog.quote_ident(r.carried_index));
        END IF;
        IF r.blind_index_column IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I bytea', tbl, r.blind_index_column);
            EXECUTE pg_catalog.format(
                'ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L),
                                  ALTER COLUMN %7$I TYPE bytea USING dscsa.blind_index(%5$s, %8$L, %9$L)',
                tbl, col, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context,
                r.blind_index_column, r.blind_index_key, r.kind);
        ELSE
            EXECUTE pg_catalog.format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING %4$s(%5$s, %6$L)',
                tbl, col, dscsa._encrypted_type(r.kind), dscsa._encrypt_function(r.kind), plain, r.context);
        END IF;
        PERFORM dscsa._finish_protection(r);
        RAISE NOTICE 'dscsa.protect_column %.%: protected in place', tbl, col;
        RETURN;
    END IF;

    -- Online. Phase 1 (once): twin column, blind-index column, sync trigger, NOT NULL check.
    IF r.twin_column IS NULL THEN
        r.twin_column := pg_catalog.left(col || '_dscsa_new', 63);
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', tbl, r.twin_column, dscsa._encrypted_type(r.kind));
        IF r.blind_index_column IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I bytea', tbl, r.blind_index_column);
        END IF;
        -- Inserts, and updates that write the plaintext column: the twin (and index)
        -- follow the plaintext in the same statement. The backfill writes only the twin,
        -- so it does not pay for the trigger.
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW
             EXECUTE FUNCTION dscsa.protect_sync_trigger(%L, %L, %L, %L, %L, %L, %L)',
            pg_catalog.left('dscsa_sync_' || col, 63), col,
            tbl, col, r.twin_column, r.kind, r.context, r.data_key,
            coalesce(r.blind_index_column, ''), coalesce(r.blind_index_key, ''));
        -- Rows added after this point get their twin from the trigger; the backfill
        -- walks the blocks that exist now.
        r.backfill_end_block := pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint;
        r.next_block := 0;
        INSERT INTO dscsa.protected_columns SELECT r.*;
        COMMIT;
        RAISE NOTICE 'dscsa.protect_column %.%: twin column and sync trigger in place; backfilling % blocks',
            tbl, col, r.backfill_end_block;
    END IF;

    -- Phase 2: backfill block ranges (TID range scans), one committed batch at a time.
    -- The UPDATE encrypts the row's current plaintext under the row lock (it does not
    -- write the plaintext column, so the sync trigger does not fire): a concurrent UPDATE
    -- of the plaintext either ran before (twin set by the trigger, row skipped) or waits,
    -- and then the WHERE clause and the twin are re-evaluated on the new row version.
    -- Blocks per batch, from the rows per block of the first blocks (statistics may be
    -- missing on a table that was never analyzed).
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE ctid < ''(8,0)''::tid', tbl) INTO n;
    step := greatest(1, batch_size / greatest(n / greatest(least(r.backfill_end_block, 8), 1), 1));
    total_pages := greatest(r.backfill_end_block, 1);
    backfill := pg_catalog.format(
        'UPDATE %1$s SET %2$I = %3$s(%4$s, %5$L)%6$s
          WHERE ctid >= pg_catalog.format(''(%%s,0)'', $1::bigint)::tid
            AND ctid < pg_catalog.format(''(%%s,0)'', $2::bigint)::tid AND %2$I IS NULL AND %7$I IS NOT NULL',
        tbl, r.twin_column, dscsa._encrypt_function(r.kind), plain, r.context,
        CASE WHEN r.blind_index_column IS NULL THEN ''
             ELSE pg_catalog.format(', %I = dscsa.blind_index(%s, %L, %L)', r.blind_index_column, plain, r.blind_index_key, r.kind) END,
        col);
    WHILE r.next_block < r.backfill_end_block LOOP
        EXECUTE backfill USING r.next_block, r.next_block + step;
        GET DIAGNOSTICS n = ROW_COUNT;
        r.next_block := r.next_block + step;
        r.rows_done := r.rows_done + n;
        UPDATE dscsa.protected_columns p SET next_block = r.next_block, rows_done = r.rows_done
         WHERE p.relid = tbl AND p.column_name = col;
        COMMIT;
        RAISE NOTICE 'dscsa.protect_column %.%: % rows, % %% of blocks, % rows/s', tbl, col, r.rows_done,
            round(100.0 * least(r.next_block, total_pages) / total_pages, 1),
            round(r.rows_done / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - started), 0.001));
    END LOOP;

    -- Phase 3: prove every row has its twin. A NOT VALID check "plaintext present =>
    -- twin present" (for a NOT NULL column: "twin present", the form SET NOT NULL can
    -- use) is added under a brief lock, then validated under SHARE UPDATE EXCLUSIVE
    -- (reads and writes go on). Rows the block walk could not see (written with
    -- triggers disabled) fail the proof; they are swept and it is retried.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = tbl AND conname = pg_catalog.left(r.twin_column || '_check', 63)) THEN
        LOOP
            BEGIN
                SET LOCAL lock_timeout = '2s';
                EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%s) NOT VALID',
                    tbl, pg_catalog.left(r.twin_column || '_check', 63),
                    CASE WHEN r.original_not_null THEN pg_catalog.format('%I IS NOT NULL', r.twin_column)
                         ELSE pg_catalog.format('%I IS NULL OR %I IS NOT NULL', col, r.twin_column) END);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                attempts := attempts + 1;
                IF attempts >= 30 THEN
                    RAISE EXCEPTION 'could not lock % to add the completeness check after % attempts', tbl, attempts
                        USING ERRCODE = 'lock_not_available',
                              HINT = 'The backfill is complete and kept in sync; call dscsa.protect_column again when the table is less busy.';
                END IF;
            END;
            PERFORM pg_catalog.pg_sleep(0.5);
        END LOOP;
        COMMIT;
        attempts := 0;
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
    EXCEPTION WHEN check_violation THEN
        sweep_needed := true;
    END;
    IF sweep_needed THEN
        EXECUTE pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NULL AND %I IS NOT NULL',
            tbl, col, col, r.twin_column, col);
        EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
    END IF;
    COMMIT;
    IF r.blind_index_column IS NOT NULL THEN
        bidx := pg_catalog.left(pg_catalog.format('%s_%s_bidx_new', (SELECT relname FROM pg_catalog.pg_class WHERE oid = tbl), col), 63);
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                      ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                    WHERE i.indrelid = tbl AND a.attname = r.blind_index_column AND NOT i.indisvalid) THEN
            RAISE EXCEPTION 'an invalid index exists on %.%', tbl, r.blind_index_column
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'A CREATE INDEX CONCURRENTLY failed; drop that index and call again.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                        WHERE i.indrelid = tbl AND a.attname = r.blind_index_column AND i.indisvalid) THEN
            -- Blocks writes (not reads) while it builds; build it yourself with CREATE
            -- INDEX CONCURRENTLY on the blind-index column beforehand to avoid that.
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, bidx, tbl, r.blind_index_column);
            COMMIT;
        END IF;
    END IF;

    -- Phase 4: cutover under a short ACCESS EXCLUSIVE lock, retried if it cannot be had
    -- within lock_timeout (so waiting here never queues the application behind us).
    LOOP
        BEGIN
            SET LOCAL lock_timeout = '2s';
            EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
            -- No scan here: the validated check proves every row has its twin.
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', pg_catalog.left('dscsa_sync_' || col, 63), tbl);
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, col);
            EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, r.twin_column, col);
            IF r.original_not_null THEN
                EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, col);
                EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', tbl, pg_catalog.left(r.twin_column || '_check', 63));
            END IF;
            -- (For a nullable column the check named the dropped column and went with it.)
            IF bidx IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                             WHERE c.relname = bidx AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = tbl)) THEN
                EXECUTE pg_catalog.format('ALTER INDEX %s RENAME TO %I',
                    pg_catalog.quote_ident((SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)) || '.' || pg_catalog.quote_ident(bidx),
                    coalesce(r.carried_index, pg_catalog.left(pg_catalog.format('%s_%s_bidx', (SELECT relname FROM pg_catalog.pg_class WHERE oid = tbl), col), 63)));
            END IF;
            r.twin_column := NULL;
            r.next_block := NULL;
            PERFORM dscsa._finish_protection(r);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            attempts := attempts + 1;
            IF attempts >= 30 THEN
                RAISE EXCEPTION 'could not lock % for the cutover after % attempts', tbl, attempts
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'The backfill is complete and kept in sync; call dscsa.protect_column again when the table is less busy.';
            END IF;
            RAISE NOTICE 'dscsa.protect_column %.%: table busy, cutover retried (%)', tbl, col, attempts;
        END;
        PERFORM pg_catalog.pg_sleep(0.5);
    END LOOP;
    COMMIT;
    RAISE NOTICE 'dscsa.protect_column %.%: protected online, % rows backfilled', tbl, col, r.rows_done;
END
$$;
COMMENT ON PROCEDURE dscsa.protect_column(regclass, name, text, text, text, text, integer) IS
    'Encrypts a plaintext text/varchar/char/date column in place or online (resumable: call it again after an interruption).';

-- Rolls back an online protection that has not cut over: drops the twin, the blind-index
-- column, the trigger and the check. The plaintext column was never touched.
CREATE PROCEDURE dscsa.abort_protect_column(tbl regclass, col name)
    LANGUAGE plpgsql
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
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', pg_catalog.left('dscsa_sync_' || col, 63), tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.twin_column);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', tbl, r.blind_index_column);
    END IF;
    DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
END
$$;

-- The reverse operation (rollback): decrypts the column back to its original type in
-- one ALTER TABLE, and turns a carried blind index back into the original UNIQUE
-- constraint or index. Needs dscsa_reader (it decrypts) and the keys loaded.
CREATE PROCEDURE dscsa.unprotect_column(tbl regclass, col name)
    LANGUAGE plpgsql
AS $$
DECLARE
    r dscsa.protected_columns;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    IF NOT FOUND OR r.state <> 'protected' THEN
        RAISE EXCEPTION '%.% is not a protected column', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'An online protection in progress is rolled back with dscsa.abort_protect_column().';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = r.view_name) THEN
        RAISE EXCEPTION 'drop the generated view % first', r.view_name
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = pg_catalog.format('SELECT dscsa.drop_view(%L);', tbl::text);
    END IF;
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', pg_catalog.left('dscsa_bidx_' || col, 63), tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %1$s ALTER COLUMN %2$I TYPE %3$s USING dscsa.dscsa_decrypt(%2$I, %4$L)::%3$s',
        tbl, col, r.original_type, r.context);
    IF r.blind_index_column IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, r.blind_index_column);
        IF r.carried_constraint THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE (%I)', tbl, r.carried_index, col);
        ELSIF r.carried_index IS NOT NULL THEN
            EXECUTE pg_catalog.format('CREATE %s INDEX %I ON %s (%I)',
                CASE WHEN r.carried_unique THEN 'UNIQUE' ELSE '' END, r.carried_index, tbl, col);
        END IF;
    END IF;
    DELETE FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col;
    RAISE NOTICE 'dscsa.unprotect_column %.%: back to %', tbl, col, r.original_type;
END
$$;
