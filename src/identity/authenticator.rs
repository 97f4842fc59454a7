//! `Authenticator`: `authorization: Bearer <jwt>` in, a verified `Principal` or a precise refusal out.
//!
//! The order of the checks is the design (identity.md §3): cap the size
//! before decoding anything; parse the header and the claims strictly; pick
//! the issuer from the unverified `iss` and from then on use only that
//! issuer's keys; check the algorithm against the issuer's allow-list and the
//! key's pinned `alg`; type the registered claims before any key is looked
//! up; refuse an absurd `exp` or a lifetime beyond the issuer's
//! `max_token_lifetime`; verify the signature; then check time (`exp`, `nbf`, future `iat`,
//! against the caller's `now`), audience and required claims.
//!
//! With the verified-JWT cache on (`identity::verified`), a token verified
//! before is looked up by its SHA-256 right after the size cap, and answered
//! from the cache when the issuer's keys and settings are those it was
//! verified under; its time claims are checked against `now` on every answer,
//! by the same functions as here.
//!
//! jsonwebtoken supplies the signature primitive (`crypto::verify` on the
//! aws-lc backend); the JOSE and JWT rules are ours. `jsonwebtoken::decode`
//! would parse the header twice and the claims three times, read the system
//! clock and accept an `iss` array, so we do the rules once, strictly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::task::AbortHandle;

use super::claims::{ClaimProblem, Claims, Registered, Times};
use super::config::{
    HsSecret, IdentityConfigError, IssuerSettings, MAX_EXP, VerifiedCacheSettings, validate_issuers,
};
use super::keys::VerifyKey;
use super::refresh::{IssuerStatus, KeyCache, KeyState, Refresher};
use super::verified::{self, Entry, Stamp, TokenDigest, VerifiedCache, VerifiedCacheStats};
use crate::domain::{ClaimValue, Fingerprint, Principal};

/// Verifies bearer JWTs against the configured issuers.
///
/// Dropping it stops the key refreshers it does not share with a newer
/// authenticator (see [`Authenticator::restart`]).
#[derive(Debug)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    /// The largest per-issuer cap: applied before anything is decoded.
    max_token_size: usize,
    /// The verified-JWT cache; `None` when it is off.
    verified: Option<VerifiedCache>,
}

/// One issuer's key refresher task; aborted when the last authenticator
/// that uses it is dropped, so a refresher kept across a reload lives on
/// and a removed issuer's stops with the old authenticator.
#[derive(Debug)]
struct RefresherTask(AbortHandle);

/// The authenticator a restart follows, and which of its issuers to renew anyway.
type Previous<'a> = (&'a Authenticator, &'a dyn Fn(&str) -> bool);

/// What [`Authenticator::restart`] did with each issuer's refresher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarted {
    /// Issuers whose refresher (and loaded keys) were kept: same settings.
    pub kept: Vec<String>,
    /// Issuers whose refresher was started anew: changed settings, or asked to.
    pub restarted: Vec<String>,
    /// Issuers that are new.
    pub added: Vec<String>,
    /// Issuers that are gone; their refreshers stop with the old authenticator.
    pub removed: Vec<String>,
}

/// One authentication, with what the metrics and the logs need to know about it.
#[derive(Debug)]
pub struct Authentication<'a> {
    /// The configured name of the issuer the token named, once it is known
    /// (a failure is counted against the issuer whose token failed).
    pub issuer: Option<&'a str>,
    /// Whether the verified-JWT cache answered.
    pub cache: CacheLookup,
    /// The verified caller, or why the token was refused.
    pub result: Result<Arc<Principal>, AuthError>,
}

/// What the verified-JWT cache did for one call. `label()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// No lookup counted: the cache is off, the issuer is left out of it
    /// (`verified_cache = false`), or the call had no token to look up
    /// (none, or one over the size cap).
    Off,
    /// Answered from the cache: no signature was verified, the time claims were checked.
    Hit,
    /// Not in the cache: verified in full (and cached if it verified).
    Miss,
    /// In the cache from before a key-set change, an invalidation or
    /// `max_age`: dropped, and verified in full.
    Stale,
}

/// Whether the readiness policy holds, with each issuer's status.
///
/// The policy: every issuer with `required_for_readiness` (the default) has
/// usable keys (loaded at least once, and not expired after `max_stale`), and
/// at least one issuer has. An optional issuer without usable keys leaves the
/// service ready; its callers are refused with `keys_unavailable`
/// (UNAVAILABLE) while the others are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// True when the policy holds.
    pub ready: bool,
    /// One status per issuer, in config order.
    pub issuers: Vec<IssuerStatus>,
    /// Whether each issuer (same order) is required for readiness.
    pub required: Vec<bool>,
}

