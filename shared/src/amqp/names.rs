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

/// What a broker user may do: RabbitMQ's configure/write/read regexes for the vhost, and
/// per topic exchange the routing keys it may publish with (write) and bind with (read).
/// See [`Names::executor_permissions`] and [`Names::service_permissions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPermissions {
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

    /// The broker user a service connects as when each has its own:
    /// `<prefix>-submitter`, `<prefix>-dispatcher`, `<prefix>-collector`.
    pub fn service_user(&self, service: Service) -> String {
        format!("{}-{}", self.prefix, service.as_str())
    }

    /// What a service's own broker user may do: declare, bind, publish and consume what
    /// that service does, and nothing else (docs/design.md, "Broker users").
    ///
    /// - The dispatcher publishes requests and control messages on the root exchange
    ///   only (topic: `request.*`, `control.*`), its dead letters, and the alarm probe
    ///   (the default exchange); it consumes the INFO queue.
    /// - The collector publishes events and its dead letters, never on a group exchange;
    ///   it consumes the results and live-output queues.
    /// - The submitter declares what executors may not (their queues, their groups'
    ///   exchanges and bindings) and publishes control messages on any group's exchange
    ///   and replies on the default exchange; it consumes the intake queue (and may read
    ///   executors' queues, which it declares: see below). It also holds the broker's
    ///   management credential (it mints executors' users), so its own limits are
    ///   defence in depth.
    ///
    /// RabbitMQ wants read as well as configure on a queue declared with a dead-letter
    /// exchange: so the dispatcher and the submitter, which declare the live-output queue
    /// before the collector may be up, may read it, and the submitter, which declares
    /// executors' queues, may read those (it holds the key that seals secrets and the
    /// broker's management credential anyway); the dispatcher and the collector may not.
    ///
    /// Topic permissions name exchanges, not patterns: they bind the root exchange and
    /// the dead-letter exchange; a group exchange that has none takes any key from
    /// whoever may write to it, which only the submitter and that group's executors may.
    pub fn service_permissions(&self, service: Service) -> BrokerPermissions {
        let p = re(&self.prefix);
        let (root, dlx) = (self.root_exchange(), self.dlx());
        let core = format!("{p}\\.(group\\.default|submit|events|dlx|dead)");
        // On the dead-letter exchange: publish with its own queues' names only, and bind
        // the dead queue with its keys only (not `request.#`: expired requests hold
        // opened secrets, which the dead queue does not keep).
        let dead_keys = format!("^({}\\.#|result\\.\\*|log\\.\\*|info\\.\\*)$", p);
        let dead_letters = |queues: &[String]| {
            let q: Vec<String> = queues.iter().map(|q| re(q)).collect();
            (
                dlx.clone(),
                format!("^({})$", q.join("|")),
                dead_keys.clone(),
            )
        };
        match service {
            Service::Dispatcher => BrokerPermissions {
                configure: format!("^({core}|{p}\\.dispatcher\\.info|{p}\\.collector\\.logs)$"),
                write: format!(
                    "^(amq\\.default|{p}\\.(group\\.default|dlx|dead|dispatcher\\.info|collector\\.logs))$"
                ),
                read: format!("^{p}\\.(dispatcher\\.info|collector\\.logs|group\\.default|dlx)$"),
                topic: vec![
                    (
                        root,
                        "^(request|control)\\..+$".to_owned(),
                        "^(info|log)\\.".to_owned(),
                    ),
                    dead_letters(&[self.info_queue()]),
                ],
            },
            Service::Collector => BrokerPermissions {
                configure: format!(
                    "^({core}|{p}\\.collector\\.(results|logs))$"
                ),
                write: format!("^{p}\\.(events|dlx|dead|collector\\.(results|logs))$"),
                read: format!("^{p}\\.(collector\\.(results|logs)|group\\.default|dlx)$"),
                topic: vec![
                    (root, "^$".to_owned(), "^(result|log)\\.".to_owned()),
                    dead_letters(&[self.results_queue(), self.logs_queue()]),
                ],
            },
            Service::Submitter => BrokerPermissions {
                configure: format!(
                    "^({core}|{p}\\.(group\\..+|submitter\\.intake|collector\\.logs|exec\\..+))$"
                ),
                write: format!(
                    "^(amq\\.default|{p}\\.(group\\..+|dlx|dead|submitter\\.intake|collector\\.logs|exec\\..+))$"
                ),
                read: format!(
                    "^{p}\\.(submitter\\.intake|submit|dlx|group\\..+|collector\\.logs|exec\\..+)$"
                ),
                topic: vec![
                    (root, "^control\\..+$".to_owned(), ".*".to_owned()),
                    dead_letters(&[self.submit_queue()]),
                ],
            },
        }
    }

    pub fn executor_permissions(&self, id: &ExecutorId, groups: &[GroupName]) -> BrokerPermissions {
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
        BrokerPermissions {
            configure: "^$".to_owned(),
            write: format!("^({}|{})$", alternatives.join("|"), re(&self.dlx())),
            read: format!("^{}$", re(&self.executor_queue(id))),
            topic,
        }
    }
}

/// The services that connect to the broker besides executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Submitter,
    Dispatcher,
    Collector,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Submitter, Service::Dispatcher, Service::Collector];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Submitter => "submitter",
            Service::Dispatcher => "dispatcher",
            Service::Collector => "collector",
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

    #[test]
    fn services_bind_the_dead_queue_with_its_keys_only() {
        let n = Names::new("fleet");
        let p = n.service_permissions(Service::Collector);
        let (ex, write, read) = p.topic.last().cloned().expect("dlx entry");
        assert_eq!(ex, "fleet.dlx");
        assert_eq!(
            write,
            r"^(fleet\.collector\.results|fleet\.collector\.logs)$"
        );
        assert_eq!(read, r"^(fleet\.#|result\.\*|log\.\*|info\.\*)$");
    }
}
