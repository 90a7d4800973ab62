-- pg_dscsa: rewriting encrypted columns in committed batches after a rotation:
-- dscsa.reencrypt (data key) and dscsa.reindex_blind (blind-index key).
--
-- Both are idempotent and resumable: rows already under the target key version are
-- skipped, so a killed run is simply called again. They walk the table's blocks once in
-- ranges (TID range scans, so each batch reads only its own blocks), then sweep what the
-- walk skipped, until nothing is left. Rows are locked while they are rewritten
-- (FOR UPDATE SKIP LOCKED: neither side waits, so no deadlock with the application);
-- rows other transactions hold are retried by the sweep.
--
-- A procedure that COMMITs cannot have a SET clause, so it cannot pin search_path. The
-- procedures here are therefore shells: they only call schema-qualified functions with
-- exactly typed arguments, assign, COMMIT and test a boolean field, and contain no
-- operator and no unqualified function (checked by tests/integration/tests/static_sql.rs).
-- All the work is done by the step functions, which pin search_path.

-- The field kind of an encrypted column type (NULL if it is not one).
CREATE OR REPLACE FUNCTION dscsa._kind_of_type(typ regtype) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN CASE typ
        WHEN 'dscsa.encrypted'::regtype THEN 'generic'
        WHEN 'dscsa.gtin_encrypted'::regtype THEN 'gtin'
        WHEN 'dscsa.serial_encrypted'::regtype THEN 'serial'
        WHEN 'dscsa.lot_encrypted'::regtype THEN 'lot'
        WHEN 'dscsa.expiry_encrypted'::regtype THEN 'expiry'
    END;

-- The statements of a batch job: (range batch, sweep batch, rows left). Parameters:
-- $1 target key id, $2 context, $3/$4 block range or $3 batch size.
CREATE OR REPLACE FUNCTION dscsa._batch_statements(job dscsa._batch_job,
    OUT range_stmt text, OUT sweep_stmt text, OUT remaining_stmt text)
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    needs_work text;
    set_expr text;
BEGIN
    IF job.job = 'reencrypt' THEN
        needs_work := format('%1$I IS NOT NULL AND dscsa.envelope_key_id(%1$I) <> $1', job.col);
        set_expr := format('%1$I = %2$s(dscsa.dscsa_decrypt(t.%1$I, $2), $2)',
                           job.col, dscsa._encrypt_function(dscsa._kind_of_type(
                               (SELECT a.atttypid FROM pg_attribute a
                                 WHERE a.attrelid = job.tbl AND a.attname = job.col AND NOT a.attisdropped))));
    ELSE
        -- Setting the index to NULL makes the blind-index trigger recompute it under the
        -- active version from the decrypted value.
        needs_work := format('%1$I IS NOT NULL AND substr(%1$I, 1, 4) <> int4send($1)', job.col);
        set_expr := format('%I = NULL', job.col);
    END IF;
    range_stmt := format(
        'WITH batch AS (SELECT ctid FROM %1$s
                         WHERE ctid >= format(''(%%s,0)'', $3::bigint)::tid
                           AND ctid < format(''(%%s,0)'', $4::bigint)::tid
                           AND %2$s
                         FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %3$s FROM batch WHERE t.ctid = batch.ctid',
        job.tbl, needs_work, set_expr);
    sweep_stmt := format(
        'WITH batch AS (SELECT ctid FROM %1$s WHERE %2$s LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE %1$s t SET %3$s FROM batch WHERE t.ctid = batch.ctid',
        job.tbl, needs_work, set_expr);
    remaining_stmt := format('SELECT count(*) FROM %s WHERE %s', job.tbl, needs_work);
END
$$;

-- A new job: counts the rows to rewrite and sizes the block ranges from the rows per
-- block of the first blocks (statistics may be missing on a table never analyzed).
CREATE OR REPLACE FUNCTION dscsa._batch_start(tbl regclass, col name, job_name text, target_id integer,
                                              context text, batch_size integer)
    RETURNS dscsa._batch_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job dscsa._batch_job;
    n bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM dscsa._require_own_transaction('dscsa.' || job_name);
    job.tbl := tbl;
    job.col := col;
    job.job := job_name;
    job.target_id := target_id;
    job.context := coalesce(context, '');
    job.batch_size := batch_size;
    job.next_block := 0;
    job.end_block := pg_relation_size(tbl) / current_setting('block_size')::bigint;
    job.done := 0;
    job.waits := 0;
    job.started := clock_timestamp();
    job.finished := false;
    EXECUTE (dscsa._batch_statements(job)).remaining_stmt INTO job.total USING target_id;
    EXECUTE format('SELECT count(*) FROM %s WHERE ctid < ''(8,0)''::tid', tbl) INTO n;
    job.step := greatest(1, batch_size / greatest(n / greatest(least(job.end_block, 8), 1), 1));
    PERFORM dscsa._audit_job_event(job_name, 'started',
        jsonb_build_object('table', tbl::text, 'column', col, 'target_key_id', target_id, 'rows', job.total));
    RETURN job;