/// Why a caller was refused. `reason()` is the stable label for metrics and replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata was sent.
    #[error("no bearer token was sent")]
    Missing,
    /// The value is not a well-formed bearer JWT.
    #[error("the bearer token is malformed: {0}")]
    Malformed(&'static str),
    /// The token exceeds the size cap.
    #[error("the token is {size} bytes, the limit is {max}")]
    TooLarge {
        /// The token's size in bytes.
        size: usize,
        /// The cap in bytes.
        max: usize,
    },
    /// No configured issuer signs with this `iss`.
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    /// The issuer has no key with this `kid` (or the token has no `kid`).
    #[error("issuer {issuer} has no key for this token")]
    UnknownKey {
        /// The issuer's configured name.
        issuer: String,
    },
    /// The algorithm is not allowed for this issuer or this key.
    #[error("the token's algorithm is not allowed here")]
    AlgorithmNotAllowed,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future, beyond the leeway.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `iss` is not a single configured string.
    #[error("the token's iss claim is not accepted")]
    BadIssuer,
    /// No `aud` value is one of the issuer's audiences.
    #[error("the token is not meant for this service (aud)")]
    BadAudience,
    /// A required claim is missing or has the wrong type.
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(String),
    /// The issuer's keys have never loaded; retrying later may succeed.
    #[error("the keys of issuer {issuer} have not loaded yet")]
    KeysNotLoaded {
        /// The issuer's configured name.
        issuer: String,
    },
    /// The issuer's keys could not be refreshed for longer than `max_stale`.
    #[error("the keys of issuer {issuer} are too old to trust")]
    KeysExpired {
        /// The issuer's configured name.
        issuer: String,
    },
    /// `exp` is absurd (after 9999), or the token lives longer than the issuer's `max_token_lifetime`.
    #[error("the token's lifetime is longer than this service accepts")]
    LifetimeTooLong,
}

/// One configured issuer, compiled for the request path.
#[derive(Debug)]
struct Issuer {
    name: String,
    audiences: Vec<String>,
    leeway: u64,
    required_claims: Vec<String>,
    require_kid: bool,
    max_token_size: usize,
    /// The longest accepted `exp - iat` (or `exp - now`), in seconds.
    max_token_lifetime: Option<u64>,
    required_for_readiness: bool,
    algorithms: Vec<Algorithm>,
    hs_secret: Option<HsSecret>,
    cache: Arc<KeyCache>,
    /// The refresher publishing into `cache`.
    refresher: Arc<RefresherTask>,
    /// The settings it was compiled from, compared by a reload.
    settings: IssuerSettings,
    /// Whether this issuer's verified tokens are cached.
    cached: bool,
    /// Moved by `Authenticator::invalidate_issuer`: entries stamped with an
    /// older epoch no longer answer.
    epoch: AtomicU64,
}

/// A successful verification, with what a cache entry records of it.
struct Verified {
    principal: Principal,
    times: Times,
    /// The key-set version the signature verified under.
    keys: u64,
}

/// A token split and parsed, not yet verified.
struct Parsed<'a> {
    token: &'a str,
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a str,
    /// The base64url signature segment.
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
    claims: Claims,
}

impl CacheLookup {
    /// The `result` label of the cache metrics; `None` for [`CacheLookup::Off`].
    pub fn label(self) -> Option<&'static str> {
        match self {
            CacheLookup::Off => None,
            CacheLookup::Hit => Some("hit"),
            CacheLookup::Miss => Some("miss"),
            CacheLookup::Stale => Some("stale"),
        }
    }

    /// Whether the token's signature was verified on this call.
    pub fn verified_in_full(self) -> bool {
        self != CacheLookup::Hit
    }
}

impl Authenticator {
    /// Spawns one key refresher per issuer on the current tokio runtime, with
    /// the verified-JWT cache at its defaults (on: see `identity::verified`).
    ///
    /// The settings are already validated and their HS secrets already read
    /// (by `crate::config`), so the only failures left are a duplicate name or
    /// `iss` across issuers, a missing runtime and the HTTP client.
    pub fn start(settings: Vec<IssuerSettings>) -> Result<Self, IdentityConfigError> {
        Self::start_with_cache(settings, &VerifiedCacheSettings::default())
    }

