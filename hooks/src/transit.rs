//! The Vault / OpenBao transit provider (`pg_dscsa_kms_transit`): the KEK is a transit
//! key (`aes256-gcm96`), named by the request's `kek`; wrap = `POST /v1/<mount>/encrypt/<key>`
//! with the key's context as `associated_data`, unwrap = `decrypt` with the same. The
//! blob is transit's ciphertext (`vault:v<N>:...`), and the KEK reference a wrap returns
//! is `<key>@v<N>`: after `transit/keys/<key>/rotate`, `dscsa.rotate_kek('<key>')` moves
//! every entry to the new version, after which `min_decryption_version` can retire the
//! old one.
//!
//! Configuration (0600):
//!
//! ```text
//! addr = https://vault.example.com:8200
//! mount = transit
//! token_file = /etc/pg_dscsa/transit.token   # 0600, owned by postgres
//! kek = pg-dscsa-kek                         # for --check
//! namespace = erp                            # optional (Vault Enterprise / OpenBao)
//! ca_file = /etc/pg_dscsa/vault-ca.pem       # optional: trust this CA
//! timeout_ms = 5000                          # optional
//! cluster = erp-prod                         # optional: bound into every wrap
//! ```

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::{Class, Config, Context, HookError, Provider, Wrapped};

pub struct TransitProvider {
    agent: ureq::Agent,
    addr: String,
    mount: String,
    token: Zeroizing<String>,
    namespace: Option<String>,
}

/// `name@vN` -> (`name`, N); a bare name has no version.
fn split_version(kek: &str) -> (&str, Option<u32>) {
    match kek.rsplit_once("@v") {
        Some((name, v)) if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() => {
            (name, v.parse().ok())
        }
        _ => (kek, None),
    }
}

fn valid_key_name(name: &str) -> Result<&str, HookError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(HookError::new(
            Class::Config,
            format!("{name:?} is not a transit key name (letters, digits, - _ .)"),
        ));
    }
    Ok(name)
}

