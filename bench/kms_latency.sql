-- Key load latency through one KMS hook (scripts/bench.sh BENCH_ONLY=kms). Run in a
-- database whose dscsa.kms_command is the provider's hook, with key 'k' created under its
-- KEK: :n loads of 'k', each timed, into kms_latency (provider, cache, ms). bench.sh runs
-- it with the key cache off (every load runs the hook) and on (warm).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS kms_latency (provider text, cache text, ms float8);
SELECT dscsa.load_key('k');  -- warms the cache when it is on
SELECT set_config('bench.provider', :'provider', false), set_config('bench.cache', :'cache', false),
       set_config('bench.n', :'n', false);
DO $$
DECLARE
  t0 timestamptz;
BEGIN
  FOR i IN 1..current_setting('bench.n')::int LOOP
    PERFORM dscsa.unload_all_keys();
    t0 := clock_timestamp();
    PERFORM dscsa.load_key('k');
    INSERT INTO kms_latency
      VALUES (current_setting('bench.provider'), current_setting('bench.cache'),
              extract(epoch FROM clock_timestamp() - t0) * 1000);
  END LOOP;
END $$;
-- The loads really went through the provider: a round trip under the loaded key.
SET dscsa.key_name = 'k';
DO $$
BEGIN
  IF dscsa.dscsa_decrypt(dscsa.dscsa_encrypt('check')) IS DISTINCT FROM 'check' THEN
    RAISE EXCEPTION 'round trip failed under the provider''s key';
  END IF;
END $$;
