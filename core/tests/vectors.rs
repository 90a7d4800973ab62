//! The docs/FORMAT.md test vectors (computed independently by docs/vectors.py with
//! pyca/cryptography), property tests, and the 10-million-nonce uniqueness test.

use dscsa_core::armor;
use dscsa_core::cipher::{open, seal, seal_into, DataKey};
use dscsa_core::envelope::{envelope_len, Envelope, FieldKind, NONCE_LEN};
use dscsa_core::nonce::NonceSource;
use dscsa_core::Error;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

struct Vector {
    key: &'static str,
    key_id: u32,
    kind: FieldKind,
    nonce: &'static str,
    context: &'static str,
    plaintext: &'static str,
    envelope: &'static str,
    armor: &'static str,
}

const VECTORS: &[Vector] = &[
    Vector {
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        key_id: 1,
        kind: FieldKind::Generic,
        nonce: "000000000000000000000000",
        context: "",
        plaintext: "",
        envelope: "01000000000100000000000000000000000073d635cc4294e4f9dbf83e531f1d5113",
        armor: "dscsa:AQAAAAABAAAAAAAAAAAAAAAAc9Y1zEKU5Pnb-D5THx1REw",
    },
    Vector {
        key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        key_id: 42,
        kind: FieldKind::Serial,
        nonce: "a0a1a2a3a4a5a6a7a8a9aaab",
        context: "erp.stock_lot.serial",
        plaintext: "SN0000000000000001",
        envelope: "01020000002aa0a1a2a3a4a5a6a7a8a9aaabb5564c1d75fb328f5255b7e3374af0ee409d123b44f59cc2f299e0a595d3b3012a5f",
        armor: "dscsa:AQIAAAAqoKGio6SlpqeoqaqrtVZMHXX7Mo9SVbfjN0rw7kCdEjtE9ZzC8pngpZXTswEqXw",
    },
    Vector {
        key: "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        key_id: 0x0102_0304,
        kind: FieldKind::Gtin,
        nonce: "0102030405060708090a0b0c",
        context: "",
        plaintext: "00300010123455",
        envelope: "0101010203040102030405060708090a0b0c5e67193e81f078e3e130796176180fe70a6fad51ac615ee7886fe9747918",
        armor: "dscsa:AQEBAgMEAQIDBAUGBwgJCgsMXmcZPoHweOPhMHlhdhgP5wpvrVGsYV7niG_pdHkY",
    },
    Vector {
        key: "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        key_id: 7,
        kind: FieldKind::Lot,
        nonce: "ffffffffffffffffffffffff",
        context: "epcis.ilmd.lot",
        plaintext: "LÖT-α✓",
        envelope: "010300000007ffffffffffffffffffffffff94179fced8d48f8ee3f9395625f1fe1d536133f3b5b0b1aade3a",
        armor: "dscsa:AQMAAAAH________________lBefztjUj47j-TlWJfH-HVNhM_O1sLGq3jo",
    },
];

#[test]
fn format_md_vectors_seal_and_open() {
    for v in VECTORS {
        let key = DataKey::from_bytes(&hex(v.key)).expect("key");
        let nonce: [u8; NONCE_LEN] = hex(v.nonce).try_into().expect("nonce");
        let sealed = seal(
            &key,
            v.key_id,
            v.kind,
            v.context.as_bytes(),
            nonce,
            v.plaintext.as_bytes(),
        )
        .expect("seal");
        assert_eq!(
            sealed,
            hex(v.envelope),
            "envelope bytes of {:?}",
            v.plaintext
        );
        assert_eq!(armor::encode(&sealed), v.armor);
        assert_eq!(armor::decode(v.armor).expect("armor"), sealed);
        let env = Envelope::parse(&sealed).expect("parse");
        assert_eq!((env.key_id, env.kind), (v.key_id, v.kind));
        let opened = open(&key, &env, v.context.as_bytes()).expect("open");
        assert_eq!(&opened[..], v.plaintext.as_bytes());
    }
}

#[test]
fn ten_million_nonces_never_repeat() {
    let key = DataKey::from_bytes(&[9u8; 32]).expect("key");
    let mut source = NonceSource::new();
    let plaintext = b"SN000000000000000001";
    let mut out = vec![0u8; envelope_len(plaintext.len())];
    let mut nonces: Vec<[u8; NONCE_LEN]> = Vec::with_capacity(10_000_000);
    for _ in 0..10_000_000u32 {
        let nonce = source.next_nonce(1).expect("nonce");
        seal_into(&key, 1, FieldKind::Serial, b"", nonce, plaintext, &mut out).expect("seal");
        let env = Envelope::parse(&out).expect("parse");
        nonces.push(*env.nonce);
    }
    nonces.sort_unstable();
    let repeats = nonces.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(repeats, 0, "repeated nonces among 10,000,000 encryptions");
}

