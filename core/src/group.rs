//! Group names and their nesting. A group's parent is its name minus the last dotted
//! segment (`lab.gpu` is inside `lab`), and every top-level group is inside `default`,
//! which holds every executor.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_GROUP: &str = "default";

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("group name {0:?} must be dot-separated segments of a-z, 0-9, '-' and '_' (at most 128 characters)")]
pub struct BadGroupName(pub String);

impl GroupName {
    pub fn parse(s: &str) -> Result<Self, BadGroupName> {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if s.len() <= 128 && s.split('.').all(segment_ok) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadGroupName(s.to_owned()))
        }
    }

    pub fn default_group() -> Self {
        Self(DEFAULT_GROUP.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_GROUP
    }

    /// The enclosing group; `None` only for `default` itself.
    pub fn parent(&self) -> Option<GroupName> {
        if self.is_default() {
            return None;
        }
        match self.0.rsplit_once('.') {
            Some((parent, _)) => Some(Self(parent.to_owned())),
            None => Some(Self::default_group()),
        }
    }

    /// This group and every group that contains it, innermost first, ending at `default`.
    pub fn lineage(&self) -> Vec<GroupName> {
        let mut out = vec![self.clone()];
        while let Some(p) = out.last().and_then(GroupName::parent) {
            out.push(p);
        }
        out
    }

    /// Whether a member of `self` may run work that targets `target`: the target is this
    /// group or one that contains it.
    pub fn is_within(&self, target: &GroupName) -> bool {
        target.is_default()
            || self == target
            || (self.0.len() > target.0.len()
                && self.0.starts_with(target.as_str())
                && self.0.as_bytes()[target.0.len()] == b'.')
    }
}

impl utoipa::PartialSchema for GroupName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A group: dot-separated segments of a-z, 0-9, '-' and '_' (`lab.gpu` is inside `lab`), at most 128 characters.",
            ))
            .pattern(Some("^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$"))
            .max_length(Some(128))
            .into()
    }
}
impl utoipa::ToSchema for GroupName {}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupName {
        GroupName::parse(s).expect("valid group")
    }

    #[test]
    fn nested_groups_are_within_their_ancestors_only() {
        assert!(g("lab.gpu").is_within(&g("lab")));
        assert!(g("lab").is_within(&g("lab")));
        assert!(g("lab.gpu").is_within(&g("default")));
        assert!(g("cpu").is_within(&g("default")));
        assert!(!g("lab").is_within(&g("lab.gpu")));
        assert!(!g("laboratory").is_within(&g("lab")));
        assert!(!g("site.db").is_within(&g("site.web")));
    }

    #[test]
    fn lineage_climbs_to_default() {
        let names: Vec<String> = g("site.web.eu")
            .lineage()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["site.web.eu", "site.web", "site", "default"]);
        assert_eq!(g("default").lineage(), vec![g("default")]);
    }

    #[test]
    fn malformed_group_names_are_refused() {
        for bad in ["", ".", "a.", ".a", "A", "a..b", "a b", "a#"] {
            assert!(GroupName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
