//! POSIX ACLs between the kernel's form (the `system.posix_acl_access` and
//! `system.posix_acl_default` extended attributes) and GNU tar's text form (the pax records
//! `SCHILY.acl.access` and `SCHILY.acl.default`, as `tar --acls` writes and reads them).
//!
//! A backup stores both forms, as `tar --xattrs --acls` does: the raw attribute restores
//! the exact numeric ids, the text lets `tar --acls -x` restore the ACL too. A restore of
//! an archive that has only the text (made by `tar --acls`) turns it back into the
//! attribute.
//!
//! The kernel's form (`linux/posix_acl_xattr.h`): a little-endian `u32` version (2), then
//! one 8-byte entry per line of the ACL: `u16` tag, `u16` permissions (r 4, w 2, x 1),
//! `u32` id (a user or group id for the named entries, unused otherwise).

/// The extended attribute of an ACL and the pax record of its text.
pub const KINDS: [(&str, &str); 2] = [
    ("system.posix_acl_access", "SCHILY.acl.access"),
    ("system.posix_acl_default", "SCHILY.acl.default"),
];

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNUSED_ID: u32 = u32::MAX;

/// Which kind of id a named entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    User,
    Group,
}

/// The text form of a kernel ACL, one `tag:qualifier:perms` line per entry in the kernel's
/// order, as `acl_to_text` writes it (`user:alice:r--`): `name` gives the name of a named
/// entry's id, the number is written where it has none. `None`: not an ACL this code knows.
pub fn to_text(raw: &[u8], mut name: impl FnMut(Who, u32) -> Option<String>) -> Option<String> {
    let body = raw.strip_prefix(&VERSION.to_le_bytes())?;
    if body.is_empty() || body.len() % 8 != 0 {
        return None;
    }
    let mut text = String::new();
    for e in body.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let (word, qualifier) = match tag {
            USER_OBJ => ("user", String::new()),
            USER => (
                "user",
                escape(&name(Who::User, id).unwrap_or_else(|| id.to_string())),
            ),
            GROUP_OBJ => ("group", String::new()),
            GROUP => (
                "group",
                escape(&name(Who::Group, id).unwrap_or_else(|| id.to_string())),
            ),
            MASK => ("mask", String::new()),
            OTHER => ("other", String::new()),
            _ => return None,
        };
        if perm > 7 {
            return None;
        }
        let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
        text.push_str(&format!(
            "{word}:{qualifier}:{}{}{}\n",
            bit(4, 'r'),
            bit(2, 'w'),
            bit(1, 'x')
        ));
    }
    Some(text)
}

/// The kernel form of an ACL in text form (`to_text`'s, or `acl_to_text`'s long or short
/// form: entries separated by newlines or commas, `u`/`g`/`m`/`o` for the tags, `#`
/// comments such as `#effective:r--`). `id` resolves a named entry's qualifier, a name or
/// a number, to this host's id. `None`: not an ACL (a malformed line, an unknown name).
pub fn from_text(text: &str, mut id: impl FnMut(Who, &str) -> Option<u32>) -> Option<Vec<u8>> {
    let mut entries: Vec<(u16, u16, u32)> = Vec::new();
    for line in text.split(['\n', ',']) {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // star and bsdtar add a fourth field (the numeric id); GNU tar ignores it too.
        let mut parts = line.split(':');
        let (tag, qualifier, perms) = (parts.next()?, parts.next()?, parts.next()?);
        let qualifier = unescape(qualifier.trim());
        let mut perm = 0u16;
        for c in perms.trim().chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => return None,
            };
        }
        let entry = match (tag.trim(), qualifier.as_str()) {
            ("user" | "u", "") => (USER_OBJ, perm, UNUSED_ID),
            ("user" | "u", q) => (USER, perm, id(Who::User, q)?),
            ("group" | "g", "") => (GROUP_OBJ, perm, UNUSED_ID),
            ("group" | "g", q) => (GROUP, perm, id(Who::Group, q)?),
            ("mask" | "m", "") => (MASK, perm, UNUSED_ID),
            ("other" | "o", "") => (OTHER, perm, UNUSED_ID),
            _ => return None,
        };
        entries.push(entry);
    }
    if entries.is_empty() {
        return None;
    }
    // The kernel wants them ordered by tag, then id.
    entries.sort_by_key(|&(tag, _, id)| (tag, id));
    let mut raw = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        raw.extend_from_slice(&tag.to_le_bytes());
        raw.extend_from_slice(&perm.to_le_bytes());
        raw.extend_from_slice(&id.to_le_bytes());
    }
    Some(raw)
}

