//! Statements the submitter owns besides jobs: API tokens, groups and memberships.

pub use fleet_core::api::admin::{GroupView, GroupsView, MemberView, NewToken, TokenView};
pub use fleet_core::api::executors::NewJoinToken;

use super::{Client, DbError};
use crate::auth::{self, Role};
use crate::group::GroupName;
use crate::id::ExecutorId;

/// Why an administrative change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The change contradicts what exists (a duplicate, a missing parent, a group in use).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(DbError::from(e))
    }
}

pub async fn create_token(client: &Client, name: &str, role: Role) -> Result<NewToken, DbError> {
    let token = auth::new_token();
    let id = uuid::Uuid::now_v7();
    let row = client
        .query_one(
            "INSERT INTO api_tokens (id, name, role, secret_sha256) VALUES ($1, $2, $3, $4)
             RETURNING created_at",
            &[&id, &name, &role.as_str(), &auth::token_hash(&token)],
        )
        .await?;
    Ok(NewToken {
        view: TokenView {
            token_id: id,
            name: name.to_owned(),
            role,
            created_at: row.get(0),
            revoked_at: None,
        },
        token,
    })
}

pub async fn list_tokens(client: &Client) -> Result<Vec<TokenView>, DbError> {
    let rows = client
        .query(
            "SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let role: String = r.get(2);
            Ok(TokenView {
                token_id: r.get(0),
                name: r.get(1),
                role: Role::parse(&role).ok_or_else(|| DbError::Row(format!("role {role:?}")))?,
                created_at: r.get(3),
                revoked_at: r.get(4),
            })
        })
        .collect()
}

/// Revokes a token; false when there is no such token. Revoking twice is not an error.
pub async fn revoke_token(client: &Client, id: uuid::Uuid) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, clock_timestamp())
             WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// The role of a live (not revoked) token, by the hash of its secret.
pub async fn token_principal(
    client: &Client,
    hash: &[u8],
) -> Result<Option<crate::auth::Principal>, DbError> {
    let row = client
        .query_opt(
            "SELECT id, name, role FROM api_tokens WHERE secret_sha256 = $1 AND revoked_at IS NULL",
            &[&hash],
        )
        .await?;
    Ok(row.and_then(|r| {
        Some(crate::auth::Principal {
            token_id: Some(crate::id::TokenId::from_uuid(r.get(0))),
            name: r.get(1),
            role: Role::parse(r.get::<_, &str>(2))?,
        })
    }))
}

/// Creates a group. Its parent (the name minus the last dotted segment) must exist,
/// except for top-level groups, whose parent is `default`.
pub async fn create_group(
    client: &Client,
    name: &GroupName,
    description: Option<&str>,
) -> Result<GroupView, AdminError> {
    if name.is_default() {
        return Err(AdminError::Conflict(
            "the group 'default' always exists".into(),
        ));
    }
    if let Some(parent) = name.parent().filter(|p| !p.is_default()) {
        let found = client
            .query_opt("SELECT 1 FROM groups WHERE name = $1", &[&parent.as_str()])
            .await?;
        if found.is_none() {
            return Err(AdminError::Conflict(format!(
                "the parent group '{parent}' does not exist; create it first"
            )));
        }
    }
    let row = client
        .query_opt(
            "INSERT INTO groups (name, description) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING created_at",
            &[&name.as_str(), &description],
        )
        .await?;
    let Some(row) = row else {
        return Err(AdminError::Conflict(format!(
            "the group '{name}' already exists"
        )));
    };
    Ok(GroupView {
        name: name.to_string(),
        parent: name.parent().map(|p| p.to_string()),
        description: description.map(str::to_owned),
        created_at: Some(row.get(0)),
        subgroups: Vec::new(),
        members: Vec::new(),
    })
}

