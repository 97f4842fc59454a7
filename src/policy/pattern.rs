//! Channel patterns (`team-{team}-*`) and resource templates (`team-{team}-chat`).
//!
//! The syntax is chosen so that every one of Agora's 89 channel characters is
//! written as itself: `*` is not an Agora character, so it is free to mean
//! "anything", and a capture is `{` + identifier + `}`. A brace that does not
//! open such a capture is a literal brace.

use std::fmt;

use crate::domain::is_agora_char;

/// The longest pattern accepted: far above any channel (63 bytes) plus markup,
/// it bounds the matcher's work.
const MAX_PATTERN_BYTES: usize = 256;

/// A compiled channel pattern: literals, `*` (zero or more characters) and
/// `{name}` captures (one or more characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelPattern {
    source: String,
    parts: Vec<Part>,
}

/// A resource template: literals and `{name}` references to captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<TemplatePart>,
}

/// The captures of one match, in pattern order, as slices of the channel.
pub(crate) type Captures<'a> = Vec<(&'a str, &'a str)>;

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// One literal character.
    Char(char),
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `{name}`: a non-empty run of characters, remembered under `name`.
    Capture(String),
}

/// One element of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    /// Text copied as is.
    Text(String),
    /// The value of the named capture.
    Capture(String),
}

/// A token of the shared `{identifier}` syntax.
enum Token<'a> {
    /// A literal character.
    Char(char),
    /// A `{name}` placeholder.
    Name(&'a str),
}

/// The backtracking matcher state for one channel.
///
/// It works on bytes: channel names are ASCII (Agora's character set), and a
/// non-ASCII input can only fail to match, never panic, because pattern
/// characters are ASCII and slices are taken with `str::get`.
struct Matcher<'a> {
    parts: &'a [Part],
    channel: &'a str,
    /// `failed[part]` bit `pos` is set once matching `parts[part..]` at byte
    /// `pos` is known to fail, which keeps the search polynomial however many
    /// stars a pattern has. Channels are at most 63 bytes, 128 bits suffice.
    failed: Vec<u128>,
    captures: Captures<'a>,
}

impl ChannelPattern {
    /// Compiles `source`; the error says what is wrong, the caller names the key.
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("a channel pattern must not be empty".to_owned());
        }
        if source.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "a channel pattern is at most {MAX_PATTERN_BYTES} bytes"
            ));
        }
        let mut parts = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for token in tokens(source) {
            match token {
                Token::Name(name) if names.contains(&name) => {
                    return Err(format!("capture {{{name}}} appears twice"));
                }
                Token::Name(name) => {
                    names.push(name);
                    parts.push(Part::Capture(name.to_owned()));
                }
                Token::Char('*') => parts.push(Part::Star),
                Token::Char(c) if is_agora_char(c) => parts.push(Part::Char(c)),
                Token::Char(c) => {
                    return Err(format!(
                        "{c:?} is not an Agora channel character, so no channel could match it"
                    ));
                }
            }
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether this is the lone `*`, the only pattern a wildcard channel request matches.
    pub(crate) fn is_star(&self) -> bool {
        self.parts == [Part::Star]
    }

    /// Whether the pattern defines the capture `name`.
    pub(crate) fn has_capture(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Capture(n) if n == name))
    }

    /// Matches `channel` as a whole. On success returns the captures; when
    /// several splits fit, each `*` and capture takes the shortest run that
    /// still lets the rest match (leftmost-shortest).
    pub(crate) fn matches<'a>(&'a self, channel: &'a str) -> Option<Captures<'a>> {
        let mut matcher = Matcher {
            parts: &self.parts,
            channel,
            failed: vec![0u128; self.parts.len()],
            captures: Vec::new(),
        };
        matcher.run(0, 0).then_some(matcher.captures)
    }

    /// Whether every channel this pattern matches is also matched by `wider`.
    ///
    /// Sound but not complete: `true` is a proof, `false` may be a miss. It is
    /// used for shadowing warnings, where a miss only loses a warning.
    pub(crate) fn is_covered_by(&self, wider: &ChannelPattern) -> bool {
        let mut failed = vec![false; (wider.parts.len() + 1) * (self.parts.len() + 1)];
        covers(&wider.parts, &self.parts, 0, 0, &mut failed)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    /// Compiles `source`, checking each `{name}` with `known`.
    pub(crate) fn parse(source: &str, known: impl Fn(&str) -> bool) -> Result<Self, String> {
        if source.is_empty() {
            return Err("a resource must not be empty".to_owned());
        }
        let mut parts: Vec<TemplatePart> = Vec::new();
        for token in tokens(source) {
            match token {
                Token::Name(name) if !known(name) => {
                    return Err(format!(
                        "{{{name}}} is not a capture of this rule's channel pattern"
                    ));
                }
                Token::Name(name) => parts.push(TemplatePart::Capture(name.to_owned())),
                Token::Char(c) => match parts.last_mut() {
                    Some(TemplatePart::Text(text)) => text.push(c),
                    _ => parts.push(TemplatePart::Text(c.to_string())),
                },
            }
        }
        Ok(Self { parts })
    }

    /// Renders the template with `captures`; a missing capture renders empty,
    /// which load-time validation rules out.
    pub(crate) fn render(&self, captures: &Captures<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(text) => out.push_str(text),
                TemplatePart::Capture(name) => {
                    if let Some((_, value)) = captures.iter().find(|(n, _)| n == name) {
                        out.push_str(value);
                    }
                }
            }
        }
        out
    }
}