END
$$;

-- One block range of a batch job's walk, in the caller's transaction: what the session
-- and its backfill workers (src/backfill/, dscsa.backfill_workers) run. Returns the rows
-- rewritten. Internal: called by dscsa._batch_step and by the workers.
CREATE OR REPLACE FUNCTION dscsa._batch_range(tbl regclass, col name, job_name text, target_id integer,
                                              context text, first_block bigint, end_block bigint)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job dscsa._batch_job;
    n bigint;
BEGIN
    IF job_name NOT IN ('reencrypt', 'reindex_blind') THEN
        RAISE EXCEPTION 'unknown batch job' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    job.tbl := tbl;
    job.col := col;
    job.job := job_name;
    EXECUTE (dscsa._batch_statements(job)).range_stmt USING target_id, context, first_block, end_block;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The walk's job, shared with the backfill workers that help this session (src/backfill/).
CREATE OR REPLACE FUNCTION dscsa._batch_running(tbl regclass, col text, job_name text) RETURNS boolean
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_batch_running_wrapper';
CREATE OR REPLACE FUNCTION dscsa._batch_start_workers(tbl regclass, col text, job_name text, target_id integer,
                                                      context text, first_block bigint, end_block bigint,
                                                      step bigint, rows_before bigint)
    RETURNS integer
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_batch_start_workers_wrapper';

CREATE OR REPLACE FUNCTION dscsa._batch_progress(job dscsa._batch_job) RETURNS void
    LANGUAGE plpgsql VOLATILE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE NOTICE 'dscsa.% %.%: % of % rows (% %%), % rows/s', job.job, job.tbl, job.col, job.done, job.total,
        CASE WHEN job.total > 0 THEN round(100.0 * least(job.done, job.total) / job.total, 1) ELSE 100 END,
        round(job.done / greatest(extract(epoch FROM clock_timestamp() - job.started), 0.001));
END
$$;

-- One batch: the next block range of this session while the walk lasts (up to
-- dscsa.backfill_workers background workers take ranges of the same walk beside it),
-- then sweep batches until no row is left (waiting a little for rows other transactions
-- hold, 60 s at most).
CREATE OR REPLACE FUNCTION dscsa._batch_step(job dscsa._batch_job) RETURNS dscsa._batch_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stmts record;
    n bigint;
    remaining bigint;
    workers integer;
    claim record;
    first_block bigint;
    progress bigint[];
BEGIN
    IF job.next_block < job.end_block THEN
        IF NOT dscsa._batch_running(job.tbl, job.col, job.job) THEN
            workers := dscsa._batch_start_workers(job.tbl, job.col, job.job, job.target_id, job.context,
                                                  job.next_block, job.end_block, job.step, job.done);
            IF workers > 0 THEN
                RAISE NOTICE 'dscsa.% %.%: % backfill workers help this session', job.job, job.tbl, job.col, workers;
            END IF;
        END IF;
        SELECT * INTO claim FROM dscsa._backfill_next('dscsa.' || job.job, job.tbl, job.col);
        first_block := claim.first_block;
        IF first_block IS NULL THEN
            job.done := claim.rows_done;
            job.next_block := job.end_block;
            PERFORM dscsa._batch_progress(job);
            RETURN job;
        END IF;
        progress := dscsa._backfill_done(dscsa._batch_range(job.tbl, job.col, job.job, job.target_id, job.context,
                                                            first_block, first_block + job.step));
        job.done := progress[2];
        PERFORM dscsa._batch_progress(job);
        RETURN job;
    END IF;
    -- The block walk is done (by this session and its workers); what is left is the sweep
    -- of rows it skipped, whose statements are built here only (each range builds its own).
    stmts := dscsa._batch_statements(job);
    EXECUTE stmts.sweep_stmt USING job.target_id, job.context, job.batch_size;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        job.done := job.done + n;
        PERFORM dscsa._batch_progress(job);
        RETURN job;
    END IF;
    EXECUTE stmts.remaining_stmt INTO remaining USING job.target_id;
    IF remaining = 0 THEN
        RAISE NOTICE 'dscsa.% %.%: done, % rows rewritten under key id %', job.job, job.tbl, job.col, job.done, job.target_id;
        PERFORM dscsa._audit_job_event(job.job, 'finished',
            jsonb_build_object('table', job.tbl::text, 'column', job.col, 'target_key_id', job.target_id, 'rows', job.done));
        job.finished := true;
    ELSIF job.waits >= 600 THEN
        RAISE WARNING '% rows of %.% are still locked by other transactions; call dscsa.% again',
            remaining, job.tbl, job.col, job.job;
        PERFORM dscsa._audit_job_event(job.job, 'stopped',
            jsonb_build_object('table', job.tbl::text, 'column', job.col, 'rows', job.done, 'rows_left', remaining));
        job.finished := true;
    ELSE
        job.waits := job.waits + 1;
        PERFORM pg_sleep(0.1);
    END IF;
    RETURN job;
