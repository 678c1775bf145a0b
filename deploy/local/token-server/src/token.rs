//! Signing registry tokens the way distribution 2.8 accepts them.
//!
//! - RS256 JWT; the header carries `x5c` = [the signing certificate as *standard, padded*
//!   base64 of its DER] (base64url or PEM there is refused) and no `kid` (distribution only
//!   accepts a libtrust key id as `kid`; with `x5c` alone it checks the chain against its
//!   `rootcertbundle`).
//! - Claims `iss`, `sub`, `aud` (a *string*: a JSON array is refused), `exp`, `nbf`, `iat`,
//!   `jti`, `access`.
//!
//! Refresh tokens (`offline_token=true`, OAuth2 `POST /token`; `docker login` stores one as
//! `identitytoken`) are HS256 JWTs under a secret of this server (from `--refresh-secret-file`,
//! else random per process, so they die with it); the registry never sees them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::scope::Access;

/// Claims of an access token (what the registry reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: String,
    pub(crate) exp: u64,
    pub(crate) nbf: u64,
    pub(crate) iat: u64,
    pub(crate) jti: String,
    pub(crate) access: Vec<Access>,
}

/// Claims of a refresh token (only this server reads them).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
    typ: String,
}

/// How long a refresh token lives.
const REFRESH_TTL_SECS: u64 = 24 * 3600;
/// `typ` claim of refresh tokens, so an access token cannot be used as one.
const REFRESH_TYP: &str = "refresh";

/// Issues tokens for one issuer and one service.
#[derive(Debug)]
pub(crate) struct Signer {
    issuer: String,
    service: String,
    ttl_secs: u64,
    algorithm: Algorithm,
    key: EncodingKey,
    /// Certificate chain for the `x5c` header, standard base64 of each DER.
    x5c: Vec<String>,
    refresh_encoding: EncodingKey,
    refresh_decoding: DecodingKey,
}

impl Signer {
    /// A signer with key material already parsed. Production uses [`Signer::from_pem_files`].
    /// Without `refresh_secret`, refresh tokens use a random secret of this process.
    pub(crate) fn new(
        issuer: String,
        service: String,
        ttl_secs: u64,
        algorithm: Algorithm,
        key: EncodingKey,
        cert_ders: &[Vec<u8>],
        refresh_secret: Option<&[u8]>,
    ) -> Self {
        let secret = match refresh_secret {
            Some(secret) => secret.to_vec(),
            None => {
                // 32 random bytes (uuid v4 is drawn from the OS random source).
                let mut secret = Vec::with_capacity(32);
                secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                secret
            }
        };
        Self {
            issuer,
            service,
            ttl_secs,
            algorithm,
            key,
            x5c: cert_ders.iter().map(|der| STANDARD.encode(der)).collect(),
            refresh_encoding: EncodingKey::from_secret(&secret),
            refresh_decoding: DecodingKey::from_secret(&secret),
        }
    }

    /// An RS256 signer from a PEM RSA private key and a PEM certificate (chain), and
    /// optionally a file whose content is the refresh-token secret.
    pub(crate) fn from_pem_files(
        issuer: String,
        service: String,
        ttl_secs: u64,
        key_path: &Path,
        cert_path: &Path,
        refresh_secret_path: Option<&Path>,
    ) -> Result<Self> {
        let key_pem = std::fs::read(key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = EncodingKey::from_rsa_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM RSA private key", key_path.display()))?;
        let cert_pem = std::fs::read_to_string(cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let ders = certificates_from_pem(&cert_pem)
            .with_context(|| format!("bad certificate file {}", cert_path.display()))?;
        let refresh_secret = match refresh_secret_path {
            Some(path) => {
                let secret = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if secret.len() < 16 {
                    bail!("refresh secret {} is shorter than 16 bytes", path.display());
                }
                Some(secret)
            }
            None => None,
        };
        Ok(Self::new(
            issuer,
            service,
            ttl_secs,
            Algorithm::RS256,
            key,
            &ders,
            refresh_secret.as_deref(),
        ))
    }

    /// The service (JWT audience) this signer issues for.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// Lifetime of access tokens in seconds.
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs an access token for `subject` (empty for anonymous) with `access`.
    pub(crate) fn access_token(
        &self,
        subject: &str,
        access: Vec<Access>,
        now: u64,
    ) -> Result<String> {
        let mut header = Header::new(self.algorithm);
        if !self.x5c.is_empty() {
            header.x5c = Some(self.x5c.clone());
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.service.clone(),
            exp: now + self.ttl_secs,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).context("cannot sign the token")
    }

    /// Signs a refresh token for `subject`.
    pub(crate) fn refresh_token(&self, subject: &str, now: u64) -> Result<String> {
        let claims = RefreshClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.service.clone(),
            exp: now + REFRESH_TTL_SECS,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            typ: REFRESH_TYP.to_owned(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.refresh_encoding,
        )
        .context("cannot sign the refresh token")
    }

    /// The subject of a valid refresh token issued by this process.
    pub(crate) fn check_refresh_token(&self, token: &str) -> Result<String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&self.service]);
        validation.set_issuer(&[&self.issuer]);
        let data =
            jsonwebtoken::decode::<RefreshClaims>(token, &self.refresh_decoding, &validation)
                .context("invalid refresh token")?;
        if data.claims.typ != REFRESH_TYP {
            bail!("not a refresh token");
        }
        Ok(data.claims.sub)
    }
}