impl TransitProvider {
    pub fn from_config(config: &Config) -> Result<Self, HookError> {
        let timeout = Duration::from_millis(config.millis("timeout_ms", 5000)?);
        let mut builder = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_millis(3000).min(timeout)))
            .timeout_global(Some(timeout))
            .http_status_as_error(false);
        if let Some(ca) = config.get("ca_file") {
            let pem = std::fs::read(ca)
                .map_err(|e| HookError::new(Class::Config, format!("ca_file {ca}: {e}")))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(TransitProvider {
            agent: builder.build().into(),
            addr: config.require("addr")?.trim_end_matches('/').to_string(),
            mount: config
                .get("mount")
                .unwrap_or("transit")
                .trim_matches('/')
                .to_string(),
            token: config.secret("token_file")?,
            namespace: config.get("namespace").map(str::to_string),
        })
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, HookError> {
        let url = format!("{}/v1/{}/{path}", self.addr, self.mount);
        let mut request = self
            .agent
            .post(&url)
            .header("X-Vault-Token", self.token.as_str())
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        let mut response = request.send_json(body).map_err(|e| {
            HookError::new(
                Class::Unavailable,
                format!("transit at {} unreachable: {e}", self.addr),
            )
        })?;
        let status = response.status().as_u16();
        let json: serde_json::Value = response
            .body_mut()
            .read_json()
            .unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        // Transit's own messages name keys and paths, never secrets.
        let errors = json["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let class = class_of(status, &errors);
        Err(HookError::new(
            class,
            format!("transit {path}: HTTP {status}: {errors}"),
        ))
    }
}

/// The failure class of a transit error response, from its status and messages.
fn class_of(status: u16, errors: &str) -> Class {
    match status {
        400 if errors.contains("message authentication failed")
            || errors.contains("invalid ciphertext") =>
        {
            Class::InvalidCiphertext
        }
        // min_decryption_version above the ciphertext's version.
        400 if errors.contains("decryption version") || errors.contains("disallowed by policy") => {
            Class::Disabled
        }
        403 => Class::Denied,
        404 => Class::Config,
        429 => Class::Throttled,
        500..=599 => Class::Unavailable,
        _ => Class::Config,
    }
}

impl Provider for TransitProvider {
    fn name(&self) -> &'static str {
        "transit"
    }

    fn wrap(&mut self, kek: &str, ctx: &Context, key: &[u8]) -> Result<Wrapped, HookError> {
        let name = valid_key_name(split_version(kek).0)?;
        let plaintext = Zeroizing::new(STANDARD.encode(key));
        let out = self.post(
            &format!("encrypt/{name}"),
            serde_json::json!({
                "plaintext": plaintext.as_str(),
                "associated_data": STANDARD.encode(ctx.aad()),
            }),
        )?;
        let ciphertext = out["data"]["ciphertext"].as_str().ok_or_else(|| {
            HookError::new(
                Class::Protocol,
                "transit answered without a ciphertext".into(),
            )
        })?;
        let version = out["data"]["key_version"].as_u64().or_else(|| {
            ciphertext
                .strip_prefix("vault:v")?
                .split(':')
                .next()?
                .parse()
                .ok()
        });
        Ok(Wrapped {
            blob: ciphertext.as_bytes().to_vec(),
            kek_ref: match version {
                Some(v) => format!("{name}@v{v}"),
                None => name.to_string(),
            },
        })
    }

    fn unwrap(
        &mut self,
        kek: &str,
        ctx: &Context,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HookError> {
        let name = valid_key_name(split_version(kek).0)?;
        let ciphertext = std::str::from_utf8(blob)
            .ok()
            .filter(|c| c.starts_with("vault:v"))
            .ok_or_else(|| {
                HookError::new(Class::InvalidCiphertext, "not a transit ciphertext".into())
            })?;
        let out = self.post(
            &format!("decrypt/{name}"),
            serde_json::json!({
                "ciphertext": ciphertext,
                "associated_data": STANDARD.encode(ctx.aad()),
            }),
        )?;
        let encoded = Zeroizing::new(
            out["data"]["plaintext"]
                .as_str()
                .ok_or_else(|| {
                    HookError::new(
                        Class::Protocol,
                        "transit answered without a plaintext".into(),
                    )
                })?
                .to_string(),
        );
        STANDARD
            .decode(encoded.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| {
                HookError::new(
                    Class::Protocol,
                    "transit answered a plaintext that is not base64".into(),
                )
            })
    }

    /// An exportable transit key (`exportable = true`), by `name` or `name@vN`: what
    /// another application encrypts with through the same transit mount.
    fn import(&mut self, reference: &str, _ctx: &Context) -> Result<Zeroizing<Vec<u8>>, HookError> {
        let (name, version) = split_version(reference);
        let name = valid_key_name(name)?;
        let url = format!(
            "{}/v1/{}/export/encryption-key/{name}",
            self.addr, self.mount
        );
        let url = match version {
            Some(v) => format!("{url}/{v}"),
            None => format!("{url}/latest"),
        };
        let mut request = self
            .agent
            .get(&url)
            .header("X-Vault-Token", self.token.as_str());
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        let mut response = request.call().map_err(|e| {
            HookError::new(
                Class::Unavailable,
                format!("transit at {} unreachable: {e}", self.addr),
            )
        })?;
        if response.status().as_u16() != 200 {
            return Err(HookError::new(
                Class::Config,
                format!(
                    "transit export of {name}: HTTP {} (is the key exportable?)",
                    response.status().as_u16()
                ),
            ));
        }
        let json: serde_json::Value = response
            .body_mut()
            .read_json()
            .map_err(|e| HookError::new(Class::Protocol, format!("transit export: {e}")))?;
        let keys = json["data"]["keys"]
            .as_object()
            .ok_or_else(|| HookError::new(Class::Protocol, "transit export without keys".into()))?;
        // Keyed by version number as text ("1", "2", ..., "10"): the highest number, not
        // the last in text order.
        let encoded = keys
            .iter()
            .max_by_key(|(version, _)| version.parse::<u64>().unwrap_or(0))
            .and_then(|(_, v)| v.as_str())
            .ok_or_else(|| {
                HookError::new(Class::Protocol, "transit export without a key".into())
            })?;
        let key = STANDARD.decode(encoded).map(Zeroizing::new).map_err(|_| {
            HookError::new(
                Class::Protocol,
                "transit exported a key that is not base64".into(),
            )
        })?;
        if key.len() != 32 {
            return Err(HookError::new(
                Class::Config,
                format!(
                    "transit key {name} is not a 256-bit key ({} bytes)",
                    key.len()
                ),
            ));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_map_to_their_classes() {
        use super::class_of;
        use crate::error::Class;
        // Messages as OpenBao 2.x returns them.
        assert_eq!(
            class_of(400, "cipher: message authentication failed"),
            Class::InvalidCiphertext
        );
        assert_eq!(
            class_of(
                400,
                "ciphertext or signature version is disallowed by policy (too old)"
            ),
            Class::Disabled
        );
        assert_eq!(class_of(403, "permission denied"), Class::Denied);
        assert_eq!(class_of(429, ""), Class::Throttled);
        assert_eq!(class_of(503, "Vault is sealed"), Class::Unavailable);
        assert_eq!(class_of(400, "invalid request"), Class::Config);
    }

    #[test]
    fn kek_references_carry_the_transit_version() {
        assert_eq!(split_version("orders@v3"), ("orders", Some(3)));
        assert_eq!(split_version("orders"), ("orders", None));
        assert_eq!(split_version("a@vx"), ("a@vx", None));
        assert!(valid_key_name("orders-kek_1.x").is_ok());
        assert!(valid_key_name("../sys/seal").is_err());
    }
}
