//! Mutation fuzzing of everything that parses untrusted input (issue 10): the GS1
//! identifier parser and field rules, the armored text form (`dscsa.encrypted`'s type
//! input), and the binary envelope (its receive function and bytea casts).
//!
//! Each target runs `DSCSA_FUZZ_CASES` cases (default 1,000,000) from a fixed seed
//! (`DSCSA_FUZZ_SEED` to explore others), mixing well-formed seeds, mutations of them
//! (bit flips, inserted/deleted/duplicated ranges, splices, truncations, bytes that matter
//! to the grammar) and random noise. Properties: no panic; a rejection is an error value;
//! an acceptance satisfies the format's invariants and round-trips through its canonical
//! spelling. A failure prints the seed and case number to replay it.

use dscsa_core::envelope::{encode_header, Envelope, FieldKind, NONCE_LEN, TAG_LEN};
use dscsa_core::gs1::{self, canonical_field, check_digit_ok, ProductIdentifier};
use dscsa_core::{armor, Error};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cases() -> u64 {
    std::env::var("DSCSA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn seed() -> u64 {
    std::env::var("DSCSA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_d5c5a)
}

struct Mutator {
    rng: ChaCha8Rng,
    /// Bytes that mean something to the grammars under test.
    interesting: &'static [u8],
}

impl Mutator {
    fn new(target: u64, interesting: &'static [u8]) -> Self {
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed() ^ target),
            interesting,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.rng.next_u64() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        if self.below(2) == 0 && !self.interesting.is_empty() {
            self.interesting[self.below(self.interesting.len())]
        } else {
            (self.rng.next_u32() & 0xff) as u8
        }
    }

    /// One input: a seed mutated 0-4 times, a splice of two seeds, or noise.
    fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        match self.below(10) {
            0 => (0..self.below(64)).map(|_| self.byte()).collect(),
            1 => {
                let a = &seeds[self.below(seeds.len())];
                let b = &seeds[self.below(seeds.len())];
                let (i, j) = (self.below(a.len() + 1), self.below(b.len() + 1));
                [&a[..i], &b[j..]].concat()
            }
            _ => {
                let mut v = seeds[self.below(seeds.len())].clone();
                for _ in 0..self.below(5) {
                    self.mutate(&mut v);
                }
                v
            }
        }
    }

    fn mutate(&mut self, v: &mut Vec<u8>) {
        let len = v.len();
        match self.below(7) {
            0 if len > 0 => {
                let i = self.below(len);
                v[i] ^= 1 << self.below(8);
            }
            1 => {
                let i = self.below(len + 1);
                let b = self.byte();
                v.insert(i, b);
            }
            2 if len > 0 => {
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(8));
                v.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = self.below(len);
                let n = 1 + self.below((len - i).min(8));
                let copy = v[i..i + n].to_vec();
                let at = self.below(len + 1);
                v.splice(at..at, copy);
            }
            4 => {
                let keep = self.below(len + 1);
                v.truncate(keep);
            }
            5 if len > 0 => {
                let i = self.below(len);
                v[i] = self.byte();
            }
            _ => {
                let b = self.byte();
                v.push(b);
            }
        }
    }
}

/// Runs `check` (true: the input was accepted) on `cases()` inputs; a panic names the
/// case to replay. Both outcomes must be common, or the target is not being explored.
fn run(target: u64, interesting: &'static [u8], seeds: &[Vec<u8>], check: impl Fn(&[u8]) -> bool) {
    let mut m = Mutator::new(target, interesting);
    let mut accepted = 0u64;
    let total = cases();
    for case in 0..total {
        let input = m.input(seeds);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!(
                "target {target} failed at case {case} (DSCSA_FUZZ_SEED={}): input {:?}",
                seed(),
                String::from_utf8_lossy(&input)
            ),
        }
    }
    eprintln!("target {target}: {total} cases, {accepted} accepted");
    if total >= 10_000 {
        assert!(
            accepted > total / 100,
            "target {target}: almost nothing accepted"
        );
        assert!(
            accepted < total - total / 100,
            "target {target}: almost nothing rejected"
        );
    }
}