/// The DER bytes of every `CERTIFICATE` block of a PEM text, in order.
pub(crate) fn certificates_from_pem(pem: &str) -> Result<Vec<Vec<u8>>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut ders = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let body_and_more = &rest[start + BEGIN.len()..];
        let end = body_and_more
            .find(END)
            .context("a certificate block has no END line")?;
        let body: String = body_and_more[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .context("certificate block is not base64")?;
        if der.first() != Some(&0x30) {
            bail!("certificate block is not DER (no ASN.1 SEQUENCE)");
        }
        ders.push(der);
        rest = &body_and_more[end + END.len()..];
    }
    if ders.is_empty() {
        bail!("no {BEGIN} block found");
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs_signer() -> (Signer, DecodingKey) {
        let secret = b"test secret, test secret, test secret";
        let signer = Signer::new(
            "issuer-x".into(),
            "service-y".into(),
            300,
            Algorithm::HS256,
            EncodingKey::from_secret(secret),
            &[vec![0x30, 0x03, 0x02, 0x01, 0xfb]],
            None,
        );
        (signer, DecodingKey::from_secret(secret))
    }

    #[test]
    fn access_token_carries_the_claims_and_x5c_the_registry_needs() {
        let (signer, key) = hs_signer();
        let access = vec![Access {
            kind: "repository".into(),
            name: "team-a/app".into(),
            actions: vec!["pull".into(), "push".into()],
        }];
        let now = jsonwebtoken::get_current_timestamp();
        let token = signer
            .access_token("pusher", access.clone(), now)
            .unwrap_or_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["service-y"]);
        validation.set_issuer(&["issuer-x"]);
        let data = jsonwebtoken::decode::<Claims>(&token, &key, &validation)
            .unwrap_or_else(|e| panic!("token should verify: {e}"));
        assert_eq!(data.claims.sub, "pusher");
        assert_eq!(data.claims.access, access);
        assert_eq!(data.claims.exp, now + 300);
        assert_eq!(data.header.kid, None);
        // Standard padded base64 ("+", "/", "=" allowed), never base64url.
        assert_eq!(data.header.x5c, Some(vec!["MAMCAfs=".to_owned()]));

        // `aud` is a JSON string, not an array.
        let payload = token.split('.').nth(1).unwrap_or_default();
        let json: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(json["aud"], serde_json::json!("service-y"));
    }

    #[test]
    fn refresh_tokens_round_trip_and_access_tokens_are_not_refresh_tokens() {
        let (signer, _) = hs_signer();
        let now = jsonwebtoken::get_current_timestamp();
        let refresh = signer.refresh_token("pusher", now).unwrap_or_default();
        assert_eq!(
            signer.check_refresh_token(&refresh).ok().as_deref(),
            Some("pusher")
        );
        assert!(signer.check_refresh_token("garbage").is_err());
        let (other, _) = hs_signer();
        assert!(
            other.check_refresh_token(&refresh).is_err(),
            "random secret per signer"
        );
        let fixed = |secret: &[u8]| {
            Signer::new(
                "issuer-x".into(),
                "service-y".into(),
                300,
                Algorithm::HS256,
                EncodingKey::from_secret(b"k"),
                &[],
                Some(secret),
            )
        };
        let before_restart = fixed(b"0123456789abcdef")
            .refresh_token("pusher", now)
            .unwrap_or_default();
        let after_restart = fixed(b"0123456789abcdef");
        assert_eq!(
            after_restart
                .check_refresh_token(&before_restart)
                .ok()
                .as_deref(),
            Some("pusher")
        );
        assert!(
            fixed(b"fedcba9876543210")
                .check_refresh_token(&before_restart)
                .is_err()
        );
    }

    #[test]
    fn certificate_pem_is_decoded_to_der() {
        // Base64 of a tiny DER SEQUENCE, split over lines as PEM does.
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nMAMC\nAfs=\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let ders = certificates_from_pem(pem).unwrap_or_default();
        assert_eq!(
            ders,
            vec![vec![0x30, 0x03, 0x02, 0x01, 0xfb], vec![0x30, 0x00]]
        );
        assert!(certificates_from_pem("").is_err());
        assert!(certificates_from_pem("-----BEGIN CERTIFICATE-----\nMAA=\n").is_err());
        assert!(
            certificates_from_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----")
                .is_err()
        );
        assert!(
            certificates_from_pem("-----BEGIN CERTIFICATE-----\nAAA=\n-----END CERTIFICATE-----")
                .is_err()
        );
    }
}
