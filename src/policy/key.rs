//! Key expressions: a CEL expression over the variables rules see, whose
//! value names a budget (a rate limit keyed by `claims.tenant`). Pure like
//! the rest of `policy`: compiled once at load, evaluated with `now` as an
//! argument.

use std::sync::Arc;

use cel::{Env, Program, Value};

use super::condition::{self, Activation, Reads};
use super::request::{Caller, Request};

/// The longest key text kept; longer values are cut (they only name a budget).
const MAX_KEY_BYTES: usize = 256;

/// A compiled key expression.
pub struct KeyExpression {
    source: String,
    program: Program,
    reads: Reads,
    env: Arc<Env>,
}

impl KeyExpression {
    /// Checks the same size limits as conditions and compiles `source`.
    pub fn compile(source: &str) -> Result<Self, String> {
        let env = Arc::new(Env::stdlib());
        let (program, reads) = condition::compile_program(&env, source)?;
        if program.references().has_variable("facts") {
            return Err(
                "reads `facts`; a key is computed from the caller and the request alone".to_owned(),
            );
        }
        Ok(Self {
            source: source.to_owned(),
            program,
            reads,
            env,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The key for `caller`'s `request` at `now`: the expression's string,
    /// integer or bool value as text. Fails when evaluation fails (a claim
    /// that is absent) or yields another type.
    pub fn evaluate(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
    ) -> Result<String, String> {
        let activation = Activation::new(&self.env, self.reads, caller, request, now)?;
        match activation.execute(&self.program) {
            Ok(Value::String(text)) => Ok(bounded(text.as_str())),
            Ok(Value::Int(i)) => Ok(i.to_string()),
            Ok(Value::UInt(u)) => Ok(u.to_string()),
            Ok(Value::Bool(b)) => Ok(b.to_string()),
            Ok(other) => Err(format!(
                "produced a {}; a key is a string, an int or a bool",
                other.type_of()
            )),
            Err(error) => Err(condition::truncate(&error.to_string())),
        }
    }
}

impl std::fmt::Debug for KeyExpression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyExpression").field(&self.source).finish()
    }
}

/// `text`, cut at a character boundary at most [`MAX_KEY_BYTES`] in.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_KEY_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_KEY_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{ChannelName, ClaimValue, Fingerprint, Principal};
    use crate::policy::{Action, ChannelScope, Peer, Service};

    fn principal(tenant: Option<ClaimValue>) -> Principal {
        let mut claims = BTreeMap::new();
        if let Some(tenant) = tenant {
            claims.insert("tenant".to_owned(), tenant);
        }
        Principal {
            issuer: "https://idp.example".into(),
            subject: "svc-1".into(),
            audiences: vec![],
            scopes: vec![],
            claims,
            expires_at: 2_000_000_000,
            token_fingerprint: Fingerprint::of(b"jwt"),
        }
    }

    fn request() -> Request {
        Request {
            channel: Some(ChannelScope::Named(ChannelName::parse("room-1").unwrap())),
            ..Request::new(Action::Issue(Service::Rtc))
        }
    }

    #[test]
    fn keys_come_from_claims_and_the_request() {
        let peer = Peer::default();
        let request = request();
        let acme = principal(Some(ClaimValue::String("acme".into())));
        let caller = Caller {
            principal: Some(&acme),
            peer: &peer,
        };
        let tenant = KeyExpression::compile("claims.tenant").unwrap();
        assert_eq!(tenant.evaluate(caller, &request, 1).unwrap(), "acme");
        let joined = KeyExpression::compile("claims.tenant + \"/\" + channel").unwrap();
        assert_eq!(joined.evaluate(caller, &request, 1).unwrap(), "acme/room-1");
        let numeric = principal(Some(ClaimValue::Int(42)));
        let caller = Caller {
            principal: Some(&numeric),
            peer: &peer,
        };
        assert_eq!(tenant.evaluate(caller, &request, 1).unwrap(), "42");
    }

    #[test]
    fn an_absent_claim_or_a_list_is_an_error_not_a_key() {
        let peer = Peer::default();
        let request = request();
        let none = principal(None);
        let caller = Caller {
            principal: Some(&none),
            peer: &peer,
        };
        let tenant = KeyExpression::compile("claims.tenant").unwrap();
        assert!(tenant.evaluate(caller, &request, 1).is_err());
        let list = KeyExpression::compile("[1, 2]").unwrap();
        assert!(
            list.evaluate(caller, &request, 1)
                .unwrap_err()
                .contains("list")
        );
        assert!(KeyExpression::compile("claims.(").is_err());
        assert_eq!(bounded(&"é".repeat(200)).len(), 256);
    }
}
