//! Optional message authentication for jobs: an HMAC-SHA256 of the message body with a key
//! shared by the publishers (Django, `pushfleet submit`) and the workers.
//!
//! On a broker shared with other systems, anyone who may publish to the jobs exchange could
//! otherwise make the fleet push. With a key configured (`amqp.signing_key_file`), a worker
//! refuses every job whose [`SIGNATURE_HEADER`] is missing or wrong, with `invalid_signature`.
//!
//! Header value: `v1=<lowercase hex of HMAC-SHA256(key, body)>`, over the exact body bytes.
//! In Python: `"v1=" + hmac.new(key, body, hashlib.sha256).hexdigest()`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The AMQP header that carries a job's signature.
pub const SIGNATURE_HEADER: &str = "x-pushfleet-signature";
/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

const PREFIX: &str = "v1=";

/// Why a signature does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The message has no signature header.
    #[error("the job is not signed (no {SIGNATURE_HEADER} header)")]
    Missing,
    /// The header is not `v1=<64 hex digits>`.
    #[error("the {SIGNATURE_HEADER} header is not of the form v1=<hex HMAC-SHA256>")]
    Malformed,
    /// The signature does not match the body under the configured key.
    #[error("the job's signature does not match its body")]
    Mismatch,
}

/// The signature header value for `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(mac(key, body).finalize().into_bytes())
    )
}

/// Checks `header` (the signature header's value, if any) against `body` under `key`, in
/// constant time.
pub fn verify(key: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let digest = header
        .strip_prefix(PREFIX)
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;
    mac(key, body)
        .verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch)
}

fn mac(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_body_verifies_and_any_change_does_not() {
        let body = br#"{"version":1}"#;
        let sig = sign(KEY, body);
        assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
        assert_eq!(verify(KEY, body, Some(&sig)), Ok(()));
        assert_eq!(
            verify(KEY, br#"{"version":2}"#, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another key, also 32 bytes long!", body, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        let body = b"x";
        assert_eq!(verify(KEY, body, None), Err(SignatureError::Missing));
        for bad in [
            "",
            "v1=",
            "v2=00",
            "v1=zz",
            &format!("v1={}", "0".repeat(63)),
            "sha256=00",
        ] {
            assert_eq!(
                verify(KEY, body, Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        let upper = sign(KEY, body).to_uppercase().replacen("V1=", "v1=", 1);
        assert_eq!(
            verify(KEY, body, Some(&upper)),
            Ok(()),
            "hex case does not matter"
        );
    }
}
