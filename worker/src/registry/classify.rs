//! Classifying what came back from a registry: transport errors (TLS or unreachable), the
//! `Retry-After` of a 429, and error bodies, summarised and scrubbed of secrets before they
//! are kept in a [`RegistryError`].

use std::time::Duration;

use time::OffsetDateTime;

use super::error::{ErrorKind, RegistryError, Target};

/// Turns a transport error (no HTTP answer) into an [`ErrorKind::TlsFailed`] or
/// [`ErrorKind::Unreachable`] error of `request`. The URL is dropped from the error (the
/// request names it).
pub(crate) fn from_transport(
    target: &Target,
    request: &str,
    err: reqwest::Error,
    timeout: Duration,
) -> RegistryError {
    let err = err.without_url();
    let causes = cause_chain(&err);
    let root = causes.last().cloned().unwrap_or_default();
    let (kind, detail) = if is_tls_verification_failure(&causes) {
        (ErrorKind::TlsFailed, root)
    } else if err.is_timeout() {
        (
            ErrorKind::Unreachable,
            format!("no answer within {} s", timeout.as_secs()),
        )
    } else if err.is_connect() {
        (ErrorKind::Unreachable, format!("cannot connect: {root}"))
    } else {
        (ErrorKind::Unreachable, root)
    };
    RegistryError::new(kind, target)
        .at(request)
        .with_detail(detail)
        .with_source(err)
}

/// The `Display` of an error and each of its causes, outermost first.
pub(crate) fn cause_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        out.push(cause.to_string());
        source = cause.source();
    }
    out
}

/// Whether a transport error's causes say the peer certificate failed verification.
///
/// rustls 0.23 reports `invalid peer certificate: UnknownIssuer`, `invalid peer certificate:
/// certificate not valid for name "x"; certificate is only valid for ..`,
/// `invalid peer certificate: certificate expired: ..` (also `NotValidForName`, `Expired`,
/// `BadSignature` in their `Debug` forms), wrapped by hyper-util and reqwest as `client error
/// (Connect)` / `error sending request`.
pub(crate) fn is_tls_verification_failure(causes: &[String]) -> bool {
    const MARKERS: [&str; 6] = [
        "invalid peer certificate",
        "InvalidCertificate",
        "UnknownIssuer",
        "NotValidForName",
        "certificate not valid",
        "certificate expired",
    ];
    causes.iter().any(|c| MARKERS.iter().any(|m| c.contains(m)))
}

/// The delay asked by a `Retry-After` value: delta-seconds or an HTTP date (the three forms
/// RFC 9110 §5.6.7 makes recipients accept, parsed by `httpdate`); a date in the past gives
/// zero. `None` when unparsable.
pub(crate) fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate instead of failing.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
    let delta = at - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        delta.unsigned_abs()
    })
}

/// Replaces every secret (of 3 characters or more) in `text` by `[REDACTED]`.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if secret.chars().count() >= 3 {
            out = out.replace(secret, "[REDACTED]");
        }
    }
    out
}

/// A short, printable summary of a registry error body: the `errors[].code: message` pairs of
/// the registry API format, else the start of the text, else `HTTP <status>`.
pub(crate) fn summarize_body(status: u16, body: &[u8], secrets: &[&str]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ApiError>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    /// The longest summary, in bytes.
    const MAX: usize = 300;
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    let text = scrub(&text, secrets);
    let text = pushfleet_shared::text::truncate(&text, MAX);
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn retry_after_values() {
        // Delta-seconds; absurdly long digit strings saturate.
        let new_year = datetime!(2026-01-01 00:00:00 UTC);
        for (value, secs) in [
            ("120", 120),
            (" 0 ", 0),
            ("99999999999999999999999", u64::MAX),
        ] {
            let expected = Some(Duration::from_secs(secs));
            assert_eq!(parse_retry_after(value, new_year), expected, "{value:?}");
        }
        // An HTTP date, also in the obsolete forms recipients must still accept (RFC 850,
        // asctime).
        let before = datetime!(1994-11-06 08:49:00 UTC);
        let dates = [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ];
        for value in dates {
            let expected = Some(Duration::from_secs(37));
            assert_eq!(parse_retry_after(value, before), expected, "{value:?}");
        }
        // In the past: no wait.
        let later = datetime!(1994-11-06 09:00:00 UTC);
        assert_eq!(parse_retry_after(dates[0], later), Some(Duration::ZERO));
        // Garbage.
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "2026-01-01",
        ] {
            assert_eq!(parse_retry_after(bad, new_year), None, "{bad:?}");
        }
    }

    #[test]
    fn tls_markers() {
        let yes = [
            "invalid peer certificate: UnknownIssuer",
            "invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for y",
            "InvalidCertificate(NotValidForName)",
        ];
        for text in yes {
            assert!(is_tls_verification_failure(&[
                "client error (Connect)".into(),
                text.into()
            ]));
        }
        assert!(!is_tls_verification_failure(&[
            "client error (Connect)".into(),
            "tcp connect error: Connection refused (os error 111)".into()
        ]));
    }

    #[test]
    fn body_summary_uses_registry_errors_and_scrubs_secrets() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password s3cr3t!","detail":null}]}"#;
        assert_eq!(
            summarize_body(401, body, &["s3cr3t!"]),
            "HTTP 401: UNAUTHORIZED: bad password [REDACTED]"
        );
        assert_eq!(summarize_body(502, b"", &[]), "HTTP 502");
        assert_eq!(
            summarize_body(502, b"<h1>Bad\nGateway</h1>", &[]),
            "HTTP 502: <h1>Bad Gateway</h1>"
        );
        let long = "x".repeat(1000);
        assert!(summarize_body(500, long.as_bytes(), &[]).chars().count() < 320);
        // Short secrets are not scrubbed (they would blank out ordinary words).
        assert_eq!(scrub("a b", &["a"]), "a b");
    }
}
