//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1, the grammar of RFC 7235), as a pure function.
//!
//! A registry answers `401` with a challenge that says how to authenticate:
//! `Basic realm="Registry Realm"` (htpasswd) or
//! `Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push"`
//! (Harbor, GitLab, Docker Hub, distribution with `auth: token:`), optionally with
//! `error="insufficient_scope"` or `error="invalid_token"`.
//!
//! The grammar is `1#challenge`, `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`,
//! `auth-param = token BWS "=" BWS ( token / quoted-string )`. Scheme and parameter names are
//! case-insensitive, values are not; quoted strings may hold commas, `=` and `\"` escapes, and
//! one header may hold several challenges (`Basic realm="a", Bearer realm="b"`).
//!
//! One leniency on purpose: an unquoted value is read up to the next comma or white space, so
//! `realm=https://auth.example/token` (not a valid `token`) is accepted. IBM Cloud Container
//! Registry answers `Bearer realm=https://cp.icr.io/oauth/token, service=registry` (see
//! ceph/ceph#69900; regclient/regclient#266 loosened its parser the same way). That is why
//! this parser is our own: `http-auth` 0.1.10, the maintained RFC 7235 parser, rejects that
//! header at the `:` ("invalid byte"), and a strict parse would make such a registry unusable.

use std::fmt;

/// One challenge of a `WWW-Authenticate` header, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawChallenge {
    /// The auth scheme, lowercased (`basic`, `bearer`).
    pub(crate) scheme: String,
    /// `(name lowercased, value unescaped)` in header order.
    pub(crate) params: Vec<(String, String)>,
    /// A `token68` instead of parameters (e.g. `Negotiate abc==`).
    pub(crate) token68: Option<String>,
}

impl RawChallenge {
    /// The first value of parameter `name` (give it lowercased).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a `WWW-Authenticate` value could not be parsed; `at` is a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChallengeSyntaxError {
    pub(crate) at: usize,
    pub(crate) what: &'static str,
}

impl fmt::Display for ChallengeSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Parses one `WWW-Authenticate` header value into its challenges (an empty or all-comma
/// value gives none).
pub(crate) fn parse_www_authenticate(
    header: &str,
) -> Result<Vec<RawChallenge>, ChallengeSyntaxError> {
    let mut p = Parser {
        s: header.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_ws_and_commas();
        if p.at_end() {
            return Ok(out);
        }
        let scheme = p.token();
        if scheme.is_empty() {
            return Err(p.error("expected an auth scheme"));
        }
        let mut challenge = RawChallenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
            token68: None,
        };
        // Right after the scheme (separated by spaces, not a comma): a token68 or the first param.
        let had_space = p.skip_ws();
        if !p.at_end() && p.peek() != Some(b',') {
            if !had_space {
                return Err(p.error("expected white space after the auth scheme"));
            }
            let name = p.token68_chars();
            if name.is_empty() {
                return Err(p.error("expected a parameter or token68"));
            }
            p.skip_ws();
            let equals = p.count(b'=');
            p.skip_ws();
            if equals == 1 && !p.at_end() && p.peek() != Some(b',') {
                let value = p.value()?;
                challenge.params.push((name.to_ascii_lowercase(), value));
            } else {
                challenge.token68 = Some(format!("{name}{}", "=".repeat(equals)));
            }
        }
        // Further parameters, comma-separated, until something that is not `name=`.
        loop {
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if p.peek() != Some(b',') {
                return Err(p.error("expected `,` between parameters"));
            }
            p.skip_ws_and_commas();
            if p.at_end() {
                break;
            }
            let before = p.pos;
            let name = p.token();
            if name.is_empty() {
                return Err(p.error("expected a parameter name or an auth scheme"));
            }
            p.skip_ws();
            if p.peek() != Some(b'=') {
                // Not a parameter: the next challenge starts here.
                p.pos = before;
                break;
            }
            if challenge.token68.is_some() {
                return Err(p.error("parameters after a token68"));
            }
            p.pos += 1;
            p.skip_ws();
            let value = p.value()?;
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        out.push(challenge);
    }
}

/// Parses every `WWW-Authenticate` header of a response (several header lines add up).
pub(crate) fn parse_all<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<RawChallenge>, ChallengeSyntaxError> {
    let mut out = Vec::new();
    for value in values {
        out.extend(parse_www_authenticate(value)?);
    }
    Ok(out)
}

/// The challenge pushfleet acts on, chosen from a response's challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP Basic: send `Authorization: Basic` on every request.
    Basic,
    /// The token protocol: fetch a token from `realm` with `service` and a scope.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        error: Option<String>,
    },
}

