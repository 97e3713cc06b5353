//! Bearer-token authentication: the token itself, the per-call check and
//! the Flight `Handshake` that trades HTTP basic credentials for it.
//!
//! One shared secret guards the server. Every Flight call must carry
//! `authorization: Bearer <token>`; the `Handshake` RPC accepts
//! `authorization: Basic base64(user:password)` whose *password* is the
//! token (the user name is free: it only appears in logs) and answers with
//! `authorization: Bearer <token>` in its response headers, which is what
//! pyarrow's `FlightClient.authenticate_basic_token(user, password)` reads
//! and hands back as call headers. Comparisons run in constant time over
//! the token's bytes (only a length mismatch returns early).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

/// The header the credentials travel in (gRPC metadata keys are lowercase).
pub const AUTHORIZATION: &str = "authorization";

/// Why a token could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is empty (after trimming surrounding whitespace).
    #[error("the auth token is empty")]
    Empty,
    /// The token holds characters that cannot travel in an HTTP header.
    #[error("the auth token must be visible ASCII without spaces")]
    NotPrintable,
}

/// The server's shared secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct AuthToken(Arc<str>);

impl AuthToken {
    /// A token from its text; surrounding whitespace (a token file's final
    /// newline) is dropped.
    pub fn new(token: &str) -> Result<Self, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::NotPrintable);
        }
        Ok(Self(token.into()))
    }

    /// Whether `candidate` equals the token, in time independent of where
    /// they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }

    /// The `authorization` header value clients send: `Bearer <token>`.
    pub fn bearer_header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// Credentials found in an `authorization` header.
enum Credentials<'a> {
    Bearer(&'a [u8]),
    /// Decoded `user:password`.
    Basic(Vec<u8>),
}

fn credentials(value: &[u8]) -> Option<Credentials<'_>> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(Credentials::Bearer(rest))
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .map(Credentials::Basic)
    } else {
        None
    }
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(format!(
        "{why}: send `authorization: Bearer <token>`, or call Handshake with basic \
         credentials whose password is the token"
    ))
}

/// Checks a call's bearer token. `Ok` when no token is configured.
pub fn check_bearer(token: Option<&AuthToken>, headers: &http::HeaderMap) -> Result<(), Status> {
    let Some(token) = token else { return Ok(()) };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthenticated("missing credentials"));
    };
    match credentials(value.as_bytes()) {
        Some(Credentials::Bearer(candidate)) if token.matches(candidate) => Ok(()),
        _ => Err(unauthenticated("invalid credentials")),
    }
}

/// The `Handshake` RPC: checks basic (password = token) or bearer
/// credentials and returns the `authorization` value to send back in the
/// response headers. Without a configured token the handshake succeeds and
/// returns nothing.
pub fn handshake(
    token: Option<&AuthToken>,
    metadata: &MetadataMap,
) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, Status> {
    let Some(token) = token else { return Ok(None) };
    let value = metadata
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthenticated("Handshake without credentials"))?;
    let ok = match credentials(value.as_bytes()) {
        Some(Credentials::Bearer(candidate)) => token.matches(candidate),
        Some(Credentials::Basic(pair)) => {
            let password = pair
                .iter()
                .position(|&b| b == b':')
                .map_or(&[][..], |colon| &pair[colon + 1..]);
            token.matches(password)
        }
        None => false,
    };
    if !ok {
        return Err(unauthenticated("invalid credentials"));
    }
    let bearer = MetadataValue::try_from(token.bearer_header())
        .map_err(|e| Status::internal(format!("the token cannot be sent as a header: {e}")))?;
    Ok(Some(bearer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> String {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    }

    #[test]
    fn tokens_are_trimmed_validated_and_redacted() {
        let token = AuthToken::new("  s3cret\n").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret2"));
        assert!(matches!(AuthToken::new(" \n"), Err(AuthError::Empty)));
        assert!(matches!(
            AuthToken::new("a b"),
            Err(AuthError::NotPrintable)
        ));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_check() {
        let token = AuthToken::new("s3cret").unwrap();
        assert!(check_bearer(None, &http::HeaderMap::new()).is_ok());
        assert!(check_bearer(Some(&token), &headers("Bearer s3cret")).is_ok());
        assert!(check_bearer(Some(&token), &headers("bearer s3cret")).is_ok());
        for bad in ["Bearer nope", "Bearer ", "s3cret", &basic("u", "s3cret")] {
            let err = check_bearer(Some(&token), &headers(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let err = check_bearer(Some(&token), &http::HeaderMap::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn handshake_trades_basic_for_bearer() {
        let token = AuthToken::new("s3cret").unwrap();
        let meta = |v: &str| MetadataMap::from_headers(headers(v));
        let answer = handshake(Some(&token), &meta(&basic("anyone", "s3cret")))
            .unwrap()
            .unwrap();
        assert_eq!(answer.to_str().unwrap(), "Bearer s3cret");
        assert!(handshake(Some(&token), &meta("Bearer s3cret")).is_ok());
        for bad in [
            basic("s3cret", "x"),
            basic("u", "s3cre"),
            "Basic !!!".into(),
        ] {
            let err = handshake(Some(&token), &meta(&bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert!(handshake(Some(&token), &MetadataMap::new()).is_err());
        assert!(handshake(None, &MetadataMap::new()).unwrap().is_none());
    }
}