    /// Like [`Authenticator::start`], with these verified-JWT cache settings.
    pub fn start_with_cache(
        settings: Vec<IssuerSettings>,
        cache: &VerifiedCacheSettings,
    ) -> Result<Self, IdentityConfigError> {
        Self::build(settings, cache, None).map(|(authenticator, _)| authenticator)
    }

    /// A new authenticator for a reloaded config, next to this one (which
    /// keeps serving the calls that hold it).
    ///
    /// An issuer whose settings equal its namesake's here, and that `renew`
    /// does not name, keeps that issuer's refresher and its loaded keys (no
    /// fetch, no moment without keys); any other gets a new refresher. The
    /// verified-JWT cache always starts empty: no principal verified under
    /// an old issuer setting can answer for the new one.
    pub fn restart(
        &self,
        settings: Vec<IssuerSettings>,
        cache: &VerifiedCacheSettings,
        renew: &dyn Fn(&str) -> bool,
    ) -> Result<(Self, Restarted), IdentityConfigError> {
        Self::build(settings, cache, Some((self, renew)))
    }

    fn build(
        settings: Vec<IssuerSettings>,
        cache: &VerifiedCacheSettings,
        previous: Option<Previous<'_>>,
    ) -> Result<(Self, Restarted), IdentityConfigError> {
        // Idempotent; makes the backend explicit even if main forgot.
        super::install_crypto_provider();
        validate_issuers(&settings, "issuers")?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| IdentityConfigError::NoRuntime)?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("tokengate/", env!("CARGO_PKG_VERSION")))
            // Fetches are minutes apart: a pooled connection would mostly be
            // a dead one after an IdP restart or a load-balancer change.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| IdentityConfigError::HttpClient(e.to_string()))?;
        let mut issuers = Vec::with_capacity(settings.len());
        let mut by_iss = HashMap::new();
        let mut restarted = Restarted::default();
        if let Some((old, _)) = previous {
            restarted.removed = old
                .issuers
                .iter()
                .filter(|o| !settings.iter().any(|s| s.name() == o.name))
                .map(|o| o.name.clone())
                .collect();
        }
        for (i, settings) in settings.into_iter().enumerate() {
            for iss in settings.issuer() {
                by_iss.insert(iss.clone(), i);
            }
            let namesake = previous.and_then(|(old, renew)| {
                old.issuers
                    .iter()
                    .find(|o| o.name == settings.name())
                    .map(|o| (o, renew))
            });
            match namesake {
                Some((old, renew)) if old.settings == settings && !renew(settings.name()) => {
                    restarted.kept.push(settings.name().to_owned());
                    let cache = Arc::clone(&old.cache);
                    let task = Arc::clone(&old.refresher);
                    issuers.push(Issuer::compile(settings, cache, task));
                    continue;
                }
                Some(_) => restarted.restarted.push(settings.name().to_owned()),
                None if previous.is_some() => restarted.added.push(settings.name().to_owned()),
                None => {}
            }
            let source = settings.key_source().clone();
            let cache = Arc::new(KeyCache::new(
                settings.name(),
                settings.refresh(),
                &source,
                settings.unknown_kid_wait(),
            ));
            let refresher = Refresher {
                cache: Arc::clone(&cache),
                source,
                issuers: settings.issuer().to_vec(),
                refresh: settings.refresh().clone(),
                client: client.clone(),
            };
            let task = Arc::new(RefresherTask(runtime.spawn(refresher.run()).abort_handle()));
            issuers.push(Issuer::compile(settings, cache, task));
        }
        let max_token_size = issuers.iter().map(|i| i.max_token_size).max().unwrap_or(0);
        // With every issuer left out, a cache would only cost a hash per call.
        let verified = if issuers.iter().any(|i| i.cached) {
            VerifiedCache::new(cache)
        } else {
            None
        };
        Ok((
            Self {
                issuers,
                by_iss,
                max_token_size,
                verified,
            },
            restarted,
        ))
    }

    /// Verifies the raw `authorization` value (`Bearer <jwt>`) at unix time `now`.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<Principal, AuthError> {
        self.authenticate_call(authorization, now)
            .await
            .result
            .map(Arc::unwrap_or_clone)
    }

    /// Like [`Authenticator::authenticate`], with the issuer's name and what
    /// the verified-JWT cache did, for the metrics; the principal is shared
    /// with the cache rather than copied.
    pub async fn authenticate_call(
        &self,
        authorization: Option<&str>,
        now: u64,
    ) -> Authentication<'_> {
        let token = match self.bearer_token(authorization) {
            Ok(token) => token,
            Err(error) => {
                return Authentication {
                    issuer: None,
                    cache: CacheLookup::Off,
                    result: Err(error),
                };
            }
        };
        let digest = verified::digest(token);
        let Some(cache) = &self.verified else {
            return self.verify_token(token, &digest, now, None).await;
        };
        let lookup = match cache.get(&digest) {
            None => CacheLookup::Miss,
            Some(entry) => match self.answer(cache, &entry, now) {
                Some((issuer, result)) => {
                    if matches!(result, Err(AuthError::Expired)) {
                        // Expired for good (unless the clock steps back,
                        // when a full verification decides): free the place.
                        cache.remove(&digest, &entry);
                    }
                    return Authentication {
                        issuer: Some(issuer.name.as_str()),
                        cache: CacheLookup::Hit,
                        result,
                    };
                }
                None => {
                    cache.remove(&digest, &entry);
                    CacheLookup::Stale
                }
            },
        };
        self.verify_token(token, &digest, now, Some((cache, lookup)))
            .await
    }

    /// The answer of a cache entry at `now`, with its issuer, or `None` when
    /// the entry may not answer (the issuer's keys or epoch moved on since,
    /// or it is older than `max_age`).
    fn answer(
        &self,
        cache: &VerifiedCache,
        entry: &Entry,
        now: u64,
    ) -> Option<(&Issuer, Result<Arc<Principal>, AuthError>)> {
        let issuer = self.issuers.get(entry.issuer)?;
        if issuer.stamp() != entry.stamp || !cache.fresh(entry, now) {
            return None;
        }
        // The size cap, the algorithm, the signature, `iss`, `aud` and the
        // required claims gave the same answer for this token under these
        // keys and settings when it was verified, and the stamp says they are
        // the same now. Only the time claims depend on `now`: they are
        // checked again, in the order and with the code of a full
        // verification, so the reason for a refusal is the same too.
        let result = issuer
            .check_lifetime(&entry.times, now)
            .and_then(|()| issuer.check_times(&entry.times, now))
            .map(|()| Arc::clone(&entry.principal));
        Some((issuer, result))
    }

    /// Verifies `token` in full; with a cache, stores a success and reports `lookup`.
    async fn verify_token(
        &self,
        token: &str,
        digest: &TokenDigest,
        now: u64,
        cache: Option<(&VerifiedCache, CacheLookup)>,
    ) -> Authentication<'_> {
        let (index, issuer, parsed) = match self.find_issuer(token) {
            Ok(found) => found,
            Err(error) => {
                return Authentication {
                    issuer: None,
                    cache: cache.map_or(CacheLookup::Off, |(_, lookup)| lookup),
                    result: Err(error),
                };
            }
        };
        let cache = cache.filter(|_| issuer.cached);
        // Read before verifying: an invalidation during the verification
        // leaves this entry with the old epoch, which never answers.
        let epoch = issuer.epoch.load(Ordering::SeqCst);
        let result = match issuer.verify(parsed, digest, now).await {
            Ok(verified) => {
                let principal = Arc::new(verified.principal);
                if let Some((cache, _)) = cache {
                    cache.insert(
                        *digest,
                        Entry {
                            issuer: index,
                            stamp: Stamp {
                                keys: verified.keys,
                                epoch,
                            },
                            verified_at: now,
                            times: verified.times,
                            principal: Arc::clone(&principal),
                        },
                    );
                }
                Ok(principal)
            }
            // A refusal is never cached: only a valid token earns an entry.
            Err(error) => Err(error),
        };
        Authentication {
            issuer: Some(issuer.name.as_str()),
            cache: cache.map_or(CacheLookup::Off, |(_, lookup)| lookup),
            result,
        }
    }

    /// The token of a `Bearer <jwt>` value, within the largest size cap.
    fn bearer_token<'t>(&self, authorization: Option<&'t str>) -> Result<&'t str, AuthError> {
        let token = bearer(authorization)?;
        if token.len() > self.max_token_size {
            return Err(AuthError::TooLarge {
                size: token.len(),
                max: self.max_token_size,
            });
        }
        Ok(token)
    }

    /// The issuer a token names (with its index), with the token parsed.
    fn find_issuer<'t>(&self, token: &'t str) -> Result<(usize, &Issuer, Parsed<'t>), AuthError> {
        let parsed = Parsed::parse(token)?;
        let iss = parsed.claims.issuer().map_err(|p| match p {
            ClaimProblem::Missing(c) => AuthError::MissingClaim(c.to_owned()),
            ClaimProblem::Invalid(_) => AuthError::BadIssuer,
        })?;
        let (index, issuer) = self
            .by_iss
            .get(iss)
            .and_then(|i| Some((*i, self.issuers.get(*i)?)))
            .ok_or(AuthError::UnknownIssuer)?;
        Ok((index, issuer, parsed))
    }

    /// Stops the verified-JWT cache from answering for the issuer named
    /// `name` with anything verified before this call, and drops its
    /// entries; `false` when no issuer has that name. A key-set change does
    /// this by itself; this is for a change the keys do not show (a reload).
    pub fn invalidate_issuer(&self, name: &str) -> bool {
        let Some((index, issuer)) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == name)
        else {
            return false;
        };
        issuer.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.verified {
            cache.remove_issuer(index);
        }
        true
    }

    /// The verified-JWT cache's size, bound and evictions; `None` when it is off.
    pub fn verified_cache_stats(&self) -> Option<VerifiedCacheStats> {
        self.verified.as_ref().map(VerifiedCache::stats)
    }

    /// Whether the readiness policy holds (see [`Readiness`]), and each issuer's status.
    pub fn readiness(&self) -> Readiness {
        let issuers: Vec<_> = self.issuers.iter().map(|i| i.cache.status()).collect();
        let required: Vec<_> = self
            .issuers
            .iter()
            .map(|i| i.required_for_readiness)
            .collect();
        let ready = issuers
            .iter()
            .zip(&required)
            .all(|(status, required)| status.usable() || !required)
            && issuers.iter().any(IssuerStatus::usable);
        Readiness {
            ready,
            issuers,
            required,
        }
    }

    /// Waits until the readiness policy holds (see [`Readiness`]).
    pub async fn wait_ready(&self) {
        self.wait_readiness(true).await;
    }

    /// Waits until the readiness policy's verdict is `ready`, and returns the readiness then.
    ///
    /// The server follows readiness with it both ways: keys that expire after
    /// `max_stale` take a required issuer, and with it the service, out of
    /// rotation until a refresh succeeds again.
    pub async fn wait_readiness(&self, ready: bool) -> Readiness {
        // Subscribed before the first look, so no change between the look and
        // the wait is missed.
        let mut receivers: Vec<_> = self.issuers.iter().map(|i| i.cache.watch()).collect();
        loop {
            let readiness = self.readiness();
            if readiness.ready == ready {
                return readiness;
            }
            if receivers.is_empty() {
                // Every refresher is gone: readiness never comes, and the
                // caller's own deadline applies.
                std::future::pending::<()>().await;
            }
            let closed = any_change(&mut receivers).await;
            if let Some(i) = closed {
                receivers.swap_remove(i);
            }
        }
    }

    /// A receiver of the status of the issuer named `name`, for logs and metrics.
    pub fn watch_issuer(&self, name: &str) -> Option<tokio::sync::watch::Receiver<IssuerStatus>> {
        self.issuers
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.cache.watch())
    }

    /// Stops the key refreshers (shared ones too: this is for the end of
    /// the process); the last published keys stay usable.
    pub fn shutdown(&self) {
        for issuer in &self.issuers {
            issuer.refresher.0.abort();
        }
    }
}

