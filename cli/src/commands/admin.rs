//! `fleetctl group ...` and `fleetctl token ...`: administration through the API.

use reqwest::Method;
use serde_json::{json, Value};

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
            let answer = client.call(Method::GET, "/v1/groups", None).await?;
            let v: Value = answer.decode("group list")?;
            done(&answer, format, render_groups(&v))
        }
        GroupCommand::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            let answer = client.call(Method::POST, "/v1/groups", Some(&body)).await?;
            done(&answer, format, format!("created group {name}\n"))
        }
        GroupCommand::Delete { name } => {
            let path = format!("/v1/groups/{}", segment("group", &name)?);
            let answer = client.call(Method::DELETE, &path, None).await?;
            done(&answer, format, format!("deleted group {name}\n"))
        }
        GroupCommand::Add { group, executor } => {
            let path = format!(
                "/v1/groups/{}/members/{}",
                segment("group", &group)?,
                segment("executor", &executor)?
            );
            let answer = client.call(Method::PUT, &path, None).await?;
            done(&answer, format, format!("{executor} is in {group}\n"))
        }
        GroupCommand::Drain { name } => {
            let path = format!("/v1/groups/{}/drain", segment("group", &name)?);
            let answer = client.call(Method::POST, &path, None).await?;
            done(
                &answer,
                format,
                format!("drain sent to the executors of {name}\n"),
            )
        }
        GroupCommand::Resume { name } => {
            let path = format!("/v1/groups/{}/resume", segment("group", &name)?);
            let answer = client.call(Method::POST, &path, None).await?;
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
            let answer = client.call(Method::DELETE, &path, None).await?;
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
            let body = json!({"name": name, "role": role.as_str()});
            let answer = client.call(Method::POST, "/v1/tokens", Some(&body)).await?;
            let v: Value = answer.decode("new token")?;
            let text = format!(
                "token {} ({}, role {}):\n{}\nShown once: keep it now (e.g. as FLEET_TOKEN).\n",
                v["token_id"].as_str().unwrap_or("?"),
                name,
                role.as_str(),
                v["token"].as_str().unwrap_or("?")
            );
            done(&answer, format, text)
        }
        TokenCommand::List => {
            let answer = client.call(Method::GET, "/v1/tokens", None).await?;
            let v: Value = answer.decode("token list")?;
            let rows: Vec<Vec<String>> = v["tokens"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
                    vec![
                        s("token_id"),
                        s("name"),
                        s("role"),
                        s("created_at"),
                        s("revoked_at"),
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
            let answer = client.call(Method::DELETE, &path, None).await?;
            done(&answer, format, format!("revoked token {token_id}\n"))
        }
    }
}

pub async fn executor(
    client: &Client,
    cmd: ExecutorCommand,
    format: Output,
) -> Result<u8, CliError> {
    let (path, body, text) = match cmd {
        ExecutorCommand::Show { id } => {
            let path = format!("/v1/executors/{}", segment("executor", &id)?);
            let answer = client.call(Method::GET, &path, None).await?;
            let d: crate::api::ExecutorDetail = answer.decode("executor")?;
            return done(
                &answer,
                format,
                output::render_executor(&d, chrono::Utc::now()),
            );
        }
        ExecutorCommand::Forget { id } => {
            let path = format!("/v1/executors/{}", segment("executor", &id)?);
            let answer = client.call(Method::DELETE, &path, None).await?;
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
            let body = json!({"groups": groups, "ttl_secs": ttl_secs});
            let answer = client
                .call(Method::POST, "/v1/join-tokens", Some(&body))
                .await?;
            let v: Value = answer.decode("join token")?;
            let text = format!(
                "{}\nOne executor may register with it once, until {}. Start it with\n  \
                 FLEET_EXECUTOR__JOIN_TOKEN=<token> FLEET_EXECUTOR__REGISTER_URL=<this API> \
                 FLEET_EXECUTOR__CREDENTIALS_FILE=<path> fleet-executor\n",
                v["token"].as_str().unwrap_or("?"),
                v["expires_at"].as_str().unwrap_or("?"),
            );
            return done(&answer, format, text);
        }
        ExecutorCommand::Revoke { id } => (
            format!("/v1/executors/{}/revoke", segment("executor", &id)?),
            None,
            format!("revoked {id}: disconnected; its attempts run again elsewhere\n"),
        ),
        ExecutorCommand::Drain { id } => (
            format!("/v1/executors/{}/drain", segment("executor", &id)?),
            None,
            format!("drain sent to {id}: it finishes what it runs and takes nothing new\n"),
        ),
        ExecutorCommand::Resume { id } => (
            format!("/v1/executors/{}/resume", segment("executor", &id)?),
            None,
            format!("resume sent to {id}\n"),
        ),
    };
    let answer = client.call(Method::POST, &path, body.as_ref()).await?;
    done(&answer, format, text)
}

