//! A fact's JSON as the rules' plain data ([`ClaimValue`], what claims are
//! too), with a bound on nesting: a document nested deeper than the rules
//! could read is a failure, not a stack to exhaust.

use std::collections::BTreeMap;

use crate::domain::ClaimValue;

/// The deepest nesting a fact's document may have: what conditions can
/// read (claims' bound) less the two levels a PostgreSQL row adds (its list
/// and its map), so a document that converts here never fails there.
pub(crate) const MAX_DEPTH: usize = 12;

/// Converts `value`, or says it nests too deeply.
pub(crate) fn from_json(value: serde_json::Value) -> Result<ClaimValue, String> {
    convert(value, 0)
}

fn convert(value: serde_json::Value, depth: usize) -> Result<ClaimValue, String> {
    use serde_json::Value;
    if depth > MAX_DEPTH {
        return Err(format!("the document nests deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Value::Null => ClaimValue::Null,
        Value::Bool(b) => ClaimValue::Bool(b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ClaimValue::Int(i),
            (None, Some(u), _) => ClaimValue::UInt(u),
            (None, None, Some(f)) => ClaimValue::Float(f),
            (None, None, None) => return Err(format!("the number {n} is out of range")),
        },
        Value::String(s) => ClaimValue::String(s),
        Value::Array(items) => ClaimValue::Array(
            items
                .into_iter()
                .map(|item| convert(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => ClaimValue::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, convert(v, depth + 1)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_convert_and_deep_ones_are_refused() {
        let value =
            serde_json::json!({"a": [1, -2, 1.5, "x", null, true], "b": 18446744073709551615u64});
        let converted = from_json(value).unwrap();
        let ClaimValue::Object(fields) = converted else {
            panic!("an object")
        };
        assert_eq!(fields["b"], ClaimValue::UInt(u64::MAX));
        let mut deep = serde_json::json!(1);
        for _ in 0..(MAX_DEPTH + 1) {
            deep = serde_json::json!([deep]);
        }
        assert!(from_json(deep).unwrap_err().contains("deeper"));
    }
}
