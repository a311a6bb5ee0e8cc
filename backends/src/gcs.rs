//! Google Cloud Storage (`gs://bucket/prefix`), on object_store's [`GoogleCloudStorage`]
//! (the XML API, whose multipart uploads work like S3's).
//!
//! # Credentials
//! - `service_account_file` (alias `credentials_file`): a service-account key JSON, or an
//!   `authorized_user` file from `gcloud auth application-default login`;
//! - else application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, then
//!   `~/.config/gcloud/application_default_credentials.json`;
//! - else the metadata server (GCE, GKE, Cloud Run).
//!
//! A service-account JSON may carry `"gcs_base_url"` and `"disable_oauth": true` to point
//! at an emulator (plain http then needs `allow_http = true`). Never `skip_signature`: it is
//! ignored on writes and the client then tries the cloud metadata address.
//!
//! # Options
//! `storage_class` (`STANDARD`, `NEARLINE`, `COLDLINE`, `ARCHIVE`), `checksum`
//! (`md5` → `Content-MD5` on every PUT and part, the default; `none`) and `allow_http`.
//! Integrity, timeouts, retries and errors are in [`crate::objstore`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::gcp::GoogleCloudStorageBuilder;

use crate::objstore::{
    self, client_options, delegate_backend, retry_config, Connector, ObjectStoreBackend, Redactor,
    Stores,
};
use crate::s3::{check_bucket_name, check_storage_class, join_url, split_bucket_url, ConfigError};
use crate::{BackendError, Result};

/// Which checksum travels with every PUT and part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcsChecksum {
    /// `Content-MD5` (the default).
    #[default]
    Md5,
    /// No checksum header (bodies are still checked here before they are sent).
    None,
}

impl std::str::FromStr for GcsChecksum {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "md5" => Ok(GcsChecksum::Md5),
            "none" => Ok(GcsChecksum::None),
            _ => Err("\"md5\" or \"none\" (GCS takes no x-amz-checksum-sha256)".into()),
        }
    }
}

/// Everything a `gs://` remote is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcsConfig {
    pub bucket: String,
    /// Object name prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Service-account key or authorized-user JSON; default: application default
    /// credentials, then the metadata server.
    pub service_account_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    pub checksum: GcsChecksum,
    /// Allow a plain `http://` base URL (emulators).
    pub allow_http: bool,
    /// `ca_bundle`: CA certificates trusted in addition to the system's.
    pub ca_bundle: Option<crate::objstore::CaBundle>,
}

impl GcsConfig {
    /// Parse `gs://bucket[/prefix]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let (bucket, prefix) = split_bucket_url(url, "gs")?;
        check_bucket_name(&bucket)?;
        Ok(GcsConfig {
            bucket,
            prefix,
            ..Default::default()
        })
    }

    /// `gs://bucket/prefix`.
    pub fn url(&self) -> String {
        join_url("gs", &self.bucket, &self.prefix)
    }

    /// Check the options together; the error names the key at fault.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if let Some(c) = &self.storage_class {
            check_storage_class(c)?;
        }
        Ok(())
    }
}

/// A `gs://` remote.
pub struct GcsBackend {
    inner: ObjectStoreBackend,
}

impl fmt::Debug for GcsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsBackend")
            .field("url", &crate::Backend::describe(&self.inner))
            .finish_non_exhaustive()
    }
}

/// What the credentials file says about itself.
struct CredentialsFile {
    service_account: bool,
    base_url: Option<String>,
}

fn read_credentials_file(path: &std::path::Path) -> Result<CredentialsFile> {
    let text = std::fs::read(path).map_err(|e| {
        BackendError::Auth(format!(
            "gs remote: cannot read credentials file {}: {e}",
            path.display()
        ))
    })?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        BackendError::Auth(format!(
            "gs remote: credentials file {} is not JSON: {e}",
            path.display()
        ))
    })?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("service_account");
    Ok(CredentialsFile {
        service_account: kind == "service_account",
        base_url: v
            .get("gcs_base_url")
            .and_then(|u| u.as_str())
            .map(|s| s.trim_end_matches('/').to_string()),
    })
}

impl GcsBackend {
    /// Open a GCS remote: reads the credentials file (if any) now.
    pub fn new(mut cfg: GcsConfig) -> Result<Self> {
        cfg.prefix = cfg.prefix.trim_matches('/').to_string();
        cfg.validate()
            .map_err(|(k, m)| BackendError::Permanent(format!("gs remote: {k}: expected {m}")))?;
        let creds = match &cfg.service_account_file {
            Some(p) => Some(read_credentials_file(p)?),
            None => None,
        };
        let url = match creds.as_ref().and_then(|c| c.base_url.as_ref()) {
            Some(base) => format!("{} at {base}", cfg.url()),
            None => cfg.url(),
        };
        if let Some(base) = creds.as_ref().and_then(|c| c.base_url.as_ref()) {
            if base.starts_with("http://") && !cfg.allow_http {
                return Err(BackendError::Permanent(format!(
                    "{url}: the credentials file points at plain http ({base}); set allow_http = true to allow it"
                )));
            }
        }
        let redactor = Redactor::default();
        let build = |reads: bool| -> Result<Arc<dyn objstore::Store>> {
            let mut b = match (&cfg.service_account_file, &creds) {
                (Some(p), Some(c)) if c.service_account => {
                    GoogleCloudStorageBuilder::new().with_service_account_path(p.to_string_lossy())
                }
                (Some(p), _) => GoogleCloudStorageBuilder::new()
                    .with_application_credentials(p.to_string_lossy()),
                _ => GoogleCloudStorageBuilder::from_env(),
            };
            b = b
                .with_bucket_name(&cfg.bucket)
                .with_client_options(client_options(cfg.allow_http, cfg.ca_bundle.as_ref()))
                .with_http_connector(Connector {
                    content_md5: cfg.checksum == GcsChecksum::Md5,
                })
                .with_retry(retry_config(reads));
            let store = b.build().map_err(|e| {
                BackendError::Auth(
                    redactor.redact(&format!("{url}: cannot set up GCS credentials: {e}")),
                )
            })?;
            Ok(Arc::new(store))
        };
        let stores = Stores {
            main: build(false)?,
            reads: build(true)?,
            list_uploads: None,
            versioning: None,
        };
        let open: objstore::OpenStores = Box::new(move || {
            let stores = stores.clone();
            Box::pin(async move { Ok(stores) })
        });
        Ok(GcsBackend {
            inner: ObjectStoreBackend::new(
                url,
                &cfg.prefix,
                "GCS",
                cfg.storage_class.clone(),
                redactor,
                open,
            ),
        })
    }
}

delegate_backend!(GcsBackend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = GcsConfig::from_url("gs://bkt/a/b").unwrap();
        assert_eq!(c.url(), "gs://bkt/a/b");
        assert!(GcsConfig::from_url("s3://bkt/a").is_err());
        assert!("sha256".parse::<GcsChecksum>().is_err());
    }
}
