//! `#[pg_test]` tests: internals that need a backend (SPI, the key cache, type I/O,
//! error codes). Client-side behaviour (roles, COPY, dump/restore, logs, parallel plans)
//! is tested from a real client in tests/integration/.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup_key(name: &str) {
        Spi::run(&format!("SELECT dscsa.create_key('{name}')")).expect("create_key");
        Spi::run(&format!("SELECT dscsa.load_key('{name}')")).expect("load_key");
        Spi::run(&format!("SET dscsa.key_name = '{name}'")).expect("set key_name");
    }

    fn one_text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).expect("query")
    }

    #[pg_test]
    fn round_trip_generic_and_context() {
        setup_key("t_round_trip");
        for pt in ["", "SN0000000000000001", "Grüße ✓ 漢字"] {
            let q = format!(
                "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt({lit}))",
                lit = pgrx::spi::quote_literal(pt)
            );
            assert_eq!(one_text(&q).as_deref(), Some(pt));
            let q = format!(
                "SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt({lit}, 'a.b.c'), 'a.b.c')",
                lit = pgrx::spi::quote_literal(pt)
            );
            assert_eq!(one_text(&q).as_deref(), Some(pt));
        }
        assert_eq!(
            one_text("SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt(NULL::text))"),
            None
        );
    }

    #[pg_test]
    fn every_encryption_uses_a_new_nonce() {
        setup_key("t_nonce");
        let distinct = Spi::get_one::<i64>(
            "SELECT count(DISTINCT dscsa.envelope_nonce(dscsa.dscsa_encrypt('same'))) FROM generate_series(1, 20000)",
        )
        .expect("query");
        assert_eq!(distinct, Some(20000));
    }

    #[pg_test]
    fn header_names_kind_and_key() {
        setup_key("t_header");
        let id =
            Spi::get_one::<i32>("SELECT key_id FROM dscsa.keyring WHERE key_name = 't_header'")
                .expect("query")
                .expect("row");
        let got = Spi::get_two::<String, i64>(
            "SELECT dscsa.envelope_kind(v), dscsa.envelope_key_id(v) FROM (SELECT dscsa.dscsa_encrypt_serial('SN1')::dscsa.encrypted AS v) s",
        )
        .expect("query");
        assert_eq!(got, (Some("serial".to_string()), Some(i64::from(id))));
    }

    #[pg_test(error = "ciphertext authentication failed")]
    fn wrong_context_fails() {
        setup_key("t_ctx");
        Spi::run("SELECT dscsa.dscsa_decrypt(dscsa.dscsa_encrypt('x', 'erp.lot'), 'erp.serial')")
            .expect("raises");
    }

    #[pg_test(error = "malformed pg_dscsa envelope: text does not start with \"dscsa:\"")]
    fn plaintext_is_not_an_encrypted_value() {
        Spi::run("SELECT 'SN123'::dscsa.encrypted").expect("raises");
    }

    #[pg_test(
        error = "value for domain dscsa.lot_encrypted violates check constraint \"lot_envelope\""
    )]
    fn serial_cannot_be_stored_as_lot() {
        setup_key("t_domain");
        Spi::run("SELECT dscsa.dscsa_encrypt_serial('SN1')::dscsa.encrypted::dscsa.lot_encrypted")
            .expect("raises");
    }

    #[pg_test(error = "pg_dscsa value is a serial ciphertext, not a lot ciphertext")]
    fn serial_cannot_be_decrypted_as_lot() {
        setup_key("t_domain2");
        // The lot domain's CHECK already stops a serial value from becoming a lot value, so
        // call the lot decryptor's C symbol directly to prove its own kind check holds too.
        Spi::run(
            "CREATE FUNCTION tests.decrypt_as_lot(dscsa.encrypted) RETURNS text STRICT
               LANGUAGE c AS '$libdir/pg_dscsa', 'dscsa_decrypt_lot'",
        )
        .expect("create");
        Spi::run("SELECT tests.decrypt_as_lot(dscsa.dscsa_encrypt_serial('SN1'))").expect("raises");
    }

    #[pg_test]
    fn try_decrypt_returns_null_on_tamper() {
        setup_key("t_try");
        let v = one_text(
            "SELECT dscsa.dscsa_try_decrypt(set_byte(b, 20, get_byte(b, 20) # 1))
               FROM (SELECT dscsa.envelope_bytes(dscsa.dscsa_encrypt('SN1')) AS b) s",
        );
        assert_eq!(v, None);
    }

    #[pg_test(error = "no active version of key \"nobody\" is loaded in this session")]
    fn encrypt_without_loaded_key() {
        Spi::run("SET dscsa.key_name = 'nobody'").expect("set");
        Spi::run("SELECT dscsa.dscsa_encrypt('x')").expect("raises");
    }

    #[pg_test(error = "no active version of key \"t_unload\" is loaded in this session")]
    fn unload_forgets_the_key() {
        setup_key("t_unload");
        let ct = one_text("SELECT dscsa.armor(dscsa.dscsa_encrypt('x'))").expect("ciphertext");
        assert!(ct.starts_with("dscsa:"));
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM dscsa.loaded_keys() WHERE key_name = 't_unload'"
            )
            .expect("q"),
            Some(1)
        );
        assert_eq!(
            Spi::get_one::<i32>("SELECT dscsa.unload_key('t_unload')").expect("q"),
            Some(1)
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM dscsa.loaded_keys()").expect("q"),
            Some(0)
        );
        Spi::run("SELECT dscsa.dscsa_encrypt('y')").expect("raises");
    }

    #[pg_test]
    fn rotation_keeps_old_versions_decryptable() {
        setup_key("t_rotate");
        let old = one_text("SELECT dscsa.armor(dscsa.dscsa_encrypt('before'))").expect("ct");
        Spi::run("SELECT dscsa.rotate_key('t_rotate')").expect("rotate");
        assert_eq!(
            Spi::get_one::<i32>("SELECT dscsa.load_key('t_rotate')").expect("q"),
            Some(2)
        );
        let new_id =
            Spi::get_one::<i64>("SELECT dscsa.envelope_key_id(dscsa.dscsa_encrypt('after'))")
                .expect("q");
        let active = Spi::get_one::<i32>(
            "SELECT key_id FROM dscsa.keyring WHERE key_name = 't_rotate' AND status = 'active'",
        )
        .expect("q");
        assert_eq!(new_id, active.map(i64::from));
        assert_eq!(
            one_text(&format!(
                "SELECT dscsa.dscsa_decrypt(dscsa.dearmor('{old}'))"
            ))
            .as_deref(),
            Some("before")
        );
    }

    /// The ASCII fast path of the text-argument reader (src/fmgr.rs) answers exactly what
    /// the full validator answers: valid ASCII, valid multi-byte UTF-8, invalid bytes
    /// after an ASCII prefix, truncated sequences, overlong forms, surrogates.
    #[pg_test]
    fn utf8_fast_path_agrees_with_the_validator() {
        let cases: [&[u8]; 10] = [
            b"",
            b"SN0000000000000001",
            "Grüße ✓ 漢字".as_bytes(),
            b"ascii then \xff",
            b"\xc3",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"a\x00b",
            b"\x7f",
            b"0123456789abcdef0123456789abcdef\x80",
        ];
        for bytes in cases {
            assert_eq!(
                crate::fmgr::utf8(bytes).ok(),
                std::str::from_utf8(bytes).ok(),
                "{bytes:?}"
            );
        }
        // Decryption's encoding check (its UTF-8 branch uses the fast path) still refuses
        // what PostgreSQL would refuse.
        // SAFETY: reads a backend global.
        if unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32 {
            assert!(!crate::crypto::valid_in_database_encoding(b"a\x00b"));
            assert!(!crate::crypto::valid_in_database_encoding(b"ok \xff"));
            assert!(crate::crypto::valid_in_database_encoding(
                "Grüße".as_bytes()
            ));
            assert!(crate::crypto::valid_in_database_encoding(b"SN01"));
        }
    }
}
