//! AccessToken2 services (spec §2.5): every known type, a generic form, and RTM2 permissions.
//!
//! Strings are raw bytes: a parsed token may carry anything, and the signature
//! covers bytes, not text. The typed builders in [`super::builders`] are where
//! Agora's product limits apply. [`privilege_name`] reads the one table of
//! privilege names.

use std::collections::BTreeMap;

use super::builders::raw;
use super::codec::{ParseError, Reader, Writer};
use super::{TokenError, v006};

/// The RTM2 permission enums are the domain's, so a rule's permission reaches
/// the token without translation; these are the names the official builders use.
pub use crate::domain::{Rtm2PermissionType as PermissionType, Rtm2ResourceType as ResourceType};

/// Service type 1: RTC.
pub const SERVICE_RTC: u16 = 1;
/// Service type 2: RTM.
pub const SERVICE_RTM: u16 = 2;
/// Service type 3: Streaming.
pub const SERVICE_STREAMING: u16 = 3;
/// Service type 4: FPA.
pub const SERVICE_FPA: u16 = 4;
/// Service type 5: Chat.
pub const SERVICE_CHAT: u16 = 5;
/// Service type 6: FCDN.
pub const SERVICE_FCDN: u16 = 6;
/// Service type 7: APaaS.
pub const SERVICE_APAAS: u16 = 7;
/// Service type 8: RTM2.
pub const SERVICE_RTM2: u16 = 8;
/// Service type 9: ConvoAI.
pub const SERVICE_CONVOAI: u16 = 9;
/// Service type 10: STT.
pub const SERVICE_STT: u16 = 10;

/// One service of a token: its privileges (id -> expiry in seconds from
/// `issue_ts`, 0 = no privilege-specific limit) and its type-specific fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Privilege id -> relative expiry; a `BTreeMap` packs keys in the ascending order the format needs.
    pub privileges: BTreeMap<u16, u32>,
    /// The service type and its fields.
    pub kind: ServiceKind,
}

/// The type of a service and the fields that follow its privilege map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// Type 1: channel name and uid string ("" = any uid).
    Rtc {
        /// The channel name.
        channel_name: Vec<u8>,
        /// The decimal uid, the account, or "" for any uid.
        uid: Vec<u8>,
    },
    /// Type 2: RTM user id.
    Rtm {
        /// The RTM user id.
        user_id: Vec<u8>,
    },
    /// Type 3: Streaming channel and account.
    Streaming {
        /// The channel name.
        channel_name: Vec<u8>,
        /// The account ("" for uid 0).
        account: Vec<u8>,
    },
    /// Type 4: FPA, no fields.
    Fpa,
    /// Type 5: Chat user id ("" for app tokens).
    Chat {
        /// The chat user id.
        user_id: Vec<u8>,
    },
    /// Type 6: FCDN channel and account.
    Fcdn {
        /// The channel name.
        channel_name: Vec<u8>,
        /// The account ("" for uid 0).
        account: Vec<u8>,
    },
    /// Type 7: APaaS room, user and signed 16-bit role.
    Apaas {
        /// The room uuid.
        room_uuid: Vec<u8>,
        /// The user uuid.
        user_uuid: Vec<u8>,
        /// The role; user and app tokens write -1.
        role: i16,
    },
    /// Type 8: RTM2 user id and permission set.
    Rtm2 {
        /// The RTM user id.
        user_id: Vec<u8>,
        /// The resource permissions.
        permissions: Rtm2Permissions,
    },
    /// Type 9: ConvoAI (npm agora-token 2.0.6), no fields.
    ConvoAi,
    /// Type 10: STT (npm agora-token 2.0.6), no fields.
    Stt,
    /// Any other type: its number and privileges only, as the official raw API writes it.
    Generic {
        /// The service type number.
        service_type: u16,
    },
}

/// An RTM2 permission set: resource type -> permission type -> resources.
///
/// Resource and permission types are kept sorted (the wire order); resources
/// keep insertion order and duplicates. Adding the same pair again replaces
/// its list, as the official `Rtm2Permissions.add` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rtm2Permissions {
    entries: BTreeMap<u16, BTreeMap<u16, Vec<Vec<u8>>>>,
}

impl Service {
    /// A service of `kind` with no privileges yet.
    pub fn new(kind: ServiceKind) -> Self {
        Self {
            privileges: BTreeMap::new(),
            kind,
        }
    }

    /// Sets privilege `id` to `expire` seconds from `issue_ts` (0 = no specific limit).
    pub fn with_privilege(mut self, id: u16, expire: u32) -> Self {
        self.privileges.insert(id, expire);
        self
    }

    /// The wire type number.
    pub fn service_type(&self) -> u16 {
        self.kind.service_type()
    }