/// Waits until one of `receivers` sees a change; `Some(i)` when receiver `i` is closed.
async fn any_change(receivers: &mut [tokio::sync::watch::Receiver<IssuerStatus>]) -> Option<usize> {
    let mut changes: Vec<_> = receivers
        .iter_mut()
        .map(|rx| Box::pin(rx.changed()))
        .collect();
    std::future::poll_fn(|cx| {
        for (i, change) in changes.iter_mut().enumerate() {
            if let std::task::Poll::Ready(result) = change.as_mut().poll(cx) {
                return std::task::Poll::Ready(result.err().map(|_| i));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl Drop for RefresherTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AuthError {
    /// The stable, low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::KeysNotLoaded { .. } | AuthError::KeysExpired { .. } => "keys_unavailable",
            AuthError::LifetimeTooLong => "lifetime_too_long",
        }
    }

    /// True when the issuer's keys have never loaded.
    pub fn keys_never_loaded(&self) -> bool {
        matches!(self, AuthError::KeysNotLoaded { .. })
    }

    /// True when the issuer has no usable keys (never loaded, or expired
    /// after `max_stale`): the service answers UNAVAILABLE (try again) rather
    /// than UNAUTHENTICATED, since the token itself may be fine.
    pub fn keys_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::KeysNotLoaded { .. } | AuthError::KeysExpired { .. }
        )
    }
}

impl Issuer {
    fn compile(
        settings: IssuerSettings,
        cache: Arc<KeyCache>,
        refresher: Arc<RefresherTask>,
    ) -> Self {
        Self {
            name: settings.name().to_owned(),
            audiences: settings.audiences().to_vec(),
            leeway: settings.leeway().as_secs(),
            required_claims: settings.required_claims().to_vec(),
            require_kid: settings.require_kid(),
            max_token_size: settings.max_token_size(),
            max_token_lifetime: settings.max_token_lifetime().map(|l| l.as_secs()),
            required_for_readiness: settings.required_for_readiness(),
            algorithms: settings.algorithms().to_vec(),
            hs_secret: settings.hs_secret().cloned(),
            cache,
            refresher,
            cached: settings.verified_cache(),
            epoch: AtomicU64::new(0),
            settings,
        }
    }

    /// What a verification now would depend on, besides the token.
    fn stamp(&self) -> Stamp {
        Stamp {
            keys: self.cache.load().version,
            epoch: self.epoch.load(Ordering::SeqCst),
        }
    }

    async fn verify(
        &self,
        parsed: Parsed<'_>,
        digest: &TokenDigest,
        now: u64,
    ) -> Result<Verified, AuthError> {
        if parsed.token.len() > self.max_token_size {
            return Err(AuthError::TooLarge {
                size: parsed.token.len(),
                max: self.max_token_size,
            });
        }
        if !self.algorithms.contains(&parsed.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        // Typed before the signature (as go-oidc does), so a token with
        // junk claims can never cost a key lookup or force a refetch.
        let registered = parsed.claims.registered().map_err(|p| match p {
            ClaimProblem::Invalid("iss") => AuthError::BadIssuer,
            ClaimProblem::Invalid("aud") => AuthError::BadAudience,
            other => AuthError::MissingClaim(other.claim().to_owned()),
        })?;
        let times = registered.times();
        // Also before the signature: an absurd lifetime is refused whoever signed it.
        self.check_lifetime(&times, now)?;
        let keys = if parsed.alg.family() == AlgorithmFamily::Hmac {
            let secret = self
                .hs_secret
                .as_ref()
                .ok_or(AuthError::AlgorithmNotAllowed)?;
            // The secret does not come from the key snapshot, but a cache
            // entry is stamped with its version all the same.
            let keys = self.cache.load().version;
            verify_signature(&parsed, secret.key())?;
            keys
        } else {
            self.verify_with_jwks(&parsed).await?
        };
        self.check_claims(&parsed.claims, &registered, now)?;
        Ok(Verified {
            principal: principal(parsed, registered, digest),
            times,
            keys,
        })
    }

    /// Finds the key(s) for the token and verifies the signature with them;
    /// returns the version of the key set that held the key.
    async fn verify_with_jwks(&self, parsed: &Parsed<'_>) -> Result<u64, AuthError> {
        let kid = match (&parsed.kid, self.require_kid) {
            (Some(kid), _) => Some(kid.as_str()),
            (None, true) => return Err(self.unknown_key()),
            (None, false) => None,
        };
        let first = self.try_snapshot(kid, parsed);
        let found = match first {
            Err(AuthError::KeysExpired { .. }) => {
                // The IdP may be back: this call asks for a fetch (rate
                // limited like an unknown kid's) and looks again after it.
                self.cache.refetch_while_expired().await;
                self.try_snapshot(kid, parsed)?
            }
            found => found?,
        };
        if let Some(version) = found {
            return Ok(version);
        }
        // OIDC Core §10.1.1: an unfamiliar kid may mean the IdP rotated, so
        // refetch once (coalesced and rate-limited by the cache).
        if let Some(kid) = kid
            && self.cache.refetch_for_unknown_kid(kid).await
            && let Some(version) = self.try_snapshot(Some(kid), parsed)?
        {
            return Ok(version);
        }
        Err(self.unknown_key())
    }

    /// [`Issuer::try_keys`] on the current snapshot; `Ok(Some(version))` with
    /// the snapshot's version when a key verified the signature.
    fn try_snapshot(
        &self,
        kid: Option<&str>,
        parsed: &Parsed<'_>,
    ) -> Result<Option<u64>, AuthError> {
        let snapshot = self.cache.load();
        Ok(self
            .try_keys(&snapshot.keys, kid, parsed)?
            .then_some(snapshot.version))
    }

    /// Verifies with the candidate keys of the current snapshot; `Ok(false)` when there is none.
    fn try_keys(
        &self,
        state: &KeyState,
        kid: Option<&str>,
        parsed: &Parsed<'_>,
    ) -> Result<bool, AuthError> {
        let keys = match state {
            KeyState::Loaded(keys) => keys,
            KeyState::NotLoaded => {
                return Err(AuthError::KeysNotLoaded {
                    issuer: self.name.clone(),
                });
            }
            KeyState::Expired => {
                return Err(AuthError::KeysExpired {
                    issuer: self.name.clone(),
                });
            }
        };
        let candidates: Vec<&VerifyKey> = match kid {
            Some(kid) => keys.by_kid(kid).iter().collect(),
            None => keys.all().collect(),
        };
        if candidates.is_empty() {
            return Ok(false);
        }
        let mut last = AuthError::AlgorithmNotAllowed;
        for key in candidates.into_iter().filter(|k| k.allows(parsed.alg)) {
            match verify_signature(parsed, &key.key) {
                Ok(()) => return Ok(true),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The checks jsonwebtoken leaves to us, against the caller's `now`.
    fn check_claims(
        &self,
        claims: &Claims,
        registered: &Registered,
        now: u64,
    ) -> Result<(), AuthError> {
        self.check_times(&registered.times(), now)?;
        if !registered.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::BadAudience);
        }
        match self
            .required_claims
            .iter()
            .find(|c| claims.get(c).is_none())
        {
            Some(missing) => Err(AuthError::MissingClaim(missing.clone())),
            None => Ok(()),
        }
    }

    /// Refuses an `exp` after 9999 and, with `max_token_lifetime`, a token
    /// that lives longer: `exp - iat`, or `exp - now` when it has no `iat`.
    fn check_lifetime(&self, claims: &Times, now: u64) -> Result<(), AuthError> {
        if claims.exp > MAX_EXP {
            return Err(AuthError::LifetimeTooLong);
        }
        let Some(max) = self.max_token_lifetime else {
            return Ok(());
        };
        let lifetime = claims.exp.saturating_sub(claims.iat.unwrap_or(now));
        if lifetime > max {
            return Err(AuthError::LifetimeTooLong);
        }
        Ok(())
    }

    fn check_times(&self, claims: &Times, now: u64) -> Result<(), AuthError> {
        if claims.exp.saturating_add(self.leeway) < now {
            return Err(AuthError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if claims.nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(AuthError::NotYetValid);
        }
        if claims.iat.is_some_and(|iat| iat > horizon) {
            return Err(AuthError::IssuedInFuture);
        }
        Ok(())
    }

    fn unknown_key(&self) -> AuthError {
        AuthError::UnknownKey {
            issuer: self.name.clone(),
        }
    }
}

/// Builds the principal of a verified token whose SHA-256 is `digest`.
fn principal(parsed: Parsed<'_>, registered: Registered, digest: &TokenDigest) -> Principal {
    Principal {
        token_fingerprint: Fingerprint::of_sha256(digest),
        scopes: parsed.claims.scopes(),
        issuer: registered.iss,
        subject: registered.sub,
        audiences: registered.aud,
        expires_at: registered.exp,
        claims: parsed.claims.0,
    }
}

impl<'a> Parsed<'a> {
    /// Splits the compact JWS and parses its header and claims, without verifying.
    fn parse(token: &'a str) -> Result<Self, AuthError> {
        // Only the base64url alphabet and the two dots: this refuses
        // whitespace, padding, standard base64 and JWE-style extras early.
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(AuthError::Malformed("unexpected character"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not three segments"));
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header = Claims::parse(&header)
            .map_err(|_| AuthError::Malformed("header is not a json object without duplicates"))?;
        let (alg, kid) = jose_header(&header)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        let claims = Claims::parse(&payload)
            .map_err(|_| AuthError::Malformed("claims are not a json object without duplicates"))?;
        Ok(Self {
            token,
            signing_input,
            signature,
            alg,
            kid,
            claims,
        })
    }
}

/// Reads `alg` and `kid` and refuses what we do not implement.
///
/// RFC 7515 §4.1.11: a verifier must reject a `crit` it does not understand;
/// we understand no extension, so any `crit` is refused, and so is
/// `b64: false` (RFC 7797 unencoded payloads are not JWTs).
fn jose_header(header: &Claims) -> Result<(Algorithm, Option<String>), AuthError> {
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    if header
        .get("b64")
        .is_some_and(|b| *b != ClaimValue::Bool(true))
    {
        return Err(AuthError::Malformed("unencoded payloads are not supported"));
    }
    let alg = match header.get("alg") {
        Some(ClaimValue::String(alg)) => alg
            .parse::<Algorithm>()
            // Unknown names (`none`, `None`, `Ed25519`, ...) are simply not allowed.
            .map_err(|_| AuthError::AlgorithmNotAllowed)?,
        _ => return Err(AuthError::Malformed("header has no alg string")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(ClaimValue::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed("header kid is not a string")),
    };
    Ok((alg, kid))
}

/// Checks the signature with jsonwebtoken's crypto provider (aws-lc).
fn verify_signature(parsed: &Parsed<'_>, key: &DecodingKey) -> Result<(), AuthError> {
    match jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.signing_input.as_bytes(),
        key,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(AuthError::BadSignature),
        Err(e) => Err(match e.into_kind() {
            ErrorKind::Base64(_) => AuthError::Malformed("signature is not canonical base64url"),
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
            _ => AuthError::BadSignature,
        }),
    }
}

/// Extracts the token from `Bearer <jwt>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("not a bearer credential"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("not a bearer credential"));
    }
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_are_parsed_strictly() {
        let cases: [(Option<&str>, Result<&str, &str>); 8] = [
            (None, Err("missing")),
            (Some("Bearer abc"), Ok("abc")),
            (Some("bearer abc"), Ok("abc")),
            (Some("BEARER abc"), Ok("abc")),
            (Some("Bearer "), Err("missing")),
            (Some("Basic abc"), Err("malformed")),
            (Some("Bearerabc"), Err("malformed")),
            (Some("Bearer  abc"), Ok(" abc")),
        ];
        for (input, expected) in cases {
            let got = bearer(input).map_err(|e| e.reason());
            assert_eq!(got, expected, "{input:?}");
        }
    }

    #[test]
    fn jose_headers_are_read_strictly() {
        let cases = [
            (
                r#"{"alg":"RS256","kid":"k"}"#,
                Ok((Algorithm::RS256, Some("k"))),
            ),
            (r#"{"alg":"EdDSA"}"#, Ok((Algorithm::EdDSA, None))),
            (
                r#"{"alg":"ES256","b64":true}"#,
                Ok((Algorithm::ES256, None)),
            ),
            (r#"{"alg":"none"}"#, Err("algorithm_not_allowed")),
            (r#"{"alg":"Ed25519"}"#, Err("algorithm_not_allowed")),
            (r#"{"alg":7}"#, Err("malformed")),
            (r#"{"kid":"k"}"#, Err("malformed")),
            (r#"{"alg":"RS256","kid":5}"#, Err("malformed")),
            (
                r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
                Err("malformed"),
            ),
            (r#"{"alg":"RS256","b64":false}"#, Err("malformed")),
        ];
        for (json, expected) in cases {
            let header = Claims::parse(json.as_bytes()).unwrap();
            let got = jose_header(&header).map_err(|e| e.reason());
            let got = got
                .as_ref()
                .map(|(a, k)| (*a, k.as_deref()))
                .map_err(|e| *e);
            assert_eq!(got, expected, "{json}");
        }
    }

    #[test]
    fn reasons_are_stable() {
        let cases = [
            (AuthError::Missing, "missing"),
            (AuthError::Malformed("x"), "malformed"),
            (AuthError::TooLarge { size: 2, max: 1 }, "too_large"),
            (AuthError::UnknownIssuer, "unknown_issuer"),
            (AuthError::UnknownKey { issuer: "i".into() }, "unknown_key"),
            (AuthError::AlgorithmNotAllowed, "algorithm_not_allowed"),
            (AuthError::BadSignature, "bad_signature"),
            (AuthError::Expired, "expired"),
            (AuthError::NotYetValid, "not_yet_valid"),
            (AuthError::IssuedInFuture, "issued_in_future"),
            (AuthError::BadIssuer, "bad_issuer"),
            (AuthError::BadAudience, "bad_audience"),
            (AuthError::MissingClaim("x".into()), "missing_claim"),
            (
                AuthError::KeysNotLoaded { issuer: "i".into() },
                "keys_unavailable",
            ),
            (
                AuthError::KeysExpired { issuer: "i".into() },
                "keys_unavailable",
            ),
            (AuthError::LifetimeTooLong, "lifetime_too_long"),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason);
            assert_eq!(
                error.keys_never_loaded(),
                matches!(error, AuthError::KeysNotLoaded { .. })
            );
            assert_eq!(error.keys_unavailable(), reason == "keys_unavailable");
            let message = error.to_string();
            assert!(
                !message.ends_with('.') && message.chars().next().is_some_and(char::is_lowercase)
            );
        }
    }
}