fn kind_strategy() -> impl Strategy<Value = FieldKind> {
    prop::sample::select(FieldKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_round_trips(
        pt in ".{0,200}",
        ctx in "[a-z._]{0,64}",
        key in prop::array::uniform32(any::<u8>()),
        key_id in any::<u32>(),
        kind in kind_strategy(),
        nonce in prop::array::uniform12(any::<u8>()),
    ) {
        let key = DataKey::from_bytes(&key).expect("key");
        let sealed = seal(&key, key_id, kind, ctx.as_bytes(), nonce, pt.as_bytes()).expect("seal");
        prop_assert_eq!(sealed.len(), envelope_len(pt.len()));
        let text = armor::encode(&sealed);
        let bytes = armor::decode(&text).expect("armor");
        let env = Envelope::parse(&bytes).expect("parse");
        prop_assert_eq!(&open(&key, &env, ctx.as_bytes()).expect("open")[..], pt.as_bytes());
    }

    #[test]
    fn any_tampering_is_detected(
        pt in "[ -~]{0,40}",
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let key = DataKey::from_bytes(&[1u8; 32]).expect("key");
        let mut sealed = seal(&key, 3, FieldKind::Serial, b"c", [2; NONCE_LEN], pt.as_bytes()).expect("seal");
        let i = pos.index(sealed.len());
        sealed[i] ^= flip;
        match Envelope::parse(&sealed) {
            Ok(env) => prop_assert_eq!(open(&key, &env, b"c").err(), Some(Error::AuthenticationFailed)),
            Err(_) => prop_assert!(i < 2),
        }
    }

    #[test]
    fn armor_decode_never_panics(s in ".{0,120}") {
        let _ = armor::decode(&s);
        let with_prefix = format!("dscsa:{s}");
        let _ = armor::decode(&with_prefix);
    }

    #[test]
    fn envelope_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = Envelope::parse(&bytes);
    }
}

/// docs/BLIND_INDEX.md test vectors, computed independently by docs/vectors.py with
/// Python's hmac module. The value is given un-normalized, so normalization is covered.
#[test]
fn blind_index_md_vectors() {
    use dscsa_core::blind::BlindIndexKey;
    let cases: [(&str, u32, FieldKind, &str, usize, &str); 4] = [
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            7,
            FieldKind::Serial,
            "SN0000000001",
            16,
            "00000007d27054844d64c1477304798443be1e54",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            1,
            FieldKind::Gtin,
            "300010123455",
            16,
            "00000001cc08d3016ff56f7a20bb17c78380ff67",
        ),
        (
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            0x0102,
            FieldKind::Expiry,
            "2027-03-31",
            8,
            "000001026ff90014898133d6",
        ),
        (
            "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
            9,
            FieldKind::Lot,
            " A1B2C3 ",
            32,
            "000000098004652e906325dc763d8bb88ef728580c2fbfcaf614a9770c50ce9f95cfc101",
        ),
    ];
    for (key, key_id, kind, value, length, expected) in cases {
        let k = BlindIndexKey::from_bytes(&hex(key), length).expect("key");
        assert_eq!(k.compute(key_id, kind, value), hex(expected), "{value:?}");
    }
}

/// docs/BLIND_INDEX.md product-identifier vectors (docs/vectors.py): the pair is taken
/// from the spelling, so the parser's canonical form is covered too.
#[test]
fn identifier_index_vectors() {
    use dscsa_core::blind::{identifier_pair, identifier_pair_of, BlindIndexKey};
    let cases: [(&str, u32, &str, &str); 2] = [
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            3,
            "(01)00300010123455(21)SN1",
            "000000035ff27f20d68a99f913bdf20914023c08",
        ),
        (
            "4242424242424242424242424242424242424242424242424242424242424242",
            5,
            "urn:epc:id:sgtin:0614141.812345.6789%2F%26",
            "000000052dad7bc2733b0a16825af4945572eba9",
        ),
    ];
    for (key, key_id, spelling, expected) in cases {
        let k = BlindIndexKey::from_bytes(&hex(key), 16).expect("key");
        let pair = identifier_pair_of(spelling).expect("parses");
        assert_eq!(
            k.compute_identifier(key_id, &pair),
            hex(expected),
            "{spelling}"
        );
    }
    // The same unit from separate fields, GTIN-12 and Digital Link spellings.
    let k = BlindIndexKey::from_bytes(&hex(cases[0].0), 16).expect("key");
    let expected = hex(cases[0].3);
    for pair in [
        identifier_pair("300010123455", "SN1").expect("fields"),
        identifier_pair_of("https://example.org/01/00300010123455/21/SN1").expect("dl"),
        identifier_pair_of("]d2010030001012345521SN1").expect("scanner"),
    ] {
        assert_eq!(k.compute_identifier(3, &pair), expected);
    }
}
