//! The `x-forwarded-client-cert` header (XFCC) as Envoy writes it: elements
//! separated by `,`, one per proxy hop that saw a client certificate, each
//! `key=value` pairs separated by `;`. A value is bare text (no `,`, `;`,
//! `"` or `\`; Envoy writes `URI=` and `DNS=` bare, and a URI may hold a
//! `=`), or double-quoted (then `,` and `;` are literal and `\` escapes the
//! next character).
//!
//! ```text
//! By=spiffe://corp.example/ns/edge/sa/envoy;Hash=1f..;Subject="CN=api,O=Corp";URI=spiffe://corp.example/ns/backend/sa/api;DNS=api.backend.svc
//! ```
//!
//! The parser is strict: a header that does not parse is refused as a whole
//! rather than read in part, because each proxy appends its element at the
//! end, and a reader that skipped a bad piece could take a client's forged
//! element for the nearest proxy's. Pure: no I/O, no allocation beyond the
//! parsed pairs.

/// The longest header accepted, in bytes: far above any real chain of
/// elements (Envoy's `Cert`, the largest value, is a URL-encoded PEM).
pub const MAX_XFCC_BYTES: usize = 64 * 1024;

/// One element: the pairs one proxy wrote, in order; keys as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// `(key, value)` with quotes and escapes removed.
    pub pairs: Vec<(String, String)>,
}

/// Why a header does not parse (the pipeline names the header and adds this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfccSyntaxError {
    /// What is wrong, log-safe: never a value.
    pub reason: String,
    /// The byte offset of the problem.
    pub at: usize,
}

impl Element {
    /// The values of `key` (compared ASCII case-insensitively), in order.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for XfccSyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.reason, self.at)
    }
}

/// Parses a whole header value into its elements, first (farthest) to last (nearest).
pub fn parse(header: &str) -> Result<Vec<Element>, XfccSyntaxError> {
    if header.len() > MAX_XFCC_BYTES {
        return Err(error(
            format!("is longer than {MAX_XFCC_BYTES} bytes"),
            MAX_XFCC_BYTES,
        ));
    }
    if let Some((at, _)) = header
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\t')
    {
        return Err(error("holds a control character", at));
    }
    let mut parser = Parser {
        text: header,
        at: 0,
    };
    let mut elements = vec![parser.element()?];
    loop {
        parser.skip_spaces();
        match parser.next_char() {
            None => return Ok(elements),
            Some(',') => elements.push(parser.element()?),
            // `element` stops only at `,` or the end.
            Some(_) => return Err(error("expected `,` between elements", parser.at)),
        }
    }
}

/// The last element, the one the nearest proxy appended.
pub fn last(header: &str) -> Result<Element, XfccSyntaxError> {
    let mut elements = parse(header)?;
    elements
        .pop()
        .ok_or_else(|| error("holds no element", header.len()))
}

/// A cursor over the header.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    /// The character at the cursor, consumed.
    fn next_char(&mut self) -> Option<char> {
        let c = self.text[self.at..].chars().next()?;
        self.at += c.len_utf8();
        Some(c)
    }

    /// The character at the cursor, not consumed.
    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    /// Skips spaces and tabs (HTTP's optional whitespace around separators).
    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.at += 1;
        }
    }

    /// One element: pairs separated by `;`, up to a `,` or the end.
    fn element(&mut self) -> Result<Element, XfccSyntaxError> {
        let mut pairs = Vec::new();
        loop {
            pairs.push(self.pair()?);
            self.skip_spaces();
            match self.peek() {
                Some(';') => self.at += 1,
                None | Some(',') => return Ok(Element { pairs }),
                Some(_) => return Err(error("expected `;` or `,` after a value", self.at)),
            }
        }
    }

    /// One `key=value`.
    fn pair(&mut self) -> Result<(String, String), XfccSyntaxError> {
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.at += 1;
        }
        let key = &self.text[start..self.at];
        if key.is_empty() {
            return Err(error(
                match self.peek() {
                    None => "ends where a key was expected",
                    Some(',') => "holds an empty element",
                    Some(';') => "holds an empty pair",
                    Some(_) => "expected a key (letters, digits, `-`, `_`)",
                },
                self.at,
            ));
        }
        if self.peek() != Some('=') {
            return Err(error("expected `=` after a key", self.at));
        }
        self.at += 1;
        let value = if self.peek() == Some('"') {
            self.at += 1;
            self.quoted()?
        } else {
            self.bare()?
        };
        Ok((key.to_owned(), value))
    }

    /// A quoted value after its opening quote, through the closing one.
    fn quoted(&mut self) -> Result<String, XfccSyntaxError> {
        let opened = self.at - 1;
        let mut value = String::new();
        loop {
            match self.next_char() {
                None => return Err(error("has a quoted value that is never closed", opened)),
                Some('"') => return Ok(value),
                Some('\\') => match self.next_char() {
                    Some(c) => value.push(c),
                    None => return Err(error("ends inside an escape", self.at)),
                },
                Some(c) => value.push(c),
            }
        }
    }

    /// A bare value: up to `;`, `,` or the end, trailing spaces trimmed. A
    /// quote or backslash in it means the writer meant a quoted value and
    /// got it wrong, so it is refused rather than read some way.
    fn bare(&mut self) -> Result<String, XfccSyntaxError> {
        let start = self.at;
        while let Some(c) = self.peek() {
            match c {
                ';' | ',' => break,
                '"' | '\\' => {
                    return Err(error(
                        format!("has {c:?} in a bare value; such values must be quoted"),
                        self.at,
                    ));
                }
                _ => self.at += c.len_utf8(),
            }
        }
        Ok(self.text[start..self.at]
            .trim_end_matches([' ', '\t'])
            .to_owned())
    }
}