impl<'a> Matcher<'a> {
    /// Whether `parts[part..]` matches `channel[pos..]`, recording captures.
    fn run(&mut self, part: usize, pos: usize) -> bool {
        let len = self.channel.len();
        let Some(current) = self.parts.get(part) else {
            return pos == len;
        };
        if pos >= 128 || self.failed[part] & (1u128 << pos) != 0 {
            return false;
        }
        let found = match current {
            Part::Char(c) => {
                self.channel
                    .as_bytes()
                    .get(pos)
                    .is_some_and(|b| u32::from(*b) == u32::from(*c))
                    && self.run(part + 1, pos + 1)
            }
            Part::Star => (pos..=len).any(|end| self.run(part + 1, end)),
            Part::Capture(name) => self.capture(name, part, pos),
        };
        if !found {
            self.failed[part] |= 1u128 << pos;
        }
        found
    }

    /// Tries each non-empty run for the capture at `part`, shortest first.
    fn capture(&mut self, name: &'a str, part: usize, pos: usize) -> bool {
        for end in pos + 1..=self.channel.len() {
            let Some(value) = self.channel.get(pos..end) else {
                continue;
            };
            self.captures.push((name, value));
            if self.run(part + 1, end) {
                return true;
            }
            self.captures.pop();
        }
        false
    }
}

/// Whether `wide[w..]` matches every string `narrow[n..]` matches (see
/// [`ChannelPattern::is_covered_by`]). A wide `*` absorbs any run of narrow
/// parts; a wide capture absorbs a run with at least one part that is never
/// empty; a wide literal matches only the same literal.
fn covers(wide: &[Part], narrow: &[Part], w: usize, n: usize, failed: &mut [bool]) -> bool {
    let slot = w * (narrow.len() + 1) + n;
    if failed.get(slot).copied().unwrap_or(true) {
        return false;
    }
    let found = match wide.get(w) {
        None => n == narrow.len(),
        Some(Part::Char(c)) => {
            narrow.get(n) == Some(&Part::Char(*c)) && covers(wide, narrow, w + 1, n + 1, failed)
        }
        Some(Part::Star) => (n..=narrow.len()).any(|end| covers(wide, narrow, w + 1, end, failed)),
        Some(Part::Capture(_)) => (n + 1..=narrow.len()).any(|end| {
            narrow[n..end].iter().any(|p| !matches!(p, Part::Star))
                && covers(wide, narrow, w + 1, end, failed)
        }),
    };
    if !found && let Some(cell) = failed.get_mut(slot) {
        *cell = true;
    }
    found
}

