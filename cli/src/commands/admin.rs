//! `fleetctl group ...` and `fleetctl token ...`: administration through the API.

use fleet_core::api::admin::{
    GroupView, GroupsView, NewGroupBody, NewToken, NewTokenBody, TokensView,
};
use fleet_core::api::executors::{ExecutorDetail, NewJoinToken, NewJoinTokenBody};
use fleet_core::api::webhooks::{NewWebhookBody, WebhookView, WebhooksView};
use reqwest::Method;

use crate::cli::{ExecutorCommand, GroupCommand, Output, TokenCommand, WebhookCommand};
use crate::client::{Answer, Client};
use crate::error::CliError;
use crate::output;

/// Path segments come from the user: keep them to what ids and group names may hold.
fn segment(what: &str, s: &str) -> Result<String, CliError> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Ok(s.to_owned())
    } else {
        Err(CliError::Other(anyhow::anyhow!(
            "{what} {s:?} may hold only letters, digits, '-', '_' and '.'"
        )))
    }
}

fn done(answer: &Answer, format: Output, text: String) -> Result<u8, CliError> {
    match format {
        Output::Json => output::emit_json(answer)?,
        Output::Text => output::emit(&text)?,
    }
    Ok(0)
}

pub async fn group(client: &Client, cmd: GroupCommand, format: Output) -> Result<u8, CliError> {
    match cmd {
        GroupCommand::List => {
            let answer = client.call(Method::GET, "/v1/groups").await?;
            let v: GroupsView = answer.decode("group list")?;
            done(&answer, format, render_groups(&v.groups))
        }
        GroupCommand::Create { name, description } => {
            let body = NewGroupBody {
                name: name.clone(),
                description,
            };
            let answer = client.send_body(Method::POST, "/v1/groups", &body).await?;
            done(&answer, format, format!("created group {name}\n"))
        }
        GroupCommand::Delete { name } => {
            let path = format!("/v1/groups/{}", segment("group", &name)?);
            let answer = client.call(Method::DELETE, &path).await?;
            done(&answer, format, format!("deleted group {name}\n"))
        }
        GroupCommand::Add { group, executor } => {
            let path = format!(
                "/v1/groups/{}/members/{}",
                segment("group", &group)?,
                segment("executor", &executor)?
            );
            let answer = client.call(Method::PUT, &path).await?;
            done(&answer, format, format!("{executor} is in {group}\n"))
        }
        GroupCommand::Drain { name } => {
            let path = format!("/v1/groups/{}/drain", segment("group", &name)?);
            let answer = client.call(Method::POST, &path).await?;
            done(
                &answer,
                format,
                format!("drain sent to the executors of {name}\n"),
            )
        }
        GroupCommand::Resume { name } => {
            let path = format!("/v1/groups/{}/resume", segment("group", &name)?);
            let answer = client.call(Method::POST, &path).await?;
            done(
                &answer,
                format,
                format!("resume sent to the executors of {name}\n"),
            )
        }
        GroupCommand::Remove { group, executor } => {
            let path = format!(
                "/v1/groups/{}/members/{}",
                segment("group", &group)?,
                segment("executor", &executor)?
            );
            let answer = client.call(Method::DELETE, &path).await?;
            done(
                &answer,
                format,
                format!("{executor} is no longer in {group}\n"),
            )
        }
    }
}

pub async fn token(client: &Client, cmd: TokenCommand, format: Output) -> Result<u8, CliError> {
    match cmd {
        TokenCommand::Create { name, role } => {
            let body = NewTokenBody {
                name: name.clone(),
                role: role.role(),
            };
            let answer = client.send_body(Method::POST, "/v1/tokens", &body).await?;
            let v: NewToken = answer.decode("new token")?;
            let text = format!(
                "token {} ({}, role {}):\n{}\nShown once: keep it now (e.g. as FLEET_TOKEN).\n",
                v.view.token_id,
                name,
                role.as_str(),
                v.token
            );
            done(&answer, format, text)
        }
        TokenCommand::List => {
            let answer = client.call(Method::GET, "/v1/tokens").await?;
            let v: TokensView = answer.decode("token list")?;
            let rows: Vec<Vec<String>> = v
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.token_id.to_string(),
                        t.name.clone(),
                        t.role.as_str().to_owned(),
                        output::rfc3339(t.created_at),
                        t.revoked_at.map_or_else(|| "-".into(), output::rfc3339),
                    ]
                })
                .collect();
            let text = if rows.is_empty() {
                "no tokens (besides the configured admin token)\n".to_owned()
            } else {
                output::table(&["TOKEN_ID", "NAME", "ROLE", "CREATED", "REVOKED"], &rows)
            };
            done(&answer, format, text)
        }
        TokenCommand::Revoke { token_id } => {
            let path = format!("/v1/tokens/{token_id}");
            let answer = client.call(Method::DELETE, &path).await?;
            done(&answer, format, format!("revoked token {token_id}\n"))
        }
    }
}

