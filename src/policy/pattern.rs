//! Channel patterns (`team-{team}-*`) and resource templates (`team-{team}-chat`).
//!
//! The syntax is chosen so that every one of Agora's 89 channel characters is
//! written as itself: `*` is not an Agora character, so it is free to mean
//! "anything", and a capture is `{` + identifier + `}`. A brace that does not
//! open such a capture is a literal brace.
//!
//! A match never picks one split of a channel over another: when a channel
//! fits with two values of a capture, [`ChannelPattern::split`] says so, and
//! the policy then refuses to let that rule allow it.

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

/// How a channel splits into a pattern's captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Split<'a> {
    /// The channel does not fit the pattern.
    NoMatch,
    /// Every way the channel fits gives the same captures: these.
    One(Captures<'a>),
    /// The channel fits with different values for `capture`, for example
    /// `first` and `second`: what the rule grants would depend on the split.
    Ambiguous {
        /// The capture whose value is not determined.
        capture: &'a str,
        /// One possible value.
        first: &'a str,
        /// Another possible value.
        second: &'a str,
    },
}

/// Positions in a channel as bits: bit `pos` stands for byte offset `pos`.
/// Channels are at most 63 bytes; longer input never matches.
type Positions = u128;

/// The longest input the matcher considers, in bytes (bit 127 is the end offset).
const MAX_MATCH_BYTES: usize = 127;

