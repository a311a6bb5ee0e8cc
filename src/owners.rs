//! User and group names ↔ numeric ids of this host (`getpwnam_r` and friends), for the
//! names GNU tar stores beside the numeric owner of every entry.

use std::ffi::{CStr, CString};

/// The buffer the `get*_r` calls fill: grown on `ERANGE`.
fn lookup<T>(mut call: impl FnMut(&mut [libc::c_char], *mut *mut T) -> libc::c_int) -> bool {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let mut out: *mut T = std::ptr::null_mut();
        match call(&mut buf, &mut out) {
            0 => return !out.is_null(),
            libc::ERANGE if size < (1 << 20) => size *= 4,
            _ => return false,
        }
    }
}

/// The uid of user `name` on this host, if there is one.
pub fn uid_of_name(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    lookup(|buf, out| unsafe {
        libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), out)
    })
    .then_some(pw.pw_uid)
}

/// The gid of group `name` on this host, if there is one.
pub fn gid_of_name(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    lookup(|buf, out| unsafe {
        libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), out)
    })
    .then_some(gr.gr_gid)
}

/// The name of user `uid` on this host, if it has one.
pub fn user_name(uid: u32) -> Option<Vec<u8>> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut name = None;
    lookup(|buf, out| {
        let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), out) };
        if r == 0 && !out.is_null() && !pw.pw_name.is_null() {
            name = Some(unsafe { CStr::from_ptr(pw.pw_name) }.to_bytes().to_vec());
        }
        r
    });
    name
}

/// The name of group `gid` on this host, if it has one.
pub fn group_name(gid: u32) -> Option<Vec<u8>> {
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut name = None;
    lookup(|buf, out| {
        let r = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), out) };
        if r == 0 && !out.is_null() && !gr.gr_name.is_null() {
            name = Some(unsafe { CStr::from_ptr(gr.gr_name) }.to_bytes().to_vec());
        }
        r
    });
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_zero_both_ways() {
        assert_eq!(uid_of_name(b"root"), Some(0));
        assert_eq!(user_name(0).as_deref(), Some(&b"root"[..]));
        assert_eq!(uid_of_name(b"no-such-user-pronto"), None);
    }
}
