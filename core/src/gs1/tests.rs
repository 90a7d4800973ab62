//! Vectors written from the GS1 rules and worked examples (GTIN check digits, CSET 82,
//! YYMMDD with day 00, TDT escapes, Digital Link path order), valid and invalid.

use super::*;

const YEAR: i32 = 2026;

fn parse(s: &str) -> Result<ProductIdentifier> {
    parse_identifier_at(s, YEAR)
}

fn unit(gtin: &str, serial: &str, lot: Option<&str>, expiry: Option<&str>) -> ProductIdentifier {
    ProductIdentifier {
        gtin14: gtin.into(),
        serial: Some(serial.into()),
        lot: lot.map(Into::into),
        expiry: expiry.map(Into::into),
    }
}

#[test]
fn gtin_check_digits() {
    for ok in [
        "00300010123455",
        "10614141073464",
        "09520123456788",
        "12345678901231",
    ] {
        assert_eq!(gtin14(ok).as_deref(), Ok(ok));
    }
    for bad in ["00300010123454", "12345678901232"] {
        assert_eq!(gtin14(bad), Err(Gs1Error::GtinCheckDigit));
    }
    // GTIN-12 and GTIN-13 spellings pad to GTIN-14; GTIN-8 too.
    assert_eq!(gtin14("300010123455").as_deref(), Ok("00300010123455"));
    assert_eq!(gtin14("9520123456788").as_deref(), Ok("09520123456788"));
    assert_eq!(gtin14("96385074").as_deref(), Ok("00000096385074"));
    for bad in [
        "abc",
        "",
        "00300010123",
        "003000101234555",
        "0030001012345x",
    ] {
        assert_eq!(gtin14(bad), Err(Gs1Error::GtinLength), "{bad}");
    }
}

#[test]
fn character_set_82_and_lengths() {
    assert_eq!(cset82("SN-0001/A", Field::Serial), Ok(()));
    assert_eq!(cset82("!\"%&'()*+,-./:;<=>?_", Field::Lot), Ok(()));
    assert_eq!(cset82("12345678901234567890", Field::Serial), Ok(()));
    assert_eq!(
        cset82("123456789012345678901", Field::Serial),
        Err(Gs1Error::Length(Field::Serial))
    );
    assert_eq!(cset82("", Field::Lot), Err(Gs1Error::Length(Field::Lot)));
    for bad in [
        "A B", "A#", "$", "@", "[", "\\", "]", "^", "`", "{", "|", "}", "~", "\t", "é",
    ] {
        assert_eq!(
            cset82(bad, Field::Serial),
            Err(Gs1Error::Charset(Field::Serial)),
            "{bad:?}"
        );
    }
}

#[test]
fn expiry_dates() {
    for ok in ["200229", "240229", "200600", "160200", "261231", "000229"] {
        assert_eq!(expiry(ok, YEAR), Ok(()), "{ok}");
    }
    assert_eq!(expiry("200230", YEAR), Err(Gs1Error::ExpiryDay));
    assert_eq!(expiry("210229", YEAR), Err(Gs1Error::ExpiryDay));
    assert_eq!(expiry("260431", YEAR), Err(Gs1Error::ExpiryDay));
    assert_eq!(expiry("201310", YEAR), Err(Gs1Error::ExpiryMonth));
    assert_eq!(expiry("200010", YEAR), Err(Gs1Error::ExpiryMonth));
    for bad in ["20022", "2002291", "2O0229", "", "20-02-29"] {
        assert_eq!(expiry(bad, YEAR), Err(Gs1Error::ExpiryFormat), "{bad}");
    }
    // The century window: -49..+50 years around now.
    assert_eq!(rules::full_year(76, 2026), 2076);
    assert_eq!(rules::full_year(77, 2026), 1977);
    assert_eq!(rules::full_year(0, 2026), 2000);
    assert_eq!(rules::full_year(20, 2080), 2120);
    // 2100 is not a leap year: 000229 read in 2080 is 2100-02-29, which does not exist.
    assert_eq!(expiry("000229", 2080), Err(Gs1Error::ExpiryDay));
    assert!((2024..2200).contains(&rules::current_year()));
    // The year of a time (what the database layer passes: its statement's start), at
    // the epoch and on both sides of a new year's midnight, leap years included.
    const DAY_US: i64 = 86_400_000_000;
    assert_eq!(rules::year_at(0), 1970);
    assert_eq!(rules::year_at(-1), 1969);
    let y2027 = 20_819 * DAY_US; // 2027-01-01T00:00:00Z
    assert_eq!(rules::year_at(y2027 - 1), 2026);
    assert_eq!(rules::year_at(y2027), 2027);
    let y2029 = y2027 + (365 + 366) * DAY_US; // 2028 is a leap year
    assert_eq!(rules::year_at(y2029 - 1), 2028);
    assert_eq!(rules::year_at(y2029), 2029);
    assert_eq!(rules::year_at(y2029 + 365 * DAY_US - 1), 2029);
    assert_eq!(rules::year_at(y2029 + 365 * DAY_US), 2030);
}

