-- pg_dscsa: the audit trail (docs/AUDIT.md). The tables are in sql/tables.sql; the
-- background worker (src/worker/) writes them, backends queue their events in shared
-- memory (src/audit/). Routines and views only, replayed by upgrades.

-- Refuses any change of the trail but appending (enabled ALWAYS: also with
-- session_replication_role = replica). A superuser can still disable it; the chain and
-- the anchors in the server log show what was done then.
CREATE OR REPLACE FUNCTION dscsa._audit_append_only() RETURNS trigger
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the audit trail is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Old months are archived by exporting them (dscsa.audit_export) and detaching their partition.';
END
$$;

CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON dscsa.audit_log
    FOR EACH ROW EXECUTE FUNCTION dscsa._audit_append_only();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON dscsa.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION dscsa._audit_append_only();
ALTER TABLE dscsa.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only;
ALTER TABLE dscsa.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- The month's partition for `ts`, made if missing (by the worker, before writing).
CREATE OR REPLACE FUNCTION dscsa._audit_partition(ts timestamptz) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_day timestamptz := date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    part name := 'audit_log_' || to_char(first_day AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    IF to_regclass(format('dscsa.%I', part)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE dscsa.%I PARTITION OF dscsa.audit_log FOR VALUES FROM (%L) TO (%L)',
                   part, first_day, first_day + interval '1 month');
    EXECUTE format('ALTER TABLE dscsa.%I OWNER TO dscsa_audit_owner', part);
    EXECUTE format('CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON dscsa.%I
                    FOR EACH STATEMENT EXECUTE FUNCTION dscsa._audit_append_only()', part);
    EXECUTE format('ALTER TABLE dscsa.%I ENABLE ALWAYS TRIGGER audit_log_no_truncate', part);
    EXECUTE format('ALTER TABLE dscsa.%I ENABLE ALWAYS TRIGGER audit_log_append_only', part);
    EXECUTE format('GRANT SELECT ON dscsa.%I TO dscsa_auditor', part);
END
$$;

-- The audit key (purpose 'audit'), made by the worker the first time it writes. Rotate
-- it with dscsa.rotate_key('dscsa_audit'); every row names the version it was made with.
CREATE OR REPLACE FUNCTION dscsa._create_audit_key() RETURNS integer
    LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
    w record;
BEGIN
    PERFORM dscsa._claim_key_name('dscsa_audit');
    new_id := nextval('dscsa.keyring_key_id_seq');
    -- Under the KEK the newest key uses (the development hook's if there is none yet).
    SELECT * INTO STRICT w FROM dscsa._wrap_new_key(new_id, 'dscsa_audit', 1,
        coalesce((SELECT k.kek_ref FROM dscsa.keyring k ORDER BY k.key_id DESC LIMIT 1), 'dev'));
    INSERT INTO dscsa.keyring (key_id, key_name, version, purpose, status, kek_ref, wrapped_key, key_check)
    VALUES (new_id, 'dscsa_audit', 1, 'audit', 'active', w.kek_ref, w.wrapped_key, w.key_check);
    PERFORM dscsa._audit_key_event('create_key', 'dscsa_audit', new_id, 1, NULL,
        jsonb_build_object('purpose', 'audit', 'status', 'active', 'kek_ref', w.kek_ref));
    RETURN new_id;
END
$$;

-- Key lifecycle events made in SQL: recorded when the transaction commits or aborts.
CREATE OR REPLACE FUNCTION dscsa._audit_key_event(operation text, key_name text, key_id integer,
                                                  key_version integer, old_state jsonb, new_state jsonb)
    RETURNS void
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_key_event_wrapper';

-- A migration job's start, progress or end.
CREATE OR REPLACE FUNCTION dscsa._audit_job_event(operation text, outcome text, detail jsonb)
    RETURNS void
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_job_event_wrapper';

-- On the primary: records a hot standby forwards (its worker calls this as a role with
-- dscsa_audit_forwarder). The primary's worker chains them into dscsa.audit_log.
CREATE OR REPLACE FUNCTION dscsa.audit_ingest(events text) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(events::jsonb) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'forwarded audit records must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO dscsa.audit_inbox (events) VALUES (audit_ingest.events);
END
$$;
COMMENT ON FUNCTION dscsa.audit_ingest(text) IS
    'Receives audit records forwarded by a hot standby (role dscsa_audit_forwarder).';

CREATE OR REPLACE FUNCTION dscsa.audit_status()
    RETURNS TABLE (preloaded boolean, worker_pid integer, worker_ready boolean, heartbeat_age_ms bigint,
                   queued bigint, queue_size bigint, written bigint, last_anchor_seq bigint, epoch bigint,
                   counters jsonb)
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'audit_status_wrapper';
COMMENT ON FUNCTION dscsa.audit_status() IS
    'State of the audit trail: preloaded, worker, queue, records written, last anchor, completeness counters.';

CREATE OR REPLACE FUNCTION dscsa.audit_verify(server_log text DEFAULT NULL)
    RETURNS TABLE (verified boolean, records bigint, first_seq bigint, last_seq bigint,
                   anchors_in_trail bigint, logged_anchors_checked bigint, intervals_checked bigint,
                   break_kind text, break_seq bigint, message text)
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_verify_wrapper';
COMMENT ON FUNCTION dscsa.audit_verify(text) IS
    'Verifies the chain, the completeness counters and (given the server log text) the logged anchors; reports the first break.';

CREATE OR REPLACE FUNCTION dscsa.audit_export(from_seq bigint DEFAULT NULL, to_seq bigint DEFAULT NULL)
    RETURNS SETOF text
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_export_wrapper';
COMMENT ON FUNCTION dscsa.audit_export(bigint, bigint) IS
    'The trail (or a range, widened to the anchors around it) as JSON Lines for pg_dscsa_audit_verify: a header with the wrapped audit keys, then one record per line.';

-- Statements that opened (started revealing plaintext) without a record of what they
-- did: their backend died (killed, crashed) before it could say, or is still running.
CREATE OR REPLACE VIEW dscsa.audit_unclosed_statements AS
SELECT o.seq, o.ts, o.origin, o.database, o.session_user_name, o.current_user_name, o.client_addr,
       o.application, o.backend_pid, o.backend_start, o.statement_id, o.query_id, o.operation,
       EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                WHERE a.pid OPERATOR(pg_catalog.=) o.backend_pid
                  AND a.backend_start OPERATOR(pg_catalog.=) o.backend_start) AS backend_alive
  FROM dscsa.audit_log o
 WHERE o.record_type OPERATOR(pg_catalog.=) 'opened'
   AND NOT EXISTS (SELECT 1 FROM dscsa.audit_log c
                    WHERE c.record_type OPERATOR(pg_catalog.=) 'access'
                      AND c.origin OPERATOR(pg_catalog.=) o.origin
                      AND c.backend_start OPERATOR(pg_catalog.=) o.backend_start
                      AND c.backend_pid OPERATOR(pg_catalog.=) o.backend_pid
                      AND c.statement_id OPERATOR(pg_catalog.<=) o.statement_id
                      -- A merged record covers its statements up to last_statement_id.
                      AND o.statement_id OPERATOR(pg_catalog.<=) coalesce(
                              (c.detail::jsonb OPERATOR(pg_catalog.->>) 'last_statement_id')::bigint,
                              c.statement_id));
COMMENT ON VIEW dscsa.audit_unclosed_statements IS
    'Statements that started decrypting but whose access records never came: the backend was killed or is still running.';
