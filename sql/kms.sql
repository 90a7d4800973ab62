-- pg_dscsa: key management status (docs/KMS.md, "Key cache and circuit breaker"). The
-- state lives in shared memory (src/shmem.rs); these are routines and views only,
-- replayed by upgrades.

CREATE OR REPLACE FUNCTION dscsa._kms_status()
    RETURNS TABLE (provider text, breaker text, consecutive_failures integer, opened_at timestamptz,
                   hook_runs bigint, hook_failures bigint, rejected bigint,
                   last_success timestamptz, last_failure timestamptz, last_failure_class text,
                   last_latency_ms double precision,
                   cache_hits bigint, cache_misses bigint, cache_refreshes bigint,
                   cache_entries integer, cache_capacity integer, cache_memory_locked boolean,
                   session_key_memory_locked boolean, soft_ttl_s integer, hard_ttl_s integer)
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'kms_status_wrapper';

-- One row per KMS hook command the cluster called (its program's name only: its
-- arguments name configuration files), with its circuit breaker and counters since the
-- server started; the key cache's counters on every row.
CREATE OR REPLACE VIEW dscsa.kms_status AS SELECT * FROM dscsa._kms_status();
COMMENT ON VIEW dscsa.kms_status IS
    'KMS hook, circuit breaker (closed, open, half-open), hook and key cache counters, TTLs; never key bytes.';

CREATE OR REPLACE FUNCTION dscsa._kms_cache()
    RETURNS TABLE (key_name text, version integer, key_id bigint, unwrapped_at timestamptz,
                   age_s double precision, refresh_in_s double precision, expires_in_s double precision,
                   last_used timestamptz, hits bigint)
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'kms_cache_wrapper';

CREATE OR REPLACE VIEW dscsa.kms_cache AS SELECT * FROM dscsa._kms_cache();
COMMENT ON VIEW dscsa.kms_cache IS
    'This database''s keys in the cluster''s key cache: when unwrapped, when refreshed and expired, hits; never key bytes.';

CREATE OR REPLACE FUNCTION dscsa.kms_health(kek text DEFAULT 'dev')
    RETURNS TABLE (provider text, kek_ref text, ok boolean, wrap_ms double precision,
                   unwrap_ms double precision, message text)
    VOLATILE STRICT PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'kms_health_wrapper';
COMMENT ON FUNCTION dscsa.kms_health(text) IS
    'Wraps a random canary under kek through the KMS hook and unwraps it again: provider, latencies, what went wrong.';

CREATE OR REPLACE FUNCTION dscsa.flush_key_cache() RETURNS bigint
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'flush_key_cache_wrapper';
COMMENT ON FUNCTION dscsa.flush_key_cache() IS
    'Evicts (and zeroes) this database''s keys from the cluster''s key cache; returns how many. Recorded in the audit trail.';
