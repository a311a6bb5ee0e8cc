//! Amazon S3 and S3-compatible stores (`s3://bucket/prefix`), on object_store's
//! [`AmazonS3`] and its [`MultipartStore`](object_store::multipart::MultipartStore).
//!
//! # Credentials
//! The standard AWS chain through aws-config: environment (`AWS_ACCESS_KEY_ID`, …),
//! the shared config and credentials files with `profile` (or `AWS_PROFILE`), SSO,
//! `credential_process`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`), container (ECS)
//! and instance (IMDS) metadata. object_store asks for credentials on every request;
//! [`AwsChainCredentials`] caches them until five minutes before they expire. Keys in the
//! config file (`access_key_id`, `secret_access_key`) are accepted but discouraged: the
//! CLI warns.
//!
//! # Options
//! `region`, `endpoint` (S3-compatible stores: MinIO, Ceph, Wasabi, Backblaze B2,
//! Cloudflare R2, LocalStack), `path_style`, `storage_class`, `checksum`
//! (`sha256` → `x-amz-checksum-sha256` on every PUT and part, the default; `md5` →
//! `Content-MD5`, for stores that reject the former such as B2 and R2; `none`),
//! `allow_http` (a plain `http://` endpoint is refused without it) and `profile`.
//!
//! The rest — integrity, timeouts, retries, errors — is in [`crate::objstore`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::aws::{AmazonS3Builder, AwsCredential, AwsCredentialProvider, Checksum};
use object_store::{CredentialProvider, StaticCredentialProvider};
use tracing::instrument::WithSubscriber;
use tracing::subscriber::NoSubscriber;

use crate::objstore::{
    self, client_options, delegate_backend, retry_config, Connector, CredentialsUnavailable,
    ObjectStoreBackend, Redactor, Stores,
};
use crate::{BackendError, Result};

/// Which checksum travels with every PUT and part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Checksum {
    /// `x-amz-checksum-sha256` (the default; required by Object Lock buckets).
    #[default]
    Sha256,
    /// `Content-MD5`, for stores that reject `x-amz-checksum-sha256` (Backblaze B2,
    /// Cloudflare R2).
    Md5,
    /// No checksum header (bodies are still checked here before they are sent).
    None,
}

impl FromStr for S3Checksum {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sha256" => Ok(S3Checksum::Sha256),
            "md5" => Ok(S3Checksum::Md5),
            "none" => Ok(S3Checksum::None),
            _ => Err("\"sha256\", \"md5\" or \"none\"".into()),
        }
    }
}

impl fmt::Display for S3Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S3Checksum::Sha256 => "sha256",
            S3Checksum::Md5 => "md5",
            S3Checksum::None => "none",
        })
    }
}

/// Everything an `s3://` remote is configured with. `Debug` never shows secrets.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Signing region; default: the AWS chain's (`AWS_REGION`, the profile), else `us-east-1`.
    pub region: Option<String>,
    /// `https://host[:port]` of an S3-compatible store; default: AWS.
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`). Default: on with an `endpoint`, off for AWS.
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub checksum: S3Checksum,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// AWS profile for the credential chain (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// Static keys from the config file (discouraged).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `ca_bundle`: CA certificates trusted in addition to the system's (a private S3).
    pub ca_bundle: Option<crate::objstore::CaBundle>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "[redacted]");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("storage_class", &self.storage_class)
            .field("checksum", &self.checksum)
            .field("allow_http", &self.allow_http)
            .field("profile", &self.profile)
            .field("access_key_id", &hidden(&self.access_key_id))
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

/// A config problem: the key it is about and what was expected there.
pub type ConfigError = (&'static str, String);

impl S3Config {
    /// Parse `s3://bucket[/prefix]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let (bucket, prefix) = split_bucket_url(url, "s3")?;
        check_bucket_name(&bucket)?;
        Ok(S3Config {
            bucket,
            prefix,
            ..Default::default()
        })
    }

    /// The URL without options: `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        join_url("s3", &self.bucket, &self.prefix)
    }

    /// Check the options together; the error names the key at fault.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if let Some(r) = &self.region {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(("region", "an AWS region such as \"eu-west-1\"".into()));
            }
        }
        if let Some(ep) = &self.endpoint {
            check_endpoint(ep, self.allow_http)?;
        }
        if let Some(c) = &self.storage_class {
            check_storage_class(c)?;
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return Err((
                    "secret_access_key",
                    "a secret_access_key next to access_key_id (better: neither, and the AWS credential chain)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "access_key_id",
                    "an access_key_id next to secret_access_key (better: neither, and the AWS credential chain)".into(),
                ))
            }
            _ => {}
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err((
                "session_token",
                "access_key_id and secret_access_key next to session_token".into(),
            ));
        }
        if self.access_key_id.is_some() && self.profile.is_some() {
            return Err((
                "profile",
                "either a profile or keys in the config file, not both".into(),
            ));
        }
        Ok(())
    }

    /// Whether secrets are written in the config file (the CLI warns about it).
    pub fn has_static_keys(&self) -> bool {
        self.access_key_id.is_some()
    }
}