/// Every group: the stored ones, `default`, and any group an executor declares that was
/// never created (so that what runs is visible), each with its direct members.
/// `alive_secs`: executors silent longer than this are not listed as declared members.
pub async fn list_groups(client: &Client, alive_secs: f64) -> Result<GroupsView, DbError> {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
    let view = |name: &str| GroupView {
        name: name.to_owned(),
        parent: GroupName::parse(name)
            .ok()
            .and_then(|g| g.parent())
            .map(|p| p.to_string()),
        description: None,
        created_at: None,
        subgroups: Vec::new(),
        members: Vec::new(),
    };
    groups.insert("default".into(), view("default"));
    for r in client
        .query("SELECT name, description, created_at FROM groups", &[])
        .await?
    {
        let name: String = r.get(0);
        let mut g = view(&name);
        g.description = r.get(1);
        g.created_at = Some(r.get(2));
        groups.insert(name, g);
    }
    for r in client
        .query(
            "SELECT group_name, executor_id FROM group_members ORDER BY executor_id",
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        groups
            .entry(name.clone())
            .or_insert_with(|| view(&name))
            .members
            .push(MemberView {
                executor_id: r.get(1),
                source: "assigned".into(),
            });
    }
    for r in client
        .query(
            "SELECT g.name, e.id FROM executors e, jsonb_array_elements_text(e.groups) AS g(name)
             WHERE e.last_info_at > now() - make_interval(secs => $1) ORDER BY e.id",
            &[&alive_secs],
        )
        .await?
    {
        let name: String = r.get(0);
        let executor_id: String = r.get(1);
        let g = groups.entry(name.clone()).or_insert_with(|| view(&name));
        if !g.members.iter().any(|m| m.executor_id == executor_id) {
            g.members.push(MemberView {
                executor_id,
                source: "declared".into(),
            });
        }
    }
    // Declared groups may skip levels (`lab.gpu` without `lab`): show the ancestors too.
    let names: Vec<String> = groups.keys().cloned().collect();
    for name in names {
        if let Ok(g) = GroupName::parse(&name) {
            for a in g.lineage().into_iter().skip(1) {
                groups
                    .entry(a.to_string())
                    .or_insert_with(|| view(a.as_str()));
            }
        }
    }
    let pairs: Vec<(String, String)> = groups
        .values()
        .filter_map(|g| Some((g.parent.clone()?, g.name.clone())))
        .collect();
    for (parent, child) in pairs {
        if let Some(p) = groups.get_mut(&parent) {
            p.subgroups.push(child);
        }
    }
    Ok(GroupsView {
        groups: groups.into_values().collect(),
    })
}