    /// Appends the wire form: type, privileges, then the type's fields.
    pub(crate) fn pack(&self, w: &mut Writer) -> Result<(), TokenError> {
        w.u16(self.service_type());
        w.map(&self.privileges)?;
        match &self.kind {
            ServiceKind::Rtc { channel_name, uid } => {
                w.string("channel name", channel_name)?.string("uid", uid)?;
            }
            ServiceKind::Rtm { user_id } | ServiceKind::Chat { user_id } => {
                w.string("user id", user_id)?;
            }
            ServiceKind::Streaming {
                channel_name,
                account,
            }
            | ServiceKind::Fcdn {
                channel_name,
                account,
            } => {
                w.string("channel name", channel_name)?
                    .string("account", account)?;
            }
            ServiceKind::Apaas {
                room_uuid,
                user_uuid,
                role,
            } => {
                w.string("room uuid", room_uuid)?
                    .string("user uuid", user_uuid)?
                    .i16(*role);
            }
            ServiceKind::Rtm2 {
                user_id,
                permissions,
            } => {
                w.string("user id", user_id)?;
                permissions.pack(w)?;
            }
            ServiceKind::Fpa | ServiceKind::ConvoAi | ServiceKind::Stt => {}
            ServiceKind::Generic { service_type } => {
                if ServiceKind::is_known(*service_type) {
                    return Err(TokenError::KnownTypeAsGeneric(*service_type));
                }
            }
        }
        Ok(())
    }

    /// Reads the service of type `service_type` (already read); `None` for an
    /// unknown type, whose length cannot be known, so parsing must stop (spec §3).
    pub(crate) fn unpack(
        service_type: u16,
        r: &mut Reader<'_>,
    ) -> Result<Option<Self>, ParseError> {
        if !ServiceKind::is_known(service_type) {
            return Ok(None);
        }
        let privileges = r.map("privileges")?;
        let mut s = |what| r.string(what).map(<[u8]>::to_vec);
        let kind = match service_type {
            SERVICE_RTC => ServiceKind::Rtc {
                channel_name: s("rtc channel name")?,
                uid: s("rtc uid")?,
            },
            SERVICE_RTM => ServiceKind::Rtm {
                user_id: s("rtm user id")?,
            },
            SERVICE_STREAMING => ServiceKind::Streaming {
                channel_name: s("streaming channel name")?,
                account: s("streaming account")?,
            },
            SERVICE_CHAT => ServiceKind::Chat {
                user_id: s("chat user id")?,
            },
            SERVICE_FCDN => ServiceKind::Fcdn {
                channel_name: s("fcdn channel name")?,
                account: s("fcdn account")?,
            },
            SERVICE_APAAS => ServiceKind::Apaas {
                room_uuid: s("apaas room uuid")?,
                user_uuid: s("apaas user uuid")?,
                role: r.i16("apaas role")?,
            },
            SERVICE_RTM2 => ServiceKind::Rtm2 {
                user_id: s("rtm2 user id")?,
                permissions: Rtm2Permissions::unpack(r)?,
            },
            SERVICE_CONVOAI => ServiceKind::ConvoAi,
            SERVICE_STT => ServiceKind::Stt,
            _ => ServiceKind::Fpa,
        };
        Ok(Some(Self { privileges, kind }))
    }
}

impl ServiceKind {
    /// The wire type number.
    pub fn service_type(&self) -> u16 {
        match self {
            ServiceKind::Rtc { .. } => SERVICE_RTC,
            ServiceKind::Rtm { .. } => SERVICE_RTM,
            ServiceKind::Streaming { .. } => SERVICE_STREAMING,
            ServiceKind::Fpa => SERVICE_FPA,
            ServiceKind::Chat { .. } => SERVICE_CHAT,
            ServiceKind::Fcdn { .. } => SERVICE_FCDN,
            ServiceKind::Apaas { .. } => SERVICE_APAAS,
            ServiceKind::Rtm2 { .. } => SERVICE_RTM2,
            ServiceKind::ConvoAi => SERVICE_CONVOAI,
            ServiceKind::Stt => SERVICE_STT,
            ServiceKind::Generic { service_type } => *service_type,
        }
    }

    /// The lowercase name used in decoded views ("rtc", "rtm2", ..., "unknown").
    pub fn name(&self) -> &'static str {
        match self {
            ServiceKind::Rtc { .. } => "rtc",
            ServiceKind::Rtm { .. } => "rtm",
            ServiceKind::Streaming { .. } => "streaming",
            ServiceKind::Fpa => "fpa",
            ServiceKind::Chat { .. } => "chat",
            ServiceKind::Fcdn { .. } => "fcdn",
            ServiceKind::Apaas { .. } => "apaas",
            ServiceKind::Rtm2 { .. } => "rtm2",
            ServiceKind::ConvoAi => "convoai",
            ServiceKind::Stt => "stt",
            ServiceKind::Generic { .. } => "unknown",
        }
    }

    /// Whether `service_type` is one of the ten types this parser reads.
    pub fn is_known(service_type: u16) -> bool {
        (SERVICE_RTC..=SERVICE_STT).contains(&service_type)
    }
}

