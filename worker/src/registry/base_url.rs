//! The one rule for a registry's base URL, used by the configuration and by the client.

use url::Url;

/// Checks that `url` is a registry's base URL: `http` or `https`, a host, no credentials, no
/// path (other than `/`), query or fragment. The message never repeats credentials.
pub fn check_base_url(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be https (or http), not `{}`",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL must not contain credentials: use username and password_file \
             or password_env"
                .to_owned(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if !matches!(url.path(), "" | "/") {
        return Err(format!(
            "the URL must not have a path (found `{}`): image references carry only \
             host[:port], and the registry API is always at /v2/",
            url.path()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_base_url;
    use url::Url;

    #[test]
    fn base_urls() {
        let ok = ["https://harbor.example.com", "http://127.0.0.1:5001/"];
        for u in ok {
            assert_eq!(check_base_url(&Url::parse(u).expect("url")), Ok(()), "{u}");
        }
        let bad = [
            ("ftp://x", "scheme"),
            ("https://u:secret@x", "credentials"),
            ("https://x/v2/", "path"),
            ("https://x/?a=1", "query"),
            ("https://x/#f", "fragment"),
        ];
        for (u, what) in bad {
            let e = check_base_url(&Url::parse(u).expect("url")).expect_err(u);
            assert!(e.contains(what), "{u}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
