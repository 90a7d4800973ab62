//! The AWS KMS provider (`pg_dscsa_kms_aws`): the KEK is a KMS key (id, ARN or alias),
//! named by the request's `kek`; wrap = `Encrypt` and unwrap = `Decrypt` with the key's
//! context as encryption context, the key id pinned on `Decrypt`. The KEK reference a
//! wrap returns is the key's ARN.
//!
//! Credentials come from the standard AWS chain (environment of the server, the shared
//! credentials file, web identity, the instance's IMDS role, SSO); a `credentials_file`
//! in the configuration points the chain at a private file instead of the server's
//! environment. `AWS_ENDPOINT_URL` (or `endpoint_url` here) selects another endpoint.
//!
//! Configuration (0600):
//!
//! ```text
//! region = us-east-1
//! kek = alias/pg-dscsa-kek                       # for --check
//! credentials_file = /etc/pg_dscsa/aws.credentials   # optional, 0600
//! profile = pg_dscsa                             # optional
//! endpoint_url = https://kms.us-east-1.amazonaws.com # optional
//! timeout_ms = 5000                              # optional, per attempt
//! max_attempts = 4                               # optional, throttling retries with backoff
//! cluster = erp-prod                             # optional: bound into every wrap
//! ```

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use crate::{Class, Config, Context, HookError, Provider, Wrapped};

pub struct AwsProvider {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_kms::Client,
}

/// What an AWS error means for the server.
/// `InvalidCiphertextException` -> `Invalid Ciphertext Exception`.
fn words(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 4);
    let mut previous_lower = false;
    for c in code.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_ascii_lowercase();
        out.push(c);
    }
    out
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> HookError {
    let (class, detail) = match &e {
        SdkError::TimeoutError(_) => (Class::Unavailable, "timed out".to_string()),
        SdkError::DispatchFailure(f) => (
            Class::Unavailable,
            if f.is_timeout() {
                "timed out connecting".to_string()
            } else {
                "could not connect".to_string()
            },
        ),
        SdkError::ResponseError(_) => (Class::Unavailable, "unreadable response".to_string()),
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown");
            let class = match code {
                "InvalidCiphertextException" | "IncorrectKeyException" => Class::InvalidCiphertext,
                "DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException" => {
                    Class::Disabled
                }
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException" => Class::Denied,
                "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" => {
                    Class::Throttled
                }
                "DependencyTimeoutException"
                | "KMSInternalException"
                | "InternalFailure"
                | "ServiceUnavailable" => Class::Unavailable,
                _ => Class::Config,
            };
            // The service's message names keys and states, never key material. The code
            // is spelled as words: the server redacts long unbroken runs of letters
            // and digits from hook messages, as possible key material.
            (
                class,
                format!("{}: {}", words(code), err.message().unwrap_or("")),
            )
        }
        _ => (Class::Config, "request could not be built".to_string()),
    };
    HookError::new(class, format!("AWS KMS {what}: {detail}"))
}

impl AwsProvider {
    pub fn from_config(config: &Config) -> Result<Self, HookError> {
        if let Some(path) = config.get("credentials_file") {
            // The chain reads this file instead of ~/.aws/credentials; checked private.
            config.secret("credentials_file")?;
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", path);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HookError::new(Class::Config, format!("no async runtime: {e}")))?;
        let attempt = Duration::from_millis(config.millis("timeout_ms", 5000)?);
        let attempts: u32 = config
            .get("max_attempts")
            .map(|v| {
                v.parse().map_err(|_| {
                    HookError::new(Class::Config, "max_attempts must be a number".into())
                })
            })
            .transpose()?
            .unwrap_or(4);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(attempt.min(Duration::from_secs(3)))
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(attempt * attempts.max(1))
                    .build(),
            );
        if let Some(region) = config.get("region") {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        if let Some(profile) = config.get("profile") {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = config.get("endpoint_url") {
            loader = loader.endpoint_url(url);
        }
        let sdk = runtime.block_on(loader.load());
        Ok(AwsProvider {
            client: aws_sdk_kms::Client::new(&sdk),
            runtime,
        })
    }
}

fn context_map(ctx: &Context) -> HashMap<String, String> {
    ctx.pairs().into_iter().collect()
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws-kms"
    }

    fn wrap(&mut self, kek: &str, ctx: &Context, key: &[u8]) -> Result<Wrapped, HookError> {
        let out = self
            .runtime
            .block_on(
                self.client
                    .encrypt()
                    .key_id(kek)
                    .plaintext(Blob::new(key.to_vec()))
                    .set_encryption_context(Some(context_map(ctx)))
                    .send(),
            )
            .map_err(|e| classify("Encrypt", e))?;
        let blob = out
            .ciphertext_blob()
            .ok_or_else(|| {
                HookError::new(
                    Class::Protocol,
                    "Encrypt answered without a ciphertext".into(),
                )
            })?
            .as_ref()
            .to_vec();
        Ok(Wrapped {
            blob,
            kek_ref: out.key_id().unwrap_or(kek).to_string(),
        })
    }

    fn unwrap(
        &mut self,
        kek: &str,
        ctx: &Context,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HookError> {
        let out = self
            .runtime
            .block_on(
                self.client
                    .decrypt()
                    .key_id(kek)
                    .ciphertext_blob(Blob::new(blob.to_vec()))
                    .set_encryption_context(Some(context_map(ctx)))
                    .send(),
            )
            .map_err(|e| classify("Decrypt", e))?;
        let plaintext = out.plaintext().ok_or_else(|| {
            HookError::new(
                Class::Protocol,
                "Decrypt answered without a plaintext".into(),
            )
        })?;
        Ok(Zeroizing::new(plaintext.as_ref().to_vec()))
    }

    /// A data key another application encrypted under a KMS key (its `CiphertextBlob`,
    /// base64, as the reference), decrypted without encryption context: what envelope
    /// encryption middleware stores next to its data.
    fn import(&mut self, reference: &str, _ctx: &Context) -> Result<Zeroizing<Vec<u8>>, HookError> {
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(reference.trim())
            .map_err(|_| {
                HookError::new(
                    Class::Config,
                    "the import reference must be a base64 CiphertextBlob".into(),
                )
            })?;
        let out = self
            .runtime
            .block_on(
                self.client
                    .decrypt()
                    .ciphertext_blob(Blob::new(blob))
                    .send(),
            )
            .map_err(|e| classify("Decrypt (import)", e))?;
        let key = out.plaintext().ok_or_else(|| {
            HookError::new(
                Class::Protocol,
                "Decrypt answered without a plaintext".into(),
            )
        })?;
        if key.as_ref().len() != 32 {
            return Err(HookError::new(
                Class::Config,
                format!("the imported key is {} bytes, not 32", key.as_ref().len()),
            ));
        }
        Ok(Zeroizing::new(key.as_ref().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn error_codes_become_words_the_server_does_not_redact() {
        assert_eq!(
            words("InvalidCiphertextException"),
            "Invalid Ciphertext Exception"
        );
        assert_eq!(
            words("KMSInvalidStateException"),
            "KMSInvalid State Exception"
        );
        assert_eq!(words("unknown"), "unknown");
    }
}
