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
//! # Emulators and other endpoints
//! Where requests go, first that applies: the `endpoint` key; a service-account JSON's
//! `"gcs_base_url"`; `STORAGE_EMULATOR_HOST` (`host:port` or a URL, as the Google client
//! libraries read it); else `https://storage.googleapis.com`. Requests are anonymous
//! (no token, no metadata-server traffic) when an endpoint comes from `endpoint` or
//! `STORAGE_EMULATOR_HOST` and no credentials file is given, as the Google libraries do
//! for an emulator; a credentials file with `"disable_oauth": true` is anonymous too.
//! Plain http needs `allow_http = true`, except from `STORAGE_EMULATOR_HOST` (an
//! emulator the user started). Never `skip_signature`: it is ignored on writes and the
//! client then tries the cloud metadata address.
//!
//! # Options
//! `storage_class` (`STANDARD`, `NEARLINE`, `COLDLINE`, `ARCHIVE`), `checksum`
//! (`md5` → `Content-MD5` on every PUT and part, the default; `none`) and `allow_http`.
//! Integrity, timeouts, retries and errors are in [`crate::objstore`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::gcp::{
    GcpCredential, GcpSigningCredential, GoogleCloudStorage, GoogleCloudStorageBuilder,
};
use object_store::StaticCredentialProvider;

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
    /// `endpoint`: the base URL of the XML API (an emulator, a private endpoint);
    /// default: `STORAGE_EMULATOR_HOST`, then Google's.
    pub endpoint: Option<String>,
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
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err((
                    "endpoint",
                    "an http:// or https:// URL (e.g. http://127.0.0.1:4443)".into(),
                ));
            }
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
    /// `"disable_oauth": true`: requests carry no token.
    disable_oauth: bool,
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
        disable_oauth: v.get("disable_oauth").and_then(|d| d.as_bool()) == Some(true),
    })
}

/// `STORAGE_EMULATOR_HOST` as the Google client libraries read it: `host:port` (plain
/// http) or a full URL; unset or empty means no emulator.
pub fn storage_emulator_host() -> Option<String> {
    let v = std::env::var("STORAGE_EMULATOR_HOST").ok()?;
    let v = v.trim().trim_end_matches('/');
    if v.is_empty() {
        return None;
    }
    Some(if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    })
}

/// The bucket's object versioning and lifecycle, from the JSON API (`GET
/// /storage/v1/b/BUCKET?fields=versioning,lifecycle`, which object_store has no call
/// for), with the token object_store's client uses (none when anonymous). `None`:
/// versioning is off. A lifecycle rule that deletes noncurrent versions (`isLive:
/// false`, `daysSinceNoncurrentTime` or `numNewerVersions`) counts as their expiry.
fn versioning_probe(
    cfg: &GcsConfig,
    target: &Target,
    store: Arc<GoogleCloudStorage>,
    redactor: Redactor,
    url: String,
) -> Result<objstore::VersioningProbe> {
    use object_store::client::HttpConnector;
    let allow_http = cfg.allow_http || target.from == "STORAGE_EMULATOR_HOST";
    let client = Connector { content_md5: false }
        .connect(&client_options(allow_http, cfg.ca_bundle.as_ref()))
        .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
    let base = target
        .base_url
        .clone()
        .unwrap_or_else(|| "https://storage.googleapis.com".into());
    let uri = format!(
        "{}/storage/v1/b/{}?fields=versioning,lifecycle",
        base.trim_end_matches('/'),
        cfg.bucket
    );
    let anonymous = target.anonymous;
    Ok(Arc::new(move || {
        let (client, store, redactor, url, uri) = (
            client.clone(),
            store.clone(),
            redactor.clone(),
            url.clone(),
            uri.clone(),
        );
        Box::pin(async move {
            let what = "read the bucket's versioning";
            let fail = |e: &dyn fmt::Display| {
                BackendError::transient(redactor.redact(&format!("{url}: {what}: {e}")))
            };
            let req = request(
                &store,
                anonymous,
                http::Method::GET,
                &uri,
                (&redactor, &url, what),
            )
            .await?;
            let resp = client.execute(req).await.map_err(|e| fail(&e))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().bytes().await.map_err(|e| fail(&e))?;
            if !(200..300).contains(&status) {
                let msg = redactor.redact(&format!(
                    "{url}: {what}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
                return Err(match status {
                    401 | 403 => BackendError::Auth(msg),
                    _ => BackendError::transient(msg),
                });
            }
            versioning_of(&body).map_err(|e| fail(&e))
        })
    }))
}

/// A request without a body to `uri` with the store's bearer token (none when
/// `anonymous`), for the calls object_store's client does not make. `ctx`: the redactor,
/// the remote's URL and the step, for errors.
async fn request(
    store: &GoogleCloudStorage,
    anonymous: bool,
    method: http::Method,
    uri: &str,
    (redactor, url, what): (&Redactor, &str, &str),
) -> Result<http::Request<object_store::client::HttpRequestBody>> {
    let mut req = http::Request::builder().method(method).uri(uri);
    if !anonymous {
        let cred = store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| BackendError::Auth(redactor.redact(&format!("{url}: {what}: {e}"))))?;
        if !cred.bearer.is_empty() {
            req = req.header("Authorization", format!("Bearer {}", cred.bearer));
        }
    }
    req.body(object_store::client::HttpRequestBody::empty())
        .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))
}

