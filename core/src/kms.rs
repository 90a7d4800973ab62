//! The KMS hook protocol, version 1 (specified in docs/KMS.md).
//!
//! The server writes one request to the hook's stdin and reads one response from its
//! stdout. Both are UTF-8 lines of `name: value`. Binary values are standard base64.
//! Every buffer that holds key material is `Zeroizing`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const PROTOCOL_VERSION: u32 = 1;
pub const PROTOCOL_FIELD: &str = "pg_dscsa-kms-protocol";
/// Largest wrapped key we store (a KMS ciphertext blob, e.g. AWS KMS is under 1 KiB).
pub const MAX_WRAPPED_LEN: usize = 8192;
/// Largest response we read from a hook before calling it garbage.
pub const MAX_RESPONSE_LEN: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Encrypt a fresh data key under the KEK.
    Wrap,
    /// Decrypt a wrapped data key.
    Unwrap,
    /// Fetch a key that already exists in the KMS (one another application encrypts
    /// with) by its reference in `kek`, so that it can be wrapped and kept in the keyring.
    Import,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Wrap => "wrap",
            Operation::Unwrap => "unwrap",
            Operation::Import => "import",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "wrap" => Some(Operation::Wrap),
            "unwrap" => Some(Operation::Unwrap),
            "import" => Some(Operation::Import),
            _ => None,
        }
    }
}

/// What the server sends. `data` is the plaintext data key (wrap) or the wrapped key (unwrap).
#[derive(Debug)]
pub struct Request {
    pub operation: Operation,
    pub kek: String,
    pub key_id: u32,
    pub key_name: String,
    pub key_version: u32,
    pub data: Zeroizing<Vec<u8>>,
}

/// What a hook answers on success.
#[derive(Debug)]
pub struct Response {
    /// The KEK reference actually used (wrap may refine it, e.g. add a version); optional.
    pub kek: Option<String>,
    pub data: Zeroizing<Vec<u8>>,
}

fn check_field_value(name: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 512 || value.chars().any(|c| c.is_control()) {
        return Err(Error::Kms(format!(
            "{name} must be 1 to 512 characters without control characters"
        )));
    }
    Ok(())
}

impl Request {
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>> {
        check_field_value("kek", &self.kek)?;
        check_field_value("key name", &self.key_name)?;
        let mut out = Zeroizing::new(String::with_capacity(256 + self.data.len() * 2));
        out.push_str(&format!(
            "{PROTOCOL_FIELD}: {PROTOCOL_VERSION}\noperation: {}\nkek: {}\nkey-id: {}\nkey-name: {}\nkey-version: {}\ndata: ",
            self.operation.name(),
            self.kek,
            self.key_id,
            self.key_name,
            self.key_version
        ));
        STANDARD.encode_string(&self.data[..], &mut out);
        out.push('\n');
        Ok(Zeroizing::new(std::mem::take(&mut *out).into_bytes()))
    }

    /// Used by hooks written in Rust (the development hook) to read a request.
    pub fn decode(input: &[u8]) -> Result<Self> {
        let fields = Fields::parse(input)?;
        let operation = Operation::from_name(fields.get("operation")?)
            .ok_or_else(|| Error::Kms("unknown operation".into()))?;
        Ok(Request {
            operation,
            kek: fields.get("kek")?.to_string(),
            key_id: fields.get_u32("key-id")?,
            key_name: fields.get("key-name")?.to_string(),
            key_version: fields.get_u32("key-version")?,
            data: fields.get_base64("data")?,
        })
    }
}