/// An `s3://` remote.
pub struct S3Backend {
    inner: ObjectStoreBackend,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("url", &crate::Backend::describe(&self.inner))
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Open an S3 remote. Checks the options now; credentials and the region (when not
    /// configured) are resolved on first use, so opening never blocks.
    pub fn new(mut cfg: S3Config) -> Result<Self> {
        cfg.prefix = cfg.prefix.trim_matches('/').to_string();
        cfg.validate()
            .map_err(|(k, m)| BackendError::Permanent(format!("s3 remote: {k}: expected {m}")))?;
        let url = match &cfg.endpoint {
            Some(ep) => format!("{} at {}", cfg.url(), ep.trim_end_matches('/')),
            None => cfg.url(),
        };
        let redactor = Redactor::default();
        for s in [
            &cfg.access_key_id,
            &cfg.secret_access_key,
            &cfg.session_token,
        ]
        .into_iter()
        .flatten()
        {
            redactor.add(s);
        }
        let cfg = Arc::new(cfg);
        let open_cfg = Arc::clone(&cfg);
        let open_redactor = redactor.clone();
        let open_url = url.clone();
        let open: objstore::OpenStores = Box::new(move || {
            let cfg = Arc::clone(&open_cfg);
            let redactor = open_redactor.clone();
            let url = open_url.clone();
            Box::pin(async move { open_stores(&cfg, &redactor, &url).await })
        });
        Ok(S3Backend {
            inner: ObjectStoreBackend::new(
                url,
                &cfg.prefix,
                "S3",
                cfg.storage_class.clone(),
                redactor,
                open,
            ),
        })
    }
}

delegate_backend!(S3Backend);

async fn open_stores(cfg: &S3Config, redactor: &Redactor, url: &str) -> Result<Stores> {
    let (credentials, region): (AwsCredentialProvider, String) =
        match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => (
                Arc::new(StaticCredentialProvider::new(AwsCredential {
                    key_id: id.clone(),
                    secret_key: secret.clone(),
                    token: cfg.session_token.clone(),
                })),
                match &cfg.region {
                    Some(r) => r.clone(),
                    None => region_from_env(),
                },
            ),
            _ => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(p) = &cfg.profile {
                    loader = loader.profile_name(p);
                }
                // An S3-compatible store without a configured region: take the environment's
                // or us-east-1, and never probe instance metadata for one.
                let fixed_region = cfg
                    .region
                    .clone()
                    .or_else(|| cfg.endpoint.as_ref().map(|_| region_from_env()));
                if let Some(r) = &fixed_region {
                    loader = loader.region(aws_config::Region::new(r.clone()));
                }
                // aws-config logs the access key id at INFO ("loaded base credentials
                // creds=Credentials { access_key_id: … }"): its events must never reach the
                // user's log, so they go nowhere. Failures come back as errors instead.
                let sdk = loader.load().with_subscriber(NoSubscriber::default()).await;
                let region = fixed_region
                    .or_else(|| sdk.region().map(|r| r.to_string()))
                    .unwrap_or_else(|| "us-east-1".to_string());
                let provider = sdk.credentials_provider().ok_or_else(|| {
                    BackendError::Auth(format!("{url}: no AWS credential provider is available"))
                })?;
                (
                    Arc::new(AwsChainCredentials::new(provider, redactor.clone())),
                    region,
                )
            }
        };
    let path_style = cfg
        .path_style
        .unwrap_or(cfg.endpoint.is_some() || cfg.bucket.contains('.'));
    let build = |reads: bool| -> Result<AmazonS3Builder> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&region)
            .with_credentials(Arc::clone(&credentials))
            .with_client_options(client_options(cfg.allow_http, cfg.ca_bundle.as_ref()))
            .with_http_connector(Connector {
                content_md5: cfg.checksum == S3Checksum::Md5,
            })
            .with_retry(retry_config(reads))
            .with_disable_bulk_delete(true)
            .with_virtual_hosted_style_request(!path_style);
        if let Some(ep) = &cfg.endpoint {
            let ep = ep.trim_end_matches('/');
            b = b.with_endpoint(if path_style {
                ep.to_string()
            } else {
                virtual_hosted_endpoint(ep, &cfg.bucket)
            });
        }
        if cfg.checksum == S3Checksum::Sha256 {
            b = b.with_checksum_algorithm(Checksum::SHA256);
        }
        Ok(b)
    };
    let open = |reads: bool| -> Result<Arc<dyn objstore::Store>> {
        let store = build(reads)?
            .build()
            .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
        Ok(Arc::new(store))
    };
    Ok(Stores {
        main: open(false)?,
        reads: open(true)?,
        list_uploads: Some(upload_lister(
            cfg,
            &region,
            path_style,
            Arc::clone(&credentials),
            redactor,
            url,
        )?),
        versioning: Some(versioning_probe(
            cfg,
            &region,
            path_style,
            Arc::clone(&credentials),
            redactor,
            url,
        )?),
        // Only objects sent with `x-amz-checksum-sha256` have one the store computed.
        checksums: if cfg.checksum == S3Checksum::Sha256 {
            Some(checksum_probe(
                cfg,
                &region,
                path_style,
                credentials,
                redactor,
                url,
            )?)
        } else {
            None
        },
    })
}

