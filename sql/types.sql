-- pg_dscsa: the encrypted base type and the DSCSA field domains. Created once, by
-- CREATE EXTENSION (upgrades change these objects through their hand-written delta).
-- Values of dscsa.encrypted are only ever v1 envelopes (docs/FORMAT.md); there are no
-- casts to or from text and no comparison operators, by design.

CREATE TYPE dscsa.encrypted;

CREATE FUNCTION dscsa.encrypted_in(cstring) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_in';
CREATE FUNCTION dscsa.encrypted_out(dscsa.encrypted) RETURNS cstring
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_out';
CREATE FUNCTION dscsa.encrypted_recv(internal) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_recv';
CREATE FUNCTION dscsa.encrypted_send(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_send';

CREATE TYPE dscsa.encrypted (
    INPUT = dscsa.encrypted_in,
    OUTPUT = dscsa.encrypted_out,
    RECEIVE = dscsa.encrypted_recv,
    SEND = dscsa.encrypted_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = int4,
    -- Ciphertext does not compress: never try.
    STORAGE = external,
    CATEGORY = 'U'
);
COMMENT ON TYPE dscsa.encrypted IS
    'AES-256-GCM envelope (docs/FORMAT.md). Text form: dscsa:<base64url>. Decrypt with dscsa_decrypt().';

-- Read-only views of the public envelope header; no key needed.
CREATE FUNCTION dscsa.envelope_version(dscsa.encrypted) RETURNS smallint
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_version_wrapper';
CREATE FUNCTION dscsa.envelope_kind(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_kind_wrapper';
CREATE FUNCTION dscsa.envelope_key_id(dscsa.encrypted) RETURNS bigint
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_key_id_wrapper';
CREATE FUNCTION dscsa.envelope_nonce(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'envelope_nonce_wrapper';

-- Raw bytes in and out, for tools that move envelopes as bytea. The input is checked.
CREATE FUNCTION dscsa.envelope_bytes(dscsa.encrypted) RETURNS bytea
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_send';
CREATE FUNCTION dscsa.to_encrypted(bytea) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_encrypted_from_bytea';

-- One domain per DSCSA product-identifier field. The field kind sits in the
-- authenticated header, so a value of one kind fails the CHECK of another's domain
-- and cannot be decrypted as another kind.
CREATE DOMAIN dscsa.gtin_encrypted AS dscsa.encrypted
    CONSTRAINT gtin_envelope CHECK (dscsa.envelope_kind(VALUE) = 'gtin');
CREATE DOMAIN dscsa.serial_encrypted AS dscsa.encrypted
    CONSTRAINT serial_envelope CHECK (dscsa.envelope_kind(VALUE) = 'serial');
CREATE DOMAIN dscsa.lot_encrypted AS dscsa.encrypted
    CONSTRAINT lot_envelope CHECK (dscsa.envelope_kind(VALUE) = 'lot');
CREATE DOMAIN dscsa.expiry_encrypted AS dscsa.encrypted
    CONSTRAINT expiry_envelope CHECK (dscsa.envelope_kind(VALUE) = 'expiry');
COMMENT ON DOMAIN dscsa.gtin_encrypted IS 'Encrypted GTIN (AI 01); made by dscsa_encrypt_gtin().';
COMMENT ON DOMAIN dscsa.serial_encrypted IS 'Encrypted serial number (AI 21); made by dscsa_encrypt_serial().';
COMMENT ON DOMAIN dscsa.lot_encrypted IS 'Encrypted lot/batch (AI 10); made by dscsa_encrypt_lot().';
COMMENT ON DOMAIN dscsa.expiry_encrypted IS 'Encrypted expiry (AI 17); made by dscsa_encrypt_expiry().';

-- The armored text form as explicit functions. Casts to and from text are refused (below),
-- so that `col::text` can never be mistaken for decryption and `'...'::text::dscsa.encrypted`
-- never for encryption.
CREATE FUNCTION dscsa.armor(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_armor';
CREATE FUNCTION dscsa.dearmor(text) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'dscsa_dearmor';
COMMENT ON FUNCTION dscsa.armor(dscsa.encrypted) IS 'The dscsa:... text form of an envelope (not a decryption).';
COMMENT ON FUNCTION dscsa.dearmor(text) IS 'Parses the dscsa:... text form (not an encryption); rejects anything else.';

-- PostgreSQL would otherwise allow explicit I/O-conversion casts between any type and
-- the string types. These casts take precedence and refuse with a clear message.
CREATE FUNCTION dscsa._refuse_cast_from_text(text) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'cannot cast text to dscsa.encrypted'
        USING ERRCODE = 'cannot_coerce',
              HINT = 'Encrypt with dscsa_encrypt(); parse the dscsa:... text form with dscsa.dearmor().';
END
$$;
CREATE FUNCTION dscsa._refuse_cast_to_text(dscsa.encrypted) RETURNS text
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'cannot cast dscsa.encrypted to text'
        USING ERRCODE = 'cannot_coerce',
              HINT = 'Decrypt with dscsa_decrypt(); get the dscsa:... text form with dscsa.armor().';
END
$$;
CREATE FUNCTION dscsa._refuse_cast_from_varchar(varchar) RETURNS dscsa.encrypted
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql SET search_path = pg_catalog, pg_temp RETURN dscsa._refuse_cast_from_text($1::text);
CREATE FUNCTION dscsa._refuse_cast_to_varchar(dscsa.encrypted) RETURNS varchar
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql SET search_path = pg_catalog, pg_temp RETURN dscsa._refuse_cast_to_text($1);
CREATE CAST (text AS dscsa.encrypted) WITH FUNCTION dscsa._refuse_cast_from_text(text);
CREATE CAST (dscsa.encrypted AS text) WITH FUNCTION dscsa._refuse_cast_to_text(dscsa.encrypted);
CREATE CAST (varchar AS dscsa.encrypted) WITH FUNCTION dscsa._refuse_cast_from_varchar(varchar);
CREATE CAST (dscsa.encrypted AS varchar) WITH FUNCTION dscsa._refuse_cast_to_varchar(dscsa.encrypted);