/// Why no usable challenge came with a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChallengeError {
    /// No `WWW-Authenticate` header (or an empty one).
    Missing,
    /// The header does not follow the grammar.
    Syntax(ChallengeSyntaxError),
    /// Only schemes pushfleet does not speak (e.g. `Negotiate`).
    Unsupported(Vec<String>),
    /// A `Bearer` challenge without a `realm` to ask for a token.
    BearerWithoutRealm,
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("401 without a WWW-Authenticate challenge"),
            Self::Syntax(e) => write!(f, "unparsable WWW-Authenticate challenge: {e}"),
            Self::Unsupported(schemes) => write!(
                f,
                "unsupported WWW-Authenticate scheme(s) {}: only Basic and Bearer are supported",
                schemes.join(", ")
            ),
            Self::BearerWithoutRealm => f.write_str("Bearer challenge without a realm"),
        }
    }
}

/// Picks the challenge to act on: Bearer if offered (it carries scopes), else Basic.
pub(crate) fn select(challenges: &[RawChallenge]) -> Result<Challenge, ChallengeError> {
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
        let realm = bearer
            .param("realm")
            .filter(|r| !r.trim().is_empty())
            .ok_or(ChallengeError::BearerWithoutRealm)?;
        let owned = |name: &str| bearer.param(name).map(str::to_owned);
        return Ok(Challenge::Bearer {
            realm: realm.trim().to_owned(),
            service: owned("service"),
            scope: owned("scope"),
            error: owned("error"),
        });
    }
    if challenges.iter().any(|c| c.scheme == "basic") {
        return Ok(Challenge::Basic);
    }
    if challenges.is_empty() {
        Err(ChallengeError::Missing)
    } else {
        Err(ChallengeError::Unsupported(
            challenges.iter().map(|c| c.scheme.clone()).collect(),
        ))
    }
}

/// Parses the header values and selects the challenge in one step.
pub(crate) fn challenge_from_headers<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Challenge, ChallengeError> {
    let parsed = parse_all(values).map_err(ChallengeError::Syntax)?;
    select(&parsed)
}

