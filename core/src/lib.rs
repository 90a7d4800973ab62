//! dscsa-core: everything in pg_dscsa that does not need PostgreSQL.
//!
//! - `envelope`: the versioned ciphertext format (docs/FORMAT.md)
//! - `access`:   per-key privileges (encrypt, decrypt, blind_index)
//! - `audit`:    the audit trail's record format, HMAC chain and verifier
//! - `provenance`: which envelopes a role sealed itself in this transaction
//! - `blind`:    blind indexes (keyed HMAC-SHA-256 of normalized values)
//! - `cipher`:   AES-256-GCM seal/open of envelopes with header and context as AAD
//! - `armor`:    the text form of an envelope (`dscsa:` + base64url)
//! - `nonce`:    fork-aware nonce source and data-key generation
//! - `kms`:      the KMS hook protocol (docs/KMS.md)
//! - `gs1`:      GS1 product identifiers: field rules and one parser for every spelling
//! - `import`:   opening AES-256-GCM values sealed by other applications
//! - `hook`:     running a hook command with a deadline and interrupt checks
//! - `devkms`:   the development hook's logic (KEK in a 0600 file)
//! - `keycheck`: key check values stored beside wrapped keys
//! - `error`:    typed errors and their SQLSTATEs

pub mod access;
pub mod armor;
pub mod audit;
pub mod blind;
pub mod cipher;
pub mod devkms;
pub mod envelope;
pub mod error;
pub mod fixed_name;
pub mod gs1;
pub mod hook;
pub mod import;
pub mod keycheck;
pub mod kms;
pub mod locked;
pub mod nonce;
pub mod provenance;
pub mod ranges;

pub use error::{Error, Result, SqlState};
