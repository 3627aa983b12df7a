//! The profile API's bearer token.
//!
//! `GET /v1/profiles/{id}` returns personal data, so when `http.listen` is
//! reachable beyond this host (anything but 127.0.0.0/8 and ::1) a token is
//! required: `http.token_file` (e.g. a mounted Kubernetes Secret) or
//! `http.token_env`; a literal token in the configuration file is refused. A
//! configuration that listens beyond loopback without a token is refused at
//! start-up, naming the file and line of `http.listen`. Clients send
//! `Authorization: Bearer <token>`; without it (or with another token) the answer
//! is `401`. `/metrics`, `/healthz` and `/readyz` stay open: Prometheus and the
//! kubelet's probes read them, and they hold no personal data.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::HttpConfig;

/// The shortest token accepted, bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// True when `addr` is reachable from this host only (127.0.0.0/8, ::1).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Checks the token settings of `[http]` without reading the token; returns
/// the offending key and a message.
pub fn validate(http: &HttpConfig) -> Result<(), (&'static str, String)> {
    if http.token.is_some() {
        return Err((
            "http.token",
            "a token in the configuration file would be copied wherever the file goes; put it in a file (token_file) or an environment variable (token_env)".into(),
        ));
    }
    if http.token_file.is_some() && http.token_env.is_some() {
        return Err((
            "http.token_env",
            "set token_file or token_env, not both".into(),
        ));
    }
    let open = http.token_file.is_none() && http.token_env.is_none();
    match http.addr() {
        Some(addr) if open && !is_loopback(&addr) => Err((
            "http.listen",
            format!(
                "{addr} is reachable beyond this host and the profile API returns personal data; set http.token_file or http.token_env (clients then send `Authorization: Bearer <token>`), or listen on 127.0.0.1"
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads the configured token (`None` when none is configured). Errors name
/// the key that points at the missing, empty or short token.
pub fn load(http: &HttpConfig) -> Result<Option<BearerToken>, (&'static str, String)> {
    let (key, token) = match (&http.token_file, &http.token_env) {
        (Some(path), _) => (
            "http.token_file",
            std::fs::read_to_string(path)
                .map_err(|e| ("http.token_file", format!("cannot read {path:?}: {e}")))?,
        ),
        (None, Some(var)) => ("http.token_env", std::env::var(var).unwrap_or_default()),
        (None, None) => return Ok(None),
    };
    let token = token.trim();
    if token.len() < MIN_TOKEN_BYTES {
        let what = match (&http.token_file, &http.token_env) {
            (Some(path), _) => format!("{path:?}"),
            (_, Some(var)) => format!("${var}"),
            _ => String::new(),
        };
        let why = if token.is_empty() {
            "is missing or empty".to_owned()
        } else {
            format!("holds {} bytes", token.len())
        };
        return Err((
            key,
            format!("{what} {why}; the token must have at least {MIN_TOKEN_BYTES} bytes (e.g. `head -c 32 /dev/urandom | base64`)"),
        ));
    }
    Ok(Some(BearerToken::new(token)))
}

/// The token the profile API expects, kept as its SHA-256 digest so that every
/// comparison takes the same time whatever the presented token.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// The token `token`.
    pub fn new(token: &str) -> Self {
        BearerToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// True when `headers` carry `Authorization: Bearer <this token>`, compared
    /// in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(presented) = presented else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The `401` to answer when `token` is set and `headers` do not carry it;
/// `None`: let the request through.
pub fn refusal(token: Option<&BearerToken>, headers: &HeaderMap) -> Option<Response> {
    token.filter(|t| !t.admits(headers))?;
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"rapport\"")],
            "the profile API needs `Authorization: Bearer <token>` (http.token_file or http.token_env)\n",
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(s: &str) -> Result<crate::Config, crate::config::ConfigError> {
        crate::Config::parse(s, Path::new("rapport.toml"))
    }

    #[test]
    fn loopback_is_127_slash_8_and_ipv6_one() {
        for a in [
            "127.0.0.1:1",
            "127.3.2.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&a.parse().unwrap()), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "10.0.0.5:1",
            "[::]:1",
            "192.168.1.2:1",
            "[fe80::1]:1",
        ] {
            assert!(!is_loopback(&a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn listening_beyond_loopback_needs_a_token() {
        let e =
            parse("[kafka]\ngroup_id = \"g\"\n\n[http]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("rapport.toml:5: http.listen"),
            "{e}"
        );
        assert!(e.message.contains("token_file"), "{e}");
        parse("[http]\nlisten = \"0.0.0.0:9464\"\ntoken_env = \"RAPPORT_HTTP_TOKEN\"\n").unwrap();
        parse("[http]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        parse("[http]\nlisten = \"\"\n").unwrap();
    }

    #[test]
    fn a_literal_token_is_refused() {
        let e = parse("[http]\nlisten = \"0.0.0.0:9464\"\ntoken = \"open sesame\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("token_env"), "{e}");
        let e = parse("[http]\ntoken_file = \"t\"\ntoken_env = \"T\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    fn h_ok() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer a-token-of-enough-bytes".parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_missing_or_short_token_is_refused_at_start() {
        let mut http = HttpConfig {
            token_env: Some("RAPPORT_TEST_TOKEN_THAT_IS_NOT_SET".into()),
            ..HttpConfig::default()
        };
        let (key, why) = load(&http).unwrap_err();
        assert_eq!(key, "http.token_env");
        assert!(
            why.contains("$RAPPORT_TEST_TOKEN_THAT_IS_NOT_SET is missing"),
            "{why}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "short\n").unwrap();
        http.token_env = None;
        http.token_file = Some(file.display().to_string());
        assert!(load(&http).unwrap_err().1.contains("holds 5 bytes"));
        std::fs::write(&file, "a-token-of-enough-bytes\n").unwrap();
        let t = load(&http).unwrap().unwrap();
        let mut h = HeaderMap::new();
        assert!(!t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer a-token-of-enough-bytes".parse().unwrap(),
        );
        assert!(t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "bearer a-token-of-enough-bytes".parse().unwrap(),
        );
        assert!(t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "Bearer a-token-of-enough-byte".parse().unwrap(),
        );
        assert!(!t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            "Basic a-token-of-enough-bytes".parse().unwrap(),
        );
        assert!(!t.admits(&h));
        assert!(refusal(None, &HeaderMap::new()).is_none());
        assert!(refusal(Some(&t), &h_ok()).is_none());
        let r = refusal(Some(&t), &HeaderMap::new()).unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
