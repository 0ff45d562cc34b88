//! The only place that spells exchange, queue and routing-key names.

use crate::group::GroupName;
use crate::id::ExecutorId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One topic exchange per group.
    pub fn group_exchange(&self, group: &GroupName) -> String {
        format!("{}.group.{group}", self.prefix)
    }

    /// The exchange of `default`, which every group's traffic reaches or comes from.
    pub fn root_exchange(&self) -> String {
        self.group_exchange(&GroupName::default_group())
    }

    pub fn submit_exchange(&self) -> String {
        format!("{}.submit", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn executor_queue(&self, id: &ExecutorId) -> String {
        format!("{}.exec.{id}", self.prefix)
    }

    pub fn info_queue(&self) -> String {
        format!("{}.dispatcher.info", self.prefix)
    }

    pub fn results_queue(&self) -> String {
        format!("{}.collector.results", self.prefix)
    }

    pub fn submit_queue(&self) -> String {
        format!("{}.submitter.intake", self.prefix)
    }
}

/// Routing keys on the group exchanges; each carries the executor's id, which is what
/// broker permissions will match on.
pub mod keys {
    use crate::id::ExecutorId;

    pub fn request(id: &ExecutorId) -> String {
        format!("request.{id}")
    }
    pub fn control(id: &ExecutorId) -> String {
        format!("control.{id}")
    }
    pub const CONTROL_ALL: &str = "control.all";
    pub fn info(id: &ExecutorId) -> String {
        format!("info.{id}")
    }
    pub fn result(id: &ExecutorId) -> String {
        format!("result.{id}")
    }
    pub fn log(id: &ExecutorId) -> String {
        format!("log.{id}")
    }
    /// Flows down from a group to its subgroups.
    pub const DOWNWARD: [&str; 2] = ["request.#", "control.#"];
    /// Flows up from a group to its parent, and so to `default`.
    pub const UPWARD: [&str; 3] = ["info.#", "result.#", "log.#"];
    pub const ANY_INFO: &str = "info.*";
    pub const ANY_RESULT: &str = "result.*";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let n = Names::new("t1");
        let g = GroupName::parse("lab.gpu").expect("group");
        assert_eq!(n.group_exchange(&g), "t1.group.lab.gpu");
        assert_eq!(n.root_exchange(), "t1.group.default");
        let e = ExecutorId::parse("gpu-1").expect("id");
        assert_eq!(n.executor_queue(&e), "t1.exec.gpu-1");
        assert_eq!(keys::request(&e), "request.gpu-1");
    }
}
