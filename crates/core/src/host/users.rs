//! Who guestbox runs as, and the accounts it hands work to: root or not, the user who
//! invoked it through sudo, the owner of a directory, a named system user.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{IoContext, Result};

/// A user and group id pair (what `-runas uid:gid` and chown take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

impl Ids {
    /// The effective ids of this process.
    pub fn current() -> Ids {
        // SAFETY: plain syscalls without arguments; they cannot fail.
        unsafe {
            Ids {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        }
    }

    pub fn is_root(self) -> bool {
        self.uid == 0
    }

    /// The owner of `path` (not following a final symlink).
    pub fn owner_of(path: &Path) -> Result<Ids> {
        let md = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
        Ok(Ids {
            uid: md.uid(),
            gid: md.gid(),
        })
    }

    /// The account `name` of the password database, if it exists.
    pub fn of_user(name: &str) -> Option<Ids> {
        let c = CString::new(name).ok()?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0u8; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; getpwnam_r writes only into `pwd`
        // and `buf` (whose length it is told) and sets `out` to `&pwd` or null.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (rc == 0 && !out.is_null()).then_some(Ids {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }

    /// `uid:gid`, as QEMU's `-runas` and `-run-with user=` take it. Numbers, not a name:
    /// QEMU then sets exactly these two ids and no supplementary groups (with a name it
    /// would add every group of the account).
    pub fn qemu_form(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// The account name of `uid` in the password database, if it has one.
pub fn name_of_uid(uid: u32) -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r writes only into `pwd` and
    // `buf` (whose length it is told) and sets `out` to `&pwd` or null; the name is read
    // from `buf` while it lives.
    unsafe {
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out);
        if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// The login name of this process's real user, for messages (`$USER` may be anything).
pub fn current_user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid {}", libc::getuid());
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Gives `path` (not following symlinks) to `ids`.
pub fn chown(path: &Path, ids: Ids) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid)).ctx(|| {
        format!(
            "giving {} to uid {} gid {}",
            path.display(),
            ids.uid,
            ids.gid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_a_made_up_user_does_not() {
        assert_eq!(Ids::of_user("root"), Some(Ids { uid: 0, gid: 0 }));
        assert_eq!(Ids::of_user("guestbox-no-such-user"), None);
        assert_eq!(Ids::of_user("bad\0name"), None);
        assert_eq!(Ids { uid: 7, gid: 8 }.qemu_form(), "7:8");
    }

    #[test]
    fn a_new_file_belongs_to_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let me = Ids::current();
        assert_eq!(Ids::owner_of(dir.path()).unwrap(), me);
    }
}