impl Rtm2Permissions {
    /// An empty set (packed as the single u16 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the resources for (resource, permission), replacing any earlier list for that pair.
    pub fn add<I, R>(&mut self, resource: ResourceType, permission: PermissionType, resources: I)
    where
        I: IntoIterator<Item = R>,
        R: Into<Vec<u8>>,
    {
        self.add_raw(resource.code(), permission.code(), resources);
    }

    /// [`Rtm2Permissions::add`] with raw wire codes, for tokens that carry codes outside the known ranges.
    pub fn add_raw<I, R>(&mut self, resource: u16, permission: u16, resources: I)
    where
        I: IntoIterator<Item = R>,
        R: Into<Vec<u8>>,
    {
        let list = resources.into_iter().map(Into::into).collect();
        self.entries
            .entry(resource)
            .or_default()
            .insert(permission, list);
    }

    /// Whether no pair is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (resource code, permission code, resources) in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u16, &[Vec<u8>])> {
        self.entries.iter().flat_map(|(&resource, perms)| {
            perms
                .iter()
                .map(move |(&permission, list)| (resource, permission, list.as_slice()))
        })
    }

    /// The nested view: resource code -> permission code -> resources.
    pub fn by_resource(&self) -> &BTreeMap<u16, BTreeMap<u16, Vec<Vec<u8>>>> {
        &self.entries
    }

    fn pack(&self, w: &mut Writer) -> Result<(), TokenError> {
        w.count("rtm2 resource types", self.entries.len())?;
        for (&resource, perms) in &self.entries {
            w.u16(resource)
                .count("rtm2 permission types", perms.len())?;
            for (&permission, list) in perms {
                w.u16(permission).count("rtm2 resources", list.len())?;
                for item in list {
                    w.string("rtm2 resource", item)?;
                }
            }
        }
        Ok(())
    }

    fn unpack(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let mut set = Self::new();
        for _ in 0..r.u16("rtm2 resource types")? {
            let resource = r.u16("rtm2 resource type")?;
            // Kept even with no permission types, so the view shows what the wire holds.
            set.entries.entry(resource).or_default();
            for _ in 0..r.u16("rtm2 permission count")? {
                let permission = r.u16("rtm2 permission type")?;
                let count = r.u16("rtm2 resource count")?;
                let mut list = Vec::with_capacity(usize::from(count).min(64));
                for _ in 0..count {
                    list.push(r.string("rtm2 resource")?.to_vec());
                }
                set.add_raw(resource, permission, list);
            }
        }
        Ok(set)
    }
}

/// Every known privilege name: (service type, privilege id, the spec's name, the
/// snake_case name of the gRPC API). It is the one table of privilege names,
/// so the CLI and the RPC cannot drift apart; spec §2.5 lists them.
///
/// 006's RTM login (1000) is listed under RTC, where an inspection of a 006
/// token puts its privileges. Streaming and FCDN have no builder and so no
/// privilege constants: their ids are the spec's numbers.
const PRIVILEGE_NAMES: &[(u16, u16, &str, &str)] = &[
    (1, raw::RTC_JOIN_CHANNEL, "joinChannel", "join_channel"),
    (
        1,
        raw::RTC_PUBLISH_AUDIO,
        "publishAudioStream",
        "publish_audio_stream",
    ),
    (
        1,
        raw::RTC_PUBLISH_VIDEO,
        "publishVideoStream",
        "publish_video_stream",
    ),
    (
        1,
        raw::RTC_PUBLISH_DATA,
        "publishDataStream",
        "publish_data_stream",
    ),
    (1, v006::RTM_LOGIN, "rtmLogin", "rtm_login"),
    (2, raw::LOGIN, "login", "login"),
    (3, 1, "publishMixStream", "publish_mix_stream"),
    (3, 2, "publishRawStream", "publish_raw_stream"),
    (4, raw::LOGIN, "login", "login"),
    (5, raw::CHAT_USER, "user", "user"),
    (5, raw::CHAT_APP, "app", "app"),
    (6, 1, "publish", "publish"),
    (6, 2, "play", "play"),
    (7, raw::APAAS_ROOM_USER, "roomUser", "room_user"),
    (7, raw::APAAS_USER, "user", "user"),
    (7, raw::APAAS_APP, "app", "app"),
    (8, raw::LOGIN, "login", "login"),
];

/// The spec's name of privilege `id` of `service_type` ("joinChannel"), if it is a known one.
pub fn privilege_name(service_type: u16, id: u16) -> Option<&'static str> {
    privilege_row(service_type, id).map(|(_, _, name, _)| *name)
}