#[test]
fn every_spelling_of_one_unit_gives_the_same_identifier() {
    let expected = unit("00300010123455", "SN123", Some("A123"), Some("260331"));
    for spelling in [
        "(01)00300010123455(21)SN123(10)A123(17)260331",
        "(01)00300010123455(17)260331(10)A123(21)SN123",
        "]d20100300010123455172603311 0A123\u{1d}21SN123"
            .replace("1 0", "10")
            .as_str(),
        "]d2010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "]Q3010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "\u{1d}010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "https://id.gs1.org/01/00300010123455/10/A123/21/SN123?17=260331",
        "https://example.com/01/00300010123455/10/A123/21/SN123?17=260331&linkType=gs1:pip",
        "http://resolver.example.org/some/prefix/01/00300010123455/10/A123/21/SN123?17=260331",
        "HTTPS://id.gs1.org/01/00300010123455/10/A123/21/SN123/?17=260331#frag",
        "https://id.gs1.org/01/300010123455/10/A123/21/SN123?17=260331",
    ] {
        assert_eq!(parse(spelling), Ok(expected.clone()), "{spelling:?}");
    }
}

#[test]
fn epc_urns() {
    assert_eq!(
        parse("urn:epc:id:sgtin:0614141.107346.2017"),
        Ok(unit("10614141073464", "2017", None, None))
    );
    assert_eq!(
        parse("urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()"),
        Ok(unit("80614141123458", "6789/&%\"!?()", None, None))
    );
    // Lower-case hex is accepted as some translators do.
    assert_eq!(
        parse("urn:epc:id:sgtin:0614141.812345.6789%2f%26"),
        Ok(unit("80614141123458", "6789/&", None, None))
    );
    // The same unit as element string and Digital Link.
    assert_eq!(
        parse("(01)80614141123458(21)6789/&%\"!?\\()"),
        parse("urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()")
    );
    assert_eq!(
        parse("https://id.gs1.org/01/80614141123458/21/6789%2F%26%25%22!%3F()"),
        parse("urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()")
    );
    let lot = parse("urn:epc:class:lgtin:0614141.107346.LOT-7").expect("lgtin");
    assert_eq!(lot.gtin14, "10614141073464");
    assert_eq!(lot.lot.as_deref(), Some("LOT-7"));
    assert_eq!(lot.serial, None);
}

#[test]
fn stray_path_segments_before_the_primary_key_are_not_data() {
    assert_eq!(
        parse("https://example.com/21/zzz/01/00300010123455/21/SN1"),
        Ok(unit("00300010123455", "SN1", None, None))
    );
    assert_eq!(
        parse("https://example.com/01/09520123456788/21/ABC%2F1%20"),
        Err(Gs1Error::Charset(Field::Serial)),
        "a space decoded from %20 is outside CSET 82"
    );
    assert_eq!(
        parse("https://example.com/01/09520123456788/21/ABC%2F1"),
        Ok(unit("09520123456788", "ABC/1", None, None))
    );
}