/// Deletes a group, refused while it has subgroups, members (assigned, or alive executors
/// that declare it) or unfinished tasks that target it.
pub async fn delete_group(
    client: &mut Client,
    name: &GroupName,
    alive_secs: f64,
) -> Result<(), AdminError> {
    let tx = client.transaction().await?;
    // Lock the row so that a member added meanwhile waits for us (and then fails on the
    // foreign key) instead of slipping in after the check.
    let found = tx
        .query_opt(
            "SELECT 1 FROM groups WHERE name = $1 FOR UPDATE",
            &[&name.as_str()],
        )
        .await?;
    if found.is_none() {
        drop(tx);
        return Err(not_stored(client, name, alive_secs, GroupChange::Delete).await);
    }
    let sub: i64 = tx
        .query_one(
            "SELECT count(*) FROM groups WHERE name LIKE $1 || '.%'",
            &[&name.as_str()],
        )
        .await?
        .get(0);
    if sub > 0 {
        return Err(AdminError::Conflict(format!(
            "the group '{name}' has {sub} subgroup(s); delete them first"
        )));
    }
    let members: Vec<String> = tx
        .query(
            "SELECT executor_id FROM group_members WHERE group_name = $1
             UNION
             SELECT id FROM executors
             WHERE groups ? $1 AND last_info_at > now() - make_interval(secs => $2)
             ORDER BY 1",
            &[&name.as_str(), &alive_secs],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !members.is_empty() {
        return Err(AdminError::Conflict(format!(
            "the group '{name}' has members ({}); remove them first",
            members.join(", ")
        )));
    }
    let open: i64 = tx
        .query_one(
            "SELECT count(*) FROM tasks WHERE target_group = $1
             AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            &[&name.as_str()],
        )
        .await?
        .get(0);
    if open > 0 {
        return Err(AdminError::Conflict(format!(
            "the group '{name}' has {open} unfinished task(s); wait for them or cancel them"
        )));
    }
    tx.execute("DELETE FROM groups WHERE name = $1", &[&name.as_str()])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// What was asked of a group that is not stored.
#[derive(Clone, Copy)]
enum GroupChange {
    Delete,
    AddMember,
}

/// Why a group that is not stored cannot be changed so. The group
/// listing shows more than the stored groups: `default`, and groups that alive executors
/// declare (and their ancestors), which nobody created. Those are not "no such group":
/// the answer says what they are and what to do.
async fn not_stored(
    client: &Client,
    name: &GroupName,
    alive_secs: f64,
    what: GroupChange,
) -> AdminError {
    if name.is_default() {
        return AdminError::Conflict(match what {
            GroupChange::Delete => "the group 'default' always exists and cannot be deleted".into(),
            GroupChange::AddMember => {
                "every executor is in the group 'default'; there is nobody to add".into()
            }
        });
    }
    let declared = client
        .query(
            "SELECT id FROM executors
             WHERE last_info_at > now() - make_interval(secs => $2)
               AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(groups) AS g(name)
                           WHERE g.name = $1 OR starts_with(g.name, $1 || '.'))
             ORDER BY id",
            &[&name.as_str(), &alive_secs],
        )
        .await;
    let declared: Vec<String> = match declared {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return AdminError::Db(e.into()),
    };
    if declared.is_empty() {
        return AdminError::NotFound("group");
    }
    let by = format!(
        "the group '{name}' was never created: it is listed because executors declare it \
         or a group inside it in their configuration ({})",
        declared.join(", ")
    );
    AdminError::Conflict(match what {
        GroupChange::Delete => format!(
            "{by}; there is nothing to delete: it leaves the list once no alive executor \
             declares it (change their executor.groups)"
        ),
        GroupChange::AddMember => {
            // Every missing level must be created, outermost first.
            let mut missing = Vec::new();
            for g in name.lineage().into_iter().filter(|g| !g.is_default()) {
                let found = client
                    .query_opt("SELECT 1 FROM groups WHERE name = $1", &[&g.as_str()])
                    .await;
                match found {
                    Ok(Some(_)) => break,
                    Ok(None) => missing.push(format!("fleetctl group create {g}")),
                    Err(e) => return AdminError::Db(e.into()),
                }
            }
            missing.reverse();
            format!(
                "{by}; to put executors in it, create it first: {} (POST /v1/groups)",
                missing.join(", then ")
            )
        }
    })
}

/// Puts an executor in a group (idempotent). The executor need not have registered yet.
/// `alive_secs`: for the answer when the group is not stored (see [`not_stored`]).
pub async fn add_member(
    client: &Client,
    group: &GroupName,
    executor: &ExecutorId,
    alive_secs: f64,
) -> Result<(), AdminError> {
    let n = client
        .execute(
            "INSERT INTO group_members (group_name, executor_id)
             SELECT name, $2 FROM groups WHERE name = $1
             ON CONFLICT DO NOTHING",
            &[&group.as_str(), &executor.as_str()],
        )
        .await?;
    if n == 0 {
        let found = client
            .query_opt("SELECT 1 FROM groups WHERE name = $1", &[&group.as_str()])
            .await?;
        if found.is_none() {
            return Err(not_stored(client, group, alive_secs, GroupChange::AddMember).await);
        }
    }
    Ok(())
}

/// Takes an executor out of a group it was put in; not found when it was not there.
pub async fn remove_member(
    client: &Client,
    group: &GroupName,
    executor: &ExecutorId,
) -> Result<(), AdminError> {
    let n = client
        .execute(
            "DELETE FROM group_members WHERE group_name = $1 AND executor_id = $2",
            &[&group.as_str(), &executor.as_str()],
        )
        .await?;
    if n == 0 {
        return Err(AdminError::NotFound("membership"));
    }
    Ok(())
}

/// Groups each executor was put in by an administrator, for the dispatcher's eligibility.
pub async fn assigned_groups(
    client: &Client,
) -> Result<std::collections::HashMap<String, Vec<GroupName>>, DbError> {
    let mut out: std::collections::HashMap<String, Vec<GroupName>> = Default::default();
    for r in client
        .query("SELECT executor_id, group_name FROM group_members", &[])
        .await?
    {
        if let Ok(g) = GroupName::parse(r.get::<_, &str>(1)) {
            out.entry(r.get(0)).or_default().push(g);
        }
    }
    Ok(out)
}

pub async fn create_join_token(
    client: &Client,
    groups: &[GroupName],
    ttl_secs: f64,
) -> Result<NewJoinToken, DbError> {
    let token = format!("fjt_{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    let id = uuid::Uuid::now_v7();
    let row = client
        .query_one(
            "INSERT INTO join_tokens (id, secret_sha256, groups, expires_at)
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
             RETURNING expires_at",
            &[
                &id,
                &auth::token_hash(&token),
                &serde_json::to_value(groups).map_err(|e| DbError::Row(e.to_string()))?,
                &ttl_secs,
            ],
        )
        .await?;
    Ok(NewJoinToken {
        token_id: id,
        token,
        groups: groups.to_vec(),
        expires_at: row.get(0),
    })
}

/// Uses up a join token for `executor` inside `tx`: its id and the groups it allows
/// (empty: any), or `None` when it is unknown, used or expired. Rolled back, it stays
/// unused.
pub async fn use_join_token(
    tx: &super::Transaction<'_>,
    token: &str,
    executor: &ExecutorId,
) -> Result<Option<(uuid::Uuid, Vec<GroupName>)>, DbError> {
    let row = tx
        .query_opt(
            "UPDATE join_tokens SET used_at = clock_timestamp(), used_by = $2
             WHERE secret_sha256 = $1 AND used_at IS NULL AND expires_at > clock_timestamp()
             RETURNING id, groups",
            &[&auth::token_hash(token), &executor.as_str()],
        )
        .await?;
    row.map(|r| {
        let groups = serde_json::from_value(r.get(1)).map_err(|e| DbError::Row(e.to_string()))?;
        Ok((r.get(0), groups))
    })
    .transpose()
}

/// Gives a join token back (registration failed after it was used) and marks the
/// credential recorded for it revoked, since nobody received its password.
pub async fn undo_registration(
    client: &Client,
    token_id: Option<uuid::Uuid>,
    executor: &ExecutorId,
) -> Result<(), DbError> {
    if let Some(token_id) = token_id {
        client
            .execute(
                "UPDATE join_tokens SET used_at = NULL, used_by = NULL WHERE id = $1",
                &[&token_id],
            )
            .await?;
    }
    client
        .execute(
            "UPDATE executor_credentials SET revoked_at = clock_timestamp() WHERE executor_id = $1",
            &[&executor.as_str()],
        )
        .await?;
    Ok(())
}

/// Whether an executor id holds a credential, live or revoked.
pub async fn ever_registered(
    tx: &super::Transaction<'_>,
    executor: &ExecutorId,
) -> Result<bool, DbError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM executor_credentials WHERE executor_id = $1",
            &[&executor.as_str()],
        )
        .await?
        .is_some())
}

