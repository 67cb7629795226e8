//! Login on the Postgres wire: cleartext password = an analyst or admin token.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use carewatch_store::registry::{Principal, Role};

use super::{Cancels, Conn, lock};

/// Cleartext-password startup that checks the password as a carewatch token.
pub(super) struct TokenStartup {
    auth: carewatch_auth::Authenticator,
    params: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
    cancels: Arc<Cancels>,
}

impl Debug for TokenStartup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenStartup")
    }
}

impl TokenStartup {
    pub(super) fn new(auth: carewatch_auth::Authenticator, cancels: Arc<Cancels>) -> Self {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = "16.6".into();
        TokenStartup {
            auth,
            params,
            keys: RandomPidSecretKeyGenerator::default(),
            cancels,
        }
    }

    /// The password check: the shared authenticator (with its failed-login limits per source
    /// address), for an analyst or admin token.
    /// The password may be a carewatch token or, with an issuer configured, a JWT from it.
    async fn check_password(&self, password: &str, peer: std::net::IpAddr) -> Option<Principal> {
        self.auth
            .login_as(
                password,
                Some(peer),
                &[Role::Analyst, Role::Admin],
                "SQL is for analyst and admin credentials",
            )
            .await
            .ok()
    }
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // Our own settings are never taken from startup parameters.
                client
                    .metadata_mut()
                    .retain(|k, _| !k.starts_with(super::session::PRIVATE));
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let peer = client.socket_addr().ip();
                let Some(p) = self.check_password(&pwd.password, peer).await else {
                    tracing::info!("postgres wire login refused");
                    return Err(PgWireError::InvalidPassword(user));
                };
                tracing::info!(principal = %p.id, role = p.role.as_str(), secure = client.is_secure(), "postgres wire login");
                let (pid, secret) = self.keys.generate(&*client);
                let key = (pid, secret.to_bytes().to_vec());
                client.set_pid_and_secret_key(pid, secret);
                let conn = Conn::current()?;
                lock(&self.cancels.conns).insert(key.clone(), Arc::downgrade(&conn));
                *lock(&conn.key) = Some(key);
                conn.login(p);
                finish_authentication(client, &self.params).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
