//! UUIDs as SSNTP carries them: 16 raw bytes in the frame header, text in payloads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's, instance's or peer's identity.
///
/// Serialised as 8-4-4-4-12 lowercase hex text in every payload (pinned by the brief, so that a
/// client in any language can read it). Parsing accepts upper case too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(uuid::Uuid);

impl Uuid {
    /// The all-zero UUID: "none" in the header of frames that have no meaningful origin.
    pub const fn nil() -> Self {
        Self(uuid::Uuid::nil())
    }

    /// A fresh random (version 4) UUID.
    pub fn new_v4() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// From the 16 header bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The 16 header bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Whether this is [`Uuid::nil`].
    pub const fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// The first 8 hex digits, as ciao's heartbeat line shows peers.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(8);
        text
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a UUID (want 8-4-4-4-12 hex digits): {0:?}")]
pub struct ParseUuidError(String);

impl FromStr for Uuid {
    type Err = ParseUuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the hyphenated form: the brief pins it, and a lenient parser invites two
        // spellings of one identity in logs and stores.
        if s.len() != 36 {
            return Err(ParseUuidError(s.chars().take(64).collect()));
        }
        uuid::Uuid::try_parse(s).map(Self).map_err(|_| ParseUuidError(s.to_owned()))
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Uuid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID as 8-4-4-4-12 hex text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Uuid, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_lowercase_hyphenated_and_strict() {
        let u: Uuid = "4CB19522-1E18-439A-883A-F9B2A3A95F5E".parse().unwrap();
        assert_eq!(u.to_string(), "4cb19522-1e18-439a-883a-f9b2a3a95f5e");
        assert_eq!(u.short(), "4cb19522");
        assert!("4cb195221e18439a883af9b2a3a95f5e".parse::<Uuid>().is_err());
        assert!("".parse::<Uuid>().is_err());
    }
}
