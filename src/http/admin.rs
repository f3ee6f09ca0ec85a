//! Who may change the denylist.
//!
//! Changing the denylist stops notifications for whole databases, so it
//! must not be open to anyone who can reach the port (oplogtoredis has no
//! protection). Without `OTR_HTTP_ADMIN_TOKEN` only loopback clients may
//! change it (an operator on the host or a sidecar); with it, any client
//! that presents the token may. Reading stays open, as in oplogtoredis.
//! Behind a reverse proxy on the same host every client looks local: set a
//! token there.

use std::net::IpAddr;

use crate::config::Secret;

/// Whether a state-changing request from `peer` carrying the
/// `Authorization` header `authorization` is allowed.
pub fn is_authorized(token: Option<&Secret>, peer: IpAddr, authorization: Option<&[u8]>) -> bool {
    match token {
        None => peer.to_canonical().is_loopback(),
        Some(token) => authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .is_some_and(|given| constant_time_eq(given, token.expose_secret().as_bytes())),
    }
}

/// Compares without stopping at the first difference, so response timing
/// does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_table() {
        let token = Secret::new("s3cr3t");
        let local4: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        let remote_mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        type Case<'a> = (Option<&'a Secret>, IpAddr, Option<&'a [u8]>, bool);
        let cases: &[Case] = &[
            (None, local4, None, true),
            (None, local6, None, true),
            (None, mapped, None, true),
            (None, remote, None, false),
            (None, remote_mapped, None, false),
            (None, remote, Some(b"Bearer anything"), false),
            (Some(&token), remote, Some(b"Bearer s3cr3t"), true),
            (Some(&token), local4, Some(b"Bearer s3cr3t"), true),
            (Some(&token), local4, None, false),
            (Some(&token), remote, None, false),
            (Some(&token), remote, Some(b"Bearer s3cr3"), false),
            (Some(&token), remote, Some(b"Bearer s3cr3tt"), false),
            (Some(&token), remote, Some(b"bearer s3cr3t"), false),
            (Some(&token), remote, Some(b"s3cr3t"), false),
            (Some(&token), remote, Some(b"Basic s3cr3t"), false),
        ];
        for (token, peer, header, want) in cases {
            assert_eq!(
                is_authorized(*token, *peer, *header),
                *want,
                "{token:?} {peer} {header:?}"
            );
        }
    }
}
