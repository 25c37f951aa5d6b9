//! Text from outside (registry error messages, realms, URIs as users typed
//! them) made safe for the places it ends up: log lines, the termination
//! message (KServe copies it into the InferenceService status) and probe
//! bodies. Control characters are escaped, so a registry cannot forge a log
//! line or a terminal escape; passwords in URIs are redacted.

use std::fmt::Write as _;

/// Escapes control characters (C0, DEL, C1) as `\u{..}`.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces the userinfo of every `scheme://user[:password]@host` with `***`.
pub fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace, quote or end.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Both, for any line shown to a person or a cluster.
pub fn for_output(s: &str) -> String {
    escape_controls(&redact_userinfo(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(
            escape_controls("a\nb\rc\u{1b}[31md\u{7f}\u{9b}é"),
            "a\\u{a}b\\u{d}c\\u{1b}[31md\\u{7f}\\u{9b}é"
        );
    }

    #[test]
    fn passwords_in_uris_are_redacted() {
        assert_eq!(
            redact_userinfo("ocimodel: ocimodel://alice:Sup3rS3cret@host/m:v1: bad, see https://x/y and oci://bob@h:5000/r"),
            "ocimodel: ocimodel://***@host/m:v1: bad, see https://x/y and oci://***@h:5000/r"
        );
        assert_eq!(redact_userinfo("no uri here"), "no uri here");
        assert_eq!(redact_userinfo("x://a:b@"), "x://***@");
    }
}
