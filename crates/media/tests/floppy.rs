//! The FAT12 floppy: readable by mtools, clean for fsck.fat, reproducible.

mod common;

use std::process::Command;

use common::{run, run_ok, tool, TEST_KEY};
use media::floppy::{build_floppy, FloppyError, FloppyFile, FloppyOptions, FLOPPY_SIZE};
use media::windows::{self, scripts, Profile, Secret, WindowsSettings};

fn settings() -> WindowsSettings {
    WindowsSettings::new(Profile::Windows, Secret::new("floppy-pass"), TEST_KEY)
}

fn media_floppy() -> (Vec<u8>, windows::MediaFile, Vec<windows::MediaFile>) {
    let s = settings();
    let answer = windows::answer_file(&s).unwrap();
    let scripts = scripts::bootstrap_files(&s).unwrap();
    let img = windows::floppy_image(&answer, &scripts).unwrap();
    (img, answer, scripts)
}

/// Fails unless mtools reads each of `files` back from the image at `path`, byte for byte.
fn assert_holds<'a>(
    mtype: &std::path::Path,
    path: &std::path::Path,
    files: impl IntoIterator<Item = &'a windows::MediaFile>,
) {
    for f in files {
        let out = run(Command::new(mtype)
            .arg("-i")
            .arg(path)
            .arg(format!("::/{}", f.name)));
        assert!(out.status.success(), "mtype {}", f.name);
        assert_eq!(out.stdout, f.data, "{} differs", f.name);
    }
}

#[test]
fn floppy_is_readable_by_mtools_and_clean_for_fsck() {
    let mdir = tool("mdir", "mtools");
    let mtype = tool("mtype", "mtools");
    let fsck = tool("fsck.fat", "dosfstools");
    let dir = tempfile::tempdir().unwrap();
    let (img, answer, scripts) = media_floppy();
    assert_eq!(img.len(), FLOPPY_SIZE);
    let path = dir.path().join("floppy.img");
    std::fs::write(&path, &img).unwrap();

    let listing = run_ok(
        Command::new(&mdir)
            .arg("-i")
            .arg(&path)
            .arg("::")
            .env("MTOOLS_SKIP_CHECK", "0"),
    );
    for name in [
        "Autounattend.xml",
        "bootstrap.cmd",
        "bootstrap.sh",
        "authorized_keys",
    ] {
        assert!(listing.contains(name), "{name} not in:\n{listing}");
    }
    assert!(
        listing.contains("GUESTBOX"),
        "volume label missing:\n{listing}"
    );
    assert!(
        listing.contains("6775-6278"),
        "volume id missing:\n{listing}"
    );

    assert_eq!(answer.name, "Autounattend.xml");
    assert_holds(&mtype, &path, std::iter::once(&answer).chain(&scripts));

    run_ok(Command::new(&fsck).arg("-n").arg(&path));
}

#[test]
fn floppy_is_byte_identical_for_the_same_inputs() {
    let (a, _, _) = media_floppy();
    // Cross a FAT timestamp tick (2 s): a leaked clock would show.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (b, _, _) = media_floppy();
    assert!(a == b, "two floppies from the same inputs differ");
    // And the boot sector carries the fixed volume id.
    assert_eq!(&a[39..43], &0x6775_6278u32.to_le_bytes());
}

#[test]
fn floppy_file_order_does_not_matter() {
    let f1 = FloppyFile::new("b.txt", b"bee".to_vec());
    let f2 = FloppyFile::new("a.txt", b"ay".to_vec());
    let one = build_floppy(&[f1.clone(), f2.clone()], &FloppyOptions::default()).unwrap();
    let two = build_floppy(&[f2, f1], &FloppyOptions::default()).unwrap();
    assert!(one == two);
}

#[test]
fn floppy_errors() {
    let big = FloppyFile::new("big.bin", vec![0u8; FLOPPY_SIZE]);
    assert!(matches!(
        build_floppy(&[big], &FloppyOptions::default()),
        Err(FloppyError::TooLarge { .. })
    ));
    let dup = [
        FloppyFile::new("A.txt", vec![]),
        FloppyFile::new("a.TXT", vec![]),
    ];
    assert!(matches!(
        build_floppy(&dup, &FloppyOptions::default()),
        Err(FloppyError::Duplicate { .. })
    ));
    let bad = [FloppyFile::new("a/b", vec![])];
    assert!(matches!(
        build_floppy(&bad, &FloppyOptions::default()),
        Err(FloppyError::BadName { .. })
    ));
    let label = FloppyOptions {
        label: "lower".to_owned(),
        ..FloppyOptions::default()
    };
    assert!(build_floppy(&[], &label).is_err());
}

#[test]
fn a_missing_tool_fails_the_test_and_names_the_package() {
    let err =
        std::panic::catch_unwind(|| tool("guestbox-no-such-tool", "some-package")).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("apt-get install some-package"), "{msg}");
}

#[test]
fn xp_floppy_is_readable_by_mtools_and_clean_for_fsck() {
    let mdir = tool("mdir", "mtools");
    let mtype = tool("mtype", "mtools");
    let fsck = tool("fsck.fat", "dosfstools");
    let mut s = WindowsSettings::new(Profile::WindowsXp, Secret::new("xp-pass"), TEST_KEY);
    s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".to_owned());
    let answer = windows::answer_file(&s).unwrap();
    let scripts = scripts::bootstrap_files(&s).unwrap();
    let img = windows::floppy_image(&answer, &scripts).unwrap();
    assert_eq!(img.len(), FLOPPY_SIZE);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floppy.img");
    std::fs::write(&path, &img).unwrap();

    let listing = run_ok(Command::new(&mdir).arg("-i").arg(&path).arg("::"));
    for name in [
        "winnt.sif",
        "bootstrap.cmd",
        "bootstrap.sh",
        "authorized_keys",
    ] {
        assert!(listing.contains(name), "{name} not in:\n{listing}");
    }
    assert!(!listing.contains("Autounattend"), "{listing}");
    // Setup reads A:\winnt.sif by its 8.3 name: it must be one.
    assert!(
        listing.contains("WINNT    SIF") || listing.contains("winnt    sif"),
        "{listing}"
    );
    assert_eq!(answer.name, "winnt.sif");
    assert!(String::from_utf8_lossy(&answer.data).contains("UnattendMode=FullUnattended\r\n"));
    assert_holds(&mtype, &path, std::iter::once(&answer).chain(&scripts));
    run_ok(Command::new(&fsck).arg("-n").arg(&path));

    // Same inputs, same bytes.
    let again = windows::floppy_image(&windows::answer_file(&s).unwrap(), &scripts).unwrap();
    assert!(img == again, "two XP floppies from the same inputs differ");
}
