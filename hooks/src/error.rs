//! Failure classes. The first line a hook writes to stderr starts with the class, so
//! that the server can tell an unreachable KMS (which trips its circuit breaker) from a
//! wrapped key that does not unwrap (which does not): docs/KMS.md, "Failure classes".

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The KMS could not be reached or did not answer in time.
    Unavailable,
    /// The KMS refused for rate limits (after the hook's own retries).
    Throttled,
    /// The credentials may not use the key.
    Denied,
    /// The key is disabled or pending deletion.
    Disabled,
    /// The blob does not decrypt under this key and context (tampered, copied, wrong KEK).
    InvalidCiphertext,
    /// The hook is misconfigured (file, module, token, key not found).
    Config,
    /// An operation this provider does not offer.
    Unsupported,
    /// The request could not be read.
    Protocol,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Unavailable => "unavailable",
            Class::Throttled => "throttled",
            Class::Denied => "denied",
            Class::Disabled => "disabled",
            Class::InvalidCiphertext => "invalid_ciphertext",
            Class::Config => "config",
            Class::Unsupported => "unsupported",
            Class::Protocol => "protocol",
        }
    }
}

#[derive(Debug)]
pub struct HookError {
    pub class: Class,
    pub message: String,
}

impl HookError {
    pub fn new(class: Class, message: String) -> Self {
        HookError { class, message }
    }

    /// The stderr line: `class: message` (never key material or secrets).
    pub fn line(&self) -> String {
        format!(
            "{}: {}",
            self.class.name(),
            self.message.replace(['\n', '\r'], " ")
        )
    }

    /// 2 for usage, configuration and protocol errors, 1 for refused operations.
    pub fn exit_status(&self) -> u8 {
        match self.class {
            Class::Config | Class::Protocol => 2,
            _ => 1,
        }
    }
}