impl Response {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(format!(
            "{PROTOCOL_FIELD}: {PROTOCOL_VERSION}\nstatus: ok\n"
        ));
        if let Some(kek) = &self.kek {
            out.push_str(&format!("kek: {kek}\n"));
        }
        out.push_str("data: ");
        STANDARD.encode_string(&self.data[..], &mut out);
        out.push('\n');
        Zeroizing::new(std::mem::take(&mut *out).into_bytes())
    }

    /// Parses and validates a hook's stdout for `operation`.
    pub fn decode(operation: Operation, output: &[u8]) -> Result<Self> {
        if output.len() > MAX_RESPONSE_LEN {
            return Err(Error::Kms("hook output is larger than 64 KiB".into()));
        }
        let fields = Fields::parse(output)?;
        if fields.get("status")? != "ok" {
            return Err(Error::Kms(
                "hook answered a status other than \"ok\"".into(),
            ));
        }
        let kek = match fields.find("kek") {
            Some(k) => {
                check_field_value("kek", k)?;
                Some(k.to_string())
            }
            None => None,
        };
        let data = fields.get_base64("data")?;
        match operation {
            Operation::Unwrap | Operation::Import if data.len() != crate::cipher::KEY_LEN => {
                Err(Error::Kms(format!(
                    "{} answered {} bytes; a key is 32 bytes",
                    operation.name(),
                    data.len()
                )))
            }
            Operation::Wrap if data.is_empty() || data.len() > MAX_WRAPPED_LEN => {
                Err(Error::Kms(format!(
                    "wrap answered {} bytes; expected 1 to {MAX_WRAPPED_LEN}",
                    data.len()
                )))
            }
            _ => Ok(Response { kek, data }),
        }
    }
}

/// The `name: value` lines of a message, borrowed from the (zeroizing) input buffer.
struct Fields<'a> {
    lines: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn parse(input: &'a [u8]) -> Result<Self> {
        let text = std::str::from_utf8(input)
            .map_err(|_| Error::Kms("hook output is not UTF-8 text".into()))?;
        let mut lines = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                Error::Kms("hook output has a line that is not \"name: value\"".into())
            })?;
            let name = name.trim();
            if lines.iter().any(|(n, _)| *n == name) {
                return Err(Error::Kms(format!(
                    "field \"{}\" appears twice",
                    sanitize(name)
                )));
            }
            lines.push((name, value.trim()));
        }
        let fields = Fields { lines };
        let version = fields.get(PROTOCOL_FIELD)?;
        if version != PROTOCOL_VERSION.to_string() {
            return Err(Error::Kms(format!(
                "protocol version \"{}\" is not supported (expected {PROTOCOL_VERSION})",
                sanitize(version)
            )));
        }
        Ok(fields)
    }

    fn find(&self, name: &str) -> Option<&'a str> {
        self.lines.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn get(&self, name: &'static str) -> Result<&'a str> {
        self.find(name)
            .ok_or_else(|| Error::Kms(format!("field \"{name}\" is missing")))
    }

    fn get_u32(&self, name: &'static str) -> Result<u32> {
        self.get(name)?
            .parse()
            .map_err(|_| Error::Kms(format!("field \"{name}\" is not an unsigned integer")))
    }

    fn get_base64(&self, name: &'static str) -> Result<Zeroizing<Vec<u8>>> {
        STANDARD
            .decode(self.get(name)?)
            .map(Zeroizing::new)
            .map_err(|_| Error::Kms(format!("field \"{name}\" is not base64")))
    }
}

/// Makes text from a hook safe to put in an error message: first line only, printable
/// ASCII, at most 200 characters, and any run of 16 or more base64/hex characters (which
/// could be key material a careless hook printed) replaced by `[redacted]`.
///
/// A leading failure class (`invalid_ciphertext: ...`, the form of docs/KMS.md) is kept as
/// is: it is one of a fixed set of words, and the circuit breaker reads it.
pub fn sanitize(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if let Some((head, rest)) = first.split_once(": ") {
        if FailureClass::ALL.iter().any(|c| c.name() == head) {
            return format!("{head}: {}", sanitize_line(rest));
        }
    }
    sanitize_line(first)
}