/// A name as libacl writes it in an ACL's text: whitespace, `:`, `,`, `#` and a backslash
/// as a backslash and three octal digits (`domain users` is `domain\040users`).
fn escape(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_whitespace() || matches!(b, b':' | b',' | b'#' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// The name an escaped qualifier stands for (see [`escape`]); bytes that are not a
/// three-digit octal escape stay as they are.
fn unescape(q: &str) -> String {
    let b = q.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: u8| (b'0'..=b'7').contains(&c);
        if b[i] == b'\\' && b.len() >= i + 4 && b[i + 1..i + 4].iter().all(|c| octal(*c)) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute `setfacl -m u:65534:r,g:0:rw f` leaves on a 0644 file (read back from
    /// ext4 with `getfattr`), and GNU tar's text of it.
    const RAW: &[u8] = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff\x02\x00\x04\x00\xfe\xff\x00\x00\x04\x00\x04\x00\xff\xff\xff\xff\x08\x00\x06\x00\x00\x00\x00\x00\x10\x00\x06\x00\xff\xff\xff\xff \x00\x04\x00\xff\xff\xff\xff";
    const TAR_TEXT: &str =
        "user::rw-\nuser:nobody:r--\ngroup::r--\ngroup:root:rw-\nmask::rw-\nother::r--\n";

    fn names(who: Who, id: u32) -> Option<String> {
        match (who, id) {
            (Who::User, 65534) => Some("nobody".into()),
            (Who::Group, 0) => Some("root".into()),
            _ => None,
        }
    }

    fn ids(who: Who, q: &str) -> Option<u32> {
        match (who, q) {
            (Who::User, "nobody") => Some(65534),
            (Who::Group, "root") => Some(0),
            _ => q.parse().ok(),
        }
    }

    #[test]
    fn the_kernel_form_reads_as_gnu_tar_writes_it_and_back() {
        assert_eq!(to_text(RAW, names).as_deref(), Some(TAR_TEXT));
        assert_eq!(from_text(TAR_TEXT, ids).as_deref(), Some(RAW));
    }

    #[test]
    fn an_id_without_a_name_is_written_and_read_as_its_number() {
        let text = to_text(RAW, |_, _| None).unwrap();
        assert!(
            text.contains("user:65534:r--\n") && text.contains("group:0:rw-\n"),
            "{text}"
        );
        assert_eq!(
            from_text(&text, |_, q| q.parse().ok()).as_deref(),
            Some(RAW)
        );
    }

    #[test]
    fn the_short_form_with_comments_and_any_order_is_read() {
        let short = "g:root:rw-,u::rw-,o::r--,m::rw-,u:nobody:r-- #effective:r--,g::r--";
        assert_eq!(from_text(short, ids).as_deref(), Some(RAW));
    }

    #[test]
    fn names_with_spaces_are_escaped_as_libacl_does_and_a_fourth_field_is_ignored() {
        let raw = from_text(
            "user::rw-\nuser:domain users:r--\ngroup::r--\nmask::r--\nother::---\n",
            |_, q| (q == "domain users").then_some(5000),
        )
        .unwrap();
        let text = to_text(&raw, |_, id| {
            (id == 5000).then(|| "domain users".to_string())
        })
        .unwrap();
        assert!(text.contains("user:domain\\040users:r--\n"), "{text}");
        assert_eq!(
            from_text(&text, |_, q| (q == "domain users").then_some(5000)),
            Some(raw.clone())
        );
        // star's and bsdtar's form: a fourth field with the numeric id.
        let star = "user::rw-,user:domain\\040users:r--:5000,group::r--,mask::r--,other::---";
        assert_eq!(
            from_text(star, |_, q| (q == "domain users").then_some(5000)),
            Some(raw)
        );
    }

    #[test]
    fn what_is_not_an_acl_is_refused_not_guessed() {
        assert_eq!(to_text(b"\x01\x00\x00\x00", names), None, "another version");
        assert_eq!(to_text(&RAW[..RAW.len() - 1], names), None, "a cut entry");
        assert_eq!(from_text("user::rwz\n", ids), None, "a bad permission");
        assert_eq!(
            from_text("user:nosuchuser:r--\n", ids),
            None,
            "an unknown name"
        );
        assert_eq!(from_text("owner::r--\n", ids), None, "an unknown tag");
        assert_eq!(from_text("\n", ids), None, "nothing");
    }
}