/// The groups an executor last registered with (empty if it never did).
pub async fn registered_groups(
    tx: &super::Transaction<'_>,
    executor: &ExecutorId,
) -> Result<Vec<GroupName>, DbError> {
    match tx
        .query_opt(
            "SELECT groups FROM executor_credentials WHERE executor_id = $1",
            &[&executor.as_str()],
        )
        .await?
    {
        Some(r) => serde_json::from_value(r.get(0)).map_err(|e| DbError::Row(e.to_string())),
        None => Ok(Vec::new()),
    }
}

/// Records an executor's credential, and creates the groups it declares, with their
/// ancestors, if missing. A revoked credential is replaced; a live one is not (false):
/// registering an id that holds one would hand its broker user to whoever has any join
/// token. Atomic, so two registrations of one new id cannot both succeed.
pub async fn record_credential(
    tx: &super::Transaction<'_>,
    executor: &ExecutorId,
    broker_user: &str,
    groups: &[GroupName],
) -> Result<bool, DbError> {
    let groups_json = serde_json::to_value(groups).map_err(|e| DbError::Row(e.to_string()))?;
    let recorded = tx
        .execute(
            "INSERT INTO executor_credentials AS c (executor_id, broker_user, groups)
             VALUES ($1, $2, $3)
             ON CONFLICT (executor_id) DO UPDATE SET broker_user = $2, groups = $3,
                 registered_at = clock_timestamp(), revoked_at = NULL
             WHERE c.revoked_at IS NOT NULL",
            &[&executor.as_str(), &broker_user, &groups_json],
        )
        .await?;
    if recorded == 0 {
        return Ok(false);
    }
    let mut names: Vec<String> = groups
        .iter()
        .flat_map(|g| g.lineage())
        .filter(|g| !g.is_default())
        .map(|g| g.to_string())
        .collect();
    names.sort();
    names.dedup();
    tx.execute(
        "INSERT INTO groups (name, description)
         SELECT n, 'declared by an executor at registration' FROM unnest($1::text[]) AS n
         ON CONFLICT (name) DO NOTHING",
        &[&names],
    )
    .await?;
    Ok(true)
}