fn sanitize_line(first: &str) -> String {
    let printable: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in printable.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    if out.chars().count() > 200 {
        out = out.chars().take(200).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: Operation, data: &[u8]) -> Request {
        Request {
            operation: op,
            kek: "dev".into(),
            key_id: 3,
            key_name: "default".into(),
            key_version: 1,
            data: Zeroizing::new(data.to_vec()),
        }
    }

    #[test]
    fn request_round_trips() {
        let r = request(Operation::Wrap, &[9u8; 32]);
        let bytes = r.encode().expect("encode");
        let back = Request::decode(&bytes).expect("decode");
        assert_eq!(back.operation, Operation::Wrap);
        assert_eq!(back.kek, "dev");
        assert_eq!(back.key_id, 3);
        assert_eq!(back.key_name, "default");
        assert_eq!(back.key_version, 1);
        assert_eq!(&back.data[..], &[9u8; 32]);
    }

    #[test]
    fn response_round_trips_and_validates_lengths() {
        let ok = Response {
            kek: Some("dev:1234".into()),
            data: Zeroizing::new(vec![1u8; 32]),
        };
        let parsed = Response::decode(Operation::Unwrap, &ok.encode()).expect("valid");
        assert_eq!(parsed.kek.as_deref(), Some("dev:1234"));
        let short = Response {
            kek: None,
            data: Zeroizing::new(vec![1u8; 31]),
        };
        assert!(Response::decode(Operation::Unwrap, &short.encode()).is_err());
        assert!(Response::decode(Operation::Wrap, &short.encode()).is_ok());
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b""[..],
            b"hello",
            b"status: ok\ndata: AAAA\n",
            b"pg_dscsa-kms-protocol: 2\nstatus: ok\ndata: AAAA\n",
            b"pg_dscsa-kms-protocol: 1\nstatus: error\ndata: AAAA\n",
            b"pg_dscsa-kms-protocol: 1\nstatus: ok\ndata: ***\n",
            b"pg_dscsa-kms-protocol: 1\nstatus: ok\nstatus: ok\ndata: AAAA\n",
            b"\xff\xfe",
        ] {
            assert!(Response::decode(Operation::Wrap, bad).is_err(), "{bad:?}");
        }
        let huge = vec![b'a'; MAX_RESPONSE_LEN + 1];
        assert!(Response::decode(Operation::Wrap, &huge).is_err());
    }

    #[test]
    fn control_characters_cannot_inject_fields() {
        let mut r = request(Operation::Unwrap, b"x");
        r.kek = "dev\ndata: AAAA".into();
        assert!(r.encode().is_err());
    }

    #[test]
    fn sanitize_masks_key_like_runs() {
        let key_b64 = STANDARD.encode([0x5au8; 32]);
        let s = sanitize(&format!("cannot unwrap key {key_b64} for you\nsecond line"));
        assert!(!s.contains(&key_b64[..16]), "{s}");
        assert!(s.contains("[redacted]"));
        let classed = sanitize("invalid_ciphertext: key AAAAAAAAAAAAAAAAAAAAAAAA rejected");
        assert_eq!(classed, "invalid_ciphertext: key [redacted] rejected");
        // Only a known class is kept; anything else in front is sanitized like the rest.
        assert_eq!(sanitize("AAAAAAAAAAAAAAAAAAAAAAAA: x"), "[redacted]: x");
        assert!(!s.contains("second line"));
        assert_eq!(sanitize("permission denied"), "permission denied");
        assert!(sanitize(&"x ".repeat(300)).len() <= 204);
    }
}

/// What kind of failure a hook call was (docs/KMS.md, "Failure classes"): a hook may
/// start the first line of its stderr with one of these names and a colon; the runner's
/// own failures (time limit, signal, no such program) are classified by what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Unavailable,
    Throttled,
    Timeout,
    Crashed,
    Denied,
    Disabled,
    InvalidCiphertext,
    Config,
    Unsupported,
    Protocol,
    /// A hook that does not name a class (older or third-party hooks).
    Unclassified,
}

