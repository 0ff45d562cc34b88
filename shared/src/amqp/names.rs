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

    pub fn logs_queue(&self) -> String {
        format!("{}.collector.logs", self.prefix)
    }

    pub fn submit_queue(&self) -> String {
        format!("{}.submitter.intake", self.prefix)
    }
}

/// What an executor's own broker user may do: RabbitMQ's configure/write/read regexes
/// for the vhost, and per topic exchange the routing keys it may publish with. Nothing to
/// configure (the submitter declares its queue and exchanges at registration); publish
/// only on its groups' exchanges (and dead letters), only with keys that carry its id;
/// consume only its own queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    /// (exchange, write regex, read regex)
    pub topic: Vec<(String, String, String)>,
}

/// Escapes the one regex metacharacter names can hold: `.`.
fn re(name: &str) -> String {
    name.replace('.', "\\.")
}

impl Names {
    /// The broker user an executor registers as: `<prefix>-exec-<id>`.
    pub fn executor_user(&self, id: &ExecutorId) -> String {
        format!("{}-exec-{id}", self.prefix)
    }

    pub fn executor_permissions(
        &self,
        id: &ExecutorId,
        groups: &[GroupName],
    ) -> ExecutorPermissions {
        let exchanges: Vec<String> = groups.iter().map(|g| self.group_exchange(g)).collect();
        let alternatives: Vec<String> = exchanges.iter().map(|e| re(e)).collect();
        let own_keys = format!("^(info|result|log)\\.{id}$");
        let mut topic: Vec<(String, String, String)> = exchanges
            .iter()
            .map(|e| (e.clone(), own_keys.clone(), "^$".to_owned()))
            .collect();
        topic.push((
            self.dlx(),
            format!("^{}$", re(&self.executor_queue(id))),
            "^$".to_owned(),
        ));
        ExecutorPermissions {
            configure: "^$".to_owned(),
            write: format!("^({}|{})$", alternatives.join("|"), re(&self.dlx())),
            read: format!("^{}$", re(&self.executor_queue(id))),
            topic,
        }
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
    pub const ANY_LOG: &str = "log.*";
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

    #[test]
    fn an_executor_may_publish_only_on_its_groups_with_its_own_id() {
        let n = Names::new("fleet");
        let id = ExecutorId::parse("web-1").expect("id");
        let groups = [
            GroupName::parse("site.web").expect("g"),
            GroupName::parse("lab").expect("g"),
        ];
        let p = n.executor_permissions(&id, &groups);
        assert_eq!(n.executor_user(&id), "fleet-exec-web-1");
        assert_eq!(p.configure, "^$");
        assert_eq!(
            p.write,
            r"^(fleet\.group\.site\.web|fleet\.group\.lab|fleet\.dlx)$"
        );
        assert_eq!(p.read, r"^fleet\.exec\.web-1$");
        assert_eq!(
            p.topic,
            vec![
                (
                    "fleet.group.site.web".into(),
                    r"^(info|result|log)\.web-1$".into(),
                    "^$".into()
                ),
                (
                    "fleet.group.lab".into(),
                    r"^(info|result|log)\.web-1$".into(),
                    "^$".into()
                ),
                (
                    "fleet.dlx".into(),
                    r"^fleet\.exec\.web-1$".into(),
                    "^$".into()
                ),
            ]
        );
    }
}