#[test]
fn invalid_inputs_name_their_rule() {
    let cases: &[(&str, Gs1Error)] = &[
        ("(01)00300010123454(21)SN1", Gs1Error::GtinCheckDigit),
        (
            "https://id.gs1.org/01/00300010123455/21/SN1/10/L1",
            Gs1Error::DigitalLink("key qualifiers out of order (22, 10, 21)"),
        ),
        (
            "https://id.gs1.org/01/00300010123455/10/L1?21=SN1",
            Gs1Error::DigitalLink("AI 21 is not allowed in the query"),
        ),
        (
            "https://id.gs1.org/01/00300010123455/21/SN1?10=L1",
            Gs1Error::DigitalLink("AI 10 belongs in the path after 01"),
        ),
        (
            "https://id.gs1.org/01/00300010123455/17/260331",
            Gs1Error::DigitalLink(
                "path holds an AI that is not a key qualifier of GTIN (22, 10, 21)",
            ),
        ),
        ("(01)00300010123455(99)X", Gs1Error::UnknownAi),
        ("010030001012345599X", Gs1Error::UnknownAi),
        (
            "https://id.gs1.org/01/00300010123455?99=1",
            Gs1Error::UnknownAi,
        ),
        (
            "(01)00300010123455(21)123456789012345678901",
            Gs1Error::Length(Field::Serial),
        ),
        (
            "(01)00300010123455(21)SN 1",
            Gs1Error::Charset(Field::Serial),
        ),
        ("(01)00300010123455(10)L#1", Gs1Error::Charset(Field::Lot)),
        ("(01)00300010123455(17)261301", Gs1Error::ExpiryMonth),
        ("(01)00300010123455(17)260230", Gs1Error::ExpiryDay),
        ("(01)00300010123455(21)A(21)B", Gs1Error::DuplicateAi("21")),
        ("(01)0030001012345(21)A", Gs1Error::AiLength("01")),
        ("(21)SN1(10)L1", Gs1Error::NoGtin),
        ("https://id.gs1.org/21/SN1", Gs1Error::NoGtin),
        ("]d201003000101234", Gs1Error::AiLength("01")),
        (
            "]X10100300010123455",
            Gs1Error::ElementString("symbology identifier is not a GS1 one"),
        ),
        (
            "urn:epc:id:sscc:0614141.1234567890",
            Gs1Error::Epc("an SSCC identifies a logistic unit, not a product"),
        ),
        (
            "urn:epc:id:sgtin:0614141.10734.2017",
            Gs1Error::Epc("company prefix and item reference must be 13 digits together"),
        ),
        (
            "urn:epc:id:sgtin:0614141.107346.20%4117",
            Gs1Error::Epc("percent-escape of a character TDT does not escape"),
        ),
        (
            "urn:epc:id:sgtin:0614141.107346.20/17",
            Gs1Error::Epc("a character that must be percent-escaped"),
        ),
        ("hello world", Gs1Error::Unrecognised),
        ("", Gs1Error::Unrecognised),
    ];
    for (input, expected) in cases {
        let got = parse(input);
        assert_eq!(got.as_ref(), Err(expected), "{input:?}");
        // The message names the rule, never the value.
        let message = got.unwrap_err().to_string();
        for secret in [
            "SN1",
            "SN 1",
            "L#1",
            "2017",
            "00300010123454",
            "260230",
            "261301",
        ] {
            if input.contains(secret) {
                assert!(!message.contains(secret), "{message} echoes {secret}");
            }
        }
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SEEDS: &[&str] = &[
        "(01)00300010123455(21)SN123(10)A123(17)260331",
        "]d2010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "https://id.gs1.org/01/00300010123455/10/A123/21/SN123?17=260331",
        "urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()",
        "urn:epc:class:lgtin:0614141.107346.LOT-7",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Any text: a result or a clean error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = parse_identifier_at(&s, YEAR);
        }

        /// Valid spellings with bytes replaced, inserted or removed.
        #[test]
        fn mutated_spellings_never_panic(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((any::<u16>(), 0u8..3, any::<char>()), 1..6),
        ) {
            let mut chars: Vec<char> = SEEDS[seed].chars().collect();
            for (at, op, c) in edits {
                let i = usize::from(at) % (chars.len() + 1);
                match op {
                    0 if i < chars.len() => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ if i < chars.len() => { chars.remove(i); }
                    _ => {}
                }
            }
            let text: String = chars.into_iter().collect();
            if let Ok(id) = parse_identifier_at(&text, YEAR) {
                // Whatever parses is valid by every field rule.
                let again = gtin14(&id.gtin14);
                prop_assert_eq!(again.as_ref(), Ok(&id.gtin14));
                if let Some(s) = &id.serial { prop_assert_eq!(cset82(s, Field::Serial), Ok(())); }
                if let Some(l) = &id.lot { prop_assert_eq!(cset82(l, Field::Lot), Ok(())); }
                if let Some(e) = &id.expiry { prop_assert_eq!(expiry(e, YEAR), Ok(())); }
            }
        }
    }
}

