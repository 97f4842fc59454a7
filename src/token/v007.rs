//! AccessToken2 ("007"): the raw token, its build, parse and verify (spec §2, §3).
//!
//! `"007" + base64(zlib(string(signature) + signing_info))`, where the
//! signature is HMAC-SHA256 over `signing_info` keyed by
//! HMAC(salt, HMAC(issue_ts, certificate)) — small integers as keys, secrets as
//! messages (spec §2.3).

use std::cell::RefCell;
use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::codec::{self, ParseError, Reader, Writer};
use super::services::Service;
use super::{AppCertificate, TokenError, is_hex32, token_expires_at};
use crate::domain::Fingerprint;

/// The version prefix of AccessToken2.
pub const VERSION: &str = "007";

/// The length of an HMAC-SHA256 signature.
const SIGNATURE_LEN: usize = 32;
/// `string(signature)`: a u16 length (32) and 32 bytes, written before `signing_info`.
const SIGNATURE_FIELD_LEN: usize = 2 + SIGNATURE_LEN;

/// A raw AccessToken2: any bytes in any field, so that a parsed token can be
/// shown whatever it holds. `build` enforces what the format requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken2 {
    /// The app id as signed (32 hex characters in a valid token).
    pub app_id: Vec<u8>,
    /// Unix seconds when the token was issued.
    pub issue_ts: u32,
    /// Token lifetime in seconds from `issue_ts` (not a timestamp).
    pub expire: u32,
    /// The salt mixed into the signing key.
    pub salt: u32,
    /// The services, in insertion order; `build` packs them stably sorted by type.
    pub services: Vec<Service>,
}

/// A parsed AccessToken2: its fields plus the raw bytes the signature covers.
///
/// The payload with its signature *is* the token (a bearer credential), so
/// `Debug` shows the fields and a fingerprint, never the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The decoded fields; `services` in wire order, up to any unknown type.
    pub token: AccessToken2,
    /// The service count of the header (more than `token.services` when parsing stopped early).
    pub service_count: u16,
    /// The type at which parsing stopped, if an unknown service type was met.
    pub stopped_at_unknown_service_type: Option<u16>,
    /// The inflated payload: `string(signature)` then the signed bytes.
    payload: Vec<u8>,
    /// Where the signature bytes end and `signing_info` begins.
    signing_start: usize,
}

/// Per-thread buffers reused by `build` and `parse`, so a token costs its
/// output and parsed fields rather than fresh intermediate buffers.
#[derive(Debug, Default)]
struct Scratch {
    /// The payload being written by `build`.
    payload: Vec<u8>,
    /// The compressed bytes: deflate output in `build`, base64 output in `parse`.
    compressed: Vec<u8>,
}

type HmacSha256 = Hmac<Sha256>;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl AccessToken2 {
    /// A token with no services yet.
    pub fn new(app_id: impl Into<Vec<u8>>, issue_ts: u32, expire: u32, salt: u32) -> Self {
        Self {
            app_id: app_id.into(),
            issue_ts,
            expire,
            salt,
            services: Vec::new(),
        }
    }

    /// Adds a service; repeated types are kept (spec §2.4).
    pub fn with_service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// The absolute unix time the token expires: `issue_ts + expire`.
    pub fn expires_at(&self) -> u64 {
        token_expires_at(self.issue_ts, self.expire)
    }
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("token", &self.token)
            .field("service_count", &self.service_count)
            .field(
                "stopped_at_unknown_service_type",
                &self.stopped_at_unknown_service_type,
            )
            .field("fingerprint", &Fingerprint::of(&self.payload))
            .finish_non_exhaustive()
    }
}

impl ParsedToken {
    /// The signature as stored (32 bytes in a well-formed token, any length here).
    pub fn signature(&self) -> &[u8] {
        self.payload.get(2..self.signing_start).unwrap_or_default()
    }

    /// The exact bytes the signature covers, unknown services and trailing bytes included.
    pub fn signing_info(&self) -> &[u8] {
        self.payload.get(self.signing_start..).unwrap_or_default()
    }

    /// The whole inflated payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Whether `certificate` signed this token, compared in constant time.
    ///
    /// Also false when the embedded app id is not 32 hex characters, which
    /// python3 does not check (spec §3). The app id is *not* compared with an
    /// expected one, nor is expiry checked: those are the caller's decisions.
    pub fn verify(&self, certificate: &AppCertificate) -> bool {
        if !is_hex32(&self.token.app_id) || self.signature().len() != SIGNATURE_LEN {
            return false;
        }
        let key = signing_key(certificate, self.token.issue_ts, self.token.salt);
        let mut mac = keyed(&key);
        mac.update(self.signing_info());
        // `verify_slice` compares in constant time (the `subtle` crate).
        mac.verify_slice(self.signature()).is_ok()
    }

