//! KMS hook programs for pg_dscsa, protocol 1 (docs/KMS.md): the PKCS#11 HSM, AWS KMS
//! and Vault/OpenBao transit providers, and what they share: the configuration file, the
//! request/response loop, the binding of key id, name and version to each wrapped key,
//! and the failure classes the server's circuit breaker reads.
//!
//! A hook runs once per request: `HOOK CONFIG` reads one request on stdin and writes one
//! response on stdout; `HOOK --check CONFIG` wraps and unwraps a canary and prints the
//! provider, the KEK and the latency. Secrets (PIN, token, credentials) come from files
//! the configuration names, never from arguments, settings or SQL.

pub mod aws;
pub mod config;
pub mod context;
pub mod error;
pub mod pkcs11;
pub mod transit;

use std::io::{Read, Write};
use std::time::Instant;

use dscsa_core::kms::{Operation, Request, Response};
use zeroize::Zeroizing;

pub use config::Config;
pub use context::Context;
pub use error::{Class, HookError};

/// A wrapped key and the precise KEK reference the provider used (stored as `kek_ref`).
pub struct Wrapped {
    pub blob: Vec<u8>,
    pub kek_ref: String,
}

/// What a provider does. `kek` is the KEK reference from the request (for unwrap, the
/// `kek_ref` a wrap returned); `ctx` names the key, and must be bound to the blob.
pub trait Provider {
    fn name(&self) -> &'static str;
    fn wrap(&mut self, kek: &str, ctx: &Context, key: &[u8]) -> Result<Wrapped, HookError>;
    fn unwrap(
        &mut self,
        kek: &str,
        ctx: &Context,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HookError>;
    fn import(&mut self, reference: &str, _ctx: &Context) -> Result<Zeroizing<Vec<u8>>, HookError> {
        Err(HookError::new(
            Class::Unsupported,
            format!(
                "{} does not import keys (reference {reference:?})",
                self.name()
            ),
        ))
    }
}

/// The hook's `main`: parses the arguments, builds the provider from the configuration,
/// serves one request (or the check), and exits with the protocol's status codes.
pub fn main<P: Provider>(
    build: impl FnOnce(&Config) -> Result<P, HookError>,
) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (check, path) = match args.as_slice() {
        [path] if !path.starts_with('-') => (false, path.clone()),
        [flag, path] if flag == "--check" => (true, path.clone()),
        _ => {
            eprintln!("config: usage: HOOK [--check] CONFIG_FILE (a 0600 file; see docs/KMS.md)");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = Config::load(&path).and_then(|config| {
        let mut provider = build(&config)?;
        if check {
            run_check(&mut provider, &config)
        } else {
            serve(&mut provider, &config)
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the server shows it (with long base64/hex runs redacted).
            eprintln!("{}", e.line());
            std::process::ExitCode::from(e.exit_status())
        }
    }
}

fn serve<P: Provider>(provider: &mut P, config: &Config) -> Result<(), HookError> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(dscsa_core::kms::MAX_RESPONSE_LEN as u64)
        .read_to_end(&mut input)
        .map_err(|e| HookError::new(Class::Protocol, format!("reading the request: {e}")))?;
    let request =
        Request::decode(&input).map_err(|e| HookError::new(Class::Protocol, e.to_string()))?;
    let ctx = Context::of(&request, config.get("cluster"));
    let response = match request.operation {
        Operation::Wrap => {
            let wrapped = provider.wrap(&request.kek, &ctx, &request.data)?;
            Response {
                kek: Some(wrapped.kek_ref),
                data: Zeroizing::new(wrapped.blob),
            }
        }
        Operation::Unwrap => Response {
            kek: None,
            data: provider.unwrap(&request.kek, &ctx, &request.data)?,
        },
        Operation::Import => Response {
            kek: None,
            data: provider.import(&request.kek, &ctx)?,
        },
    };
    let out = response.encode();
    std::io::stdout()
        .write_all(&out)
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| HookError::new(Class::Protocol, format!("writing the response: {e}")))
}

/// `--check`: wraps and unwraps a random canary under the configuration's `kek`.
fn run_check<P: Provider>(provider: &mut P, config: &Config) -> Result<(), HookError> {
    let kek = config.require("kek")?;
    let ctx = Context {
        key_id: 0,
        key_name: "pg_dscsa-check".into(),
        key_version: 0,
        cluster: config.get("cluster").map(str::to_string),
    };
    let canary = dscsa_core::nonce::generate_data_key()
        .map_err(|e| HookError::new(Class::Config, format!("no random canary: {e}")))?;
    let started = Instant::now();
    let wrapped = provider.wrap(kek, &ctx, &canary[..])?;
    let wrap_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let back = provider.unwrap(&wrapped.kek_ref, &ctx, &wrapped.blob)?;
    let unwrap_ms = started.elapsed().as_secs_f64() * 1000.0;
    if back[..] != canary[..] {
        return Err(HookError::new(
            Class::InvalidCiphertext,
            "the canary did not unwrap to what was wrapped".to_string(),
        ));
    }
    // A different context must not unwrap (binding of key id, name and version).
    let other = Context { key_id: 1, ..ctx };
    if provider
        .unwrap(&wrapped.kek_ref, &other, &wrapped.blob)
        .is_ok()
    {
        return Err(HookError::new(
            Class::Config,
            "a wrapped key unwrapped under another key id: the KMS ignores the context".to_string(),
        ));
    }
    println!(
        "ok provider={} kek={} wrap_ms={wrap_ms:.1} unwrap_ms={unwrap_ms:.1} blob_bytes={}",
        provider.name(),
        wrapped.kek_ref,
        wrapped.blob.len()
    );
    Ok(())
}
