-- pg_dscsa: the extension's own tables and row types. Created once, by CREATE EXTENSION;
-- an upgrade changes them through its hand-written delta (sql/upgrade/), never by
-- replaying this file. Every other sql/ file holds routines and views only and is
-- replayed by upgrade scripts (scripts/gen_upgrade.sh).
--
-- None of these tables can be written by any role directly, not even dscsa_admin: the
-- keyring and the grants change through the key administration functions, the registry
-- of protected columns through dscsa._registry() (src/registry.rs). All are dumped by
-- pg_dump (pg_extension_config_dump), so restored data stays decryptable.

-- The keyring holds data keys only in wrapped form (encrypted by a KEK that stays in the
-- KMS/HSM). key_id is what every envelope names; it is never reused.
CREATE SEQUENCE dscsa.keyring_key_id_seq AS integer MINVALUE 1;

CREATE TABLE dscsa.keyring (
    key_id          integer PRIMARY KEY DEFAULT nextval('dscsa.keyring_key_id_seq'),
    key_name        text NOT NULL CHECK (key_name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    version         integer NOT NULL CHECK (version > 0),
    -- data: encrypts envelopes. blind_index: HMAC key of blind indexes, never encrypts.
    -- import: another application's AES-GCM key, only used to convert its values.
    -- audit: the HMAC key of the audit trail's chain (docs/AUDIT.md), used by the worker only.
    purpose         text NOT NULL DEFAULT 'data' CHECK (purpose IN ('data', 'blind_index', 'import', 'audit')),
    blind_index_length smallint CHECK ((purpose = 'blind_index') = (blind_index_length IS NOT NULL)
                                       AND blind_index_length BETWEEN 8 AND 32),
    -- import keys: the KMS reference the key was fetched by.
    external_ref    text CHECK ((purpose = 'import') = (external_ref IS NOT NULL)),
    status          text NOT NULL CHECK (status IN ('active', 'decrypt_only', 'retired')),
    kek_ref         text NOT NULL,
    rewrapped_at    timestamptz,
    wrapped_key     bytea NOT NULL,
    key_check       bytea NOT NULL CHECK (length(key_check) = 16),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      name NOT NULL DEFAULT session_user,
    deactivated_at  timestamptz,
    retired_at      timestamptz,
    UNIQUE (key_name, version)
);
ALTER SEQUENCE dscsa.keyring_key_id_seq OWNED BY dscsa.keyring.key_id;
CREATE UNIQUE INDEX keyring_one_active_version ON dscsa.keyring (key_name, purpose) WHERE status = 'active';
COMMENT ON TABLE dscsa.keyring IS
    'Wrapped data keys. Readable by dscsa_admin only; changed only through the key administration functions.';

SELECT pg_catalog.pg_extension_config_dump('dscsa.keyring', '');
SELECT pg_catalog.pg_extension_config_dump('dscsa.keyring_key_id_seq', '');

-- Which roles may load which key, for what (dscsa.grant_key / dscsa.revoke_key). A grant
-- to a role covers its members, as GRANT does. Role-level grants (EXECUTE on the
-- encrypt/decrypt functions) stay the outer fence: both are needed.
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

-- Columns protected by dscsa.protect_column(): field kind, context, keys, blind index,
-- migration progress. Written only through dscsa._registry() (src/registry.rs).
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
    -- 0.3.0: name and uniqueness of the one constraint or index carried over
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
    -- the indexes and UNIQUE constraints carried over to the blind index, described
    -- (dscsa._carried_indexes); 0.3.0 rows use carried_index and its two flags instead
    carried_indexes     jsonb CHECK (jsonb_typeof(carried_indexes) = 'array'),
    PRIMARY KEY (relid, column_name),
    CHECK ((blind_index_column IS NULL) = (blind_index_key IS NULL))
);
COMMENT ON TABLE dscsa.protected_columns IS
    'Columns protected by dscsa.protect_column(): field kind, context, keys, blind index, migration progress.';
SELECT pg_catalog.pg_extension_config_dump('dscsa.protected_columns', '');

-- The state of a batch job between its committed steps (dscsa.reencrypt,
-- dscsa.reindex_blind): the procedures that COMMIT hold it in a variable and pass it to
-- one step function after another (sql/rewrite.sql).
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

-- The state of dscsa.protect_column between its committed steps (sql/protect.sql).
CREATE TYPE dscsa._protect_job AS (
    tbl         regclass,
    col         name,
    phase       text,           -- backfill, check, validate, index, cutover, done
    step        bigint,         -- blocks per backfill batch
    attempts    integer,        -- lock attempts of the current phase
    started     timestamptz,
    finished    boolean
);

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
