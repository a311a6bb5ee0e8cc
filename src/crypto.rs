//! Encryption at rest with [age](https://age-encryption.org): X25519 recipients, files
//! in the standard age format that `age -d -i key.txt` decrypts without this tool.
//!
//! - `[encryption] recipients` / `recipients_file`: the public keys (`age1…`) archives are
//!   encrypted to. The backup host needs only these; no secret.
//! - `[encryption] identity_file` (or `--identity FILE`): the secret key(s)
//!   (`AGE-SECRET-KEY-1…`), needed to extract, restore or verify an encrypted archive.
//! - `pronto-offsite keygen` writes a new identity file (0600) and prints its recipient.
//!
//! The archive is encrypted in the same streaming pass that makes it (tar → gzip → age →
//! sha256 → file), so its manifest's size and sha256 are those of the bytes on disk and on
//! every remote. The manifest records `encryption = "age"` and each recipient's
//! [`fingerprint`], never a key.
//!
//! A missing identity, or one that matches none of the archive's recipients, is an error
//! (exit 2) raised from the age header alone, before anything is written. A damaged or
//! truncated age stream is a verification failure (exit 4).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use anyhow::{Context, Result};

use crate::config::encryption::parse_recipient;
pub use crate::config::encryption::{fingerprint, EncryptionConfig};
use crate::error::{usage, verification};

/// `encryption` in a manifest for an age-encrypted archive.
pub const SCHEME_AGE: &str = "age";
/// `encryption` in a manifest for a plain archive.
pub const SCHEME_NONE: &str = "none";
/// The first line of every age file.
pub const MAGIC: &[u8] = b"age-encryption.org/";
/// How many bytes of a remote archive are fetched to check an identity against its header
/// before anything is downloaded (an X25519 stanza is ~100 bytes).
pub const HEADER_PROBE: u64 = 64 << 10;

impl EncryptionConfig {
    /// Archives are encrypted.
    pub fn enabled(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// The recipients' fingerprints, in order (what a manifest records).
    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients.iter().map(|r| fingerprint(r)).collect()
    }

    /// The recipients to encrypt a new archive to; `None` when encryption is off. Refuses an
    /// `[encryption]` table that names an identity but no recipient (it would silently make
    /// plain archives).
    pub fn recipients_for_backup(&self) -> Result<Option<Recipients>> {
        if self.recipients.is_empty() {
            if self.configured && self.identity_file.is_some() {
                return Err(usage(
                    "[encryption] has an identity_file but no recipients: add `recipients = [\"age1…\"]` (the public key `pronto-offsite keygen` printed; `age-keygen -y KEY_FILE` prints it again) so that archives are encrypted",
                ));
            }
            return Ok(None);
        }
        Ok(Some(Recipients::parse(&self.recipients)?))
    }

    /// The identities from `identity_file` (or `--identity`), if one is set.
    pub fn identities(&self) -> Result<Option<Identities>> {
        match &self.identity_file {
            Some(p) => Identities::load(p).map(Some),
            None => Ok(None),
        }
    }
}

/// Parsed recipients, ready to encrypt to.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl Recipients {
    pub fn parse(recipients: &[String]) -> Result<Recipients> {
        let keys = recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                parse_recipient(r).map_err(|exp| {
                    usage(format!("encryption recipient #{}: expected {exp}", i + 1))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(usage("no encryption recipient"));
        }
        Ok(Recipients { keys })
    }

    /// Fingerprints, in order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| fingerprint(&k.to_string()))
            .collect()
    }

    /// Wrap `w`: what is written to the result is encrypted into `w`. Call
    /// [`age::stream::StreamWriter::finish`] at the end.
    pub fn wrap<W: Write>(&self, w: W) -> io::Result<age::stream::StreamWriter<W>> {
        let enc =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        enc.wrap_output(w)
    }
}

impl Recipients {
    /// `plain` encrypted to these recipients (an age file, whole, in memory): for the
    /// small sealed section of a manifest.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut w = self.wrap(&mut out).context("age: starting to encrypt")?;
        w.write_all(plain).context("age: encrypting")?;
        w.finish().context("age: finishing")?;
        Ok(out)
    }
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.fingerprints()).finish()
    }
}