/// A syntax error at `at`.
fn error(reason: impl Into<String>, at: usize) -> XfccSyntaxError {
    XfccSyntaxError {
        reason: reason.into(),
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(element: &Element) -> Vec<(&str, &str)> {
        element
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn envoy_headers_parse_into_elements_and_pairs() {
        let header = concat!(
            "By=spiffe://corp.example/ns/edge/sa/envoy;Hash=abc;Subject=\"CN=x,O=y;z\";",
            "URI=spiffe://corp.example/ns/a/sa/b;DNS=a.svc;DNS=b.svc, ",
            "By=http://frontend.lyft.com;URI=;Subject=\"say \\\"hi\\\" \\\\ bye\""
        );
        let elements = parse(header).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(
            pairs(&elements[0]),
            [
                ("By", "spiffe://corp.example/ns/edge/sa/envoy"),
                ("Hash", "abc"),
                ("Subject", "CN=x,O=y;z"),
                ("URI", "spiffe://corp.example/ns/a/sa/b"),
                ("DNS", "a.svc"),
                ("DNS", "b.svc"),
            ]
        );
        assert_eq!(
            pairs(&elements[1]),
            [
                ("By", "http://frontend.lyft.com"),
                ("URI", ""),
                ("Subject", "say \"hi\" \\ bye"),
            ]
        );
        assert_eq!(
            elements[0].values("dns").collect::<Vec<_>>(),
            ["a.svc", "b.svc"]
        );
        let last = last(header).unwrap();
        assert_eq!(last.values("uri").collect::<Vec<_>>(), [""]);
    }

    /// Nasty inputs: each must be refused (never read in part, never a panic).
    #[test]
    fn malformed_headers_are_refused() {
        let cases = [
            "",
            " ",
            ",",
            "URI=a,",
            ",URI=a",
            "URI=a,,URI=b",
            "URI=a;",
            ";URI=a",
            "URI=a;;DNS=b",
            "URI",
            "URI;DNS=a",
            "=a",
            "URI=\"a",
            "URI=\"a\\",
            "URI=\"a\"b",
            "URI=\"a\" b",
            "URI=a\"b\"",
            "URI=a\\b",
            "URI=a\nDNS=b",
            "URI=a\u{0}",
            "URI=a\r\n,URI=b",
            "ÜRI=a",
            "URI =a",
            "URI=a\u{7f}",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{case:?} parsed: {:?}", parse(case));
        }
        assert!(parse(&format!("URI={}", "a".repeat(MAX_XFCC_BYTES))).is_err());
    }

    #[test]
    fn a_bare_uri_may_hold_an_equals_sign() {
        let elements = parse("URI=https://a.example/x?y=1;DNS=a").unwrap();
        assert_eq!(
            pairs(&elements[0]),
            [("URI", "https://a.example/x?y=1"), ("DNS", "a")]
        );
    }

    #[test]
    fn spaces_around_separators_are_allowed() {
        let elements = parse(" URI=a ; DNS=b ,\tURI=\"c\" ").unwrap();
        assert_eq!(pairs(&elements[0]), [("URI", "a"), ("DNS", "b")]);
        assert_eq!(pairs(&elements[1]), [("URI", "c")]);
    }

    /// A value as a proxy would write it: quoted, with `\` before `"` and `\`.
    fn quote(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        #[test]
        fn any_input_parses_or_fails_without_panicking(text in "\\PC{0,64}") {
            let _ = parse(&text);
        }

        #[test]
        fn separators_and_quotes_survive_quoting(
            elements in prop::collection::vec(
                prop::collection::vec(("[A-Za-z]{1,6}", "[ -~]{0,12}"), 1..4),
                1..4,
            )
        ) {
            let header = elements
                .iter()
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|(k, v)| format!("{k}={}", quote(v)))
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .collect::<Vec<_>>()
                .join(",");
            let parsed = parse(&header).unwrap();
            let got: Vec<Vec<(String, String)>> = parsed.into_iter().map(|e| e.pairs).collect();
            prop_assert_eq!(got, elements);
        }

        #[test]
        fn a_forged_first_element_never_becomes_the_last(
            forged in "[ -~]{0,40}",
            uri in "spiffe://corp\\.example/[a-z]{1,8}",
        ) {
            // Whatever a client put before the proxy's element, either the
            // header is refused or the last element is the proxy's own.
            let header = format!("{forged},URI={}", quote(&uri));
            if let Ok(element) = last(&header) {
                prop_assert_eq!(element.values("URI").collect::<Vec<_>>(), vec![uri.as_str()]);
            }
        }
    }
}