/// HeadObject with `x-amz-checksum-mode: ENABLED` (object_store's head has no such
/// option): the `x-amz-checksum-sha256` the store computed, whole-object (`BASE64`) or
/// composite for a multipart upload (`BASE64-N`). `None` when the object has none.
fn checksum_probe(
    cfg: &S3Config,
    region: &str,
    path_style: bool,
    credentials: AwsCredentialProvider,
    redactor: &Redactor,
    url: &str,
) -> Result<objstore::ChecksumProbe> {
    use object_store::client::HttpConnector;
    let client = Connector { content_md5: false }
        .connect(&client_options(cfg.allow_http, cfg.ca_bundle.as_ref()))
        .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
    let base = bucket_base(cfg, region, path_style);
    let ctx = Arc::new((base, region.to_string(), redactor.clone(), url.to_string()));
    Ok(Arc::new(move |path: String| {
        let (client, credentials, ctx) = (client.clone(), Arc::clone(&credentials), ctx.clone());
        Box::pin(async move {
            let (base, region, redactor, url) = &*ctx;
            let what = format!("read the checksum the store computed for {path}");
            let u = objstore::object_url(base, &path, url, &what)?;
            let (status, headers, _) = signed_request(
                &client,
                &credentials,
                region,
                redactor,
                url,
                &what,
                http::Method::HEAD,
                u.as_str(),
                &[("x-amz-checksum-mode", "ENABLED")],
            )
            .await?;
            if !(200..300).contains(&status) {
                let msg = redactor.redact(&format!("{url}: {what}: HTTP {status}"));
                return Err(objstore::status_error(status, msg));
            }
            let Some(v) = headers
                .get("x-amz-checksum-sha256")
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(None);
            };
            parse_checksum_sha256(v).map(Some).ok_or_else(|| {
                BackendError::Permanent(format!(
                    "{url}: {what}: unreadable x-amz-checksum-sha256 {v:?}"
                ))
            })
        }) as futures::future::BoxFuture<'static, Result<Option<crate::StoreChecksum>>>
    }))
}

