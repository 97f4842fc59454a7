//! `[limits]`'s rate limits, Redis and load-shedding keys, into the
//! validated `limits` types: every `[[limits.rate]]` checked (name, key,
//! rate, burst, actions, scope, fail mode, CEL key compiled), every rule's
//! `limits` checked against them, and the Redis password read like every
//! other secret.

use std::collections::BTreeMap;
use std::time::Duration;

use super::file::{LimitsSection, RateLimitSection, RedisSection};
use super::secret::SecretSource;
use super::{ConfigError, invalid};
use crate::limits::{
    FailMode, Gcra, LimitKey, LimitSet, RateLimit, RedisSettings, Scope, check_url, client,
};
use crate::policy::{Action, Effect, KeyExpression, RuleConfig, Service};

/// The fastest rate accepted: GCRA keeps microseconds in Redis.
const MIN_INTERVAL: Duration = Duration::from_micros(1);
/// The longest a limit's state matters (interval × burst): Redis keys
/// expire after it, and a year is far beyond any budget an operator means.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest burst accepted.
const MAX_BURST: u32 = 1_000_000;
/// The most rate limits accepted.
const MAX_LIMITS: usize = 64;
/// The longest `limits.redis.timeout`: a check waits at most this long,
/// and a call's latency includes it.
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The parts of `[limits]` the limiter's state is made from: they take a
/// restart to change (the store and the connection live as long as the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterSettings {
    /// The most keys the in-process store holds.
    pub local_max_keys: usize,
    /// Redis, for cluster mode.
    pub redis: Option<RedisSettings>,
}

