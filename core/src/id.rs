//! Typed ids: a `JobId` can never be passed where a `TaskId` is meant.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A UUID that knows which entity it names.
pub struct Id<T> {
    uuid: Uuid,
    _kind: PhantomData<fn() -> T>,
}

/// Marker types for [`Id`].
pub mod kind {
    pub enum Job {}
    pub enum Task {}
    pub enum Token {}
}

pub type JobId = Id<kind::Job>;
pub type TaskId = Id<kind::Task>;
/// An API token's id (not its secret).
pub type TokenId = Id<kind::Token>;

impl<T> Id<T> {
    /// A new id; v7 so that ids sort by creation time, which keeps index inserts local.
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self {
            uuid,
            _kind: PhantomData,
        }
    }

    pub const fn uuid(&self) -> Uuid {
        self.uuid
    }
}

impl<T> Default for Id<T> {
    fn default() -> Self {
        Self::new()
    }
}

// Manual impls: derives would demand `T: Clone` etc. of the marker types.
impl<T> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Id<T> {}
impl<T> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
    }
}
impl<T> Eq for Id<T> {}
impl<T> std::hash::Hash for Id<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uuid.hash(state)
    }
}
impl<T> PartialOrd for Id<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Id<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uuid.cmp(&other.uuid)
    }
}
impl<T> fmt::Debug for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uuid, f)
    }
}
impl<T> fmt::Display for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uuid, f)
    }
}
impl<T> FromStr for Id<T> {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self::from_uuid)
    }
}
impl<T> Serialize for Id<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.uuid.serialize(s)
    }
}
impl<'de, T> Deserialize<'de> for Id<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Uuid::deserialize(d).map(Self::from_uuid)
    }
}

// In the OpenAPI document an id is a `string` of format `uuid`, one component per kind
// (`JobId`, `TaskId`, `TokenId`) named after its marker type.
impl<T> utoipa::PartialSchema for Id<T> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .into()
    }
}
impl<T> utoipa::ToSchema for Id<T> {
    fn name() -> std::borrow::Cow<'static, str> {
        let marker = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
        format!("{marker}Id").into()
    }
}

/// An executor's stable, operator-chosen name. It appears in routing keys and queue
/// names, so it is restricted to characters that are safe there.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ExecutorId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("executor id {0:?} must be 1 to 64 characters of a-z, 0-9, '-' and '_', and not 'all'")]
pub struct BadExecutorId(pub String);

impl ExecutorId {
    pub fn parse(s: &str) -> Result<Self, BadExecutorId> {
        // `control.all` addresses every executor of a group: `all` cannot be one of them.
        let ok = !s.is_empty()
            && s != "all"
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadExecutorId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for ExecutorId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An executor's stable name: 1 to 64 of a-z, 0-9, '-', '_' (not `all`).",
            ))
            .pattern(Some("^[a-z0-9_-]{1,64}$"))
            .into()
    }
}
impl utoipa::ToSchema for ExecutorId {}

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for ExecutorId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_as_plain_uuids() {
        let id = JobId::new();
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, format!("\"{}\"", id.uuid()));
        let back: JobId = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, id);
    }

    #[test]
    fn each_kind_of_id_is_its_own_uuid_component() {
        use utoipa::ToSchema;
        assert_eq!(JobId::name(), "JobId");
        assert_eq!(TaskId::name(), "TaskId");
        assert_eq!(TokenId::name(), "TokenId");
    }

    #[test]
    fn executor_ids_are_restricted_to_routing_safe_characters() {
        assert!(ExecutorId::parse("cpu-1").is_ok());
        assert!(ExecutorId::parse("gpu_2").is_ok());
        for bad in ["", "CPU", "a.b", "a*", "a#", "x y", &"a".repeat(65)] {
            assert!(ExecutorId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<ExecutorId>("\"a.b\"").is_err());
    }
}
