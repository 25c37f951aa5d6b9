//! The errors code branches on, as types. Everything else is `anyhow` with
//! context; these markers ride inside it and are found by walking the
//! chain and downcasting (as ripgrep's `main` finds a broken pipe), never
//! by reading a message's text, so rewording a message changes no metric,
//! retry or exit decision.

use std::error::Error as StdError;

/// Content that does not match its digest or declared size: corrupted or
/// tampered with (never retried as-is; counted as a verification failure).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(pub String);

/// No trusted signature verified for the resolved digest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignatureError(pub String);

/// The registry host name did not resolve (raised by our resolver).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {source}")]
pub struct DnsError {
    pub host: String,
    /// The resolver answered that the name does not exist (NXDOMAIN,
    /// `EAI_NONAME`), as opposed to a resolver that failed or timed out:
    /// asking again will not help.
    pub no_such_host: bool,
    #[source]
    pub source: std::io::Error,
}

/// Whether a verification failed: integrity or signature.
pub fn is_verification_failure(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<IntegrityError>() || c.is::<SignatureError>())
}

/// Every error in a chain, including the one an `io::Error` wraps (its own
/// `source()` skips it: it returns the wrapped error's source).
fn walk<'a>(e: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = Some(e);
    std::iter::from_fn(move || {
        let cur = next?;
        next = match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => cur.source(),
        };
        Some(cur)
    })
}

/// A TLS failure (bad certificate, wrong name, handshake): not transient.
pub fn is_tls_failure(e: &(dyn StdError + 'static)) -> bool {
    walk(e).any(|c| c.is::<rustls::Error>())
}

/// A TLS client hello answered in plain HTTP: the server speaks HTTP on
/// that port (rustls reads `HTTP/1.1 …` as a record of an invalid type).
pub fn is_plain_http_answer(e: &(dyn StdError + 'static)) -> bool {
    walk(e).any(|c| {
        matches!(
            c.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        )
    })
}

/// A host name TLS cannot even ask for (not a DNS name or an address).
pub fn is_invalid_host_name(e: &(dyn StdError + 'static)) -> bool {
    walk(e).any(|c| c.is::<rustls_pki_types::InvalidDnsNameError>())
}

/// What retrying cannot fix: a TLS failure, a name that does not exist or
/// cannot be a host name, an HTTP server on an HTTPS port.
pub fn is_permanent_transport_failure(e: &(dyn StdError + 'static)) -> bool {
    is_tls_failure(e) || is_invalid_host_name(e) || dns_failure(e).is_some_and(|d| d.no_such_host)
}

/// The innermost error message: what actually went wrong on the wire.
pub fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cur: &dyn StdError = e;
    let mut msg = cur.to_string();
    while let Some(next) = cur.source() {
        let m = next.to_string();
        if !m.is_empty() {
            msg = m;
        }
        cur = next;
    }
    msg
}

/// The DNS failure inside a transport error, if that is what it was.
pub fn dns_failure<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a DnsError> {
    walk(e).find_map(|c| c.downcast_ref::<DnsError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_through_context_and_io_wrapping() {
        let e = anyhow::Error::new(IntegrityError("blob x: digest mismatch".into()))
            .context("layer 1 of 2")
            .context("pulling m");
        assert!(is_verification_failure(&e));
        assert!(!is_verification_failure(&anyhow::anyhow!(
            "digest mismatch"
        )));

        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let wrapped = anyhow::Error::new(tls).context("connecting");
        assert!(is_tls_failure(wrapped.as_ref()));
        let plain = std::io::Error::other("certificate tls handshake");
        assert!(!is_tls_failure(&plain));

        let dns = std::io::Error::other(DnsError {
            host: "registry.invalid".into(),
            no_such_host: true,
            source: std::io::Error::other("no such host"),
        });
        assert!(is_permanent_transport_failure(&dns));
        let flaky = std::io::Error::other(DnsError {
            host: "registry.example".into(),
            no_such_host: false,
            source: std::io::Error::other("temporary failure"),
        });
        assert!(!is_permanent_transport_failure(&flaky));
        let plain = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(is_plain_http_answer(&plain));
        assert!(is_permanent_transport_failure(&plain));
        assert_eq!(
            dns_failure(&dns).map(|d| d.host.as_str()),
            Some("registry.invalid")
        );
        assert!(dns_failure(&std::io::Error::other("dns error")).is_none());
    }
}