/// HEAD of the object on the XML API (object_store's head does not return the header):
/// the CRC32C GCS computed from the bytes it holds, from `x-goog-hash: crc32c=…`. GCS
/// keeps one for every object, multipart ones included (md5 only for single uploads).
/// `None` when the answer has none (an S3-dialect stand-in such as LocalStack).
fn checksum_probe(
    cfg: &GcsConfig,
    target: &Target,
    store: Arc<GoogleCloudStorage>,
    redactor: Redactor,
    url: String,
) -> Result<objstore::ChecksumProbe> {
    use object_store::client::HttpConnector;
    let allow_http = cfg.allow_http || target.from == "STORAGE_EMULATOR_HOST";
    let client = Connector { content_md5: false }
        .connect(&client_options(allow_http, cfg.ca_bundle.as_ref()))
        .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
    let base = format!(
        "{}/{}",
        target
            .base_url
            .as_deref()
            .unwrap_or("https://storage.googleapis.com")
            .trim_end_matches('/'),
        cfg.bucket
    );
    let anonymous = target.anonymous;
    let ctx = Arc::new((base, redactor, url));
    Ok(Arc::new(move |path: String| {
        let (client, store, ctx) = (client.clone(), store.clone(), ctx.clone());
        Box::pin(async move {
            let (base, redactor, url) = &*ctx;
            let what = format!("read the checksum the store computed for {path}");
            let u = objstore::object_url(base, &path, url, &what)?;
            let req = request(
                &store,
                anonymous,
                http::Method::HEAD,
                u.as_str(),
                (redactor, url, &what),
            )
            .await?;
            let resp = client.execute(req).await.map_err(|e| {
                BackendError::transient(redactor.redact(&format!("{url}: {what}: {e}")))
            })?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let msg = redactor.redact(&format!("{url}: {what}: HTTP {status}"));
                return Err(objstore::status_error(status, msg));
            }
            let hashes: Vec<&str> = resp
                .headers()
                .get_all("x-goog-hash")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            crc32c_of_goog_hash(&hashes)
                .map(|c| c.map(crate::StoreChecksum::Crc32c))
                .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))
        }) as futures::future::BoxFuture<'static, Result<Option<crate::StoreChecksum>>>
    }))
}

/// The CRC32C in `x-goog-hash` headers (`crc32c=<base64 of 4 bytes, big-endian>`, beside
/// `md5=…`, in one header separated by commas or in several). `Ok(None)`: none given.
fn crc32c_of_goog_hash(values: &[&str]) -> std::result::Result<Option<u32>, String> {
    use base64::Engine as _;
    let Some(b64) = values
        .iter()
        .flat_map(|v| v.split(','))
        .find_map(|h| h.trim().strip_prefix("crc32c="))
    else {
        return Ok(None);
    };
    let bytes: [u8; 4] = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("unreadable x-goog-hash crc32c {b64:?}"))?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

/// [`crate::Versioning`] from a bucket resource of the JSON API.
fn versioning_of(body: &[u8]) -> std::result::Result<Option<crate::Versioning>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a bucket resource: {e}"))?;
    if v["versioning"]["enabled"].as_bool() != Some(true) {
        return Ok(None);
    }
    let noncurrent_expiration = v["lifecycle"]["rule"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            let c = &r["condition"];
            r["action"]["type"].as_str() == Some("Delete")
                && (c["isLive"].as_bool() == Some(false)
                    || c.get("daysSinceNoncurrentTime").is_some()
                    || c.get("numNewerVersions").is_some())
        })
    });
    Ok(Some(crate::Versioning {
        status: "Enabled".into(),
        noncurrent_expiration,
    }))
}