/// The `error` parameter of a Bearer challenge, if any (`insufficient_scope`, `invalid_token`).
pub(crate) fn bearer_error<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    match challenge_from_headers(values) {
        Ok(Challenge::Bearer { error, .. }) => error,
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn error(&self, what: &'static str) -> ChallengeSyntaxError {
        ChallengeSyntaxError { at: self.pos, what }
    }

    /// Skips spaces and tabs; says whether there were any.
    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn count(&mut self, b: u8) -> usize {
        let start = self.pos;
        while self.peek() == Some(b) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    fn token(&mut self) -> String {
        self.take_while(is_tchar)
    }

    /// Characters of a token68 without its trailing `=` padding (a token plus `/`).
    fn token68_chars(&mut self) -> String {
        self.take_while(|b| is_tchar(b) || b == b'/')
    }

    /// A parameter value: a quoted string, or (leniently) anything up to `,` or white space.
    fn value(&mut self) -> Result<String, ChallengeSyntaxError> {
        if self.peek() != Some(b'"') {
            let v = self.take_while(|b| !matches!(b, b',' | b' ' | b'\t' | b'"'));
            if v.is_empty() {
                return Err(self.error("expected a parameter value"));
            }
            return Ok(v);
        }
        let open = self.pos;
        self.pos += 1;
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ChallengeSyntaxError {
                        at: open,
                        what: "unterminated quoted string",
                    });
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&bytes).into_owned());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => {
                            bytes.push(c);
                            self.pos += 1;
                        }
                        None => {
                            return Err(ChallengeSyntaxError {
                                at: open,
                                what: "unterminated quoted string",
                            });
                        }
                    }
                }
                Some(c) => {
                    bytes.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> RawChallenge {
        let mut all = parse_www_authenticate(header).expect("parses");
        assert_eq!(all.len(), 1, "one challenge in {header:?}: {all:?}");
        all.remove(0)
    }

    fn params(c: &RawChallenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn bearer_realm_and_service() {
        let c =
            one(r#"Bearer realm="https://auth.example.com/token",service="registry.example.com""#);
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            params(&c),
            [
                ("realm", "https://auth.example.com/token"),
                ("service", "registry.example.com")
            ]
        );
        assert_eq!(c.token68, None);
    }

    #[test]
    fn insufficient_scope_with_commas_inside_quotes() {
        let h = r#"Bearer realm="http://127.0.0.1:5003/token",service="pushfleet",scope="repository:a/b:push,pull",error="insufficient_scope""#;
        let c = one(h);
        assert_eq!(
            params(&c),
            [
                ("realm", "http://127.0.0.1:5003/token"),
                ("service", "pushfleet"),
                ("scope", "repository:a/b:push,pull"),
                ("error", "insufficient_scope"),
            ]
        );
        assert_eq!(
            challenge_from_headers([h]),
            Ok(Challenge::Bearer {
                realm: "http://127.0.0.1:5003/token".into(),
                service: Some("pushfleet".into()),
                scope: Some("repository:a/b:push,pull".into()),
                error: Some("insufficient_scope".into()),
            })
        );
        assert_eq!(bearer_error([h]).as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn basic_realm_with_spaces() {
        let c = one(r#"Basic realm="Registry Realm""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(params(&c), [("realm", "Registry Realm")]);
        assert_eq!(select(&[c]), Ok(Challenge::Basic));
    }

    #[test]
    fn scheme_and_parameter_names_are_case_insensitive_values_are_not() {
        let c = one(r#"BEARER Realm="http://A/Token",SERVICE="Svc""#);
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            params(&c),
            [("realm", "http://A/Token"), ("service", "Svc")]
        );
        assert_eq!(one("bAsIc realm=x").scheme, "basic");
    }

    #[test]
    fn white_space_around_equals_and_commas() {
        let c = one("Bearer  realm = \"r\" ,\tservice= \"s\" , scope =\"repository:x:pull\"");
        assert_eq!(
            params(&c),
            [
                ("realm", "r"),
                ("service", "s"),
                ("scope", "repository:x:pull")
            ]
        );
    }

    #[test]
    fn unquoted_values_are_accepted_leniently() {
        let c = one("Bearer realm=https://auth.example/token?x=1,service=registry");
        assert_eq!(
            params(&c),
            [
                ("realm", "https://auth.example/token?x=1"),
                ("service", "registry")
            ]
        );
        // IBM Cloud Container Registry's form, a space after the comma.
        assert_eq!(
            challenge_from_headers([
                "Bearer realm=https://cp.icr.io/oauth/token, service=registry"
            ]),
            Ok(Challenge::Bearer {
                realm: "https://cp.icr.io/oauth/token".into(),
                service: Some("registry".into()),
                scope: None,
                error: None,
            })
        );
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let c = one(r#"Basic realm="say \"hi\" \\ there""#);
        assert_eq!(params(&c), [("realm", r#"say "hi" \ there"#)]);
    }

    #[test]
    fn equals_and_commas_inside_quotes_do_not_split() {
        let c = one(r#"Bearer realm="https://a/token?x=1,y=2",service="s""#);
        assert_eq!(
            params(&c),
            [("realm", "https://a/token?x=1,y=2"), ("service", "s")]
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        let all =
            parse_www_authenticate(r#"Basic realm="a", Bearer realm="b",service="c""#).expect("ok");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "basic");
        assert_eq!(params(&all[0]), [("realm", "a")]);
        assert_eq!(all[1].scheme, "bearer");
        assert_eq!(params(&all[1]), [("realm", "b"), ("service", "c")]);
        // Bearer wins when both are offered.
        assert!(matches!(select(&all), Ok(Challenge::Bearer { realm, .. }) if realm == "b"));
    }

    #[test]
    fn several_header_lines_add_up() {
        let all = parse_all(["Negotiate", r#"Basic realm="x""#]).expect("ok");
        assert_eq!(all.len(), 2);
        assert_eq!(select(&all), Ok(Challenge::Basic));
    }

    #[test]
    fn token68_challenge() {
        let c = one("Negotiate abc/12+3==");
        assert_eq!(c.scheme, "negotiate");
        assert_eq!(c.token68.as_deref(), Some("abc/12+3=="));
        assert!(c.params.is_empty());
        let all = parse_www_authenticate("Negotiate abc=, Basic realm=\"r\"").expect("ok");
        assert_eq!(all[0].token68.as_deref(), Some("abc="));
        assert_eq!(all[1].scheme, "basic");
    }

    #[test]
    fn scheme_alone_and_empty_list_elements() {
        // `#auth-param` allows empty list elements, also before the first parameter.
        let all = parse_www_authenticate(" , Bearer ,realm=\"x\",, service=\"y\",").expect("ok");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].scheme, "bearer");
        assert_eq!(params(&all[0]), [("realm", "x"), ("service", "y")]);
        // A scheme with no parameters, followed by another challenge.
        let all = parse_www_authenticate(r#"Negotiate, Basic realm="r""#).expect("ok");
        assert_eq!(all.len(), 2);
        assert!(all[0].params.is_empty() && all[0].token68.is_none());
        assert_eq!(params(&all[1]), [("realm", "r")]);
    }

    #[test]
    fn empty_header_has_no_challenges() {
        assert_eq!(parse_www_authenticate(""), Ok(vec![]));
        assert_eq!(parse_www_authenticate(" ,, "), Ok(vec![]));
        assert_eq!(challenge_from_headers([""]), Err(ChallengeError::Missing));
        assert_eq!(
            challenge_from_headers(std::iter::empty()),
            Err(ChallengeError::Missing)
        );
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let e = parse_www_authenticate(r#"Bearer realm="http://x/token,service="s"#);
        // The quote opened at `realm="` swallows up to the quote before `s`, then `s"` opens
        // another quoted string that never ends.
        assert!(e.is_err(), "{e:?}");
        let e = parse_www_authenticate(r#"Basic realm="abc"#).expect_err("unterminated");
        assert_eq!(e.what, "unterminated quoted string");
        assert_eq!(e.at, 12);
        assert!(parse_www_authenticate(r#"Basic realm="abc\"#).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_www_authenticate(r#"="x""#).is_err());
        assert!(parse_www_authenticate(r#"Bearer realm="x" junk"#).is_err());
        // `realm=` with no value reads as a token68, which leaves Bearer without a realm.
        assert_eq!(one("Bearer realm=").token68.as_deref(), Some("realm="));
        assert_eq!(
            challenge_from_headers(["Bearer realm="]),
            Err(ChallengeError::BearerWithoutRealm)
        );
        assert!(parse_www_authenticate("Bearer\"realm\"").is_err());
        assert!(matches!(
            challenge_from_headers([r#"Bearer realm="x" junk"#]),
            Err(ChallengeError::Syntax(_))
        ));
    }

    #[test]
    fn bearer_needs_a_realm() {
        assert_eq!(
            challenge_from_headers([r#"Bearer service="s""#]),
            Err(ChallengeError::BearerWithoutRealm)
        );
        assert_eq!(
            challenge_from_headers([r#"Bearer realm="  ""#]),
            Err(ChallengeError::BearerWithoutRealm)
        );
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let e = challenge_from_headers(["Negotiate, NTLM"]).expect_err("unsupported");
        assert_eq!(
            e,
            ChallengeError::Unsupported(vec!["negotiate".into(), "ntlm".into()])
        );
        assert!(e.to_string().contains("negotiate, ntlm"), "{e}");
    }

    #[test]
    fn invalid_token_error_and_duplicate_params() {
        let h = r#"Bearer realm="r",error="invalid_token",error="other""#;
        assert_eq!(bearer_error([h]).as_deref(), Some("invalid_token"));
        assert_eq!(bearer_error([r#"Basic realm="r""#]), None);
    }

    #[test]
    fn non_ascii_in_quoted_values_survives() {
        let c = one("Basic realm=\"Régistry\"");
        assert_eq!(params(&c), [("realm", "Régistry")]);
    }
}
