//! The binary against real remote servers, as the e2e tests run it: with only the AWS
//! settings a test gives (nothing of the machine's AWS setup), the `[[remotes]]` tables
//! of their configs, and what an S3 server (LocalStack) holds, asked without signing.
//!
//! It includes neither `localstack.rs` nor `sshd.rs` (each test binary includes those
//! once, for one server per binary): it takes endpoints, ports and paths.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use super::{text, Env};

/// `[local]` with backups in `backups`, and one static_content source `site` at `src`
/// (ends with a newline; a `[[remotes]]` table from below may follow).
pub const STATIC_SITE: &str = "[local]\ndir = \"backups\"\n\n[[sources]]\nname = \"site\"\nkind = \"static_content\"\npath = \"src\"\n";

/// A clean AWS environment for `c`: no `AWS_*` variable of the test's own (except
/// `AWS_CA_BUNDLE`, set on these machines and not read by the tool), no config or
/// credentials file, no instance metadata lookups; nor a config or log level from
/// `PRONTO_OFFSITE_*`.
pub fn isolate(c: &mut Command, env: &Env) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") && k != "AWS_CA_BUNDLE" {
            c.env_remove(k);
        }
    }
    c.env("AWS_CONFIG_FILE", env.path("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            env.path("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("PRONTO_OFFSITE_CONFIG")
        .env_remove("PRONTO_OFFSITE_LOG");
}

/// The binary with `--config <config>`, [`isolate`]d.
pub fn bin_at(env: &Env, config: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("pronto-offsite"));
    c.arg("--config").arg(config);
    isolate(&mut c, env);
    c.env("PRONTO_OFFSITE_SCHEDULE_PATHS", env.schedule());
    c
}

/// The binary with the workspace's config, [`isolate`]d.
pub fn bin(env: &Env) -> Command {
    bin_at(env, &env.config())
}

/// An access key pair given to the binary in the environment, which no output may show.
#[derive(Clone, Copy)]
pub struct Keys {
    pub id: &'static str,
    pub secret: &'static str,
}

impl Keys {
    /// `c` with these keys in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn give(&self, mut c: Command) -> Command {
        c.env("AWS_ACCESS_KEY_ID", self.id)
            .env("AWS_SECRET_ACCESS_KEY", self.secret);
        c
    }

    /// [`bin`] with these keys.
    pub fn bin(&self, env: &Env) -> Command {
        self.give(bin(env))
    }

    /// [`bin_at`] with these keys.
    pub fn bin_at(&self, env: &Env, config: &Path) -> Command {
        self.give(bin_at(env, config))
    }

    /// Neither the key id nor the secret is in `o`'s stdout or stderr.
    #[track_caller]
    pub fn assert_not_in(&self, o: &Output, what: &str) {
        let t = text(o);
        assert!(
            !t.contains(self.id),
            "{what}: access key id in output:\n{t}"
        );
        assert!(!t.contains(self.secret), "{what}: secret in output:\n{t}");
    }

    /// Run [`Keys::bin`] with `args`; checks that the output shows no key.
    #[track_caller]
    pub fn run(&self, env: &Env, args: &[&str]) -> Output {
        let o = self.bin(env).args(args).output().unwrap();
        self.assert_not_in(&o, &format!("{args:?}"));
        o
    }
}

/// A `[[remotes]]` table for `s3://<bucket_path>` at `endpoint` (`allow_http = true` for
/// an `http://` endpoint), then `extra` lines.
pub fn s3_remote(name: &str, endpoint: &str, bucket_path: &str, extra: &str) -> String {
    let allow_http = if endpoint.starts_with("http://") {
        "allow_http = true\n"
    } else {
        ""
    };
    format!(
        "\n[[remotes]]\nname = \"{name}\"\nurl = \"s3://{bucket_path}\"\nregion = \"us-east-1\"\n\
         endpoint = \"{endpoint}\"\n{allow_http}{extra}\n"
    )
}

/// A `[[remotes]]` table for an sftp:// `url` on the test sshd (its client key and
/// known_hosts, no ssh config of the machine), then `extra` lines.
pub fn sftp_remote(
    name: &str,
    url: &str,
    identity_file: &Path,
    known_hosts: &Path,
    extra: &str,
) -> String {
    format!(
        "\n[[remotes]]\nname = \"{name}\"\nurl = \"{url}\"\nidentity_file = \"{}\"\n\
         known_hosts_file = \"{}\"\nssh_config_file = \"/dev/null\"\nconnect_timeout = \"10s\"\n{extra}\n",
        identity_file.display(),
        known_hosts.display()
    )
}

/// A `[[remotes]]` table for a file:// remote at `dir`, then `extra` lines.
pub fn file_remote(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "\n[[remotes]]\nname = \"{name}\"\nurl = \"file://{}\"\n{extra}\n",
        dir.display()
    )
}

/// The Content-Length of an unsigned HEAD of `path` (`/<bucket>/<key>`) on the S3
/// server at `127.0.0.1:port`; None unless it answers 200.
pub fn s3_object_size(port: u16, path: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    if !out.starts_with("HTTP/1.1 200") {
        return None;
    }
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}