END
$$;

-- The active version of a key the caller may see (dscsa.keys), or an error.
CREATE OR REPLACE FUNCTION dscsa._active_version(key_name text, purpose text) RETURNS integer
    LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id integer;
BEGIN
    SELECT k.key_id INTO id FROM dscsa.keys k
     WHERE k.key_name = _active_version.key_name AND k.status = 'active' AND k.purpose = _active_version.purpose;
    IF id IS NULL THEN
        RAISE EXCEPTION '% key "%" has no active version, or the current role holds no grant on it',
            replace(purpose, '_', '-'), key_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'dscsa.keys lists the keys this role may use.';
    END IF;
    RETURN id;
END
$$;

-- Moves the values of one encrypted column from older key versions to the active version
-- of dscsa.key_name. The caller needs dscsa_reader and dscsa_writer, UPDATE on the
-- table, and the key's encrypt and decrypt grants; plaintext exists only transiently
-- inside each UPDATE.
CREATE OR REPLACE FUNCTION dscsa._reencrypt_start(tbl regclass, col name, context text, batch_size integer)
    RETURNS dscsa._batch_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
                      AND dscsa._kind_of_type(a.atttypid) IS NOT NULL) THEN
        RAISE EXCEPTION 'column %.% is not an encrypted column', tbl, col USING ERRCODE = 'wrong_object_type';
    END IF;
    RETURN dscsa._batch_start(tbl, col, 'reencrypt',
        dscsa._active_version(current_setting('dscsa.key_name'), 'data'), context, batch_size);
END
$$;

CREATE OR REPLACE PROCEDURE dscsa.reencrypt(tbl regclass, col name, context text DEFAULT NULL, batch_size integer DEFAULT 5000)
    LANGUAGE plpgsql
AS $$
DECLARE
    job dscsa._batch_job;
BEGIN
    job := dscsa._reencrypt_start(tbl, col, context, batch_size);
    LOOP
        job := dscsa._batch_step(job);
        COMMIT;
        EXIT WHEN job.finished;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE dscsa.reencrypt(regclass, name, text, integer) IS
    'Re-encrypts a column under the active key version in committed batches; idempotent, resumable, safe under concurrent writes.';

-- Blind-index key rotation: after dscsa.rotate_key(<blind-index key>), recomputes the
-- blind indexes still under older versions. Lookups written with
-- dscsa.blind_index_candidates() find rows under either version throughout.
CREATE OR REPLACE FUNCTION dscsa._reindex_blind_start(tbl regclass, col name, batch_size integer)
    RETURNS dscsa._batch_job
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r dscsa.protected_columns;
BEGIN
    SELECT * INTO r FROM dscsa.protected_columns p WHERE p.relid = tbl AND p.column_name = col AND p.state = 'protected';
    IF NOT FOUND OR r.blind_index_column IS NULL THEN
        RAISE EXCEPTION '%.% is not a protected column with a blind index', tbl, col
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN dscsa._batch_start(tbl, r.blind_index_column, 'reindex_blind',
        dscsa._active_version(r.blind_index_key, 'blind_index'), r.context, batch_size);
END
$$;

CREATE OR REPLACE PROCEDURE dscsa.reindex_blind(tbl regclass, col name, batch_size integer DEFAULT 5000)
    LANGUAGE plpgsql
AS $$
DECLARE
    job dscsa._batch_job;
BEGIN
    job := dscsa._reindex_blind_start(tbl, col, batch_size);
    LOOP
        job := dscsa._batch_step(job);
        COMMIT;
        EXIT WHEN job.finished;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE dscsa.reindex_blind(regclass, name, integer) IS
    'Recomputes blind indexes still under an older version of their key, in committed batches (after dscsa.rotate_key of the blind-index key).';
