//! SPIFFE ID patterns (`spiffe://corp.example/ns/{ns}/sa/*`): a rule's
//! `peer_spiffe_id`, and the `spiffe_ids` of `[server.trusted_proxy]`.
//!
//! The syntax is the channel pattern's, one `/`-separated segment at a time:
//! `spiffe://`, the trust domain, then the path segments. `*` and `{name}`
//! never cross a `/`, so a pattern matches IDs with exactly as many segments
//! as it has, and `*` is (part of) one segment. A segment may hold only one
//! `*` or capture next to a capture (`{ns}` or `team-{ns}`, not `{a}-{b}`),
//! so that an ID never splits two ways: what a rule grants never depends on
//! a split. Only valid SPIFFE IDs match ([`is_spiffe_id`]).

use std::fmt;

use super::pattern::{Captures, ChannelPattern, Split};

/// The longest SPIFFE ID (and pattern) accepted, in bytes (the SPIFFE spec's URI limit).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// The scheme every SPIFFE ID starts with.
const SCHEME: &str = "spiffe://";

/// A compiled SPIFFE ID pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeIdPattern {
    source: String,
    /// The trust domain, then each path segment.
    segments: Vec<ChannelPattern>,
}

impl SpiffeIdPattern {
    /// Compiles `source`; the error says what is wrong, the caller names the key.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.len() > MAX_SPIFFE_ID_BYTES {
            return Err(format!(
                "a SPIFFE ID pattern is at most {MAX_SPIFFE_ID_BYTES} bytes"
            ));
        }
        let rest = source.strip_prefix(SCHEME).ok_or_else(|| {
            format!("{source:?} does not start with {SCHEME:?}, as every SPIFFE ID does")
        })?;
        let mut segments = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, text) in rest.split('/').enumerate() {
            if text.is_empty() {
                return Err(if i == 0 {
                    "the trust domain after spiffe:// is empty".to_owned()
                } else {
                    "a path segment is empty (`//`, or a trailing `/`)".to_owned()
                });
            }
            let segment = if i == 0 {
                ChannelPattern::parse_segment(
                    text,
                    is_trust_domain_char,
                    "a trust domain character (a-z, 0-9, `.`, `-`, `_`), so no SPIFFE ID",
                )
            } else {
                ChannelPattern::parse_segment(
                    text,
                    is_path_char,
                    "a SPIFFE path character (letters, digits, `.`, `-`, `_`), so no SPIFFE ID",
                )
            }?;
            if let Some(capture) = segment.ambiguous_capture() {
                return Err(format!(
                    "segment {text:?} can split one ID two ways around {{{capture}}}: a segment may hold one capture with fixed text, or `*` alone"
                ));
            }
            for name in segment.capture_names() {
                if names.iter().any(|n| n == name) {
                    return Err(format!("capture {{{name}}} appears twice"));
                }
                names.push(name.to_owned());
            }
            segments.push(segment);
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `id`, a valid SPIFFE ID, fits the pattern.
    pub fn matches(&self, id: &str) -> bool {
        self.split(id).is_some()
    }

    /// Whether the pattern has captures (`[server.trusted_proxy]` refuses them).
    pub fn has_captures(&self) -> bool {
        self.capture_names().next().is_some()
    }

    /// The captures, in pattern order.
    pub(crate) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().flat_map(ChannelPattern::capture_names)
    }

    /// Whether the pattern defines the capture `name`.
    pub(crate) fn has_capture(&self, name: &str) -> bool {
        self.capture_names().any(|n| n == name)
    }

    /// The captures of `id` if it is a valid SPIFFE ID that fits.
    pub(crate) fn split<'a>(&'a self, id: &'a str) -> Option<Captures<'a>> {
        if !is_spiffe_id(id) {
            return None;
        }
        let rest = id.strip_prefix(SCHEME)?;
        let mut captures = Vec::new();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment.split(parts.next()?) {
                Split::One(found) => captures.extend(found),
                // Refused at load (`ambiguous_capture`); never a choice.
                Split::NoMatch | Split::Ambiguous { .. } => return None,
            }
        }
        match parts.next() {
            Some(_) => None,
            None => Some(captures),
        }
    }

    /// Whether every ID this pattern matches is also matched by `wider`.
    /// Sound, not complete (see `ChannelPattern::is_covered_by`).
    pub(crate) fn is_covered_by(&self, wider: &SpiffeIdPattern) -> bool {
        self.segments.len() == wider.segments.len()
            && self
                .segments
                .iter()
                .zip(&wider.segments)
                .all(|(narrow, wide)| narrow.is_covered_by(wide))
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether `text` is a SPIFFE ID as the SPIFFE spec defines it: `spiffe://`,
/// a non-empty trust domain of `a-z 0-9 . - _`, then path segments of
/// `a-z A-Z 0-9 . - _` that are neither empty nor `.` or `..`; no port,
/// user info, query or fragment; at most 2048 bytes.
pub fn is_spiffe_id(text: &str) -> bool {
    if text.len() > MAX_SPIFFE_ID_BYTES {
        return false;
    }
    let Some(rest) = text.strip_prefix(SCHEME) else {
        return false;
    };
    let mut parts = rest.split('/');
    let domain_ok = parts
        .next()
        .is_some_and(|d| !d.is_empty() && d.chars().all(is_trust_domain_char));
    domain_ok
        && parts.all(|s| !s.is_empty() && s != "." && s != ".." && s.chars().all(is_path_char))
}

/// A trust domain character.
fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

/// A path segment character.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pattern: &str, id: &str) -> Option<Vec<(String, String)>> {
        let pattern = SpiffeIdPattern::parse(pattern).unwrap();
        pattern.split(id).map(|c| {
            c.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        })
    }

    #[test]
    fn patterns_match_segment_by_segment() {
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let p = "spiffe://corp.example/ns/{ns}/sa/*";
        assert_eq!(
            split(p, "spiffe://corp.example/ns/backend/sa/api"),
            Some(owned(&[("ns", "backend")]))
        );
        // `*` and captures never cross a `/`.
        assert_eq!(split(p, "spiffe://corp.example/ns/a/b/sa/api"), None);
        assert_eq!(split(p, "spiffe://corp.example/ns/a/sa/api/x"), None);
        assert_eq!(split(p, "spiffe://corp.example/ns/a/sa"), None);
        assert_eq!(split(p, "spiffe://other.example/ns/a/sa/api"), None);
        // Invalid IDs never match, even a pattern of stars.
        assert_eq!(split("spiffe://*/*", "spiffe://corp.example/"), None);
        assert_eq!(split("spiffe://*/*", "spiffe://corp.example/a?b"), None);
        assert_eq!(split("spiffe://*/*", "spiffe://Corp.example/a"), None);
        assert_eq!(split("spiffe://*/*", "spiffe://corp.example/.."), None);
        assert_eq!(
            split("spiffe://*/*", "spiffe://corp.example/a"),
            Some(vec![])
        );
        assert_eq!(
            split(
                "spiffe://{td}/team-{team}",
                "spiffe://corp.example/team-blue"
            ),
            Some(owned(&[("td", "corp.example"), ("team", "blue")]))
        );
        assert_eq!(
            split("spiffe://corp.example", "spiffe://corp.example"),
            Some(vec![])
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "corp.example/ns/x",
            "SPIFFE://corp.example/x",
            "spiffe://",
            "spiffe://corp.example/",
            "spiffe://corp.example//x",
            "spiffe://Corp.example/x",
            "spiffe://corp.example/a b",
            "spiffe://corp.example/{a}-{b}",
            "spiffe://corp.example/{a}*",
            "spiffe://corp.example/{a}/{a}",
            &format!("spiffe://corp.example/{}", "x".repeat(2048)),
        ] {
            assert!(SpiffeIdPattern::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "spiffe://corp.example/ns/{ns}/sa/*",
            "spiffe://corp.example/*-*",
            "spiffe://*/x",
        ] {
            assert!(SpiffeIdPattern::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn spiffe_ids_are_checked_as_the_spec_says() {
        for (id, valid) in [
            ("spiffe://corp.example/ns/a/sa/b", true),
            ("spiffe://corp.example", true),
            ("spiffe://corp.example/", false),
            ("spiffe://corp.example:443/x", false),
            ("spiffe://user@corp.example/x", false),
            ("spiffe://corp.example/x?y=1", false),
            ("spiffe://corp.example/x#y", false),
            ("spiffe://corp.example/./x", false),
            ("spiffe:///x", false),
            ("https://corp.example/x", false),
            ("spiffe://corp.example/ü", false),
        ] {
            assert_eq!(is_spiffe_id(id), valid, "{id:?}");
        }
    }

    #[test]
    fn coverage_is_segment_wise() {
        let p = |s: &str| SpiffeIdPattern::parse(s).unwrap();
        assert!(
            p("spiffe://corp.example/ns/a/sa/b")
                .is_covered_by(&p("spiffe://corp.example/ns/*/sa/*"))
        );
        assert!(
            !p("spiffe://corp.example/ns/*/sa/*")
                .is_covered_by(&p("spiffe://corp.example/ns/a/sa/*"))
        );
        assert!(!p("spiffe://corp.example/ns/a").is_covered_by(&p("spiffe://corp.example/*/*/*")));
    }
}