/// `BASE64` (a whole object's SHA-256) or `BASE64-N` (composite of N parts).
fn parse_checksum_sha256(v: &str) -> Option<crate::StoreChecksum> {
    use base64::Engine as _;
    let (b64, parts) = match v.rsplit_once('-') {
        Some((b, n)) => (b, Some(n.parse::<u32>().ok()?)),
        None => (v, None),
    };
    let digest: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()?;
    Some(match parts {
        Some(parts) => crate::StoreChecksum::Sha256OfParts { digest, parts },
        None => crate::StoreChecksum::Sha256(digest),
    })
}

/// GetBucketVersioning (`GET /?versioning`) and, when versioning was ever on,
/// GetBucketLifecycleConfiguration (`GET /?lifecycle`: is there a rule that expires
/// noncurrent versions?), which object_store lacks; signed and sent like
/// [`upload_lister`]'s requests.
fn versioning_probe(
    cfg: &S3Config,
    region: &str,
    path_style: bool,
    credentials: AwsCredentialProvider,
    redactor: &Redactor,
    url: &str,
) -> Result<objstore::VersioningProbe> {
    use object_store::client::HttpConnector;
    let client = Connector { content_md5: false }
        .connect(&client_options(cfg.allow_http, cfg.ca_bundle.as_ref()))
        .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
    let base = bucket_base(cfg, region, path_style);
    let ctx = Arc::new((base, region.to_string(), redactor.clone(), url.to_string()));
    Ok(Arc::new(move || {
        let (client, credentials, ctx) = (client.clone(), Arc::clone(&credentials), ctx.clone());
        Box::pin(async move {
            let (base, region, redactor, url) = &*ctx;
            let get = |query: &'static str| {
                let (client, credentials) = (client.clone(), Arc::clone(&credentials));
                async move {
                    let what = format!("read the bucket's {query} configuration");
                    let uri = format!("{base}?{query}");
                    signed_get(&client, &credentials, region, redactor, url, &what, &uri).await
                }
            };
            let (status, text) = get("versioning").await?;
            if !(200..300).contains(&status) {
                let code = objstore::xml_tag(&text, "Code").unwrap_or_default();
                let msg = redactor.redact(&format!(
                    "{url}: read the bucket's versioning: {code} (HTTP {status})"
                ));
                return Err(match status {
                    401 | 403 => BackendError::Auth(msg),
                    _ => BackendError::transient(msg),
                });
            }
            let Some(state) = objstore::xml_tag(&text, "Status").filter(|s| !s.is_empty()) else {
                return Ok(None);
            };
            // No lifecycle configuration at all is a 404 (NoSuchLifecycleConfiguration).
            let (status, text) = get("lifecycle").await?;
            let noncurrent_expiration = (200..300).contains(&status)
                && text.split("<Rule>").skip(1).any(|rule| {
                    objstore::xml_tag(rule, "Status").as_deref() == Some("Enabled")
                        && rule.contains("<NoncurrentVersionExpiration>")
                });
            Ok(Some(crate::Versioning {
                status: state,
                noncurrent_expiration,
            }))
        })
    }))
}

/// One SigV4-signed GET of `uri` (a bucket sub-resource object_store has no call for),
/// sent through object_store's HTTP layer; returns the status and the body as text.
/// `what` names the request in errors (which are redacted).
async fn signed_get(
    client: &object_store::client::HttpClient,
    credentials: &AwsCredentialProvider,
    region: &str,
    redactor: &Redactor,
    url: &str,
    what: &str,
    uri: &str,
) -> Result<(u16, String)> {
    let (status, _, body) = signed_request(
        client,
        credentials,
        region,
        redactor,
        url,
        what,
        http::Method::GET,
        uri,
        &[],
    )
    .await?;
    Ok((status, body))
}