/// Secret keys loaded from an identity file. Never printed: [`std::fmt::Debug`] shows the
/// file and the fingerprints of the matching recipients only.
pub struct Identities {
    file: PathBuf,
    keys: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("file", &self.file)
            .field("recipients", &self.fingerprints())
            .finish()
    }
}

/// Which kind of failure a decryption attempt hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// One of the identities opens the header.
    Ok,
    /// The file does not start like an age file.
    NotAge,
}

impl Identities {
    /// Read an identity file (`age-keygen` / `pronto-offsite keygen` format: `#` comments,
    /// one `AGE-SECRET-KEY-1…` per line). Errors (exit 2) name the file and line, never
    /// its content. Refuses a file others may read or write (mode & 077), like ssh.
    pub fn load(path: &Path) -> Result<Identities> {
        let meta = fs::metadata(path).map_err(|e| {
            usage(format!(
                "cannot read identity file {}: {e} (give the age secret key with --identity FILE or [encryption] identity_file)",
                path.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(usage(format!(
                "identity file {} is not a file",
                path.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(usage(format!(
                "identity file {} can be read or changed by other users (mode {:o}): refusing to use a secret key others can read, as ssh does; run `chmod 600 {}`",
                path.display(),
                meta.mode() & 0o777,
                path.display()
            )));
        }
        let f = File::open(path)
            .map_err(|e| usage(format!("cannot read identity file {}: {e}", path.display())))?;
        let mut r = BufReader::new(f);
        if r.fill_buf().map(|b| b.starts_with(MAGIC)).unwrap_or(false) {
            return Err(usage(format!(
                "identity file {} is itself age-encrypted (passphrase-protected): decrypt it first (`age -d -o key.txt {}`) and give that file",
                path.display(),
                path.display()
            )));
        }
        let mut keys = Vec::new();
        let mut line = String::new();
        let mut n = 0usize;
        loop {
            line.clear();
            let got = r
                .read_line(&mut line)
                .map_err(|e| usage(format!("cannot read identity file {}: {e}", path.display())))?;
            if got == 0 {
                break;
            }
            n += 1;
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            match age::x25519::Identity::from_str(l) {
                Ok(k) => keys.push(k),
                Err(_) => {
                    let hint = if l.starts_with("age1") {
                        " (that line is a public key: the identity is the AGE-SECRET-KEY-1… line `keygen` wrote)"
                    } else if l.starts_with("-----BEGIN") || l.starts_with("ssh-") {
                        " (SSH keys are not supported as age identities here)"
                    } else {
                        ""
                    };
                    line.clear();
                    return Err(usage(format!(
                        "identity file {} line {n}: not an age X25519 identity (AGE-SECRET-KEY-1…){hint}",
                        path.display()
                    )));
                }
            }
        }
        line.clear();
        if keys.is_empty() {
            return Err(usage(format!(
                "identity file {} holds no identity (an AGE-SECRET-KEY-1… line)",
                path.display()
            )));
        }
        Ok(Identities {
            file: path.to_path_buf(),
            keys,
        })
    }

    /// One identity (for tests and keygen).
    pub fn from_key(file: &Path, key: age::x25519::Identity) -> Identities {
        Identities {
            file: file.to_path_buf(),
            keys: vec![key],
        }
    }

    /// The file the identities came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The public keys (recipients) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    /// Fingerprints of [`Identities::recipients`].
    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients().iter().map(|r| fingerprint(r)).collect()
    }

    /// Open an age stream: reads the header and unwraps the file key. `what` names the
    /// archive in messages; `expected` (the manifest's recipient fingerprints, when known)
    /// makes the wrong-key message precise.
    pub fn decrypt<R: BufRead>(
        &self,
        input: R,
        what: &str,
        expected: &[String],
    ) -> Result<age::stream::StreamReader<R>> {
        let dec = age::Decryptor::new_buffered(input)
            .map_err(|e| header_error(e, what, self, expected))?;
        if dec.is_scrypt() {
            return Err(usage(format!(
                "{what} is encrypted with a passphrase, not to a recipient: decrypt it with `age -d`"
            )));
        }
        dec.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| header_error(e, what, self, expected))
    }

    /// The plaintext of a small age file held in memory (see [`Recipients::seal`]).
    pub fn open_sealed(&self, sealed: &[u8], what: &str, expected: &[String]) -> Result<Vec<u8>> {
        let mut r = self.decrypt(sealed, what, expected)?;
        let mut plain = Vec::new();
        r.read_to_end(&mut plain)
            .map_err(|e| verification(format!("{what}: cannot be decrypted: {e}")))?;
        Ok(plain)
    }

    /// Check the identities against the start of an archive (at least its header). `Ok`
    /// when they open it; an error (exit 2) when none does; `NotAge` for a plain archive;
    /// a verification error (exit 4) for a damaged header. A header cut short by `head`
    /// being too small is `Ok` (the real check happens when the archive is read).
    pub fn check_header(
        &self,
        head: &[u8],
        what: &str,
        expected: &[String],
    ) -> Result<HeaderCheck> {
        if !head.starts_with(MAGIC) {
            return Ok(HeaderCheck::NotAge);
        }
        match age::Decryptor::new_buffered(head) {
            Err(age::DecryptError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(HeaderCheck::Ok)
            }
            Err(e) => Err(header_error(e, what, self, expected)),
            Ok(dec) => match dec.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)) {
                Ok(_) => Ok(HeaderCheck::Ok),
                Err(e) => Err(header_error(e, what, self, expected)),
            },
        }
    }
}

/// The message for an age header that did not open.
fn header_error(
    e: age::DecryptError,
    what: &str,
    ids: &Identities,
    expected: &[String],
) -> anyhow::Error {
    match e {
        age::DecryptError::NoMatchingKeys => {
            let to = if expected.is_empty() {
                String::new()
            } else {
                format!(" (it is encrypted to {})", expected.join(", "))
            };
            usage(format!(
                "wrong identity: {} (recipient {}) cannot decrypt {what}{to}; give the identity that matches one of its recipients with --identity FILE; nothing was written",
                ids.file.display(),
                ids.fingerprints().join(", ")
            ))
        }
        age::DecryptError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            verification(format!("{what}: the age header is truncated"))
        }
        age::DecryptError::UnknownFormat => verification(format!(
            "{what}: an age format this version does not know (written by a newer age?)"
        )),
        other => verification(format!("{what}: damaged age header ({other})")),
    }
}

/// True when `head` (the first bytes of a file) is an age file.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// The first bytes of a file, up to `n`.
pub fn read_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = Vec::with_capacity(n.min(1 << 16));
    f.take(n as u64)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(v)
}

