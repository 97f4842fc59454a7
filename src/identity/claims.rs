//! JWT claims parsed strictly: duplicate members are refused at every depth,
//! and the registered claims are typed.
//!
//! `serde_json::Value` keeps the last of two duplicate members, which lets a
//! token carry `"channel": "a"` for one reader and `"channel": "b"` for
//! another (catalogue case 29). This parser refuses any duplicate instead and
//! produces `domain::ClaimValue` directly, so the rules see plain data.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::domain::ClaimValue;

/// Every claim of a token, with no duplicate member anywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub BTreeMap<String, ClaimValue>);

/// The registered claims the verifier needs, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// `iss`, a single string.
    pub iss: String,
    /// `sub`, a string.
    pub sub: String,
    /// `aud`, a string or an array of strings, as a list.
    pub aud: Vec<String>,
    /// `exp`, unix seconds (a fractional value rounded down).
    pub exp: u64,
    /// `nbf`, unix seconds (rounded up), when present.
    pub nbf: Option<u64>,
    /// `iat`, unix seconds (rounded up), when present.
    pub iat: Option<u64>,
}

/// The time claims of a token: what its verdict depends on besides the token
/// and the issuer, checked against `now` on every call (a cached token too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// `exp`, unix seconds.
    pub exp: u64,
    /// `nbf`, unix seconds, when present.
    pub nbf: Option<u64>,
    /// `iat`, unix seconds, when present.
    pub iat: Option<u64>,
}

