//! A private S3 behind TLS with its own CA: a CA and a server certificate are made here
//! (rcgen), a small TLS-terminating proxy (tokio-rustls) listens on 127.0.0.1 in front of
//! LocalStack (started by `backends/tests/support/localstack.rs`), and the remote's
//! `ca_bundle` is what makes `push` trust it. Without it, the certificate is refused
//! (verification stays on): exit 1, a certificate error, nothing uploaded. A missing or
//! invalid bundle is a located config error (exit 2).

mod support;

#[path = "../backends/tests/support/localstack.rs"]
mod localstack;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use support::remotes::{s3_remote, Keys, STATIC_SITE};
use support::{text, Env};
use tokio_rustls::rustls;

/// A CA (PEM) and a server certificate and key for 127.0.0.1 / localhost signed by it.
struct Pki {
    ca_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pronto-offsite test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "private-s3.test");
    let server = params.signed_by(&server_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert_der: server.der().to_vec(),
        server_key_der: server_key.serialize_der(),
    }
}

/// Starts a TLS-terminating proxy on 127.0.0.1 that forwards to `upstream`; returns its
/// address. It lives as long as the test process.
fn tls_proxy(pki: &Pki, upstream: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: fine.
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    addr
}

fn s3_env(endpoint: &str, bucket: &str, extra: &str) -> Env {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello over private TLS\n").unwrap();
    std::fs::write(src.join("data.bin"), support::noise(300_000, 3)).unwrap();
    write_config(&env, endpoint, bucket, extra);
    env
}

fn write_config(env: &Env, endpoint: &str, bucket: &str, extra: &str) {
    // `ca_bundle` in `extra` is line 14 (the located errors below say so).
    let remote = s3_remote("s3", endpoint, &format!("{bucket}/prod"), extra);
    std::fs::write(env.config(), format!("{STATIC_SITE}{remote}")).unwrap();
}

/// The binary with only test credentials from the AWS environment (AWS_CA_BUNDLE, set on
/// these machines, is left as it is).
fn bin(env: &Env) -> Command {
    Keys {
        id: "AKIATLSTEST000000001",
        secret: "tls-test-secret",
    }
    .bin(env)
}

fn run(env: &Env, args: &[&str]) -> Output {
    let o = bin(env).args(args).output().unwrap();
    eprintln!("{args:?}: {:?}", o.status.code());
    o
}

fn write_ca(env: &Env, pki: &Pki) -> String {
    let p = env.path("private-ca.pem");
    std::fs::write(&p, &pki.ca_pem).unwrap();
    p.display().to_string()
}

#[test]
fn push_to_a_private_ca_s3_needs_its_ca_bundle() {
    let ls = localstack::shared();
    let pki = make_pki();
    let proxy = tls_proxy(&pki, ([127, 0, 0, 1], ls.port).into());
    let endpoint = format!("https://127.0.0.1:{}", proxy.port());
    let bucket = ls.new_bucket("tls");

    // Without the CA: the certificate is refused, nothing is uploaded.
    let env = s3_env(&endpoint, &bucket, "");
    let o = run(&env, &["backup"]);
    assert!(o.status.success(), "backup: {}", text(&o));
    let o = run(&env, &["push", "--no-prune"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("unknownissuer"),
        "a certificate error: {}",
        text(&o)
    );
    assert!(
        err.contains("ca_bundle"),
        "says how to fix it: {}",
        text(&o)
    );
    assert!(ls.keys(&bucket).is_empty(), "nothing uploaded");
    eprintln!(
        "without ca_bundle: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );

    // With `ca_bundle` (relative to the config file): uploaded, over TLS.
    let ca = write_ca(&env, &pki);
    write_config(&env, &endpoint, &bucket, "ca_bundle = \"private-ca.pem\"");
    let o = run(&env, &["push", "--no-prune"]);
    assert!(o.status.success(), "{}", text(&o));
    let keys = ls.keys(&bucket);
    assert!(
        keys.iter().any(|k| k.ends_with(".tar.gz"))
            && keys.iter().any(|k| k.ends_with(".manifest.json")),
        "{keys:?}"
    );
    // And back: listed complete, and pulled through the same TLS proxy (the endpoint is
    // https only) with the same bytes, after losing the local copy.
    let o = run(&env, &["list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("complete"),
        "{}",
        text(&o)
    );
    let archive = support::files_under(&env.backups())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("the local archive");
    let digest = support::file_digest(&archive);
    std::fs::remove_dir_all(env.backups()).unwrap();
    let o = run(&env, &["pull", "latest", "--remote", "s3"]);
    assert_eq!(o.status.code(), Some(0), "pull over TLS: {}", text(&o));
    let name = archive.file_name().unwrap().to_str().unwrap();
    let back = support::find_file(&env.backups(), name).expect("the pulled archive");
    assert_eq!(support::file_digest(&back), digest, "pulled bytes differ");

    // AWS_CA_BUNDLE is not read by this tool (the AWS CLI reads it): pointing it at the
    // CA does not make the server trusted without `ca_bundle`, and pointing it at the
    // system bundle does not stop `ca_bundle` from working.
    write_config(&env, &endpoint, &bucket, "");
    let o = bin(&env)
        .env("AWS_CA_BUNDLE", &ca)
        .args(["list"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("unknown") || !o.status.success(),
        "without ca_bundle the listing fails: {}",
        text(&o)
    );
    write_config(&env, &endpoint, &bucket, &format!("ca_bundle = \"{ca}\""));
    let o = bin(&env)
        .env("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        .args(["list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_bad_ca_bundle_is_a_located_config_error() {
    let env = s3_env("https://127.0.0.1:9", "bucket-x", "");
    let cases: [(&str, Option<&[u8]>, &str); 4] = [
        ("missing", None, "cannot read"),
        ("empty", Some(b""), "no PEM certificate"),
        (
            "not pem",
            Some(b"hello, I am not a certificate\n"),
            "no PEM certificate",
        ),
        (
            "garbage in a PEM block",
            Some(b"-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"),
            "ca_bundle",
        ),
    ];
    for (what, content, needle) in cases {
        let p = env.path("ca.pem");
        let _ = std::fs::remove_file(&p);
        if let Some(c) = content {
            std::fs::write(&p, c).unwrap();
        }
        write_config(
            &env,
            "https://127.0.0.1:9",
            "bucket-x",
            "ca_bundle = \"ca.pem\"",
        );
        let o = run(&env, &["list"]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("remotes[0].ca_bundle") && err.contains(":14:") && err.contains(needle),
            "{what}: a located error: {err}"
        );
    }
    // Only for s3:// and gs:// remotes.
    std::fs::write(env.config(), format!(
        "[local]\ndir = \"backups\"\n\n[[remotes]]\nname = \"nas\"\nurl = \"file://{}\"\nca_bundle = \"ca.pem\"\n",
        env.remote().display()
    ))
    .unwrap();
    let o = run(&env, &["list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("s3:// and gs://"),
        "{}",
        text(&o)
    );
}