/// One SigV4-signed request (`headers` signed with it); returns the status, the
/// response headers and the body as text.
#[allow(clippy::too_many_arguments)]
async fn signed_request(
    client: &object_store::client::HttpClient,
    credentials: &AwsCredentialProvider,
    region: &str,
    redactor: &Redactor,
    url: &str,
    what: &str,
    method: http::Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, String)> {
    let fail = |e: &dyn fmt::Display| {
        BackendError::transient(redactor.redact(&format!("{url}: {what}: {e}")))
    };
    let cred = credentials.get_credential().await.map_err(|e| {
        BackendError::Auth(redactor.redact(&format!("{url}: {what}: S3 credentials: {e}")))
    })?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req
        .body(object_store::client::HttpRequestBody::empty())
        .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))?;
    object_store::aws::AwsAuthorizer::new(&cred, "s3", region)
        .try_authorize(&mut req, None)
        .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))?;
    let resp = client.execute(req).await.map_err(|e| fail(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().bytes().await.map_err(|e| fail(&e))?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// The bucket's URL: `ENDPOINT/BUCKET` (path style) or `BUCKET.ENDPOINT`, AWS by default.
fn bucket_base(cfg: &S3Config, region: &str, path_style: bool) -> String {
    match (&cfg.endpoint, path_style) {
        (Some(ep), true) => format!("{}/{}", ep.trim_end_matches('/'), cfg.bucket),
        (Some(ep), false) => virtual_hosted_endpoint(ep.trim_end_matches('/'), &cfg.bucket),
        (None, true) => format!("https://s3.{region}.amazonaws.com/{}", cfg.bucket),
        (None, false) => format!("https://{}.s3.{region}.amazonaws.com", cfg.bucket),
    }
}

/// ListMultipartUploads (`GET /?uploads&prefix=P`, paginated), which object_store lacks:
/// signed with SigV4 as object_store signs its own requests, sent through the same HTTP
/// layer (timeouts, CA bundle). For `push --cleanup`, which aborts the uploads no journal
/// knows.
fn upload_lister(
    cfg: &S3Config,
    region: &str,
    path_style: bool,
    credentials: AwsCredentialProvider,
    redactor: &Redactor,
    url: &str,
) -> Result<objstore::UploadLister> {
    use object_store::client::HttpConnector;
    let client = Connector { content_md5: false }
        .connect(&client_options(cfg.allow_http, cfg.ca_bundle.as_ref()))
        .map_err(|e| BackendError::Permanent(redactor.redact(&format!("{url}: {e}"))))?;
    let base = bucket_base(cfg, region, path_style);
    let ctx = Arc::new((base, region.to_string(), redactor.clone(), url.to_string()));
    Ok(Arc::new(move |prefix: String| {
        let (client, credentials, ctx) = (client.clone(), Arc::clone(&credentials), ctx.clone());
        Box::pin(async move {
            let (base, region, redactor, url) = &*ctx;
            let what = "list uploads in progress";
            let mut out = Vec::new();
            let mut markers: Option<(String, String)> = None;
            loop {
                let mut u = url::Url::parse(base)
                    .map_err(|e| BackendError::Permanent(format!("{url}: {what}: {e}")))?;
                {
                    let mut q = u.query_pairs_mut();
                    q.append_pair("uploads", "").append_pair("prefix", &prefix);
                    if let Some((k, id)) = &markers {
                        q.append_pair("key-marker", k)
                            .append_pair("upload-id-marker", id);
                    }
                }
                let (status, text) = signed_get(
                    &client,
                    &credentials,
                    region,
                    redactor,
                    url,
                    what,
                    u.as_str(),
                )
                .await?;
                if !(200..300).contains(&status) {
                    let code = objstore::xml_tag(&text, "Code").unwrap_or_default();
                    let msg = redactor.redact(&format!("{url}: {what}: {code} (HTTP {status})"));
                    return Err(match status {
                        401 | 403 => BackendError::Auth(msg),
                        408 | 429 | 500..=599 => BackendError::transient(msg),
                        _ => BackendError::Permanent(msg),
                    });
                }
                for up in text.split("<Upload>").skip(1) {
                    let up = up.split("</Upload>").next().unwrap_or("");
                    let key = objstore::xml_tag(up, "Key");
                    let id = objstore::xml_tag(up, "UploadId");
                    if let (Some(k), Some(id)) = (key, id) {
                        out.push((xml_unescape(&k), xml_unescape(&id)));
                    }
                }
                if objstore::xml_tag(&text, "IsTruncated").as_deref() != Some("true") {
                    break;
                }
                match (
                    objstore::xml_tag(&text, "NextKeyMarker"),
                    objstore::xml_tag(&text, "NextUploadIdMarker"),
                ) {
                    (Some(k), Some(id)) => markers = Some((xml_unescape(&k), xml_unescape(&id))),
                    _ => {
                        return Err(BackendError::Permanent(format!(
                            "{url}: {what}: a truncated listing without its next markers"
                        )))
                    }
                }
            }
            Ok(out)
        }) as futures::future::BoxFuture<'static, Result<Vec<(String, String)>>>
    }))
}

/// The five XML entities S3 escapes in keys.
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
fn region_from_env() -> String {
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Ok(r) = std::env::var(var) {
            if !r.is_empty() {
                return r;
            }
        }
    }
    "us-east-1".to_string()
}

/// `https://host:port` → `https://bucket.host:port`.
fn virtual_hosted_endpoint(ep: &str, bucket: &str) -> String {
    match ep.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => ep.to_string(),
    }
}