/// Which registered claim is missing or has the wrong type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimProblem {
    /// The claim is absent.
    Missing(&'static str),
    /// The claim is present with the wrong type or range.
    Invalid(&'static str),
}

/// A strict JSON value: the deserializer behind [`Claims`].
struct Strict(ClaimValue);

/// The serde visitor that builds a [`Strict`] value.
struct StrictVisitor;

/// How a fractional NumericDate is rounded: always towards refusing.
#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

impl Registered {
    /// The time claims.
    pub fn times(&self) -> Times {
        Times {
            exp: self.exp,
            nbf: self.nbf,
            iat: self.iat,
        }
    }
}

impl Claims {
    /// Parses a JSON object of claims, refusing duplicate members.
    pub fn parse(json: &[u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let claims = Claims::deserialize(&mut de)?;
        de.end()?;
        Ok(claims)
    }

    /// The claim `name`.
    pub fn get(&self, name: &str) -> Option<&ClaimValue> {
        self.0.get(name)
    }

    /// The `iss` claim if it is a single string.
    pub fn issuer(&self) -> Result<&str, ClaimProblem> {
        match self.get("iss") {
            None => Err(ClaimProblem::Missing("iss")),
            Some(ClaimValue::String(s)) => Ok(s),
            Some(_) => Err(ClaimProblem::Invalid("iss")),
        }
    }

    /// Types the registered claims.
    pub fn registered(&self) -> Result<Registered, ClaimProblem> {
        Ok(Registered {
            iss: self.issuer()?.to_owned(),
            sub: self.string("sub")?,
            aud: self.audiences()?,
            exp: self
                .date("exp", Rounding::Down)?
                .ok_or(ClaimProblem::Missing("exp"))?,
            nbf: self.date("nbf", Rounding::Up)?,
            iat: self.date("iat", Rounding::Up)?,
        })
    }

    /// Scopes from `scope` (space-separated) or else `scp` (string or array of strings).
    pub fn scopes(&self) -> Vec<String> {
        let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        match (self.get("scope"), self.get("scp")) {
            (Some(ClaimValue::String(s)), _) => split(s),
            (_, Some(ClaimValue::String(s))) => split(s),
            (_, Some(ClaimValue::Array(items))) => items
                .iter()
                .filter_map(|v| match v {
                    ClaimValue::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn string(&self, name: &'static str) -> Result<String, ClaimProblem> {
        match self.get(name) {
            None => Err(ClaimProblem::Missing(name)),
            Some(ClaimValue::String(s)) => Ok(s.clone()),
            Some(_) => Err(ClaimProblem::Invalid(name)),
        }
    }

    fn audiences(&self) -> Result<Vec<String>, ClaimProblem> {
        match self.get("aud") {
            None => Err(ClaimProblem::Missing("aud")),
            Some(ClaimValue::String(s)) => Ok(vec![s.clone()]),
            Some(ClaimValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    ClaimValue::String(s) => Ok(s.clone()),
                    _ => Err(ClaimProblem::Invalid("aud")),
                })
                .collect(),
            Some(_) => Err(ClaimProblem::Invalid("aud")),
        }
    }

    /// A NumericDate: a non-negative integer, or a finite non-negative float
    /// (RFC 7519 allows fractions) below 2^53 so it converts exactly enough.
    fn date(&self, name: &'static str, rounding: Rounding) -> Result<Option<u64>, ClaimProblem> {
        const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
        match self.get(name) {
            None => Ok(None),
            Some(ClaimValue::Int(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| ClaimProblem::Invalid(name)),
            Some(ClaimValue::UInt(u)) => Ok(Some(*u)),
            Some(ClaimValue::Float(f)) if f.is_finite() && *f >= 0.0 && *f < MAX_EXACT => {
                let rounded = match rounding {
                    Rounding::Down => f.floor(),
                    Rounding::Up => f.ceil(),
                };
                // In range by the guard above, so the cast is exact.
                Ok(Some(rounded as u64))
            }
            Some(_) => Err(ClaimProblem::Invalid(name)),
        }
    }
}

impl ClaimProblem {
    /// The claim at fault.
    pub fn claim(self) -> &'static str {
        match self {
            ClaimProblem::Missing(c) | ClaimProblem::Invalid(c) => c,
        }
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Strict::deserialize(d)?.0 {
            ClaimValue::Object(map) => Ok(Claims(map)),
            _ => Err(de::Error::custom("the claims are not a json object")),
        }
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::Null))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(match i64::try_from(v) {
            Ok(i) => ClaimValue::Int(i),
            Err(_) => ClaimValue::UInt(v),
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(ClaimValue::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(ClaimValue::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.insert(key, value).is_some() {
                // The member name is attacker-chosen, so it is not echoed.
                return Err(de::Error::custom("duplicate member"));
            }
        }
        Ok(Strict(ClaimValue::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Claims, String> {
        Claims::parse(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        let cases = [
            (r#"{"a":1}"#, true),
            (r#"{"a":1,"a":1}"#, false),
            (r#"{"channel":"x","channel":"y"}"#, false),
            (r#"{"o":{"k":1,"k":2}}"#, false),
            (r#"{"l":[{"k":1},{"k":1}]}"#, true),
            (r#"{"l":[{"k":1,"k":2}]}"#, false),
            (r#"[1]"#, false),
            (r#""s""#, false),
            (r#"{"a":1} x"#, false),
            (r#"{"a":1"#, false),
        ];
        for (json, ok) in cases {
            assert_eq!(parse(json).is_ok(), ok, "{json}");
        }
    }

    #[test]
    fn values_map_onto_claim_values() {
        let c = parse(
            r#"{"n":null,"b":true,"i":-3,"u":18446744073709551615,"f":1.5,"s":"x","a":[1,"y"],"o":{"k":false}}"#,
        )
        .unwrap();
        assert_eq!(c.get("n"), Some(&ClaimValue::Null));
        assert_eq!(c.get("b"), Some(&ClaimValue::Bool(true)));
        assert_eq!(c.get("i"), Some(&ClaimValue::Int(-3)));
        assert_eq!(c.get("u"), Some(&ClaimValue::UInt(u64::MAX)));
        assert_eq!(c.get("f"), Some(&ClaimValue::Float(1.5)));
        assert_eq!(c.get("s"), Some(&ClaimValue::String("x".into())));
        assert_eq!(
            c.get("a"),
            Some(&ClaimValue::Array(vec![
                ClaimValue::Int(1),
                ClaimValue::String("y".into())
            ]))
        );
        let mut o = BTreeMap::new();
        o.insert("k".to_owned(), ClaimValue::Bool(false));
        assert_eq!(c.get("o"), Some(&ClaimValue::Object(o)));
    }

    const BASE: &str = r#""iss":"i","sub":"s","aud":"a","exp":100"#;

    fn registered(extra: &str) -> Result<Registered, ClaimProblem> {
        let json = if extra.is_empty() {
            format!("{{{BASE}}}")
        } else {
            format!("{{{BASE},{extra}}}")
        };
        parse(&json).unwrap().registered()
    }

    #[test]
    fn registered_claims_are_typed() {
        let r = registered("").unwrap();
        assert_eq!((r.iss.as_str(), r.sub.as_str(), r.exp), ("i", "s", 100));
        assert_eq!(r.aud, vec!["a"]);
        assert_eq!((r.nbf, r.iat), (None, None));
        assert_eq!(registered(r#""nbf":1.2,"iat":7"#).unwrap().nbf, Some(2));
        let invalid = |extra: &str, claim: &'static str| {
            let json = format!("{{{extra}}}");
            let claims = parse(&json).unwrap();
            assert_eq!(claims.registered().unwrap_err().claim(), claim, "{json}");
        };
        invalid(r#""iss":["i","x"],"sub":"s","aud":"a","exp":1"#, "iss");
        invalid(r#""iss":"i","sub":1,"aud":"a","exp":1"#, "sub");
        invalid(r#""iss":"i","sub":"s","aud":123,"exp":1"#, "aud");
        invalid(r#""iss":"i","sub":"s","aud":["a",1],"exp":1"#, "aud");
        invalid(r##""iss":"i","sub":"s","aud":"a","exp":"1""##, "exp");
        invalid(r#""iss":"i","sub":"s","aud":"a","exp":1e300"#, "exp");
        invalid(r#""iss":"i","sub":"s","aud":"a","exp":-1"#, "exp");
        invalid(r#""iss":"i","sub":"s","aud":"a""#, "exp");
        invalid(r#""iss":"i","sub":"s","aud":"a","exp":1,"nbf":"x""#, "nbf");
        invalid(r#""sub":"s","aud":"a","exp":1"#, "iss");
        assert_eq!(
            parse(r#"{"iss":"i","sub":"s","aud":"a","exp":10.9}"#)
                .unwrap()
                .registered()
                .unwrap()
                .exp,
            10
        );
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let scopes = |json: &str| parse(json).unwrap().scopes();
        assert_eq!(scopes(r#"{"scope":"a  b c"}"#), ["a", "b", "c"]);
        assert_eq!(scopes(r#"{"scp":"a b"}"#), ["a", "b"]);
        assert_eq!(scopes(r#"{"scp":["a","b",3]}"#), ["a", "b"]);
        assert_eq!(scopes(r#"{"scope":"x","scp":["a"]}"#), ["x"]);
        assert!(scopes(r#"{"scope":5}"#).is_empty());
    }
}
