//! Bearer-token authentication: the tokens, the per-call check (which also
//! decides the call's [`Role`]) and the Flight `Handshake` that trades HTTP
//! basic credentials for a token.
//!
//! Two secrets, two roles. The *user* token (`--auth-token-file`) admits
//! the data plane: `DoExchange`, `DoGet`, listing and reading datasets,
//! side questions. The *operator* token (`--operator-token-file`) admits
//! that and the administrative calls (`register_dataset`, `DoPut`). With no
//! user token the data plane is open; with no operator token either,
//! everything is (a loopback development server). Every Flight call
//! carries `authorization: Bearer <token>`; the `Handshake` RPC accepts
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

    /// Whether both tokens are the same secret.
    pub fn same_secret(&self, other: &AuthToken) -> bool {
        self.matches(other.0.as_bytes())
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
/// What a call may do, from the token it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The data plane: exchanges, dataset reads, side questions.
    User,
    /// The data plane and the administrative calls (`register_dataset`,
    /// `DoPut`).
    Operator,
}

/// The call's role from its `authorization` header, given the user and
/// operator tokens the server was started with (see the module docs).
///
/// # Errors
/// `UNAUTHENTICATED` when a user token is configured and the call carries
/// neither it nor the operator token.
pub fn authorize(
    user: Option<&AuthToken>,
    operator: Option<&AuthToken>,
    headers: &http::HeaderMap,
) -> Result<Role, Status> {
    let value = headers.get(AUTHORIZATION);
    let bearer = value.and_then(|v| match credentials(v.as_bytes()) {
        Some(Credentials::Bearer(candidate)) => Some(candidate),
        _ => None,
    });
    if let (Some(operator), Some(candidate)) = (operator, bearer) {
        if operator.matches(candidate) {
            return Ok(Role::Operator);
        }
    }
    match (user, bearer) {
        (Some(user), Some(candidate)) if user.matches(candidate) => Ok(Role::User),
        (Some(_), _) if value.is_none() => Err(unauthenticated("missing credentials")),
        (Some(_), _) => Err(unauthenticated("invalid credentials")),
        (None, _) if operator.is_some() => Ok(Role::User),
        (None, _) => Ok(Role::Operator),
    }
}

/// Refuses an administrative call (`what`) made without the operator role.
pub fn require_operator(role: Role, what: &str) -> Result<(), Status> {
    match role {
        Role::Operator => Ok(()),
        Role::User => Err(Status::permission_denied(format!(
            "{what} is an administrative call: it needs the operator token \
             (--operator-token-file), not the user token"
        ))),
    }
}

/// The `Handshake` RPC: checks basic (password = token) or bearer
/// credentials and returns the `authorization` value to send back in the
/// response headers. Without a configured token the handshake succeeds and
/// returns nothing.
pub fn handshake(
    user: Option<&AuthToken>,
    operator: Option<&AuthToken>,
    metadata: &MetadataMap,
) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, Status> {
    if user.is_none() && operator.is_none() {
        return Ok(None);
    }
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return match user {
            Some(_) => Err(unauthenticated("Handshake without credentials")),
            None => Ok(None),
        };
    };
    let secret = match credentials(value.as_bytes()) {
        Some(Credentials::Bearer(candidate)) => candidate.to_vec(),
        Some(Credentials::Basic(pair)) => pair
            .iter()
            .position(|&b| b == b':')
            .map_or(Vec::new(), |colon| pair[colon + 1..].to_vec()),
        None => Vec::new(),
    };
    let Some(token) = [operator, user]
        .into_iter()
        .flatten()
        .find(|t| t.matches(&secret))
    else {
        return Err(unauthenticated("invalid credentials"));
    };
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
    fn bearer_check_decides_the_role() {
        let user = AuthToken::new("s3cret").unwrap();
        let op = AuthToken::new("0p3rator").unwrap();
        let none = http::HeaderMap::new();
        let role = |u, o, h: &http::HeaderMap| authorize(u, o, h);
        // No tokens: everything open.
        assert_eq!(role(None, None, &none).unwrap(), Role::Operator);
        // A user token only: it admits the data plane, nothing more.
        assert_eq!(
            role(Some(&user), None, &headers("Bearer s3cret")).unwrap(),
            Role::User
        );
        assert_eq!(
            role(Some(&user), None, &headers("bearer s3cret")).unwrap(),
            Role::User
        );
        for bad in [
            "Bearer nope",
            "Bearer ",
            "s3cret",
            &basic("u", "s3cret"),
            "Bearer 0p3rator",
        ] {
            let err = role(Some(&user), None, &headers(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let err = role(Some(&user), None, &none).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Both: the operator token is the operator, the user token a user.
        let both = |h: &http::HeaderMap| role(Some(&user), Some(&op), h);
        assert_eq!(both(&headers("Bearer 0p3rator")).unwrap(), Role::Operator);
        assert_eq!(both(&headers("Bearer s3cret")).unwrap(), Role::User);
        assert!(both(&none).is_err() && both(&headers("Bearer x")).is_err());
        // An operator token only: the data plane is open, administration not.
        assert_eq!(role(None, Some(&op), &none).unwrap(), Role::User);
        assert_eq!(
            role(None, Some(&op), &headers("Bearer x")).unwrap(),
            Role::User
        );
        assert_eq!(
            role(None, Some(&op), &headers("Bearer 0p3rator")).unwrap(),
            Role::Operator
        );
        let denied = require_operator(Role::User, "DoPut").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(require_operator(Role::Operator, "DoPut").is_ok());
    }

    #[test]
    fn handshake_trades_basic_for_bearer() {
        let token = AuthToken::new("s3cret").unwrap();
        let meta = |v: &str| MetadataMap::from_headers(headers(v));
        let answer = handshake(Some(&token), None, &meta(&basic("anyone", "s3cret")))
            .unwrap()
            .unwrap();
        assert_eq!(answer.to_str().unwrap(), "Bearer s3cret");
        assert!(handshake(Some(&token), None, &meta("Bearer s3cret")).is_ok());
        for bad in [
            basic("s3cret", "x"),
            basic("u", "s3cre"),
            "Basic !!!".into(),
        ] {
            let err = handshake(Some(&token), None, &meta(&bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert!(handshake(Some(&token), None, &MetadataMap::new()).is_err());
        assert!(handshake(None, None, &MetadataMap::new())
            .unwrap()
            .is_none());
        // The operator's password earns the operator's token.
        let op = AuthToken::new("0p3rator").unwrap();
        let answer = handshake(Some(&token), Some(&op), &meta(&basic("ops", "0p3rator")))
            .unwrap()
            .unwrap();
        assert_eq!(answer.to_str().unwrap(), "Bearer 0p3rator");
    }
}