pub async fn executor(
    client: &Client,
    cmd: ExecutorCommand,
    format: Output,
) -> Result<u8, CliError> {
    let (path, text) = match cmd {
        ExecutorCommand::Show { id } => {
            let path = format!("/v1/executors/{}", segment("executor", &id)?);
            let answer = client.call(Method::GET, &path).await?;
            let d: ExecutorDetail = answer.decode("executor")?;
            return done(
                &answer,
                format,
                output::render_executor(&d, chrono::Utc::now()),
            );
        }
        ExecutorCommand::Forget { id } => {
            let path = format!("/v1/executors/{}", segment("executor", &id)?);
            let answer = client.call(Method::DELETE, &path).await?;
            return done(
                &answer,
                format,
                format!(
                    "forgot {id}: no longer listed, out of the groups it was put in, drain \
                     lifted (it is listed again if it comes back)\n"
                ),
            );
        }
        ExecutorCommand::JoinToken { groups, ttl_secs } => {
            let body = NewJoinTokenBody {
                groups,
                ttl_secs: Some(ttl_secs),
            };
            let answer = client
                .send_body(Method::POST, "/v1/join-tokens", &body)
                .await?;
            let v: NewJoinToken = answer.decode("join token")?;
            let text = format!(
                "{}\nOne executor may register with it once, until {}. Start it with\n  \
                 FLEET_EXECUTOR__JOIN_TOKEN=<token> FLEET_EXECUTOR__REGISTER_URL=<this API> \
                 FLEET_EXECUTOR__CREDENTIALS_FILE=<path> fleet-executor\n",
                v.token,
                output::rfc3339(v.expires_at),
            );
            return done(&answer, format, text);
        }
        ExecutorCommand::Revoke { id } => (
            format!("/v1/executors/{}/revoke", segment("executor", &id)?),
            format!("revoked {id}: disconnected; its attempts run again elsewhere\n"),
        ),
        ExecutorCommand::Drain { id } => (
            format!("/v1/executors/{}/drain", segment("executor", &id)?),
            format!("drain sent to {id}: it finishes what it runs and takes nothing new\n"),
        ),
        ExecutorCommand::Resume { id } => (
            format!("/v1/executors/{}/resume", segment("executor", &id)?),
            format!("resume sent to {id}\n"),
        ),
    };
    let answer = client.call(Method::POST, &path).await?;
    done(&answer, format, text)
}

/// One line per group, nested groups indented under their parent.
fn render_groups(groups: &[GroupView]) -> String {
    let mut groups: Vec<&GroupView> = groups.iter().collect();
    // Parents before children, siblings by name: `default`, `site`, `site.db`, `site-x`.
    groups.sort_by_key(|g| {
        let name = g.name.as_str();
        (
            name != "default",
            name.split('.').map(str::to_owned).collect::<Vec<_>>(),
        )
    });
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|g| {
            let name = g.name.as_str();
            let depth = if name == "default" {
                0
            } else {
                name.matches('.').count() + 1
            };
            let members: Vec<String> = g
                .members
                .iter()
                .map(|m| match m.source.as_str() {
                    "assigned" => format!("{}*", m.executor_id),
                    _ => m.executor_id.clone(),
                })
                .collect();
            vec![
                format!("{}{name}", "  ".repeat(depth)),
                if members.is_empty() {
                    "-".into()
                } else {
                    members.join(", ")
                },
                g.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = output::table(&["GROUP", "MEMBERS", "DESCRIPTION"], &rows);
    out.push_str("(* put in the group by an administrator; others declare it themselves)\n");
    out
}

pub async fn webhook(client: &Client, cmd: WebhookCommand, format: Output) -> Result<u8, CliError> {
    match cmd {
        WebhookCommand::Add {
            url,
            events,
            group,
            secret,
        } => {
            let body = NewWebhookBody {
                url,
                events,
                group,
                secret,
            };
            let answer = client
                .send_body(Method::POST, "/v1/webhooks", &body)
                .await?;
            let v: WebhookView = answer.decode("new webhook")?;
            let text = format!(
                "webhook {} -> {}\nsecret: {}\nShown once: the receiver checks each body's \
                 Fleet-Signature with it (docs/events.md).\n",
                v.id,
                v.url,
                v.secret.as_deref().unwrap_or("?"),
            );
            done(&answer, format, text)
        }
        WebhookCommand::List => {
            let answer = client.call(Method::GET, "/v1/webhooks").await?;
            let v: WebhooksView = answer.decode("webhook list")?;
            done(&answer, format, render_webhooks(&v.webhooks))
        }
        WebhookCommand::Delete { webhook_id } => {
            let answer = client
                .call(Method::DELETE, &format!("/v1/webhooks/{webhook_id}"))
                .await?;
            done(&answer, format, format!("webhook {webhook_id} deleted\n"))
        }
    }
}

/// The webhook table: where each goes, for what, and how its deliveries stand.
fn render_webhooks(hooks: &[WebhookView]) -> String {
    if hooks.is_empty() {
        return "no webhooks\n".to_owned();
    }
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            let events = if h.events.is_empty() {
                "all".to_owned()
            } else {
                h.events.join(",")
            };
            let scope = match (h.job_id, h.group.as_deref()) {
                (Some(job), _) => format!("job {job}"),
                (None, Some(g)) => format!("group {g}"),
                (None, None) => "fleet".into(),
            };
            let error = match (h.last_error_at, h.last_error.as_deref()) {
                (Some(at), Some(e)) => format!("{}: {e}", output::rfc3339(at)),
                _ => "-".into(),
            };
            vec![
                h.id.to_string(),
                h.url.clone(),
                scope,
                events,
                h.pending.to_string(),
                h.dead.to_string(),
                h.last_delivered_at
                    .map_or_else(|| "-".into(), output::rfc3339),
                error,
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "URL",
            "FOR",
            "EVENTS",
            "PENDING",
            "GIVEN_UP",
            "LAST_DELIVERED",
            "LAST_ERROR",
        ],
        &rows,
    )
}
