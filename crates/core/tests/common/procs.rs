//! Finding processes by what they name or hold open (shared with the CLI's tests).

/// PIDs of processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) || (text.contains("qemu-system") && holds_file_under(pid, needle))
        {
            out.push(pid);
        }
    }
    out
}

/// Whether process `pid` has a descriptor open on a path containing `needle`:
/// a QEMU that is root of a user namespace names no path on its command line, but holds
/// its disks and its run directory open. (Asked of QEMUs only: guestbox itself holds its
/// run directories open too.)
pub fn holds_file_under(pid: u32, needle: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| target.to_string_lossy().contains(needle))
}