/// Splits `source` into literal characters and `{identifier}` placeholders.
fn tokens(source: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        if let Some(name) = placeholder(rest) {
            out.push(Token::Name(name));
            rest = &rest[name.len() + 2..];
        } else {
            out.push(Token::Char(c));
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The identifier of a `{identifier}` at the start of `s`, if there is one.
fn placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    is_identifier(name).then_some(name)
}

/// A CEL-friendly identifier: ASCII letter or `_`, then letters, digits, `_`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, channel: &str, expected: Option<&[(&str, &str)]>) {
        let compiled = ChannelPattern::parse(pattern).unwrap();
        let got = compiled.matches(channel);
        assert_eq!(got.as_deref(), expected, "{pattern:?} on {channel:?}");
    }

    #[test]
    fn patterns_match_whole_channels_with_captures() {
        check("room-1", "room-1", Some(&[]));
        check("room-1", "room-10", None);
        check("room-{room}", "room-42", Some(&[("room", "42")]));
        check("room-{room}", "room-", None);
        check("team-{team}-*", "team-a-b-c", Some(&[("team", "a")]));
        check("team-{team}-*", "team-a-", Some(&[("team", "a")]));
        check("team-{team}-*", "team-a", None);
        check("*", "", Some(&[]));
        check("*", "anything goes", Some(&[]));
        check("*-{id}", "a-b-c", Some(&[("id", "b-c")]));
        check("{a}{b}", "xyz", Some(&[("a", "x"), ("b", "yz")]));
        check("{a}{b}", "x", None);
        check("a*b*c*d", "aXbYcZd", Some(&[]));
        check("a*b*c*d", "aXbYcZ", None);
        // Braces that are not a capture are literal Agora characters.
        check("x{}y", "x{}y", Some(&[]));
        check("{{a}}", "{v}", Some(&[("a", "v")]));
        check("{1a}", "{1a}", Some(&[]));
        check("[()]+.?^$|", "[()]+.?^$|", Some(&[]));
        // Not a channel name, but a non-ASCII input must fail or match, never panic.
        check("{a}", "üx", Some(&[("a", "üx")]));
        check("{a}x", "üx", Some(&[("a", "ü")]));
    }

    #[test]
    fn many_stars_stay_fast_on_long_channels() {
        let pattern = ChannelPattern::parse(&"*a".repeat(30)).unwrap();
        assert!(pattern.matches(&"a".repeat(63)).is_some());
        assert!(pattern.matches(&format!("{}b", "a".repeat(62))).is_none());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "room/1", "room\"", "{a}-{a}", &"x".repeat(257)] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage_is_sound() {
        let cases = [
            ("*", "room-{r}", true),
            ("room-*", "room-{r}", true),
            ("room-{x}", "room-{r}", true),
            ("room-{x}", "room-*", false),
            ("room-{x}", "room-1", true),
            ("room-1", "room-{r}", false),
            ("team-{t}-*", "team-a-b", true),
            ("team-{t}-*", "team-*", false),
            ("*-*", "a-{b}", true),
        ];
        for (wide, narrow, expected) in cases {
            let wide = ChannelPattern::parse(wide).unwrap();
            let narrow = ChannelPattern::parse(narrow).unwrap();
            assert_eq!(narrow.is_covered_by(&wide), expected, "{wide} ⊇ {narrow}");
        }
    }

    #[test]
    fn templates_substitute_captures() {
        let template = Template::parse("team-{team}-{x}-{1}", |n| n == "team" || n == "x").unwrap();
        let captures = vec![("team", "blue"), ("x", "7")];
        assert_eq!(template.render(&captures), "team-blue-7-{1}");
        assert!(Template::parse("{nope}", |_| false).is_err());
        assert!(Template::parse("", |_| true).is_err());
    }
}