/// The AWS credential chain from aws-config as an object_store credential provider,
/// cached until [`REFRESH_BEFORE`] ahead of expiry (object_store asks on every request).
pub struct AwsChainCredentials {
    provider: SharedCredentialsProvider,
    cache: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
    redactor: Redactor,
}

/// Credentials are refreshed this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

impl AwsChainCredentials {
    pub fn new(provider: SharedCredentialsProvider, redactor: Redactor) -> Self {
        AwsChainCredentials {
            provider,
            cache: tokio::sync::Mutex::new(None),
            redactor,
        }
    }
}

impl fmt::Debug for AwsChainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AwsChainCredentials(..)")
    }
}

#[async_trait]
impl CredentialProvider for AwsChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cache = self.cache.lock().await;
        if let Some((cred, expiry)) = cache.as_ref() {
            let fresh = match expiry {
                None => true,
                Some(e) => *e > SystemTime::now() + REFRESH_BEFORE,
            };
            if fresh {
                return Ok(Arc::clone(cred));
            }
        }
        let creds = self
            .provider
            .provide_credentials()
            .with_subscriber(NoSubscriber::default())
            .await
            .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(CredentialsUnavailable(format!(
                    "no usable AWS credentials from the environment, profile, SSO, credential_process, web identity or instance metadata ({})",
                    self.redactor.redact(&msg)
                ))),
            }
        })?;
        self.redactor.add(creds.access_key_id());
        self.redactor.add(creds.secret_access_key());
        if let Some(t) = creds.session_token() {
            self.redactor.add(t);
        }
        let cred = Arc::new(AwsCredential {
            key_id: creds.access_key_id().to_string(),
            secret_key: creds.secret_access_key().to_string(),
            token: creds.session_token().map(str::to_string),
        });
        *cache = Some((Arc::clone(&cred), creds.expiry()));
        Ok(cred)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared with gcs.rs
// ---------------------------------------------------------------------------------------

