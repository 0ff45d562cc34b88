//! RabbitMQ's management API, as the submitter uses it: a broker user per registered
//! executor, with permissions that let it use only its own queue and its groups'
//! exchanges, and only routing keys that carry its id.

use std::time::Duration;

use fleet_shared::amqp::{BrokerPermissions, Names, Service};
use fleet_shared::config::AmqpConfig;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerAdminError {
    #[error("broker management API: {0}")]
    Http(#[from] reqwest::Error),
    #[error("broker management API: {what} answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("broker management API: {0}")]
    Config(String),
}

#[derive(Clone)]
pub struct BrokerAdmin {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    /// Percent-encoded, as it goes in a path.
    vhost: String,
}

impl BrokerAdmin {
    /// The management API at `amqp.management_url`, as `amqp.management_user` if set,
    /// else as the user of `amqp.url`.
    pub fn new(cfg: &AmqpConfig) -> Result<Self, BrokerAdminError> {
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| BrokerAdminError::Config(format!("amqp.url: {e}")))?;
        let vhost = match url.path().trim_start_matches('/') {
            "" => "%2F".to_owned(),
            v => v.to_owned(),
        };
        let mut http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT);
        // An https management API is trusted as the broker is: amqp.ca_file's CAs.
        if let Some(ca) = &cfg.ca_file {
            let tls = fleet_shared::tls::client_config(Some(ca))
                .map_err(|e| BrokerAdminError::Config(format!("amqp.ca_file: {e}")))?;
            http = http.tls_backend_preconfigured(tls);
        }
        let http = http.build()?;
        Ok(Self {
            http,
            base: cfg.management_url.trim_end_matches('/').to_owned(),
            user: cfg
                .management_user
                .clone()
                .unwrap_or_else(|| url.username().to_owned()),
            password: match &cfg.management_user {
                Some(_) => cfg.management_password.clone().unwrap_or_default(),
                None => url.password().unwrap_or_default().to_owned(),
            },
            vhost,
        })
    }

    async fn put(
        &self,
        what: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), BrokerAdminError> {
        let resp = self
            .http
            .put(format!("{}/api/{path}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .json(&body)
            .send()
            .await?;
        check(what, resp).await
    }

    /// Creates (or resets) a user with this password and these permissions.
    pub async fn grant(
        &self,
        user: &str,
        password: &str,
        p: &BrokerPermissions,
    ) -> Result<(), BrokerAdminError> {
        self.put(
            "user",
            &format!("users/{user}"),
            json!({"password": password, "tags": ""}),
        )
        .await?;
        self.put(
            "permissions",
            &format!("permissions/{}/{user}", self.vhost),
            json!({"configure": p.configure, "write": p.write, "read": p.read}),
        )
        .await?;
        for (exchange, write, read) in &p.topic {
            self.put(
                "topic permissions",
                &format!("topic-permissions/{}/{user}", self.vhost),
                json!({"exchange": exchange, "write": write, "read": read}),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates (or resets) each service's own broker user (`<prefix>-<service>`) with
    /// its password and the permissions of [`Names::service_permissions`].
    pub async fn setup_service_users(
        &self,
        n: &Names,
        passwords: &[(Service, String)],
    ) -> Result<(), BrokerAdminError> {
        for (service, password) in passwords {
            self.grant(
                &n.service_user(*service),
                password,
                &n.service_permissions(*service),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes a user; the broker closes its connections. A user already gone is fine.
    pub async fn delete_user(&self, user: &str) -> Result<(), BrokerAdminError> {
        let resp = self
            .http
            .delete(format!("{}/api/users/{user}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check("delete user", resp).await
    }
}

async fn check(what: &str, resp: reqwest::Response) -> Result<(), BrokerAdminError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(BrokerAdminError::Status {
        what: what.to_owned(),
        status: status.as_u16(),
        body,
    })
}
