//! Trusted proxies: where the caller's workload identity comes from when a
//! proxy (Envoy, an Istio sidecar) stands between the caller and tokengate.
//!
//! By default the caller's identity is its own connection's: the verified
//! client certificate of an mTLS connection ([`IdentitySource::Tls`]), and
//! anything a caller writes about itself (`x-forwarded-client-cert`,
//! ext_authz's `attributes.source`) is ignored. With `[server.trusted_proxy]`,
//! a direct peer whose address is in one of `cidrs`, or whose own verified
//! SPIFFE ID fits one of `spiffe_ids`, is a proxy, and then:
//!
//! * on the gRPC API, the caller is the one the proxy names in the **last**
//!   element of `x-forwarded-client-cert` (the element the nearest proxy
//!   appended; the ones before it came from farther away, possibly from the
//!   client itself): its `URI=` (the SPIFFE ID), `DNS=` and `Subject=`
//!   ([`IdentitySource::Xfcc`]);
//! * on ext_authz `Check`, the caller is the downstream Envoy describes in
//!   `attributes.source`: `principal` and `address` ([`IdentitySource::ExtAuthz`]).
//!
//! A trusted proxy's own certificate never stands for its callers, and an
//! untrusted peer's forwarded identity never reaches a rule. A trusted proxy
//! that forwards something malformed is refused ([`ForwardedError::Malformed`],
//! INVALID_ARGUMENT naming the header), never half-read. Pure: the adapters
//! hand over what the transport saw, and nothing here does I/O.

mod xfcc;

use std::net::IpAddr;

pub use xfcc::{
    Element, MAX_XFCC_BYTES, XfccSyntaxError, last as last_xfcc_element, parse as parse_xfcc,
};

use crate::domain::PeerIdentity;
use crate::policy::{SpiffeIdPattern, is_spiffe_id};

/// The header Envoy (and Istio) forward the client certificate's identity in.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";
/// The `CheckRequest` field of the downstream's identity.
pub const SOURCE_PRINCIPAL_FIELD: &str = "attributes.source.principal";
/// The `CheckRequest` field of the downstream's address.
pub const SOURCE_ADDRESS_FIELD: &str = "attributes.source.address";

/// `[server.trusted_proxy]`, validated: the peers whose forwarded identity is believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    cidrs: Vec<Cidr>,
    spiffe_ids: Vec<SpiffeIdPattern>,
}

/// An IP network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// What the direct peer forwarded about the caller, as the adapter found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded<'a> {
    /// Nothing: a gRPC call without `x-forwarded-client-cert`.
    Nothing,
    /// `x-forwarded-client-cert`, sent once, with this value.
    ClientCert(&'a str),
    /// `x-forwarded-client-cert`, sent more than once (a proxy appends to
    /// one header, so two are refused from a proxy rather than guessed at).
    ClientCertRepeated,
    /// ext_authz: Envoy's `attributes.source` of the checked request.
    CheckSource {
        /// `source.principal`: the downstream's SPIFFE ID (or other name), `""` for none.
        principal: &'a str,
        /// `source.address.socket_address.address`, `""` for none.
        address: &'a str,
    },
}

/// The direct peer, as the transport knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct<'a> {
    /// Its address.
    pub address: Option<IpAddr>,
    /// Its verified client certificate (mTLS).
    pub identity: Option<&'a PeerIdentity>,
}

/// Where the caller's workload identity came from (`peer_identity_source` in audit events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// The caller's own mTLS connection.
    Tls,
    /// The last `x-forwarded-client-cert` element of a trusted proxy.
    Xfcc,
    /// The `attributes.source` of a trusted Envoy's ext_authz `Check`.
    ExtAuthz,
}

/// The caller's transport identity, decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The caller's address: the direct peer's, the one a trusted Envoy
    /// reported, or `None` (behind a trusted proxy that reported none).
    pub address: Option<IpAddr>,
    /// The caller's verified workload identity, if any.
    pub identity: Option<PeerIdentity>,
    /// Where `identity` came from; `None` when there is none.
    pub source: Option<IdentitySource>,
}