/// Marks an executor's credential revoked; its broker user, or `None` if it has none.
pub async fn revoke_executor(
    client: &Client,
    executor: &ExecutorId,
) -> Result<Option<String>, DbError> {
    let row = client
        .query_opt(
            "WITH first AS (
                 UPDATE executor_credentials SET revoked_at = clock_timestamp()
                 WHERE executor_id = $1 AND revoked_at IS NULL RETURNING executor_id),
             announced AS (
                 INSERT INTO events (kind, executor_id)
                 SELECT 'executor.revoked', executor_id FROM first)
             SELECT broker_user FROM executor_credentials WHERE executor_id = $1",
            &[&executor.as_str()],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A registered executor as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The groups it registered with: what it may claim, whatever its INFO says.
    pub groups: Vec<GroupName>,
    /// Revoked: no work, and its attempts are lost.
    pub revoked: bool,
}

/// Every registered executor, by id.
pub async fn registered_executors(
    client: &Client,
) -> Result<std::collections::HashMap<String, Registered>, DbError> {
    client
        .query(
            "SELECT executor_id, groups, revoked_at IS NOT NULL FROM executor_credentials",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.get(0),
                Registered {
                    groups: serde_json::from_value(r.get(1))
                        .map_err(|e| DbError::Row(e.to_string()))?,
                    revoked: r.get(2),
                },
            ))
        })
        .collect()
}

/// Forgets an executor that is gone: its row in `executors` (which the dispatcher writes
/// from INFO), the groups an administrator put it in, and its kept drain. Refused while
/// it is alive (heard within `alive_secs`) or holds attempts (open, or reported and not
/// yet recorded): forgetting it then would hide what it runs. Its registration, if any,
/// is kept (revoke it apart). An executor that comes back is listed again from its next
/// INFO, as new.
pub async fn forget_executor(
    client: &mut Client,
    executor: &ExecutorId,
    alive_secs: f64,
) -> Result<(), AdminError> {
    let id = executor.as_str();
    let tx = client.transaction().await?;
    // Locked, so that an INFO written meanwhile waits for the answer (and then writes
    // the row anew).
    let Some(row) = tx
        .query_opt(
            "SELECT extract(epoch FROM clock_timestamp() - last_info_at)::float8
             FROM executors WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Err(AdminError::NotFound("executor"));
    };
    let silent_for: f64 = row.get(0);
    if silent_for < alive_secs {
        return Err(AdminError::Conflict(format!(
            "the executor '{id}' is alive: it was heard {:.1} s ago; only an executor silent \
             for more than {alive_secs} s (dispatcher.executor_timeout_secs) can be forgotten: \
             stop it first",
            silent_for.max(0.0)
        )));
    }
    // The states as a literal: the predicate of `attempts_lease`, so only the open
    // attempts are read.
    let held = tx
        .query(
            "SELECT a.task_id, a.attempt, a.state FROM attempts a
             WHERE a.executor_id = $1 AND a.state IN ('assigned', 'running', 'reported')
             ORDER BY a.assigned_at, a.task_id, a.attempt",
            &[&id],
        )
        .await?;
    if !held.is_empty() {
        let shown: Vec<String> = held
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "task {} attempt {} ({})",
                    r.get::<_, uuid::Uuid>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, &str>(2)
                )
            })
            .collect();
        let more = match held.len() {
            n if n > 5 => format!(" and {} more", n - 5),
            _ => String::new(),
        };
        return Err(AdminError::Conflict(format!(
            "the executor '{id}' still holds {} attempt(s): {}{more}; they end when their \
             results are recorded or their leases run out (dispatcher.lease_timeout_secs; \
             dispatcher.result_timeout_secs for those reported finished); forget it after that",
            held.len(),
            shown.join(", ")
        )));
    }
    tx.execute("DELETE FROM group_members WHERE executor_id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM executor_drains WHERE executor_id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM executors WHERE id = $1", &[&id])
        .await?;
    tx.commit().await?;
    Ok(())
}
