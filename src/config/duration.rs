//! The one duration syntax of the config file: humantime (`"90s"`, `"1h"`, `"2d"`).
//!
//! Every duration key of every section (server, limits, issuers and their
//! refresh schedule) deserializes through [`HumanDuration`], so they all
//! accept the same text and refuse it with the same message.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as humantime text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

/// Parses a humantime duration; the error quotes the text and shows the syntax.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"1h\": {e}"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Self).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_text_parses() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_text_is_quoted_in_the_error() {
        for text in ["5 parsecs", "", "90", "-1s", "soon"] {
            let error = parse(text).unwrap_err();
            assert!(
                error.starts_with(&format!("{text:?} is not a duration")),
                "{error}"
            );
        }
    }

    #[test]
    fn deserializes_from_a_string_only() {
        #[derive(Debug, Deserialize)]
        struct Sample {
            d: HumanDuration,
        }
        let sample: Sample = toml::from_str("d = \"2m\"").unwrap();
        assert_eq!(sample.d, HumanDuration(Duration::from_secs(120)));
        assert!(toml::from_str::<Sample>("d = 5").is_err());
        let error = toml::from_str::<Sample>("d = \"5 parsecs\"").unwrap_err();
        assert!(
            error.message().contains("\"5 parsecs\" is not a duration"),
            "{error}"
        );
    }
}