/// One line per group, nested groups indented under their parent.
fn render_groups(v: &Value) -> String {
    let mut groups: Vec<&Value> = v["groups"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // Parents before children, siblings by name: `default`, `site`, `site.db`, `site-x`.
    groups.sort_by_key(|g| {
        let name = g["name"].as_str().unwrap_or("");
        (
            name != "default",
            name.split('.').map(str::to_owned).collect::<Vec<_>>(),
        )
    });
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|g| {
            let name = g["name"].as_str().unwrap_or("?");
            let depth = if name == "default" {
                0
            } else {
                name.matches('.').count() + 1
            };
            let members: Vec<String> = g["members"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    let id = m["executor_id"].as_str().unwrap_or("?");
                    match m["source"].as_str() {
                        Some("assigned") => format!("{id}*"),
                        _ => id.to_owned(),
                    }
                })
                .collect();
            vec![
                format!("{}{name}", "  ".repeat(depth)),
                if members.is_empty() {
                    "-".into()
                } else {
                    members.join(", ")
                },
                g["description"].as_str().unwrap_or("").to_owned(),
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
            let mut body = json!({"url": url, "events": events});
            if let Some(g) = group {
                body["group"] = json!(g);
            }
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            let answer = client
                .call(Method::POST, "/v1/webhooks", Some(&body))
                .await?;
            let v: Value = answer.decode("new webhook")?;
            let text = format!(
                "webhook {} -> {}\nsecret: {}\nShown once: the receiver checks each body's \
                 Fleet-Signature with it (docs/events.md).\n",
                v["id"].as_str().unwrap_or("?"),
                v["url"].as_str().unwrap_or("?"),
                v["secret"].as_str().unwrap_or("?"),
            );
            done(&answer, format, text)
        }
        WebhookCommand::List => {
            let answer = client.call(Method::GET, "/v1/webhooks", None).await?;
            let v: Value = answer.decode("webhook list")?;
            done(&answer, format, render_webhooks(&v))
        }
        WebhookCommand::Delete { webhook_id } => {
            let answer = client
                .call(Method::DELETE, &format!("/v1/webhooks/{webhook_id}"), None)
                .await?;
            done(&answer, format, format!("webhook {webhook_id} deleted\n"))
        }
    }
}

/// The webhook table: where each goes, for what, and how its deliveries stand.
fn render_webhooks(v: &Value) -> String {
    let hooks = v["webhooks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if hooks.is_empty() {
        return "no webhooks\n".to_owned();
    }
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or("-").to_owned();
            let events = h["events"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "all".into());
            let scope = match (h["job_id"].as_str(), h["group"].as_str()) {
                (Some(job), _) => format!("job {job}"),
                (None, Some(g)) => format!("group {g}"),
                (None, None) => "fleet".into(),
            };
            let error = match (h["last_error_at"].as_str(), h["last_error"].as_str()) {
                (Some(at), Some(e)) => format!("{at}: {e}"),
                _ => "-".into(),
            };
            vec![
                s("id"),
                s("url"),
                scope,
                events,
                h["pending"].as_i64().unwrap_or(0).to_string(),
                h["dead"].as_i64().unwrap_or(0).to_string(),
                s("last_delivered_at"),
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