/// Where a remote's requests go and whether they carry credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The XML API base URL; `None` = Google's.
    base_url: Option<String>,
    /// Where `base_url` came from, for messages.
    from: &'static str,
    /// No token at all: never the metadata server, never an OAuth exchange.
    anonymous: bool,
}

/// Decide the endpoint (see the module doc for the order) and whether requests are
/// anonymous. `emulator` is [`storage_emulator_host`].
fn target(
    cfg: &GcsConfig,
    creds: Option<&CredentialsFile>,
    emulator: Option<String>,
) -> Result<Target> {
    let (base_url, from) = if let Some(e) = &cfg.endpoint {
        (Some(e.trim_end_matches('/').to_string()), "endpoint")
    } else if let Some(b) = creds.and_then(|c| c.base_url.clone()) {
        (Some(b), "the credentials file")
    } else if let Some(e) = emulator {
        (Some(e), "STORAGE_EMULATOR_HOST")
    } else {
        (None, "")
    };
    if let Some(base) = &base_url {
        if base.starts_with("http://") && !cfg.allow_http && from != "STORAGE_EMULATOR_HOST" {
            return Err(BackendError::Permanent(format!(
                "{}: {from} points at plain http ({base}); set allow_http = true to allow it",
                cfg.url()
            )));
        }
    }
    let anonymous = match creds {
        Some(c) => c.disable_oauth,
        None => base_url.is_some(),
    };
    Ok(Target {
        base_url,
        from,
        anonymous,
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
        let target = target(&cfg, creds.as_ref(), storage_emulator_host())?;
        let url = match &target.base_url {
            Some(base) => format!("{} at {base}", cfg.url()),
            None => cfg.url(),
        };
        let redactor = Redactor::default();
        let build = |reads: bool| -> Result<Arc<GoogleCloudStorage>> {
            let mut b = match (&cfg.service_account_file, &creds) {
                (Some(p), Some(c)) if c.service_account => {
                    GoogleCloudStorageBuilder::new().with_service_account_path(p.to_string_lossy())
                }
                (Some(p), _) => GoogleCloudStorageBuilder::new()
                    .with_application_credentials(p.to_string_lossy()),
                // Anonymous: nothing from the environment may bring credentials back in.
                (None, _) if target.anonymous => GoogleCloudStorageBuilder::new(),
                _ => GoogleCloudStorageBuilder::from_env(),
            };
            if let Some(base) = &target.base_url {
                b = b.with_base_url(base);
            }
            if target.anonymous {
                b = b
                    .with_credentials(Arc::new(StaticCredentialProvider::new(GcpCredential {
                        bearer: String::new(),
                    })))
                    .with_signing_credentials(Arc::new(StaticCredentialProvider::new(
                        GcpSigningCredential {
                            email: String::new(),
                            private_key: None,
                        },
                    )));
            }
            let allow_http = cfg.allow_http || target.from == "STORAGE_EMULATOR_HOST";
            b = b
                .with_bucket_name(&cfg.bucket)
                .with_client_options(client_options(allow_http, cfg.ca_bundle.as_ref()))
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
        let main = build(false)?;
        let stores = Stores {
            main: main.clone(),
            reads: build(true)?,
            list_uploads: None,
            checksums: Some(checksum_probe(
                &cfg,
                &target,
                main.clone(),
                redactor.clone(),
                url.clone(),
            )?),
            versioning: Some(versioning_probe(
                &cfg,
                &target,
                main,
                redactor.clone(),
                url.clone(),
            )?),
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

    /// As GCS sends it: both hashes in one header, or one header each; `AAAAAA==` is 0.
    #[test]
    fn crc32c_is_read_from_x_goog_hash() {
        // crc32c("hello world") = 0xc99465aa, "yZRlqg==" as gsutil prints it.
        let one = ["crc32c=yZRlqg==,md5=XrY7u+Ae7tCTyyK7j1rNww=="];
        assert_eq!(crc32c_of_goog_hash(&one), Ok(Some(0xc994_65aa)));
        let two = ["md5=XrY7u+Ae7tCTyyK7j1rNww==", "crc32c=yZRlqg=="];
        assert_eq!(crc32c_of_goog_hash(&two), Ok(Some(0xc994_65aa)));
        assert_eq!(crc32c_of_goog_hash(&["crc32c=AAAAAA=="]), Ok(Some(0)));
        assert_eq!(
            crc32c_of_goog_hash(&["md5=XrY7u+Ae7tCTyyK7j1rNww=="]),
            Ok(None)
        );
        assert_eq!(crc32c_of_goog_hash(&[]), Ok(None));
        for bad in ["crc32c=yZRl", "crc32c=yZRlqgAA", "crc32c=!!!!!!=="] {
            assert!(crc32c_of_goog_hash(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn versioning_and_noncurrent_rules_are_read_from_the_bucket_resource() {
        let v = |j: &str| versioning_of(j.as_bytes()).unwrap();
        assert_eq!(v("{}"), None);
        assert_eq!(v(r#"{"versioning": {"enabled": false}}"#), None);
        let on = |expires| {
            Some(crate::Versioning {
                status: "Enabled".into(),
                noncurrent_expiration: expires,
            })
        };
        assert_eq!(v(r#"{"versioning": {"enabled": true}}"#), on(false));
        // A rule that deletes live objects by age does not expire noncurrent versions.
        assert_eq!(
            v(r#"{"versioning": {"enabled": true}, "lifecycle": {"rule": [
                {"action": {"type": "Delete"}, "condition": {"age": 30}},
                {"action": {"type": "SetStorageClass"}, "condition": {"isLive": false}}]}}"#),
            on(false)
        );
        for cond in [
            r#"{"isLive": false}"#,
            r#"{"daysSinceNoncurrentTime": 7}"#,
            r#"{"numNewerVersions": 2}"#,
        ] {
            let j = format!(
                r#"{{"versioning": {{"enabled": true}}, "lifecycle": {{"rule": [{{"action": {{"type": "Delete"}}, "condition": {cond}}}]}}}}"#
            );
            assert_eq!(v(&j), on(true), "{cond}");
        }
        assert!(versioning_of(b"<html>").is_err());
    }

    #[test]
    fn urls() {
        let c = GcsConfig::from_url("gs://bkt/a/b").unwrap();
        assert_eq!(c.url(), "gs://bkt/a/b");
        assert!(GcsConfig::from_url("s3://bkt/a").is_err());
        assert!("sha256".parse::<GcsChecksum>().is_err());
    }

    fn creds(base_url: Option<&str>, disable_oauth: bool) -> CredentialsFile {
        CredentialsFile {
            service_account: true,
            base_url: base_url.map(String::from),
            disable_oauth,
        }
    }

    /// `endpoint` first, then the credentials file, then STORAGE_EMULATOR_HOST; anonymous
    /// exactly when an endpoint is set and no credentials file says otherwise.
    #[test]
    fn endpoint_order_and_anonymity() {
        let mut cfg = GcsConfig::from_url("gs://bkt/p").unwrap();
        let emu = || Some("http://127.0.0.1:9023".to_string());
        // Nothing configured: Google, with the credential chain.
        let t = target(&cfg, None, None).unwrap();
        assert_eq!((t.base_url, t.anonymous), (None, false));
        // The emulator variable alone: anonymous, plain http allowed.
        let t = target(&cfg, None, emu()).unwrap();
        assert_eq!(t.base_url.as_deref(), Some("http://127.0.0.1:9023"));
        assert!(t.anonymous);
        // A credentials file without disable_oauth keeps its token, even at an emulator.
        let t = target(&cfg, Some(&creds(None, false)), emu()).unwrap();
        assert!(!t.anonymous);
        // `endpoint` wins over both; plain http needs allow_http.
        cfg.endpoint = Some("http://10.0.0.1:4443/".into());
        let e = target(&cfg, Some(&creds(Some("http://x:1"), true)), emu()).unwrap_err();
        assert!(e.to_string().contains("allow_http"), "{e}");
        cfg.allow_http = true;
        let t = target(&cfg, Some(&creds(Some("http://x:1"), true)), emu()).unwrap();
        assert_eq!(t.base_url.as_deref(), Some("http://10.0.0.1:4443"));
        assert!(t.anonymous);
        cfg.endpoint = Some("10.0.0.1:4443".into());
        assert_eq!(cfg.validate().unwrap_err().0, "endpoint");
    }
}