/// `scheme://bucket[/prefix]` → (bucket, prefix without surrounding `/`).
pub(crate) fn split_bucket_url(
    url: &str,
    scheme: &str,
) -> std::result::Result<(String, String), String> {
    let example = format!("{scheme}://bucket/prefix");
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| format!("a URL of the form {example}"))?;
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err(format!("a bucket name after {scheme}:// ({example})"));
    }
    if bucket.contains('@') || bucket.contains(':') {
        return Err(format!(
            "a bucket name without credentials or a port ({example}); credentials come from the environment or profile, an S3-compatible server from `endpoint`"
        ));
    }
    if prefix.contains("//") || prefix.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "a prefix without empty, '.' or '..' components ({example})"
        ));
    }
    if prefix.contains(['?', '#']) || prefix.chars().any(|c| c.is_control()) {
        return Err(format!(
            "a prefix without '?', '#' or control characters ({example})"
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

pub(crate) fn join_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

pub(crate) fn check_bucket_name(bucket: &str) -> std::result::Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("a bucket name of 3 to 63 letters, digits, '-', '.' or '_'".into())
    }
}

pub(crate) fn check_storage_class(c: &str) -> std::result::Result<(), ConfigError> {
    if c.is_empty()
        || !c
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err((
            "storage_class",
            "a storage class such as \"STANDARD_IA\" (upper-case letters, digits, '_')".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_endpoint(ep: &str, allow_http: bool) -> std::result::Result<(), ConfigError> {
    let parsed = url::Url::parse(ep).map_err(|_| {
        (
            "endpoint",
            "a URL such as \"https://s3.example.com\"".to_string(),
        )
    })?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err((
                "endpoint",
                "an https:// URL; a plain http:// endpoint sends data unencrypted and is refused unless the remote sets allow_http = true".into(),
            ))
        }
        _ => return Err(("endpoint", "an http(s):// URL".into())),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err((
            "endpoint",
            "a URL without credentials in it (they come from the environment or profile)".into(),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(("endpoint", "a URL without '?' or '#'".into()));
    }
    if parsed.host_str().is_none() {
        return Err(("endpoint", "a URL with a host".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = S3Config::from_url("s3://my-bucket/prod/db/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("my-bucket", "prod/db")
        );
        assert_eq!(c.url(), "s3://my-bucket/prod/db");
        let c = S3Config::from_url("s3://my-bucket").unwrap();
        assert_eq!(c.prefix, "");
        for bad in [
            "s3://",
            "s3:///x",
            "s3://AK:SECRET@bucket/x",
            "s3://b/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
        ] {
            assert!(S3Config::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = S3Config::from_url("s3://bucket/x").unwrap();
        c.endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(c.validate().unwrap_err().0, "endpoint");
        c.allow_http = true;
        assert!(c.validate().is_ok());
        c.endpoint = Some("https://user:pw@host".into());
        assert_eq!(c.validate().unwrap_err().0, "endpoint");
        c.endpoint = None;
        c.access_key_id = Some("AKIAXXXXXXXXXXXXXXXX".into());
        assert_eq!(c.validate().unwrap_err().0, "secret_access_key");
        c.secret_access_key = Some("very-secret-value".into());
        assert!(c.validate().is_ok());
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("AKIAX") && !dbg.contains("very-secret"),
            "{dbg}"
        );
        c.storage_class = Some("standard".into());
        assert_eq!(c.validate().unwrap_err().0, "storage_class");
    }

    #[test]
    fn store_checksums_parse_whole_and_composite() {
        use base64::Engine as _;
        let d = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        assert_eq!(
            parse_checksum_sha256(&b64),
            Some(crate::StoreChecksum::Sha256(d))
        );
        assert_eq!(
            parse_checksum_sha256(&format!("{b64}-3")),
            Some(crate::StoreChecksum::Sha256OfParts {
                digest: d,
                parts: 3
            })
        );
        assert_eq!(parse_checksum_sha256("AAAA"), None, "not 32 bytes");
        assert_eq!(parse_checksum_sha256(&format!("{b64}-x")), None);
    }

    #[test]
    fn virtual_hosted() {
        assert_eq!(
            virtual_hosted_endpoint("https://s3.example.com:8443", "b"),
            "https://b.s3.example.com:8443"
        );
    }
}