impl FailureClass {
    pub const ALL: [FailureClass; 11] = [
        FailureClass::Unavailable,
        FailureClass::Throttled,
        FailureClass::Timeout,
        FailureClass::Crashed,
        FailureClass::Denied,
        FailureClass::Disabled,
        FailureClass::InvalidCiphertext,
        FailureClass::Config,
        FailureClass::Unsupported,
        FailureClass::Protocol,
        FailureClass::Unclassified,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Unavailable => "unavailable",
            FailureClass::Throttled => "throttled",
            FailureClass::Timeout => "timeout",
            FailureClass::Crashed => "crashed",
            FailureClass::Denied => "denied",
            FailureClass::Disabled => "disabled",
            FailureClass::InvalidCiphertext => "invalid_ciphertext",
            FailureClass::Config => "config",
            FailureClass::Unsupported => "unsupported",
            FailureClass::Protocol => "protocol",
            FailureClass::Unclassified => "unclassified",
        }
    }

    /// The class of a failed hook call (`Error::Kms` from the runner or the hook).
    pub fn of(err: &Error) -> FailureClass {
        let Error::Kms(message) = err else {
            return FailureClass::Protocol;
        };
        if message.contains("did not finish within") {
            return FailureClass::Timeout;
        }
        if message.starts_with("hook was killed by signal") {
            return FailureClass::Crashed;
        }
        if message.starts_with("could not start the hook")
            || message.contains("no KMS hook command")
        {
            return FailureClass::Config;
        }
        // "hook exited with status N: <class>: <message>"
        let first = message
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("hook exited with status"))
            .map(|(_, rest)| rest);
        match first
            .and_then(|rest| rest.split_once(':'))
            .map(|(class, _)| class.trim())
        {
            Some(class) => FailureClass::ALL
                .into_iter()
                .find(|c| c.name() == class)
                .unwrap_or(FailureClass::Unclassified),
            None if message.starts_with("hook exited with status") => FailureClass::Unclassified,
            None => FailureClass::Protocol,
        }
    }

    /// Whether this failure says the KMS cannot be used right now (it counts toward
    /// opening the circuit breaker). A wrapped key that does not unwrap, a refusal or a
    /// misconfiguration is an answer from a working KMS, and does not.
    pub fn means_kms_down(self) -> bool {
        matches!(
            self,
            FailureClass::Unavailable
                | FailureClass::Throttled
                | FailureClass::Timeout
                | FailureClass::Crashed
                | FailureClass::Unclassified
        )
    }
}

#[cfg(test)]
mod failure_class_tests {
    use super::*;

    #[test]
    fn hook_failures_are_classified() {
        let kms = |m: &str| Error::Kms(m.to_string());
        assert_eq!(
            FailureClass::of(&kms("hook did not finish within 500 ms and was killed")),
            FailureClass::Timeout
        );
        assert_eq!(
            FailureClass::of(&kms("hook was killed by signal 9")),
            FailureClass::Crashed
        );
        assert_eq!(
            FailureClass::of(&kms(
                "hook exited with status 1: unavailable: transit at http://x unreachable"
            )),
            FailureClass::Unavailable
        );
        assert_eq!(
            FailureClass::of(&kms(
                "hook exited with status 1: invalid_ciphertext: does not decrypt"
            )),
            FailureClass::InvalidCiphertext
        );
        assert_eq!(
            FailureClass::of(&kms("hook exited with status 2: config: no token")),
            FailureClass::Config
        );
        assert_eq!(
            FailureClass::of(&kms("hook exited with status 3: KEK not found")),
            FailureClass::Unclassified
        );
        assert_eq!(
            FailureClass::of(&kms("hook exited with status 1")),
            FailureClass::Unclassified
        );
        assert_eq!(
            FailureClass::of(&kms("response has no data field")),
            FailureClass::Protocol
        );
        assert!(FailureClass::Timeout.means_kms_down());
        assert!(!FailureClass::InvalidCiphertext.means_kms_down());
        assert!(!FailureClass::Denied.means_kms_down());
    }
}
