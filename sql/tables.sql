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
    purpose         text NOT NULL DEFAULT 'data' CHECK (purpose IN ('data', 'blind_index', 'import')),
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
