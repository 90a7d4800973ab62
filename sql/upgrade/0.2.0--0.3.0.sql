-- pg_dscsa 0.2.0 -> 0.3.0, the hand-written part: security fixes (CHANGELOG.md,
-- "Security"). The routine files of sql/ follow it in the generated script
-- (scripts/gen_upgrade.sh); tests/integration/tests/upgrade.rs checks that the result
-- equals a fresh 0.3.0 installation object by object.

-- Routines 0.3.0 no longer has (they exposed keyring metadata to every dscsa role), or
-- redefines with another result type.
DROP FUNCTION dscsa._key_meta(integer);
DROP FUNCTION dscsa._key_exists(integer);
DROP FUNCTION dscsa._active_key_id(text);
DROP FUNCTION dscsa.loaded_keys();

-- The cast-refusing functions of sql/types.sql pin search_path too.
ALTER FUNCTION dscsa._refuse_cast_from_text(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dscsa._refuse_cast_to_text(dscsa.encrypted) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dscsa._refuse_cast_from_varchar(varchar) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dscsa._refuse_cast_to_varchar(dscsa.encrypted) SET search_path = pg_catalog, pg_temp;

-- The registry and the keyring could be written by dscsa_admin directly in 0.2.0.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dscsa.protected_columns, dscsa.keyring FROM dscsa_admin;

-- Per-key authorization (as in sql/tables.sql).
CREATE TABLE dscsa.key_grants (
    key_name    text NOT NULL,
    grantee     regrole NOT NULL,
    privilege   text NOT NULL CHECK (privilege IN ('encrypt', 'decrypt', 'blind_index')),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    granted_by  name NOT NULL DEFAULT session_user,
    PRIMARY KEY (key_name, grantee, privilege)
);
COMMENT ON TABLE dscsa.key_grants IS
    'Per-key authorization: which roles may load which key for encrypt, decrypt or blind_index. Changed only through dscsa.grant_key()/revoke_key().';
SELECT pg_catalog.pg_extension_config_dump('dscsa.key_grants', '');

-- Keys that exist keep working for the roles that used them under 0.2.0, where every
-- dscsa role could load every key: data keys for the writers (encrypt), readers
-- (decrypt) and admins (decrypt, for dscsa.verify_column), blind-index keys for writers
-- and readers, import keys for writers. Narrow them with dscsa.revoke_key().
INSERT INTO dscsa.key_grants (key_name, grantee, privilege, granted_by)
SELECT DISTINCT k.key_name, g.grantee::regrole, g.privilege, 'pg_dscsa 0.3.0 upgrade'
  FROM dscsa.keyring k
  JOIN (VALUES ('data', 'dscsa_writer', 'encrypt'), ('data', 'dscsa_reader', 'decrypt'),
               ('data', 'dscsa_admin', 'decrypt'),
               ('blind_index', 'dscsa_writer', 'blind_index'), ('blind_index', 'dscsa_reader', 'blind_index'),
               ('import', 'dscsa_writer', 'decrypt')) g(purpose, grantee, privilege)
    ON g.purpose = k.purpose;

-- Row types of the batch procedures' steps (as in sql/tables.sql).
CREATE TYPE dscsa._batch_job AS (
    tbl         regclass,
    col         name,
    job         text,           -- 'reencrypt' or 'reindex_blind'
    target_id   integer,        -- the key id values are moved to
    context     text,
    batch_size  integer,
    next_block  bigint,         -- pass 1: next block range to rewrite
    end_block   bigint,
    step        bigint,         -- blocks per batch
    total       bigint,         -- rows to rewrite when the job started
    done        bigint,
    waits       integer,        -- pass 2: retries while other transactions hold rows
    started     timestamptz,
    finished    boolean
);
CREATE TYPE dscsa._protect_job AS (
    tbl         regclass,
    col         name,
    phase       text,           -- backfill, check, validate, index, cutover, done
    step        bigint,         -- blocks per backfill batch
    attempts    integer,        -- lock attempts of the current phase
    started     timestamptz,
    finished    boolean
);

-- The audit trail (as in sql/tables.sql), and its key's purpose in the keyring.
ALTER TABLE dscsa.keyring DROP CONSTRAINT keyring_purpose_check;
ALTER TABLE dscsa.keyring ADD CONSTRAINT keyring_purpose_check
    CHECK (purpose IN ('data', 'blind_index', 'import', 'audit'));

-- The audit trail (docs/AUDIT.md): every cryptographic operation, key change, migration
-- job and tamper detection of the cluster, written by pg_dscsa's background worker
-- alone, each row chained to the previous one by an HMAC under the audit key. Monthly
-- partitions (dscsa.audit_log_YYYYMM) are made by the worker as needed, so old months
-- can be detached and archived. Owned by the NOLOGIN role dscsa_audit_owner; append-only
-- for everyone (triggers enabled ALWAYS); readable by dscsa_auditor. `detail` is the
-- canonical JSON the MAC covers, kept as text (cast it to jsonb to query it).
CREATE TABLE dscsa.audit_log (
    seq                 bigint NOT NULL,
    ts                  timestamptz NOT NULL,
    origin              text NOT NULL,
    epoch               bigint NOT NULL,
    record_type         text NOT NULL,
    database            text,
    session_user_name   text,
    current_user_name   text,
    client_addr         text,
    application         text,
    backend_pid         integer,
    backend_start       timestamptz,
    statement_id        bigint,
    query_id            bigint,
    statement           text,
    operation           text NOT NULL,
    key_id              integer,
    key_name            text,
    key_version         integer,
    field_kind          text,
    context             text,
    outcome             text NOT NULL,
    count               bigint NOT NULL,
    detail              text,
    mac_key_id          integer NOT NULL,
    prev_mac            bytea NOT NULL,
    mac                 bytea NOT NULL,
    PRIMARY KEY (seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX audit_log_ts ON dscsa.audit_log (ts);
CREATE INDEX audit_log_statement ON dscsa.audit_log (backend_start, backend_pid, statement_id);
COMMENT ON TABLE dscsa.audit_log IS
    'The chained audit trail (docs/AUDIT.md): written by the pg_dscsa worker only, append-only, readable by dscsa_auditor.';

-- Records forwarded by hot standbys (dscsa.audit_ingest), until the worker chains them.
CREATE TABLE dscsa.audit_inbox (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    forwarded_by    name NOT NULL DEFAULT session_user,
    events          text NOT NULL
);
COMMENT ON TABLE dscsa.audit_inbox IS
    'Audit records forwarded by hot standbys, waiting to be chained into dscsa.audit_log by the worker.';

COMMENT ON TABLE dscsa.keyring IS
    'Wrapped data keys. Readable by dscsa_admin only; changed only through the key administration functions.';