    /// The name of the first certificate in `certificates` that signed this
    /// token, e.g. `[("primary", &a), ("secondary", &b)]` during a rotation.
    pub fn verify_any<'a>(&self, certificates: &[(&'a str, &AppCertificate)]) -> Option<&'a str> {
        certificates
            .iter()
            .find(|(_, cert)| self.verify(cert))
            .map(|(name, _)| *name)
    }
}

/// Builds the token string: validates the app id and services, packs services
/// stably sorted by type, signs, deflates with this thread's encoder, base64s.
pub fn build(token: &AccessToken2, certificate: &AppCertificate) -> Result<String, TokenError> {
    if !is_hex32(&token.app_id) {
        return Err(TokenError::InvalidAppId);
    }
    if token.services.is_empty() {
        return Err(TokenError::NoServices);
    }
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch {
            payload,
            compressed,
        } = &mut *scratch;
        let mut w = Writer::from_vec(std::mem::take(payload));
        let result = sign_and_encode(token, certificate, &mut w, compressed);
        *payload = w.into_inner();
        scratch.trim();
        result
    })
}

/// Writes the payload into `w`, signs it in place, deflates it into
/// `compressed` and returns `"007" + base64`.
fn sign_and_encode(
    token: &AccessToken2,
    certificate: &AppCertificate,
    w: &mut Writer,
    compressed: &mut Vec<u8>,
) -> Result<String, TokenError> {
    // Room for string(signature), filled in once signing_info is written, so
    // the payload is assembled in one buffer without a copy.
    w.u16(SIGNATURE_LEN as u16).raw(&[0; SIGNATURE_LEN]);
    w.string("app id", &token.app_id)?;
    w.u32(token.issue_ts).u32(token.expire).u32(token.salt);
    w.count("services", token.services.len())?;
    pack_sorted(&token.services, w)?;

    let key = signing_key(certificate, token.issue_ts, token.salt);
    let signature = hmac(
        &key,
        w.as_slice().get(SIGNATURE_FIELD_LEN..).unwrap_or_default(),
    );
    if let Some(slot) = w.as_mut_slice().get_mut(2..SIGNATURE_FIELD_LEN) {
        slot.copy_from_slice(&signature);
    }

    compressed.clear();
    codec::deflate(w.as_slice(), compressed)?;
    let mut out = String::with_capacity(VERSION.len() + compressed.len().div_ceil(3) * 4);
    out.push_str(VERSION);
    codec::base64_encode(compressed, &mut out);
    Ok(out)
}

/// Parses a 007 token (spec §3): strict base64, any zlib stream, services up to
/// the first unknown type (kept as `stopped_at_unknown_service_type`), trailing
/// bytes ignored. Truncated or corrupt input is an error, never a panic.
pub fn parse(token: &str) -> Result<ParsedToken, ParseError> {
    let body = token
        .strip_prefix(VERSION)
        .ok_or(ParseError::NotThisVersion { expected: VERSION })?;
    let mut payload = Vec::new();
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let decoded = codec::base64_decode(body, &mut scratch.compressed)
            .and_then(|()| codec::inflate(&scratch.compressed, &mut payload));
        scratch.trim();
        decoded
    })?;

    let mut r = Reader::new(&payload);
    r.string("signature")?;
    let signing_start = r.position();
    let app_id = r.string("app id")?.to_vec();
    let issue_ts = r.u32("issue_ts")?;
    let expire = r.u32("expire")?;
    let salt = r.u32("salt")?;
    let count = r.u16("service count")?;
    let mut services = Vec::with_capacity(usize::from(count).min(16));
    let mut stopped_at_unknown_service_type = None;
    for _ in 0..count {
        let service_type = r.u16("service type")?;
        match Service::unpack(service_type, &mut r)? {
            Some(service) => services.push(service),
            None => {
                stopped_at_unknown_service_type = Some(service_type);
                break;
            }
        }
    }
    Ok(ParsedToken {
        token: AccessToken2 {
            app_id,
            issue_ts,
            expire,
            salt,
            services,
        },
        service_count: count,
        stopped_at_unknown_service_type,
        payload,
        signing_start,
    })
}

impl Scratch {
    /// Buffers bigger than any ordinary token are dropped rather than kept per thread.
    const KEEP_BYTES: usize = 16 * 1024;

    fn trim(&mut self) {
        for buf in [&mut self.payload, &mut self.compressed] {
            if buf.capacity() > Self::KEEP_BYTES {
                *buf = Vec::new();
            }
        }
    }
}

/// Packs services in ascending type order; the sort is stable so repeated
/// types keep their insertion order (spec §2.4). Already-sorted input (every
/// builder's) is packed without allocating.
fn pack_sorted(services: &[Service], w: &mut Writer) -> Result<(), TokenError> {
    if services.is_sorted_by_key(Service::service_type) {
        return services.iter().try_for_each(|s| s.pack(w));
    }
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.service_type());
    sorted.into_iter().try_for_each(|s| s.pack(w))
}

