//! `[cluster]`: what makes a node a cluster member (issue 13). Today that is the registry
//! (devices, credentials, care teams) kept in PostgreSQL and shared by every node.

use anyhow::{Result, bail};
use serde::Deserialize;

/// `[cluster]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://user:password@host:5432/db` (also `--postgres-url`, `CAREWATCH_POSTGRES_URL`).
    pub postgres_url: Option<String>,
    /// With shared tables, each patient's alerts come from the one node that holds the lease
    /// of its partition (default `true`). `false`: each node alerts for the readings it
    /// received, with its own history — the behaviour before partitioned alerting, which
    /// misses episodes split across nodes and raises alerts twice; kept to compare against.
    pub partitioned_alerting: Option<bool>,
}

/// The flag over the file; checked for its scheme here, for reachability at start.
pub fn postgres_url(flag: Option<String>, file: &ClusterConfig) -> Result<Option<String>> {
    let file = file.postgres_url.clone();
    let url = flag.or(file).filter(|u| !u.trim().is_empty());
    if let Some(u) = &url
        && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
    {
        // Never echo the value: it may hold a password.
        bail!("cluster.postgres_url must start with postgres:// or postgresql://");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_and_a_wrong_scheme_is_refused_without_echoing_it() {
        let file = ClusterConfig {
            postgres_url: Some("postgres://file/db".into()),
            partitioned_alerting: None,
        };
        assert_eq!(
            postgres_url(Some("postgresql://flag/db".into()), &file).expect("ok"),
            Some("postgresql://flag/db".into())
        );
        let e = postgres_url(
            Some("mysql://u:secret@h/db".into()),
            &ClusterConfig::default(),
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("postgres://") && !e.contains("secret"), "{e}");
        assert_eq!(
            postgres_url(None, &ClusterConfig::default()).expect("ok"),
            None
        );
    }
}