fn ascii_seeds(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// The bracketed element string of a parsed unit (a literal '(' in data as "\(").
fn bracketed(pi: &ProductIdentifier) -> String {
    let mut s = format!("(01){}", pi.gtin14);
    for (ai, v) in [("17", &pi.expiry), ("10", &pi.lot), ("21", &pi.serial)] {
        if let Some(v) = v {
            s.push_str(&format!("({ai}){}", v.replace('(', "\\(")));
        }
    }
    s
}

fn assert_canonical(pi: &ProductIdentifier) {
    assert_eq!(pi.gtin14.len(), 14);
    assert!(
        check_digit_ok(&pi.gtin14),
        "accepted GTIN has a bad check digit"
    );
    for (kind, v) in [
        (FieldKind::Serial, &pi.serial),
        (FieldKind::Lot, &pi.lot),
        (FieldKind::Expiry, &pi.expiry),
    ] {
        if let Some(v) = v {
            assert!(
                canonical_field(kind, v, 2026).is_ok(),
                "accepted field breaks its rule"
            );
        }
    }
}

#[test]
fn fuzz_gs1_parser() {
    let seeds = ascii_seeds(&[
        "(01)00300010123455(21)SN123(10)A123(17)260331",
        "(01)80614141123458(21)6789/&%\"!?\\()",
        "]d2010030001012345521SN123\u{1d}10A123\u{1d}17260331",
        "]Q30100300010123455172603311010A1\u{1d}21S(2)",
        "\u{1d}0100300010123455211234567890",
        "https://id.gs1.org/01/00300010123455/10/L1/21/SN1?17=270229",
        "https://example.com/shop/01/09520123456788/21/ABC%2F1?x=1&17=261300",
        "HTTP://EXAMPLE.COM/01/00300010123455/21/%41%42",
        "urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()",
        "urn:epc:class:lgtin:0614141.107346.LOT-7",
        "urn:epc:id:sscc:0614141.1234567890",
        "(01)12345670(21)X",
        "01123456789012",
    ]);
    run(
        1,
        b"0123456789()/%?&=.:;\\\x1d]dQ321017ABC-_ \xc3\xa9",
        &seeds,
        |input| {
            let text = String::from_utf8_lossy(input);
            let year = 2000 + (input.len() as i32 % 80);
            if let Ok(pi) = gs1::parse_identifier_at(&text, year) {
                assert_canonical_at(&pi, year);
                // The canonical spelling reads back as the same unit.
                assert_eq!(
                    gs1::parse_identifier_at(&bracketed(&pi), year).as_ref(),
                    Ok(&pi),
                    "canonical spelling does not round-trip"
                );
                return true;
            }
            false
        },
    );
}

fn assert_canonical_at(pi: &ProductIdentifier, year: i32) {
    assert_canonical(&ProductIdentifier {
        expiry: None,
        ..pi.clone()
    });
    if let Some(e) = &pi.expiry {
        assert!(gs1::expiry(e, year).is_ok());
    }
}

#[test]
fn fuzz_gs1_field_rules() {
    let seeds = ascii_seeds(&[
        "00300010123455",
        "300010123455",
        "12345670",
        "0614141123452",
        "SN0000000001",
        "A1(B)-c_d.e/f",
        "260331",
        "270229",
        "280229",
        "260400",
        "2026-02-28",
        "2028-02-29",
        "12345678901234567890",
    ]);
    run(2, b"0123456789 #\x00\x1d\\(~\xc3\xa9", &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let mut any = false;
        for kind in FieldKind::ALL {
            let result = canonical_field(kind, &text, 2026);
            any |= result.is_ok() && kind != FieldKind::Generic;
            match result {
                Ok(v) => match kind {
                    FieldKind::Gtin => {
                        assert_eq!(v.len(), 14);
                        assert!(check_digit_ok(&v));
                        assert!(v.ends_with(&*text), "GTIN-14 keeps the digits given");
                    }
                    FieldKind::Serial | FieldKind::Lot => {
                        assert!((1..=20).contains(&v.len()));
                        assert_eq!(v, text, "serial and lot are stored as given");
                    }
                    FieldKind::Expiry => assert!(
                        (v.len() == 6 && v.bytes().all(|b| b.is_ascii_digit()))
                            || (v.len() == 10 && v.as_bytes()[4] == b'-'),
                        "expiry is YYMMDD or an ISO date"
                    ),
                    FieldKind::Generic => assert_eq!(v, text),
                },
                // Every refusal is a typed error whose message never contains the value.
                Err(e) => {
                    let msg = Error::from(e).to_string();
                    if text.len() >= 8 {
                        assert!(!msg.contains(&*text), "message echoes the value");
                    }
                }
            }
        }
        any
    });
}

fn envelope_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, kind) in FieldKind::ALL.into_iter().enumerate() {
        let mut v = encode_header(kind, 7 + i as u32).to_vec();
        v.extend_from_slice(&[i as u8; NONCE_LEN]);
        v.extend_from_slice(&b"SN0000000001"[..i * 2]);
        v.extend_from_slice(&[0xa5; TAG_LEN]);
        seeds.push(v);
    }
    seeds
}

#[test]
fn fuzz_envelope_parse() {
    run(3, b"\x00\x01\x02\x04\x05\xff", &envelope_seeds(), |input| {
        if let Ok(env) = Envelope::parse(input) {
            assert_eq!(
                env.key_id,
                u32::from_be_bytes([input[2], input[3], input[4], input[5]])
            );
            assert_eq!(env.plaintext_len() + TAG_LEN + NONCE_LEN + 6, input.len());
            assert_eq!(env.kind as u8, input[1]);
            return true;
        }
        false
    });
}

#[test]
fn fuzz_armored_text_input() {
    let seeds: Vec<Vec<u8>> = envelope_seeds()
        .iter()
        .map(|e| armor::encode(e).into_bytes())
        .collect();
    run(
        4,
        b"dscsa:-_=+/ \nABCDEFabcdef0123456789",
        &seeds,
        |input| {
            let Ok(text) = std::str::from_utf8(input) else {
                return false;
            };
            let Ok(bytes) = armor::decode(text) else {
                return false;
            };
            // Strict: one text form per envelope, and it is a valid envelope.
            assert_eq!(armor::encode(&bytes), text);
            assert!(Envelope::parse(&bytes).is_ok());
            true
        },
    );
}
