-- Encrypt/decrypt behaviour and error codes. Ciphertexts are random, so only their
-- properties are printed.
CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;

SELECT dscsa.create_key('regress');
SELECT dscsa.create_key('regress');
SELECT dscsa.create_key('bad name!');
SELECT pg_temp.sqlstate_of($$SELECT dscsa_encrypt('x')$$) AS no_key_loaded;
SET dscsa.key_name = 'regress';
SELECT pg_temp.sqlstate_of($$SELECT dscsa_encrypt('x')$$) AS not_loaded_yet;
SELECT dscsa.load_key('regress');
SELECT key_name, version, key_id, active, scope FROM dscsa.loaded_keys();

-- Round trips: empty, ASCII, UTF-8, NULL, with and without context.
SELECT v, dscsa_decrypt(dscsa_encrypt(v)) = v AS plain_ok,
       dscsa_decrypt(dscsa_encrypt(v, 'erp.unit.serial'), 'erp.unit.serial') = v AS ctx_ok,
       octet_length(dscsa.envelope_bytes(dscsa_encrypt(v))) - octet_length(v) AS overhead
  FROM (VALUES (''), ('SN0000000000000001'), ('Grüße ✓ 漢字')) t(v);
SELECT dscsa_decrypt(dscsa_encrypt(NULL)) IS NULL AS null_in_null_out;
SELECT armor(dscsa_encrypt('same')) <> armor(dscsa_encrypt('same')) AS randomized;

-- Field kinds.
SELECT dscsa.envelope_kind(dscsa_encrypt_gtin('00300010123455')) AS gtin,
       dscsa.envelope_kind(dscsa_encrypt_serial('SN1')) AS serial,
       dscsa.envelope_kind(dscsa_encrypt_lot('L1')) AS lot,
       dscsa.envelope_kind(dscsa_encrypt_expiry('260331')) AS expiry;
SELECT dscsa_decrypt(dscsa_encrypt_serial('SN1')) AS serial_domain_decrypt,
       dscsa_decrypt(dscsa_encrypt_lot('L1', 'c'), 'c') AS lot_with_context;

-- Tampering, wrong context, wrong kind.
SELECT dscsa_decrypt(dscsa_encrypt('x', 'a'), 'b');
SELECT dscsa_try_decrypt(dscsa_encrypt('x', 'a'), 'b') IS NULL AS try_gives_null;
-- Flip one bit of each byte of one envelope in turn: every flip fails, none decrypts.
SELECT pg_temp.sqlstate_of(format('SELECT dscsa_decrypt(%L::bytea)', set_byte(b, i, get_byte(b, i) # 1))) AS state,
       count(*) AS flips
  FROM (SELECT dscsa.envelope_bytes(dscsa_encrypt('SN1')) AS b OFFSET 0) e,
       generate_series(0, octet_length(b) - 1) i
 GROUP BY 1 ORDER BY 1;
SELECT dscsa_encrypt_serial('SN1')::dscsa.encrypted::dscsa.lot_encrypted;

-- Limits.
SELECT pg_temp.sqlstate_of($$SELECT dscsa_encrypt(repeat('a', 1048577))$$) AS too_long;
SELECT pg_temp.sqlstate_of($$SELECT dscsa_encrypt('a', repeat('c', 256))$$) AS context_too_long;
SELECT pg_temp.sqlstate_of($$SELECT dscsa.load_key('regress', 'forever')$$) AS bad_scope;

-- Rotation: new version active, old one still decrypts.
CREATE TEMP TABLE before_rotation AS SELECT dscsa_encrypt('old value') AS c;
SELECT dscsa.rotate_key('regress');
SELECT dscsa.load_key('regress');
SELECT key_name, version, active FROM dscsa.loaded_keys() ORDER BY version;
SELECT dscsa_decrypt(c) FROM before_rotation;
SELECT dscsa.envelope_key_id(c) <> dscsa.envelope_key_id(dscsa_encrypt('new')) AS new_key_used FROM before_rotation;
SELECT key_name, version, status FROM dscsa.keyring ORDER BY key_id;

-- Unload.
SELECT dscsa.unload_key('regress');
SELECT pg_temp.sqlstate_of($$SELECT dscsa_decrypt(c) FROM before_rotation$$) AS after_unload;

-- Retiring: refused for the active version and while any row uses the version.
SELECT dscsa.load_key('regress') AS versions_loaded;
CREATE TABLE uses_v1 (id int PRIMARY KEY, c dscsa.serial_encrypted);
INSERT INTO uses_v1 VALUES (1, NULL);
CREATE TABLE plain_copy AS SELECT 1 AS id, c FROM before_rotation;
SELECT key_id, version, status, table_name, column_name, rows FROM dscsa.key_usage('regress') ORDER BY 4, 1;
SELECT dscsa.retire_key('regress', 2);
SELECT dscsa.retire_key('regress', 1);
SELECT dscsa.retire_key('regress', 9);
DELETE FROM before_rotation;
DELETE FROM plain_copy;
SELECT dscsa.retire_key('regress', 1);
SELECT dscsa.retire_key('regress', 1);
SELECT key_name, version, status, retired_at IS NOT NULL AS has_retired_at FROM dscsa.keyring ORDER BY key_id;
SELECT dscsa.load_key('regress') AS versions_loaded_after_retire;
SELECT key_name, version, active FROM dscsa.loaded_keys() ORDER BY version;
DROP TABLE uses_v1, plain_copy;