/// The limit set and the limiter's settings of a `[limits]` section.
pub(super) fn resolve(
    section: &LimitsSection,
    rules: &[RuleConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(LimitSet, LimiterSettings), ConfigError> {
    if section.max_in_flight == 0 {
        return Err(invalid("limits.max_in_flight", "must be at least 1"));
    }
    if section.local_max_keys == 0 {
        return Err(invalid("limits.local_max_keys", "must be at least 1"));
    }
    if section.rate.len() > MAX_LIMITS {
        return Err(invalid(
            "limits.rate",
            &format!("at most {MAX_LIMITS} limits; each one is checked on every call it counts"),
        ));
    }
    let mut limits: Vec<RateLimit> = Vec::with_capacity(section.rate.len());
    for (index, table) in section.rate.iter().enumerate() {
        let key = format!("limits.rate[{index}]");
        if let Some(first) = limits.iter().position(|l| *l.name == *table.name) {
            return Err(invalid(
                &format!("{key}.name"),
                &format!("limits.rate[{first}] already has this name; names must be unique"),
            ));
        }
        limits.push(resolve_rate(table, &key)?);
    }
    let by_rule = rule_limits(rules, &limits)?;
    let redis = section
        .redis
        .as_ref()
        .map(|redis| resolve_redis(redis, env))
        .transpose()?;
    Ok((
        LimitSet::new(limits, &by_rule, section.max_in_flight),
        LimiterSettings {
            local_max_keys: section.local_max_keys,
            redis,
        },
    ))
}

/// One `[[limits.rate]]`.
fn resolve_rate(table: &RateLimitSection, key: &str) -> Result<RateLimit, ConfigError> {
    let name = table.name.as_str();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid_name {
        return Err(invalid(
            &format!("{key}.name"),
            "must be 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.' (it is a metric label and part of a Redis key)",
        ));
    }
    let limit_key = match (table.key.as_str(), &table.expression) {
        ("caller", None) => LimitKey::Caller,
        ("issuer", None) => LimitKey::Issuer,
        ("rule", None) => LimitKey::Rule,
        ("channel", None) => LimitKey::Channel,
        ("cel", Some(expression)) => LimitKey::Cel(
            KeyExpression::compile(expression)
                .map_err(|reason| invalid(&format!("{key}.expression"), &reason))?,
        ),
        ("cel", None) => {
            return Err(invalid(
                &format!("{key}.expression"),
                "is required with key = \"cel\"",
            ));
        }
        ("caller" | "issuer" | "rule" | "channel", Some(_)) => {
            return Err(invalid(
                &format!("{key}.expression"),
                "is only for key = \"cel\"",
            ));
        }
        (other, _) => {
            return Err(invalid(
                &format!("{key}.key"),
                &format!("{other:?} is not one of caller, issuer, rule, channel, cel"),
            ));
        }
    };
    let (count, period) =
        parse_rate(&table.rate).map_err(|reason| invalid(&format!("{key}.rate"), &reason))?;
    let interval = period / count;
    if interval < MIN_INTERVAL {
        return Err(invalid(
            &format!("{key}.rate"),
            "is faster than one call per microsecond",
        ));
    }
    let burst = table.burst.unwrap_or(count);
    if burst == 0 || burst > MAX_BURST {
        return Err(invalid(
            &format!("{key}.burst"),
            &format!("must be 1 to {MAX_BURST}"),
        ));
    }
    if interval.saturating_mul(burst) > MAX_WINDOW {
        return Err(invalid(
            &format!("{key}.burst"),
            "times the emission interval is more than a year",
        ));
    }
    let services = match &table.actions {
        None => vec![Service::Rtc, Service::Rtm, Service::Chat, Service::Fpa],
        Some(actions) if actions.is_empty() => {
            return Err(invalid(&format!("{key}.actions"), "must name at least one action"));
        }
        Some(actions) => actions
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let service = match Action::parse(action) {
                    Some(Action::Issue(service)) => Some(service),
                    _ => None,
                };
                service.ok_or_else(|| {
                    invalid(
                        &format!("{key}.actions[{i}]"),
                        &format!("{action:?} is not one of rtc, rtm, chat, fpa (limits count the tokens issued)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let scope = match &table.scope {
        None => Scope::All,
        Some(text) => Scope::parse(text).ok_or_else(|| {
            invalid(
                &format!("{key}.scope"),
                &format!("{text:?} is not all or rule"),
            )
        })?,
    };
    let on_redis_failure = match &table.on_redis_failure {
        None => FailMode::Open,
        Some(text) => FailMode::parse(text).ok_or_else(|| {
            invalid(
                &format!("{key}.on_redis_failure"),
                &format!("{text:?} is not open or closed"),
            )
        })?,
    };
    Ok(RateLimit {
        name: name.into(),
        key: limit_key,
        gcra: Gcra::new(interval, burst),
        rate: table.rate.clone(),
        services,
        scope,
        on_redis_failure,
    })
}

/// `<count>/<period>`: the period is a unit (`s`, `min`, `h`, `d`) or a
/// duration (`10s`, `1m30s`).
fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let syntax = || format!("{text:?} is not a rate like \"20/s\", \"600/min\" or \"5/10s\"");
    let (count, period) = text.split_once('/').ok_or_else(syntax)?;
    let count: u32 = count.trim().parse().map_err(|_| syntax())?;
    if count == 0 {
        return Err("must admit at least one call per period".to_owned());
    }
    let period = period.trim();
    let period = match period {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).map_err(|_| syntax())?,
    };
    if period.is_zero() {
        return Err(syntax());
    }
    Ok((count, period))
}

/// Each rule's `limits`, checked: known names, of `scope = "rule"` limits,
/// on allow rules only.
fn rule_limits(
    rules: &[RuleConfig],
    limits: &[RateLimit],
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut by_rule = BTreeMap::new();
    for (index, rule) in rules.iter().enumerate() {
        if rule.limits.is_empty() {
            continue;
        }
        if rule.effect == Effect::Deny {
            return Err(invalid(
                &format!("rules[{index}].limits"),
                "a deny rule grants nothing to limit",
            ));
        }
        for (i, name) in rule.limits.iter().enumerate() {
            let key = format!("rules[{index}].limits[{i}]");
            match limits.iter().find(|l| *l.name == **name) {
                None => {
                    return Err(invalid(
                        &key,
                        &format!("{name:?} is not the name of a [[limits.rate]]"),
                    ));
                }
                Some(limit) if limit.scope != Scope::Rule => {
                    return Err(invalid(
                        &key,
                        &format!(
                            "{name:?} has scope = \"all\" and counts every call already; give it scope = \"rule\" to count only the rules that name it"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        by_rule.insert(rule.name.clone(), rule.limits.clone());
    }
    Ok(by_rule)
}

/// `[limits.redis]`.
/// Its files are read as written, relative to the working directory, like
/// every secret file.
fn resolve_redis(
    section: &RedisSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RedisSettings, ConfigError> {
    check_url(&section.url).map_err(|reason| invalid("limits.redis.url", &reason))?;
    let source = SecretSource::at_most_one(
        section.password_file.clone(),
        section.password_env.clone(),
        || {
            invalid(
                "limits.redis.password_file",
                "set password_file or password_env, not both",
            )
        },
    )?;
    let password = source
        .map(|source| {
            let key = match source {
                SecretSource::File(_) => "limits.redis.password_file",
                SecretSource::Env(_) => "limits.redis.password_env",
            };
            let secret = source.read(key, env)?;
            String::from_utf8(secret.expose().to_vec()).map_err(|_| invalid(key, "is not UTF-8"))
        })
        .transpose()?;
    let ca_pem = section
        .ca_file
        .as_ref()
        .map(|path| {
            if !section.url.starts_with("rediss://") {
                return Err(invalid(
                    "limits.redis.ca_file",
                    "is only for a rediss:// url",
                ));
            }
            let pem = super::files::read_bounded(path, super::files::MAX_DOCUMENT_BYTES)
                .map_err(|e| invalid("limits.redis.ca_file", &e))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid("limits.redis.ca_file", "holds no PEM certificate"));
            }
            Ok(pem)
        })
        .transpose()?;
    let timeout = section.timeout.0;
    if timeout.is_zero() || timeout > MAX_REDIS_TIMEOUT {
        return Err(invalid(
            "limits.redis.timeout",
            "must be more than 0 and at most 1s",
        ));
    }
    if section.connect_timeout.0.is_zero() {
        return Err(invalid("limits.redis.connect_timeout", "must be positive"));
    }
    if section.retry_interval.0.is_zero() {
        return Err(invalid("limits.redis.retry_interval", "must be positive"));
    }
    if section.key_prefix.len() > 64 || section.key_prefix.contains(char::is_whitespace) {
        return Err(invalid(
            "limits.redis.key_prefix",
            "must be at most 64 characters without spaces",
        ));
    }
    if section.replicas == Some(0) {
        return Err(invalid("limits.redis.replicas", "must be at least 1"));
    }
    let settings = RedisSettings {
        url: section.url.clone(),
        username: section.username.clone(),
        password,
        ca_pem,
        timeout,
        connect_timeout: section.connect_timeout.0,
        retry_interval: section.retry_interval.0,
        key_prefix: section.key_prefix.clone(),
        replicas: section.replicas,
    };
    // Built once here, unconnected, so what rustls refuses (a CA bundle
    // it cannot use) is refused by check-config too.
    client(&settings).map_err(|e| invalid("limits.redis", &e.to_string()))?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_count_per_period() {
        assert_eq!(parse_rate("20/s").unwrap(), (20, Duration::from_secs(1)));
        assert_eq!(
            parse_rate("600/min").unwrap(),
            (600, Duration::from_secs(60))
        );
        assert_eq!(parse_rate("5 / 10s").unwrap(), (5, Duration::from_secs(10)));
        assert_eq!(
            parse_rate("1000/h").unwrap(),
            (1000, Duration::from_secs(3600))
        );
        for bad in ["20", "0/s", "x/s", "20/fortnight", "20/0s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