/// The most pattern parts whose match tables live on the stack (a longer
/// pattern's are allocated): 2 × 33 positions, about 1 KiB.
const INLINE_PARTS: usize = 32;

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
        Self::parse_with(
            source,
            is_agora_char,
            "an Agora channel character, so no channel",
        )
    }

    /// Compiles one `/`-free segment of a SPIFFE ID pattern, whose literal
    /// characters must be `allowed` (`what` completes "is not ... could match it").
    pub(crate) fn parse_segment(
        source: &str,
        allowed: fn(char) -> bool,
        what: &str,
    ) -> Result<Self, String> {
        Self::parse_with(source, allowed, what)
    }

    /// The shared syntax: `*`, `{name}` captures (each name once) and literals.
    fn parse_with(source: &str, allowed: fn(char) -> bool, what: &str) -> Result<Self, String> {
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
                Token::Char(c) if allowed(c) => parts.push(Part::Char(c)),
                Token::Char(c) => {
                    return Err(format!("{c:?} is not {what} could match it"));
                }
            }
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The capture names, in pattern order.
    pub(crate) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Capture(name) => Some(name.as_str()),
            _ => None,
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

    /// Splits `channel` by the pattern; the whole channel must fit. When it
    /// fits in several ways that give a capture different values (`team-{team}-*`
    /// on `team-a-b-x`: `a` or `a-b`), the answer is [`Split::Ambiguous`]
    /// rather than a choice, so that what a rule grants never depends on
    /// which split a matcher happens to prefer.
    ///
    /// It works on byte offsets as bit sets, one per pattern part, forward
    /// (where `parts[..i]` can end) and backward (where `parts[i..]` can
    /// start): linear in the pattern, however many stars it has. A capture
    /// `parts[i]` can take `channel[s..e]` exactly when `s` is in `forward[i]`
    /// and `e` in `backward[i + 1]`. A non-ASCII input can only fail to match
    /// or match, never panic: stars and captures end on character boundaries.
    pub(crate) fn split<'a>(&'a self, channel: &'a str) -> Split<'a> {
        let len = channel.len();
        if len > MAX_MATCH_BYTES {
            return Split::NoMatch;
        }
        let bytes = channel.as_bytes();
        // Every offset of an ASCII channel (the usual one) is a boundary.
        let boundaries: Positions = if channel.is_ascii() {
            Positions::MAX >> (MAX_MATCH_BYTES - len)
        } else {
            (0..=len)
                .filter(|&i| channel.is_char_boundary(i))
                .fold(0, |set, i| set | 1 << i)
        };
        let n = self.parts.len();
        // Both tables on the stack for a pattern of the usual size: this
        // runs for every rule's channel key on every call.
        let mut inline = [0 as Positions; 2 * (INLINE_PARTS + 1)];
        let mut heap: Vec<Positions>;
        let table: &mut [Positions] = if n <= INLINE_PARTS {
            &mut inline[..2 * (n + 1)]
        } else {
            heap = vec![0; 2 * (n + 1)];
            &mut heap
        };
        let (forward, backward) = table.split_at_mut(n + 1);
        forward[0] = 1;
        for (i, part) in self.parts.iter().enumerate() {
            let at = forward[i];
            forward[i + 1] = match part {
                Part::Char(c) => with_char(at, bytes, *c) << 1,
                Part::Star => from_lowest(at) & boundaries,
                Part::Capture(_) => above_lowest(at) & boundaries,
            };
        }
        // The whole pattern cannot end at the channel's end: no match, and
        // no need for the backward table (most rules' keys end here).
        if forward[n] & 1 << len == 0 {
            return Split::NoMatch;
        }
        backward[n] = 1 << len;
        for (i, part) in self.parts.iter().enumerate().rev() {
            let next = backward[i + 1];
            backward[i] = match part {
                Part::Char(c) => with_char(next >> 1, bytes, *c),
                Part::Star => up_to_highest(next) & boundaries,
                Part::Capture(_) => below_highest(next) & boundaries,
            };
        }
        if backward[0] & 1 == 0 {
            return Split::NoMatch;
        }
        let mut captures = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let Part::Capture(name) = part else {
                continue;
            };
            let mut value: Option<&str> = None;
            for start in offsets(forward[i]) {
                for end in offsets(backward[i + 1]).filter(|&end| end > start) {
                    let Some(candidate) = channel.get(start..end) else {
                        continue;
                    };
                    match value {
                        None => value = Some(candidate),
                        Some(first) if first != candidate => {
                            return Split::Ambiguous {
                                capture: name,
                                first,
                                second: candidate,
                            };
                        }
                        Some(_) => {}
                    }
                }
            }
            // A full match exists, so every capture has a value; refusing
            // here keeps the matcher fail-closed all the same.
            let Some(value) = value else {
                return Split::NoMatch;
            };
            captures.push((name.as_str(), value));
        }
        Split::One(captures)
    }

    /// The first capture some channel could give two values, if any.
    ///
    /// That is exact: a pattern can split a channel two ways exactly when it
    /// has a capture and another `*` or capture, because the literal text `s`
    /// between the two can also occur inside either (`{a}` + s + `*` splits
    /// `x` + s + `x` + s + `y` as `a = x` or `a = x` + s + `x`).
    pub(crate) fn ambiguous_capture(&self) -> Option<&str> {
        let variable = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Star | Part::Capture(_)))
            .count();
        if variable < 2 {
            return None;
        }
        self.parts.iter().find_map(|p| match p {
            Part::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// An unambiguous form to suggest for `capture`: the pattern's literal
    /// text just before it, then the capture, with no other `*` or capture.
    pub(crate) fn unambiguous_form(&self, capture: &str) -> String {
        let Some(at) = self
            .parts
            .iter()
            .position(|p| matches!(p, Part::Capture(n) if n == capture))
        else {
            return format!("{{{capture}}}");
        };
        let prefix: String = self.parts[..at]
            .iter()
            .rev()
            .map_while(|p| match p {
                Part::Char(c) => Some(*c),
                _ => None,
            })
            .collect::<Vec<char>>()
            .into_iter()
            .rev()
            .collect();
        format!("{prefix}{{{capture}}}")
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

    /// Whether two different sets of captures could render the same text, or
    /// a text whose `*` also covers what another set renders: a capture and
    /// another capture or `*` (`team-{team}-*` renders `team-a-*`, which
    /// covers `team-a-b-x` of team `a-b`). The same test as
    /// [`ChannelPattern::ambiguous_capture`], for the same reason.
    pub(crate) fn is_ambiguous(&self) -> bool {
        let mut captures = 0;
        let mut stars = 0;
        for part in &self.parts {
            match part {
                TemplatePart::Capture(_) => captures += 1,
                TemplatePart::Text(text) => stars += text.matches('*').count(),
            }
        }
        captures >= 1 && captures + stars >= 2
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

/// The offsets in `set` where `bytes` holds `c`. A literal part is reached
/// at one offset, or a few, unless a `*` or a capture precedes it: looking
/// only there, rather than scanning the whole channel for `c` per part,
/// makes a literal prefix cost a comparison per character.
fn with_char(set: Positions, bytes: &[u8], c: char) -> Positions {
    let mut out = 0;
    for i in offsets(set) {
        match bytes.get(i) {
            Some(&b) if u32::from(b) == u32::from(c) => out |= 1 << i,
            Some(_) => {}
            // Offsets ascend: none further is in the channel.
            None => break,
        }
    }
    out
}

/// The offsets in `set`, ascending.
fn offsets(mut set: Positions) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if set == 0 {
            return None;
        }
        let at = set.trailing_zeros() as usize;
        set &= set - 1;
        Some(at)
    })
}

/// Every offset at or above the lowest in `set` (none if `set` is empty).
fn from_lowest(set: Positions) -> Positions {
    if set == 0 {
        return 0;
    }
    !((1u128 << set.trailing_zeros()) - 1)
}

/// Every offset strictly above the lowest in `set`.
fn above_lowest(set: Positions) -> Positions {
    if set == 0 {
        return 0;
    }
    from_lowest(set) & !(1u128 << set.trailing_zeros())
}

/// Every offset at or below the highest in `set`.
fn up_to_highest(set: Positions) -> Positions {
    if set == 0 {
        return 0;
    }
    let highest = 127 - set.leading_zeros();
    below_highest(set) | 1u128 << highest
}

/// Every offset strictly below the highest in `set`.
fn below_highest(set: Positions) -> Positions {
    if set == 0 {
        return 0;
    }
    let highest = 127 - set.leading_zeros();
    (1u128 << highest) - 1
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
        let got = match compiled.split(channel) {
            Split::One(captures) => Some(captures),
            Split::NoMatch => None,
            other => panic!("{pattern:?} on {channel:?}: {other:?}"),
        };
        assert_eq!(got.as_deref(), expected, "{pattern:?} on {channel:?}");
    }

    fn ambiguous(pattern: &str, channel: &str, capture: &str, values: [&str; 2]) {
        let compiled = ChannelPattern::parse(pattern).unwrap();
        match compiled.split(channel) {
            Split::Ambiguous {
                capture: got,
                first,
                second,
            } => {
                assert_eq!(got, capture, "{pattern:?} on {channel:?}");
                let mut seen = [first, second];
                seen.sort_unstable();
                let mut want = values;
                want.sort_unstable();
                assert_eq!(seen, want, "{pattern:?} on {channel:?}");
            }
            other => panic!("{pattern:?} on {channel:?}: {other:?}"),
        }
    }

    #[test]
    fn patterns_match_whole_channels_with_captures() {
        check("room-1", "room-1", Some(&[]));
        check("room-1", "room-10", None);
        check("room-{room}", "room-42", Some(&[("room", "42")]));
        check("room-{room}", "room-", None);
        check("team-{team}-*", "team-a-bc", Some(&[("team", "a")]));
        check("team-{team}-*", "team-a-", Some(&[("team", "a")]));
        check("team-{team}", "team-a-b-c", Some(&[("team", "a-b-c")]));
        check("{team}-chat", "a-b-chat", Some(&[("team", "a-b")]));
        check("team-{team}-*", "team-a", None);
        check("*", "", Some(&[]));
        check("*", "anything goes", Some(&[]));
        check("*-{id}", "a-bc", Some(&[("id", "bc")]));
        check("{a}{b}", "xy", Some(&[("a", "x"), ("b", "y")]));
        // Stars alone may split many ways: no capture depends on it.
        check("*-*-*", "a-b-c-d", Some(&[]));
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
    fn a_channel_that_splits_two_ways_is_ambiguous() {
        ambiguous("team-{team}-*", "team-a-b-standup", "team", ["a", "a-b"]);
        ambiguous("team-{team}-*", "team-a-b-c", "team", ["a", "a-b"]);
        ambiguous("*-{id}", "a-b-c", "id", ["c", "b-c"]);
        ambiguous("{a}{b}", "xyz", "a", ["x", "xy"]);
        ambiguous("team-{team}-{room}", "team-a-b-c", "team", ["a", "a-b"]);
        // A delimiter real names never contain keeps real channels unique;
        // a channel that breaks the convention is ambiguous, never split.
        check(
            "team-{team}:*",
            "team-data-eng:standup",
            Some(&[("team", "data-eng")]),
        );
        ambiguous("team-{team}:*", "team-a:b:c", "team", ["a", "a:b"]);
    }

    #[test]
    fn patterns_with_a_capture_and_another_variable_part_can_be_ambiguous() {
        let cases = [
            ("team-{team}-*", Some("team")),
            ("*-{id}", Some("id")),
            ("{a}{b}", Some("a")),
            ("room-{r}-x-{s}", Some("r")),
            ("team-{team}", None),
            ("team-{team}-chat", None),
            ("a*b*c", None),
            ("*", None),
        ];
        for (source, capture) in cases {
            let pattern = ChannelPattern::parse(source).unwrap();
            assert_eq!(pattern.ambiguous_capture(), capture, "{source}");
        }
        for (source, capture, form) in [
            ("team-{team}-*", "team", "team-{team}"),
            ("*-{id}", "id", "-{id}"),
            ("{a}{b}", "a", "{a}"),
            ("room-{r}-x-{s}", "s", "-x-{s}"),
        ] {
            let pattern = ChannelPattern::parse(source).unwrap();
            assert_eq!(pattern.unambiguous_form(capture), form, "{source}");
        }
        for (source, ambiguous) in [
            ("team-{team}-*", true),
            ("{team}*", true),
            ("*-{team}", true),
            ("{team}-{room}", true),
            ("team-{team}", false),
            ("team-{team}-chat", false),
            ("lobby-*", false),
            ("announcements", false),
        ] {
            let template = Template::parse(source, |n| n == "team" || n == "room").unwrap();
            assert_eq!(template.is_ambiguous(), ambiguous, "{source}");
        }
    }

    #[test]
    fn long_patterns_and_non_ascii_channels_split_like_short_ascii_ones() {
        // Past the parts whose tables live on the stack, on the heap.
        for prefix_len in [super::INLINE_PARTS - 2, super::INLINE_PARTS + 8] {
            let prefix = "p".repeat(prefix_len);
            let pattern = ChannelPattern::parse(&format!("{prefix}-{{x}}")).unwrap();
            assert_eq!(
                pattern.split(&format!("{prefix}-abc")),
                Split::One(vec![("x", "abc")]),
                "{prefix_len}"
            );
            assert_eq!(pattern.split(&format!("{prefix}abc")), Split::NoMatch);
            assert_eq!(pattern.split(&prefix), Split::NoMatch);
        }
        // Captures end on character boundaries of a non-ASCII channel.
        let pattern = ChannelPattern::parse("caf-{x}-*").unwrap();
        assert_eq!(pattern.split("caf-é-ü"), Split::One(vec![("x", "é")]));
        assert_eq!(pattern.split("caf-é"), Split::NoMatch);
        // A literal after a capture is looked for wherever the capture can end.
        let pattern = ChannelPattern::parse("{a}-end").unwrap();
        assert_eq!(pattern.split("x-y-end"), Split::One(vec![("a", "x-y")]));
        assert_eq!(pattern.split("x-y-ends"), Split::NoMatch);
    }

    #[test]
    fn many_stars_stay_fast_on_long_channels() {
        let pattern = ChannelPattern::parse(&"*a".repeat(30)).unwrap();
        assert_eq!(pattern.split(&"a".repeat(63)), Split::One(vec![]));
        assert_eq!(
            pattern.split(&format!("{}b", "a".repeat(62))),
            Split::NoMatch
        );
        let captures = ChannelPattern::parse(&format!("{}{{x}}", "*a".repeat(30))).unwrap();
        assert!(matches!(
            captures.split(&"a".repeat(63)),
            Split::Ambiguous { .. }
        ));
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
