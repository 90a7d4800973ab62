-- The encrypted type accepts only well-formed envelopes and prints them unchanged.

-- Test vector "serial-with-context" from docs/FORMAT.md.
\set v 'dscsa:AQIAAAAqoKGio6SlpqeoqaqrtVZMHXX7Mo9SVbfjN0rw7kCdEjtE9ZzC8pngpZXTswEqXw'
SELECT armor(:'v'::dscsa.encrypted) = :'v' AS text_round_trip,
       armor(dearmor(:'v')) = :'v' AS dearmor_round_trip;
SELECT envelope_version(:'v'), envelope_kind(:'v'), envelope_key_id(:'v'), envelope_nonce(:'v');
SELECT encode(envelope_bytes(:'v'), 'hex');
SELECT armor(to_encrypted(envelope_bytes(:'v'))) = :'v' AS bytea_round_trip;
SELECT :'v'::dscsa.serial_encrypted IS NOT NULL AS serial_domain_accepts;
SELECT :'v'::dscsa.lot_encrypted;

-- Plaintext and near misses are refused with 22P02 and a hint; the input is not echoed.
\set VERBOSITY default
SELECT 'SN0000000000000001'::dscsa.encrypted;
SELECT 'dscsa:'::dscsa.encrypted;
SELECT 'dscsa:AQIAAAAq'::dscsa.encrypted;
SELECT 'dscsa:AQIAAAAqoKGio6SlpqeoqaqrtVZMHXX7Mo9SVbfjN0rw7kCdEjtE9ZzC8pngpZXTswEqXw='::dscsa.encrypted;
SELECT 'dscsa:AgIAAAAqoKGio6SlpqeoqaqrtVZMHXX7Mo9SVbfjN0rw7kCdEjtE9ZzC8pngpZXTswEqXw'::dscsa.encrypted;
SELECT 'dscsa:AQkAAAAqoKGio6SlpqeoqaqrtVZMHXX7Mo9SVbfjN0rw7kCdEjtE9ZzC8pngpZXTswEqXw'::dscsa.encrypted;
SELECT to_encrypted('\x0102'::bytea);

-- No casts from text, no operators.
SELECT 'x'::text::dscsa.encrypted;
SELECT :'v'::text::dscsa.encrypted;
SELECT :'v'::dscsa.encrypted::text;
SELECT :'v'::dscsa.encrypted::varchar;
SELECT dearmor('SN0000000000000001');
SELECT :'v'::dscsa.encrypted = :'v'::dscsa.encrypted;

-- The type works in tables, including NULLs.
CREATE TABLE holder (id int, c dscsa.encrypted);
INSERT INTO holder VALUES (1, :'v'), (2, NULL);
SELECT id, armor(c) = :'v' AS same FROM holder ORDER BY id;
DROP TABLE holder;
