//! Failure classes. The first line a hook writes to stderr starts with the class, so
//! that the server can tell an unreachable KMS (which trips its circuit breaker) from a
//! wrapped key that does not unwrap (which does not): docs/KMS.md, "Failure classes".

/// The server's own list (dscsa_core::kms::FailureClass), so that the names a hook
/// writes are the names the server reads. The hooks use the KMS-side classes
/// (unavailable, throttled, denied, disabled, invalid_ciphertext, config, unsupported,
/// protocol); timeout, crashed and unclassified are the runner's.
pub use dscsa_core::kms::FailureClass as Class;

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