/// The error for an encrypted archive and no identity.
pub fn missing_identity(what: &str, expected: &[String]) -> anyhow::Error {
    let to = if expected.is_empty() {
        String::new()
    } else {
        format!(" to {}", expected.join(", "))
    };
    usage(format!(
        "{what} is encrypted with age{to}: give its identity (secret key file) with --identity FILE or [encryption] identity_file; nothing was written"
    ))
}

// ---- keygen ---------------------------------------------------------------

/// `keygen [--output FILE]`: a new X25519 identity written to `output` (created 0600, never
/// overwritten; `-` = stdout) in the `age-keygen` format. Prints the recipient (public
/// key) on stdout, or on stderr when the identity itself goes to stdout.
pub fn keygen(output: &Path, out: &mut dyn Write) -> Result<()> {
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let created = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    let body = format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        key.to_string().expose_secret()
    );
    if output == Path::new("-") {
        out.write_all(body.as_bytes())?;
        out.flush()?;
        eprintln!("Public key: {public}");
        return Ok(());
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            crate::fsutil::create_private_dir(dir)?;
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(output)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                usage(format!(
                    "{} already exists: keygen never overwrites a key (archives encrypted to it would be lost); choose another --output",
                    output.display()
                ))
            } else {
                anyhow::Error::new(e).context(format!("creating {}", output.display()))
            }
        })?;
    let res = (|| -> io::Result<()> {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(body.as_bytes())?;
        f.sync_all()
    })();
    drop(body);
    if let Err(e) = res {
        let _ = fs::remove_file(output);
        return Err(anyhow::Error::new(e).context(format!("writing {}", output.display())));
    }
    writeln!(out, "{public}")?;
    eprintln!(
        "wrote a new identity to {} (mode 0600); its public key (above, fingerprint {}) goes into [encryption] recipients.\n\
         Keep a copy of {} somewhere safe off this host: without it no encrypted archive can be restored.",
        output.display(),
        fingerprint(&public),
        output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_stable_and_not_the_key() {
        let k = age::x25519::Identity::generate();
        let r = k.to_public().to_string();
        let fp = fingerprint(&r);
        assert_eq!(fp.len(), "sha256:".len() + 16);
        assert_eq!(fp, fingerprint(&format!(" {r}\n")));
        assert!(!fp.contains(&r[4..20]));
    }

    #[test]
    fn secret_key_in_recipients_is_refused_without_echo() {
        let k = age::x25519::Identity::generate();
        let s = k.to_string().expose_secret().to_string();
        let e = parse_recipient(&s).unwrap_err();
        assert!(e.contains("not a secret key"), "{e}");
        assert!(!e.contains(&s[15..30]));
        assert!(parse_recipient("age1nope").is_err());
        assert!(parse_recipient(&k.to_public().to_string()).is_ok());
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let tmp = tempfile::tempdir().unwrap();
        let k = age::x25519::Identity::generate();
        let recips = Recipients::parse(&[k.to_public().to_string()]).unwrap();
        let mut w = recips.wrap(Vec::new()).unwrap();
        w.write_all(b"hello").unwrap();
        let ct = w.finish().unwrap();
        assert!(is_age(&ct));

        let ids = Identities::from_key(&tmp.path().join("k"), k);
        assert_eq!(ids.check_header(&ct, "x", &[]).unwrap(), HeaderCheck::Ok);
        assert_eq!(
            ids.check_header(&ct[..20], "x", &[]).unwrap(),
            HeaderCheck::Ok
        );
        let mut pt = String::new();
        ids.decrypt(&ct[..], "x", &[])
            .unwrap()
            .read_to_string(&mut pt)
            .unwrap();
        assert_eq!(pt, "hello");

        let other = Identities::from_key(&tmp.path().join("o"), age::x25519::Identity::generate());
        let e = other
            .check_header(&ct, "x", &["sha256:1".into()])
            .unwrap_err();
        assert_eq!(crate::error::Exit::of(&e), crate::error::Exit::Usage);
        assert!(e.to_string().contains("wrong identity"), "{e}");
        assert!(e.to_string().contains("sha256:1"), "{e}");
        assert_eq!(
            other.check_header(b"\x1f\x8b", "x", &[]).unwrap(),
            HeaderCheck::NotAge
        );
    }

    #[test]
    fn identity_file_errors_never_show_content() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("key.txt");
        fs::write(&p, "# c\nAGE-SECRET-KEY-1NOTAREALKEYATALLXYZ\n").unwrap();
        // Others may read it: refused before it is read.
        let e = Identities::load(&p).unwrap_err();
        assert_eq!(crate::error::Exit::of(&e), crate::error::Exit::Usage);
        assert!(
            e.to_string().contains("chmod 600") && !e.to_string().contains("NOTAREAL"),
            "{e}"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = Identities::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("NOTAREAL"), "{e}");
        let e = Identities::load(&tmp.path().join("missing")).unwrap_err();
        assert_eq!(crate::error::Exit::of(&e), crate::error::Exit::Usage);
    }

    #[test]
    fn keygen_writes_0600_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("sub/key.txt");
        let mut out = Vec::new();
        keygen(&p, &mut out).unwrap();
        let public = String::from_utf8(out).unwrap().trim().to_string();
        assert!(public.starts_with("age1"));
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let ids = Identities::load(&p).unwrap();
        assert_eq!(ids.recipients(), vec![public]);
        let before = fs::read(&p).unwrap();
        assert!(keygen(&p, &mut Vec::new()).is_err());
        assert_eq!(fs::read(&p).unwrap(), before);
    }
}