/// k2 = HMAC(key = salt LE, HMAC(key = issue_ts LE, certificate as ASCII)) (spec §2.3).
pub fn signing_key(certificate: &AppCertificate, issue_ts: u32, salt: u32) -> [u8; 32] {
    let k1 = hmac(&issue_ts.to_le_bytes(), certificate.secret());
    hmac(&salt.to_le_bytes(), &k1)
}

/// HMAC-SHA256 of `message` under a key of at most one block.
pub(crate) fn hmac<const N: usize>(key: &[u8; N], message: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA256 keyed with `key`, padded to the 64-byte block as RFC 2104
/// does for short keys; infallible, unlike `new_from_slice`.
fn keyed<const N: usize>(key: &[u8; N]) -> HmacSha256 {
    const { assert!(N <= 64, "HMAC keys here are at most one SHA-256 block") };
    let mut block = [0u8; 64];
    block[..N].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&block.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::services::ServiceKind;

    const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";

    fn official_001() -> AccessToken2 {
        AccessToken2::new(APP_ID, 1_111_111, 600, 1).with_service(
            Service::new(ServiceKind::Rtc {
                channel_name: b"7d72365eb983485397e3e3f9d460bdda".to_vec(),
                uid: b"2882341273".to_vec(),
            })
            .with_privilege(1, 600),
        )
    }

    #[test]
    fn signing_key_matches_the_worked_example() {
        let cert = AppCertificate::parse(CERT).unwrap();
        let k1 = hmac(&1_111_111u32.to_le_bytes(), cert.secret());
        assert!(hex::encode(k1).starts_with("e0f6141e"));
        assert!(hex::encode(signing_key(&cert, 1_111_111, 1)).starts_with("cee2fa8d"));
    }

    #[test]
    fn builds_the_official_rtc_vector() {
        let cert = AppCertificate::parse(CERT).unwrap();
        let token = build(&official_001(), &cert).unwrap();
        assert!(token.starts_with("007eJxTYBBbsMMn"), "{token}");
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.token, official_001());
        assert!(hex::encode(parsed.signature()).starts_with("16a0b84c"));
        assert!(parsed.verify(&cert));
        let other = AppCertificate::parse(&CERT.to_uppercase()).unwrap();
        assert!(!parsed.verify(&other));
        assert_eq!(
            parsed.verify_any(&[("primary", &other), ("secondary", &cert)]),
            Some("secondary")
        );
        assert_eq!(parsed.verify_any(&[("primary", &other)]), None);
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains("16a0b84c") && !shown.contains("22, 160, 184"),
            "{shown}"
        );
    }

    #[test]
    fn build_refuses_bad_app_ids_and_empty_tokens() {
        let cert = AppCertificate::parse(CERT).unwrap();
        let mut t = official_001();
        t.app_id = b"970CA35de60c44645bbae8a215061b3".to_vec();
        assert_eq!(build(&t, &cert), Err(TokenError::InvalidAppId));
        let empty = AccessToken2::new(APP_ID, 1, 1, 1);
        assert_eq!(build(&empty, &cert), Err(TokenError::NoServices));
    }

    #[test]
    fn services_are_packed_stably_by_type() {
        let cert = AppCertificate::parse(CERT).unwrap();
        let rtm = |id: &[u8]| {
            Service::new(ServiceKind::Rtm {
                user_id: id.to_vec(),
            })
        };
        let t = AccessToken2::new(APP_ID, 1, 1, 1)
            .with_service(rtm(b"a"))
            .with_service(Service::new(ServiceKind::Stt))
            .with_service(Service::new(ServiceKind::Fpa))
            .with_service(rtm(b"b"));
        let parsed = parse(&build(&t, &cert).unwrap()).unwrap();
        let order: Vec<ServiceKind> = parsed.token.services.into_iter().map(|s| s.kind).collect();
        assert_eq!(
            order,
            vec![
                ServiceKind::Rtm {
                    user_id: b"a".to_vec()
                },
                ServiceKind::Rtm {
                    user_id: b"b".to_vec()
                },
                ServiceKind::Fpa,
                ServiceKind::Stt,
            ]
        );
    }

    #[test]
    fn parse_distinguishes_other_versions_from_corruption() {
        let cases: &[(&str, ParseError)] = &[
            ("", ParseError::NotThisVersion { expected: "007" }),
            ("006abc", ParseError::NotThisVersion { expected: "007" }),
            ("007", ParseError::BadZlib),
            ("007invalid", ParseError::BadBase64),
            ("007aW52YWxpZA==", ParseError::BadZlib),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).err().as_ref(), Some(expected), "{input:?}");
        }
    }
}