/// A trusted proxy's forwarded identity, or the trusted-proxy config, is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    /// A trusted proxy forwarded something that does not parse; the call is
    /// refused (INVALID_ARGUMENT with `field` as the field violation).
    #[error("{field}: {reason}")]
    Malformed {
        /// The header or `CheckRequest` field at fault.
        field: &'static str,
        /// What is wrong, never the value.
        reason: String,
    },
    /// A key of `[server.trusted_proxy]` is wrong.
    #[error("{key}: {reason}")]
    Config {
        /// The key under `server.trusted_proxy`, e.g. `cidrs[1]`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TrustedProxies {
    /// Validates `[server.trusted_proxy]`: `cidrs` (`10.0.0.0/8`, `::1/128`,
    /// or a bare address for one host) and `spiffe_ids` (SPIFFE ID patterns
    /// without captures: exact IDs, or `*` within a segment), at least one entry.
    pub fn new(cidrs: &[String], spiffe_ids: &[String]) -> Result<Self, ForwardedError> {
        let config = |key: String, reason: String| ForwardedError::Config { key, reason };
        if cidrs.is_empty() && spiffe_ids.is_empty() {
            return Err(config(
                "cidrs".into(),
                "list at least one of cidrs or spiffe_ids; without either no proxy is trusted (remove the section instead)".into(),
            ));
        }
        let cidrs = cidrs
            .iter()
            .enumerate()
            .map(|(i, text)| Cidr::parse(text).map_err(|e| config(format!("cidrs[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let spiffe_ids = spiffe_ids
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let key = || format!("spiffe_ids[{i}]");
                let pattern = SpiffeIdPattern::parse(text).map_err(|e| config(key(), e))?;
                if pattern.has_captures() {
                    return Err(config(
                        key(),
                        "a trusted proxy pattern has no use for captures; write the ID, or `*` for a segment".into(),
                    ));
                }
                Ok(pattern)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { cidrs, spiffe_ids })
    }

    /// Whether trust depends on a proxy's SPIFFE ID, which only mTLS can verify.
    pub fn names_spiffe_ids(&self) -> bool {
        !self.spiffe_ids.is_empty()
    }

    /// Whether `direct` is a trusted proxy: its address is in a CIDR, or
    /// its own verified SPIFFE ID fits a listed pattern.
    pub fn trusts(&self, direct: Direct<'_>) -> bool {
        let by_address = direct
            .address
            .is_some_and(|a| self.cidrs.iter().any(|c| c.contains(a)));
        let by_identity = direct
            .identity
            .and_then(|i| i.spiffe_id.as_deref())
            .is_some_and(|id| self.spiffe_ids.iter().any(|p| p.matches(id)));
        by_address || by_identity
    }
}

impl Cidr {
    /// Parses `address/prefix`, or a bare address (one host). Host bits must
    /// be zero: `10.0.0.1/8` is more likely a typo than a network.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("{text:?} is not an IP network like \"10.0.0.0/8\" or \"::1/128\"")
        })?;
        let bits = max_prefix(network);
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={bits}"))?,
        };
        let cidr = Self { network, prefix };
        if masked(network, prefix) != network {
            return Err(format!(
                "{text:?} has host bits set; the network is {}/{prefix}",
                masked(network, prefix)
            ));
        }
        Ok(cidr)
    }

    /// Whether `address` is in the network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                masked(address, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs: Vec<String> = self.cidrs.iter().map(ToString::to_string).collect();
        let ids: Vec<&str> = self
            .spiffe_ids
            .iter()
            .map(SpiffeIdPattern::as_str)
            .collect();
        write!(
            f,
            "cidrs [{}], spiffe_ids [{}]",
            cidrs.join(", "),
            ids.join(", ")
        )
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// 32 or 128.
fn max_prefix(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `address` with all but the first `prefix` bits cleared.
fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Decides the caller's transport identity: the direct peer's own, unless
/// `trusted` says the direct peer is a proxy, then what it forwarded.
pub fn resolve(
    trusted: Option<&TrustedProxies>,
    direct: Direct<'_>,
    forwarded: Forwarded<'_>,
) -> Result<Resolved, ForwardedError> {
    let address = direct.address.map(|a| a.to_canonical());
    let is_proxy = trusted.is_some_and(|t| t.trusts(direct));
    match forwarded {
        // ext_authz: the direct peer is Envoy, never the checked request's
        // client, so its own identity never stands for the client.
        Forwarded::CheckSource { .. } if !is_proxy => Ok(Resolved::default()),
        Forwarded::CheckSource { principal, address } => from_check_source(principal, address),
        _ if !is_proxy => Ok(Resolved {
            address,
            identity: direct.identity.cloned(),
            source: direct.identity.map(|_| IdentitySource::Tls),
        }),
        Forwarded::Nothing => Ok(Resolved::default()),
        Forwarded::ClientCertRepeated => Err(ForwardedError::Malformed {
            field: XFCC_HEADER,
            reason: "sent more than once; a proxy appends its element to the one header".into(),
        }),
        Forwarded::ClientCert(header) => from_xfcc(header),
    }
}

/// The identity in the last element of a trusted proxy's XFCC header.
fn from_xfcc(header: &str) -> Result<Resolved, ForwardedError> {
    let malformed = |reason: String| ForwardedError::Malformed {
        field: XFCC_HEADER,
        reason,
    };
    let element = xfcc::last(header).map_err(|e| malformed(e.to_string()))?;
    let uris: Vec<&str> = element.values("URI").filter(|v| !v.is_empty()).collect();
    // An X.509-SVID has exactly one URI SAN; with several none is taken
    // as the SPIFFE ID, as `tls::peer_identity` does with a certificate.
    let spiffe_id = match uris.as_slice() {
        [uri] if uri.starts_with("spiffe://") => {
            if !is_spiffe_id(uri) {
                return Err(malformed(
                    "the last element's URI starts with spiffe:// but is not a valid SPIFFE ID"
                        .into(),
                ));
            }
            Some((*uri).to_owned())
        }
        _ => None,
    };
    let dns_names: Vec<String> = element
        .values("DNS")
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let subject = element
        .values("Subject")
        .find(|v| !v.is_empty())
        .map(str::to_owned);
    let identity = (spiffe_id.is_some() || !dns_names.is_empty() || subject.is_some()).then_some(
        PeerIdentity {
            spiffe_id,
            dns_names,
            subject,
        },
    );
    Ok(Resolved {
        address: None,
        source: identity.as_ref().map(|_| IdentitySource::Xfcc),
        identity,
    })
}

/// The downstream a trusted Envoy describes in a `CheckRequest`.
fn from_check_source(principal: &str, address: &str) -> Result<Resolved, ForwardedError> {
    let identity = if principal.is_empty() {
        None
    } else if principal.starts_with("spiffe://") {
        if !is_spiffe_id(principal) {
            return Err(ForwardedError::Malformed {
                field: SOURCE_PRINCIPAL_FIELD,
                reason: "starts with spiffe:// but is not a valid SPIFFE ID".into(),
            });
        }
        Some(PeerIdentity {
            spiffe_id: Some(principal.to_owned()),
            ..PeerIdentity::default()
        })
    } else {
        // Envoy names a certificate without a URI SAN by a DNS SAN or its
        // subject, and does not say which: kept as the name, never as a
        // SPIFFE ID or a DNS name a rule could match.
        Some(PeerIdentity {
            subject: Some(principal.to_owned()),
            ..PeerIdentity::default()
        })
    };
    let address = if address.is_empty() {
        None
    } else {
        let parsed: IpAddr = address.parse().map_err(|_| ForwardedError::Malformed {
            field: SOURCE_ADDRESS_FIELD,
            reason: "is not an IP address".into(),
        })?;
        Some(parsed.to_canonical())
    };
    Ok(Resolved {
        address,
        source: identity.as_ref().map(|_| IdentitySource::ExtAuthz),
        identity,
    })
}

impl IdentitySource {
    /// The name in audit events: `tls`, `xfcc` or `ext_authz`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Tls => "tls",
            IdentitySource::Xfcc => "xfcc",
            IdentitySource::ExtAuthz => "ext_authz",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: &str = "spiffe://corp.example/ns/edge/sa/envoy";
    const BACKEND: &str = "spiffe://corp.example/ns/backend/sa/api";

    fn proxies(cidrs: &[&str], ids: &[&str]) -> TrustedProxies {
        let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        TrustedProxies::new(&owned(cidrs), &owned(ids)).unwrap()
    }

    fn tls(id: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: Some(id.to_owned()),
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let cases = [
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "::1", false),
            ("::1/128", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "10.0.0.1", false),
        ];
        for (cidr, address, inside) in cases {
            let parsed = Cidr::parse(cidr).unwrap();
            assert_eq!(
                parsed.contains(address.parse().unwrap()),
                inside,
                "{cidr} ∋ {address}"
            );
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0/8",
            "::1/129",
            "x/1",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_config_is_checked() {
        assert!(TrustedProxies::new(&[], &[]).is_err());
        let error = TrustedProxies::new(&["10.0.0.0/8".into(), "nope".into()], &[]).unwrap_err();
        assert!(
            matches!(&error, ForwardedError::Config { key, .. } if key == "cidrs[1]"),
            "{error}"
        );
        let error =
            TrustedProxies::new(&[], &["spiffe://corp.example/ns/{ns}".into()]).unwrap_err();
        assert!(
            matches!(&error, ForwardedError::Config { key, .. } if key == "spiffe_ids[0]"),
            "{error}"
        );
        let error = TrustedProxies::new(&[], &["corp.example/x".into()]).unwrap_err();
        assert!(
            matches!(&error, ForwardedError::Config { key, .. } if key == "spiffe_ids[0]"),
            "{error}"
        );
    }

    #[test]
    fn an_untrusted_peer_keeps_its_own_identity_and_its_header_is_ignored() {
        let own = tls(BACKEND);
        let direct = Direct {
            address: Some("192.0.2.7".parse().unwrap()),
            identity: Some(&own),
        };
        let header = Forwarded::ClientCert("URI=spiffe://corp.example/ns/admin/sa/root");
        for trusted in [None, Some(proxies(&["10.0.0.0/8"], &[PROXY]))] {
            let resolved = resolve(trusted.as_ref(), direct, header).unwrap();
            assert_eq!(resolved.identity.as_ref(), Some(&own));
            assert_eq!(resolved.source, Some(IdentitySource::Tls));
            assert_eq!(resolved.address, direct.address);
            // Even malformed or repeated, it is not looked at.
            for ignored in [Forwarded::ClientCert("\"\""), Forwarded::ClientCertRepeated] {
                assert!(resolve(trusted.as_ref(), direct, ignored).is_ok());
            }
        }
    }

    #[test]
    fn a_trusted_proxy_forwards_the_last_element_only() {
        let proxy = tls(PROXY);
        let by_id = Direct {
            address: Some("192.0.2.9".parse().unwrap()),
            identity: Some(&proxy),
        };
        let by_address = Direct {
            address: Some("10.1.2.3".parse().unwrap()),
            identity: None,
        };
        let trusted = proxies(&["10.0.0.0/8"], &["spiffe://corp.example/ns/edge/sa/*"]);
        let header = format!(
            "URI=spiffe://corp.example/ns/admin/sa/root,By={PROXY};URI={BACKEND};DNS=api.svc;Subject=\"CN=api\""
        );
        for direct in [by_id, by_address] {
            let resolved = resolve(Some(&trusted), direct, Forwarded::ClientCert(&header)).unwrap();
            let identity = resolved.identity.unwrap();
            assert_eq!(identity.spiffe_id.as_deref(), Some(BACKEND));
            assert_eq!(identity.dns_names, ["api.svc"]);
            assert_eq!(identity.subject.as_deref(), Some("CN=api"));
            assert_eq!(resolved.source, Some(IdentitySource::Xfcc));
            // The proxy's own address is not the caller's.
            assert_eq!(resolved.address, None);
        }
        // No header from a proxy: no identity; the proxy's own never stands in.
        let resolved = resolve(Some(&trusted), by_id, Forwarded::Nothing).unwrap();
        assert_eq!(resolved, Resolved::default());
        // Two URIs, or one that is not a SPIFFE ID: no SPIFFE ID.
        for header in [
            "URI=spiffe://a.example/x;URI=spiffe://b.example/y;DNS=d",
            "URI=https://a.example/x;DNS=d",
        ] {
            let resolved = resolve(Some(&trusted), by_id, Forwarded::ClientCert(header)).unwrap();
            assert_eq!(resolved.identity.unwrap().spiffe_id, None, "{header}");
        }
    }

    #[test]
    fn a_trusted_proxy_that_forwards_garbage_is_refused() {
        let trusted = proxies(&["127.0.0.1/32"], &[]);
        let direct = Direct {
            address: Some("127.0.0.1".parse().unwrap()),
            identity: None,
        };
        for bad in [
            Forwarded::ClientCert("URI=\"spiffe://corp.example/x"),
            Forwarded::ClientCert("URI=spiffe://corp.example/x,"),
            Forwarded::ClientCert("URI=spiffe://Corp.example/x"),
            Forwarded::ClientCertRepeated,
        ] {
            let error = resolve(Some(&trusted), direct, bad).unwrap_err();
            assert!(
                matches!(&error, ForwardedError::Malformed { field, .. } if *field == XFCC_HEADER),
                "{bad:?}: {error}"
            );
        }
        let error = resolve(
            Some(&trusted),
            direct,
            Forwarded::CheckSource {
                principal: BACKEND,
                address: "not-an-ip",
            },
        )
        .unwrap_err();
        assert!(
            matches!(error, ForwardedError::Malformed { field, .. } if field == SOURCE_ADDRESS_FIELD)
        );
    }

    #[test]
    fn ext_authz_reads_the_source_only_from_a_trusted_envoy() {
        let envoy = tls(PROXY);
        let direct = Direct {
            address: Some("10.0.0.5".parse().unwrap()),
            identity: Some(&envoy),
        };
        let source = Forwarded::CheckSource {
            principal: BACKEND,
            address: "192.0.2.44",
        };
        // Untrusted: nothing, not even Envoy's own identity.
        assert_eq!(resolve(None, direct, source).unwrap(), Resolved::default());
        let trusted = proxies(&[], &[PROXY]);
        let resolved = resolve(Some(&trusted), direct, source).unwrap();
        assert_eq!(
            resolved.identity.unwrap().spiffe_id.as_deref(),
            Some(BACKEND)
        );
        assert_eq!(resolved.address, Some("192.0.2.44".parse().unwrap()));
        assert_eq!(resolved.source, Some(IdentitySource::ExtAuthz));
        let empty = Forwarded::CheckSource {
            principal: "",
            address: "",
        };
        assert_eq!(
            resolve(Some(&trusted), direct, empty).unwrap(),
            Resolved::default()
        );
    }
}