#[test]
fn fields_are_checked_and_canonical_where_they_enter() {
    use crate::envelope::FieldKind::*;
    let ok = |k, v: &str| canonical_field(k, v, 2026).map(|c| c.into_owned());
    assert_eq!(ok(Gtin, "300010123455"), Ok("00300010123455".into()));
    assert_eq!(ok(Gtin, "12345670"), Ok("00000012345670".into()));
    assert_eq!(ok(Gtin, "abc"), Err(Gs1Error::GtinLength));
    assert_eq!(ok(Gtin, " 00300010123455"), Err(Gs1Error::GtinLength));
    assert_eq!(ok(Gtin, "00300010123454"), Err(Gs1Error::GtinCheckDigit));
    assert_eq!(ok(Serial, "SN(1)/x"), Ok("SN(1)/x".into()));
    assert_eq!(ok(Serial, ""), Err(Gs1Error::Length(Field::Serial)));
    assert_eq!(
        ok(Serial, "123456789012345678901"),
        Err(Gs1Error::Length(Field::Serial))
    );
    assert_eq!(ok(Lot, "L 1"), Err(Gs1Error::Charset(Field::Lot)));
    assert_eq!(ok(Lot, "LÖT"), Err(Gs1Error::Charset(Field::Lot)));
    assert_eq!(ok(Expiry, "260331"), Ok("260331".into()));
    assert_eq!(ok(Expiry, "260200"), Ok("260200".into()), "day 00");
    assert_eq!(ok(Expiry, "261301"), Err(Gs1Error::ExpiryMonth));
    assert_eq!(ok(Expiry, "270229"), Err(Gs1Error::ExpiryDay));
    assert_eq!(
        ok(Expiry, "280229"),
        Ok("280229".into()),
        "2028 is a leap year"
    );
    assert_eq!(
        ok(Expiry, "2026-03-31"),
        Ok("2026-03-31".into()),
        "a date column"
    );
    assert_eq!(ok(Expiry, "2026-04-31"), Err(Gs1Error::ExpiryDay));
    assert_eq!(ok(Expiry, "2026-04-00"), Err(Gs1Error::ExpiryDay));
    assert_eq!(ok(Expiry, "2026-13-01"), Err(Gs1Error::ExpiryMonth));
    assert_eq!(ok(Expiry, "26-03-31"), Err(Gs1Error::ExpiryFormat));
    assert_eq!(ok(Generic, "anything at all"), Ok("anything at all".into()));
}