/// The snake_case name of privilege `id` of `service_type` ("join_channel"), as the gRPC API spells it.
pub fn privilege_snake_name(service_type: u16, id: u16) -> Option<&'static str> {
    privilege_row(service_type, id).map(|(_, _, _, name)| *name)
}

fn privilege_row(
    service_type: u16,
    id: u16,
) -> Option<&'static (u16, u16, &'static str, &'static str)> {
    PRIVILEGE_NAMES
        .iter()
        .find(|(t, i, _, _)| *t == service_type && *i == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(service: &Service) -> String {
        let mut w = Writer::default();
        service.pack(&mut w).unwrap();
        hex::encode(w.as_slice())
    }

    #[test]
    fn rtm2_permissions_sort_types_and_replace_pairs() {
        let mut p = Rtm2Permissions::new();
        p.add(ResourceType::Users, PermissionType::Read, ["u"]);
        p.add(
            ResourceType::MessageChannels,
            PermissionType::Write,
            ["b", "a"],
        );
        p.add(ResourceType::MessageChannels, PermissionType::Read, ["x"]);
        p.add(
            ResourceType::MessageChannels,
            PermissionType::Write,
            ["c", "c"],
        );
        let flat: Vec<(u16, u16, Vec<&[u8]>)> = p
            .iter()
            .map(|(r, q, l)| (r, q, l.iter().map(Vec::as_slice).collect()))
            .collect();
        assert_eq!(
            flat,
            vec![
                (0, 0, vec![b"x".as_slice()]),
                (0, 1, vec![b"c".as_slice(), b"c".as_slice()]),
                (4, 0, vec![b"u".as_slice()]),
            ]
        );
    }

    #[test]
    fn services_pack_like_the_spec() {
        let check = |service: Service, expected: &str| assert_eq!(packed(&service), expected);
        check(
            Service::new(ServiceKind::Fpa).with_privilege(1, 0),
            "04000100010000000000",
        );
        check(Service::new(ServiceKind::ConvoAi), "09000000");
        check(
            Service::new(ServiceKind::Apaas {
                room_uuid: vec![],
                user_uuid: vec![],
                role: -1,
            })
            .with_privilege(3, 600),
            "0700010003005802000000000000ffff",
        );
        check(
            Service::new(ServiceKind::Rtm2 {
                user_id: b"u".to_vec(),
                permissions: Rtm2Permissions::new(),
            }),
            "080000000100750000",
        );
    }

    #[test]
    fn generic_services_cannot_impersonate_known_types() {
        let mut w = Writer::default();
        let fake = Service::new(ServiceKind::Generic { service_type: 1 });
        assert_eq!(fake.pack(&mut w), Err(TokenError::KnownTypeAsGeneric(1)));
        let real = Service::new(ServiceKind::Generic { service_type: 999 }).with_privilege(1, 5);
        assert_eq!(packed(&real), "e7030100010005000000");
    }

    #[test]
    fn permission_blocks_round_trip_byte_for_byte() {
        let cases: &[&str] = &[
            "0000",
            "010004000000",
            "020000000100000001000100610400010001000000",
        ];
        for wire in cases {
            let bytes = hex::decode(wire).unwrap();
            let set = Rtm2Permissions::unpack(&mut Reader::new(&bytes)).unwrap();
            let mut w = Writer::default();
            set.pack(&mut w).unwrap();
            assert_eq!(hex::encode(w.as_slice()), *wire);
        }
    }

    #[test]
    fn privilege_names_have_one_spelling_in_two_cases() {
        assert_eq!(privilege_name(1, 1), Some("joinChannel"));
        assert_eq!(privilege_snake_name(1, 1), Some("join_channel"));
        assert_eq!(privilege_snake_name(1, 1000), Some("rtm_login"));
        assert_eq!(privilege_name(7, 1), Some("roomUser"));
        assert_eq!(privilege_name(1, 5), None);
        assert_eq!(privilege_snake_name(9, 1), None);
        // The snake_case column is the spec's name with each capital lowered after an underscore.
        for (service_type, id, name, snake) in PRIVILEGE_NAMES {
            let mut derived = String::new();
            for c in name.chars() {
                if c.is_ascii_uppercase() {
                    derived.push('_');
                }
                derived.push(c.to_ascii_lowercase());
            }
            assert_eq!(derived, *snake, "{service_type}/{id}");
        }
        // No (type, id) pair is listed twice.
        for (n, (t, i, _, _)) in PRIVILEGE_NAMES.iter().enumerate() {
            assert!(
                !PRIVILEGE_NAMES[n + 1..]
                    .iter()
                    .any(|(t2, i2, _, _)| t2 == t && i2 == i),
                "{t}/{i}"
            );
        }
    }
}
