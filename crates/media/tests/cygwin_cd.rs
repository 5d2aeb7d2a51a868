//! setup.ini parsing, the package closure, mirror verification and the
//! offline Cygwin CD as xorriso reads it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{
    fixture_mirror, fixture_packages, run_ok, setup_ini, tool, FakePackage, MIRROR_NAME, TEST_KEY,
};
use media::cygwin::{CygwinArch, CygwinError, CygwinMirror, SetupIni, CD_MARKER};
use media::iso9660::{FileSource, IsoBuilder, IsoOptions};
use media::windows::{self, Profile, Secret, WindowsSettings};

fn mirror_of(m: &common::Mirror) -> CygwinMirror {
    CygwinMirror {
        dir: m.dir.clone(),
        setup_exe: m.setup_exe.clone(),
        arch: CygwinArch::X86_64,
    }
}

fn names<'a>(pkgs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    pkgs.into_iter().map(str::to_owned).collect()
}

/// 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .map(|i| i + 1)
        .unwrap()
}

#[test]
fn parses_header_stanzas_and_multiline_strings() {
    let ini_text = setup_ini(&fixture_packages());
    let ini = SetupIni::parse(&ini_text).unwrap();
    assert_eq!(ini.header["arch"], "x86_64");
    assert_eq!(ini.header["setup-timestamp"], "1717243200");
    assert_eq!(ini.packages.len(), 8);
    let ssh = &ini.packages["openssh"];
    assert_eq!(ssh.line, line_of(&ini_text, "@ openssh"));
    assert_eq!(ssh.sdesc.as_deref(), Some("The openssh package"));
    let ldesc = ssh.ldesc.as_deref().unwrap();
    assert!(
        ldesc.starts_with("The openssh package.\n") && ldesc.ends_with("one like a key."),
        "{ldesc:?}"
    );
    assert_eq!(ssh.categories, ["Net"]);
    assert_eq!(ssh.depends, ["libfoo", "cygrunsrv", "perl_base"]);
    assert_eq!(ssh.version.as_deref(), Some("1.0-1"));
    // The current install line, not [prev]'s or [test]'s.
    let inst = ssh.install.as_ref().unwrap();
    assert_eq!(inst.path, "x86_64/release/openssh/openssh-1.0-1.tar.xz");
    assert_eq!(
        inst.line,
        line_of(&ini_text, "install: x86_64/release/openssh/openssh-1.0")
    );
    assert_eq!(ini.packages["base-a"].categories, ["Base", "System"]);
    assert_eq!(ini.packages["perl"].provides, ["perl_base"]);
    // The "@ and has a line..." inside ldesc did not start a package.
    assert!(!ini.packages.contains_key("and"));
}

#[test]
fn closure_follows_requires_depends2_provides_base_and_cycles() {
    let ini = SetupIni::parse(&setup_ini(&fixture_packages())).unwrap();
    let got: BTreeSet<String> = ini
        .closure(&["openssh"])
        .unwrap()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        got,
        names([
            "base-a",
            "base-b",
            "cygrunsrv",
            "libbar",
            "libfoo",
            "openssh",
            "perl"
        ])
    );
    // Base alone when nothing is asked for.
    let base: BTreeSet<String> = ini
        .closure::<&str>(&[])
        .unwrap()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(base, names(["base-a", "base-b"]));
    // A cycle entered from its other side.
    let cyc: BTreeSet<String> = ini
        .closure(&["libbar"])
        .unwrap()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(cyc, names(["base-a", "base-b", "libbar", "libfoo"]));
    // Sorted by name.
    let order: Vec<String> = ini
        .closure(&["openssh"])
        .unwrap()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn missing_packages_name_who_wanted_them() {
    let mut pkgs = fixture_packages();
    pkgs[3].requires = "libbar libghost";
    let text = setup_ini(&pkgs);
    let ini = SetupIni::parse(&text).unwrap();
    match ini.closure(&["openssh"]) {
        Err(e @ CygwinError::MissingPackage { .. }) => {
            let msg = e.to_string();
            let line = line_of(&text, "@ libfoo");
            assert!(
                msg.contains("\"libghost\"")
                    && msg.contains("\"libfoo\"")
                    && msg.contains(&format!("line {line}")),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    match ini.closure(&["nosuchpkg"]) {
        Err(CygwinError::MissingPackage { name, required_by }) => {
            assert_eq!(name, "nosuchpkg");
            assert_eq!(required_by, None);
        }
        other => panic!("{other:?}"),
    }
}

fn malformed(text: &str) -> (usize, Option<String>, String) {
    match SetupIni::parse(text) {
        Err(CygwinError::Malformed {
            line,
            package,
            reason,
        }) => (line, package, reason),
        other => panic!("expected a malformed error, got {other:?}"),
    }
}

#[test]
fn malformed_setup_ini_errors_name_line_and_package() {
    let good = setup_ini(&fixture_packages());
    let at = |prefix: &str| line_of(&good, prefix);

    // An install line with a field missing.
    let text = good.replacen(
        "install: x86_64/release/libfoo/libfoo-1.0-1.tar.xz ",
        "install: x86_64/release/libfoo/libfoo-1.0-1.tar.xz",
        1,
    );
    let (line, pkg, reason) = malformed(&text);
    assert_eq!(
        (line, pkg.as_deref()),
        (
            at("install: x86_64/release/libfoo/libfoo-1.0"),
            Some("libfoo")
        )
    );
    assert!(reason.contains("install"), "{reason}");
    let msg = SetupIni::parse(&text).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("line {line}")) && msg.contains("libfoo"),
        "{msg}"
    );

    // A bad size.
    let text = good.replacen(
        "install: x86_64/release/perl/perl-1.0-1.tar.xz ",
        "install: x86_64/release/perl/perl-1.0-1.tar.xz 12x",
        1,
    );
    let (line, pkg, _) = malformed(&text);
    assert_eq!(
        (line, pkg.as_deref()),
        (at("install: x86_64/release/perl/perl-1.0"), Some("perl"))
    );

    // An MD5 where a SHA-512 belongs.
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let i = at("install: x86_64/release/cygrunsrv/cygrunsrv-1.0") - 1;
    let fields: Vec<&str> = lines[i].split(' ').collect();
    lines[i] = format!(
        "{} {} {} {}",
        fields[0], fields[1], fields[2], "d41d8cd98f00b204e9800998ecf8427e"
    );
    let (line, pkg, reason) = malformed(&lines.join("\n"));
    assert_eq!((line, pkg.as_deref()), (i + 1, Some("cygrunsrv")));
    assert!(reason.contains("MD5"), "{reason}");

    // A quoted string that never closes: the line where it opened.
    let text = format!("{good}@ broken\nsdesc: \"never closed\ncategory: Base\n");
    let (line, pkg, reason) = malformed(&text);
    assert_eq!(
        (line, pkg.as_deref()),
        (good.lines().count() + 2, Some("broken"))
    );
    assert!(reason.contains("never closed"), "{reason}");

    // A line that is nothing setup.ini knows.
    let text = good.replacen("category: Libs\n", "category: Libs\nthis is junk\n", 1);
    let (line, pkg, _) = malformed(&text);
    assert_eq!(
        (line, pkg.as_deref()),
        (at("category: Libs") + 1, Some("libfoo"))
    );

    // A package defined twice.
    let text = format!("{good}@ perl\ncategory: Perl\n");
    let (line, pkg, reason) = malformed(&text);
    assert_eq!(
        (line, pkg.as_deref()),
        (good.lines().count() + 1, Some("perl"))
    );
    assert!(
        reason.contains("twice") && reason.contains(&format!("line {}", at("@ perl"))),
        "{reason}"
    );

    // A path escaping the mirror.
    let text = good.replacen(
        "install: x86_64/release/perl/perl-1.0-1.tar.xz",
        "install: ../../etc/passwd",
        1,
    );
    let (_, pkg, reason) = malformed(&text);
    assert_eq!(pkg.as_deref(), Some("perl"));
    assert!(reason.contains("bad path"), "{reason}");
}

#[test]
fn mirror_verification_catches_missing_short_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_mirror(dir.path());
    let ini_text = std::fs::read_to_string(m.dir.join("x86_64/setup.ini")).unwrap();
    let cyg = mirror_of(&m);
    let want = vec!["openssh".to_owned()];
    let repo = cyg.resolve(&want).unwrap();
    assert_eq!(repo.mirror_name, MIRROR_NAME);
    assert_eq!(
        repo.packages
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        [
            "base-a",
            "base-b",
            "cygrunsrv",
            "libbar",
            "libfoo",
            "openssh",
            "perl"
        ]
        .into()
    );
    let paths: Vec<&str> = repo.files.iter().map(|f| f.cd_path.as_str()).collect();
    assert!(paths.contains(&"setup-x86_64.exe"));
    assert!(paths.contains(&format!("{MIRROR_NAME}/x86_64/setup.ini").as_str()));
    assert!(paths
        .contains(&format!("{MIRROR_NAME}/x86_64/release/libbar/libbar-1.0-1.tar.xz").as_str()));
    assert!(!paths.iter().any(|p| p.contains("unrelated")));

    let libfoo = m.dir.join("x86_64/release/libfoo/libfoo-1.0-1.tar.xz");
    let install_line = line_of(&ini_text, "install: x86_64/release/libfoo/libfoo-1.0");
    let original = std::fs::read(&libfoo).unwrap();

    // Same size, one byte flipped: the checksum catches it.
    let mut corrupt = original.clone();
    corrupt[10] ^= 1;
    std::fs::write(&libfoo, &corrupt).unwrap();
    match cyg.resolve(&want) {
        Err(e @ CygwinError::ChecksumMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"libfoo\"") && msg.contains(&format!("line {install_line}")),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Truncated: the size catches it.
    std::fs::write(&libfoo, &original[..5]).unwrap();
    match cyg.resolve(&want) {
        Err(CygwinError::SizeMismatch {
            package,
            line,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(
                (package.as_str(), line, actual),
                ("libfoo", install_line, 5)
            );
            assert_eq!(expected, original.len() as u64);
        }
        other => panic!("{other:?}"),
    }

    // Gone.
    std::fs::remove_file(&libfoo).unwrap();
    match cyg.resolve(&want) {
        Err(e @ CygwinError::MissingFile { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"libfoo\"") && msg.contains(&format!("line {install_line}")),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

fn build_cd(root: &Path) -> Vec<u8> {
    let m = fixture_mirror(root);
    let repo = mirror_of(&m).resolve(&["openssh".to_owned()]).unwrap();
    let extra = vec![(
        "bootstrap.sh".to_owned(),
        b"#!/bin/bash\necho hi\n".to_vec(),
    )];
    repo.iso(&extra).unwrap().to_vec().unwrap()
}

fn xorriso_find(iso: &Path, read_fs: &str) -> BTreeSet<String> {
    let xorriso = tool("xorriso", "xorriso");
    let out = run_ok(
        Command::new(xorriso)
            .args(["-read_fs", read_fs, "-indev"])
            .arg(iso)
            .args(["-find", "/", "-type", "f"]),
    );
    out.lines()
        .filter_map(|l| l.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')))
        .map(str::to_owned)
        .collect()
}

#[test]
fn cd_lists_rock_ridge_joliet_and_iso_names_in_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("cygwin.iso");
    std::fs::write(&iso, build_cd(&dir.path().join("src"))).unwrap();

    let mut expected: BTreeSet<String> = [
        "/setup-x86_64.exe".to_owned(),
        format!("/{CD_MARKER}"),
        "/bootstrap.sh".to_owned(),
        format!("/{MIRROR_NAME}/x86_64/setup.ini"),
    ]
    .into();
    for p in [
        "base-a",
        "base-b",
        "cygrunsrv",
        "libbar",
        "libfoo",
        "openssh",
        "perl",
    ] {
        expected.insert(format!(
            "/{MIRROR_NAME}/x86_64/release/{p}/{p}-1.0-1.tar.xz"
        ));
    }
    // Rock Ridge (xorriso's default) and Joliet (what Windows reads) both
    // carry the real names.
    assert_eq!(xorriso_find(&iso, "any"), expected);
    assert_eq!(xorriso_find(&iso, "norock"), expected);
    // The plain ISO 9660 tree has mangled level 1 names.
    let plain = xorriso_find(&iso, "ecma119");
    assert_eq!(plain.len(), expected.len());
    assert!(plain.contains("/SETUP_X8.EXE"), "{plain:?}");
    for p in &plain {
        let name = p.rsplit('/').next().unwrap();
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        assert!(stem.len() <= 8 && ext.len() <= 3, "not 8.3: {p}");
        assert!(
            p.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_./".contains(c)),
            "{p}"
        );
    }
}

#[test]
fn cd_file_contents_round_trip_through_xorriso() {
    let xorriso = tool("xorriso", "xorriso");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let iso = dir.path().join("cygwin.iso");
    std::fs::write(&iso, build_cd(&src)).unwrap();
    let out = dir.path().join("out");
    for read_fs in ["any", "norock"] {
        let _ = std::fs::remove_dir_all(&out);
        run_ok(
            Command::new(&xorriso)
                .args(["-osirrox", "on", "-read_fs", read_fs, "-indev"])
                .arg(&iso)
                .args(["-extract", "/"])
                .arg(&out),
        );
        let ini = format!("{MIRROR_NAME}/x86_64/setup.ini");
        assert_eq!(
            std::fs::read(out.join(&ini)).unwrap(),
            std::fs::read(src.join(&ini)).unwrap()
        );
        let pkg = format!("{MIRROR_NAME}/x86_64/release/perl/perl-1.0-1.tar.xz");
        assert_eq!(
            std::fs::read(out.join(&pkg)).unwrap(),
            std::fs::read(src.join(&pkg)).unwrap()
        );
        assert_eq!(
            std::fs::read(out.join("bootstrap.sh")).unwrap(),
            b"#!/bin/bash\necho hi\n"
        );
        // chmod so the tempdir can be removed (xorriso keeps RR modes).
        run_ok(Command::new("chmod").args(["-R", "u+rwX"]).arg(&out));
    }
}

#[test]
fn cd_is_byte_identical_for_the_same_inputs() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = build_cd(d1.path());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build_cd(d2.path());
    assert!(a == b, "two CDs from the same inputs differ");
    assert_eq!(a.len() % 2048, 0);
}

#[test]
fn iso_writer_handles_many_files_long_names_and_deep_trees() {
    // Enough entries that directories span several sectors, names long
    // enough for Rock Ridge continuation areas, and the deepest legal tree.
    let mut b = IsoBuilder::new(IsoOptions::default());
    let mut expected = BTreeSet::new();
    for i in 0..150 {
        let p = format!(
            "many/file-with-a-fairly-long-name-number-{i:03}-{}.tar.xz",
            "z".repeat(i % 40)
        );
        b.add_file(&p, FileSource::Bytes(format!("{i}").into_bytes()))
            .unwrap();
        expected.insert(format!("/{p}"));
    }
    let long = format!("long/{}", "n".repeat(100));
    b.add_file(&long, FileSource::Bytes(vec![1, 2, 3])).unwrap();
    expected.insert(format!("/{long}"));
    b.add_file(
        "1/2/3/4/5/6/7/deep.txt",
        FileSource::Bytes(b"deep".to_vec()),
    )
    .unwrap();
    expected.insert("/1/2/3/4/5/6/7/deep.txt".to_owned());
    b.add_file("empty", FileSource::Bytes(Vec::new())).unwrap();
    expected.insert("/empty".to_owned());

    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("t.iso");
    std::fs::write(&iso, b.to_vec().unwrap()).unwrap();
    assert_eq!(xorriso_find(&iso, "any"), expected);
    assert_eq!(xorriso_find(&iso, "norock"), expected);
    assert_eq!(xorriso_find(&iso, "ecma119").len(), expected.len());
}

#[test]
fn install_media_for_the_windows_profile() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_mirror(&dir.path().join("src"));
    let settings = WindowsSettings::new(Profile::Windows, Secret::new("media-pass"), TEST_KEY);
    let media = windows::build_install_media(&settings, &mirror_of(&m)).unwrap();
    assert_eq!(media.answer_file.name, "Autounattend.xml");
    assert_eq!(media.ssh_user, "guestbox");
    let names: Vec<&str> = media.scripts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["bootstrap.cmd", "bootstrap.sh", "authorized_keys"]);
    assert!(media.repo.packages.contains(&"openssh".to_owned()));

    let out = dir.path().join("emit");
    let emitted = media.write_to_dir(&out).unwrap();
    assert_eq!(std::fs::read(&emitted.floppy).unwrap(), media.floppy);
    assert_eq!(
        std::fs::read(&emitted.answer_file).unwrap(),
        media.answer_file.data
    );
    assert_eq!(
        std::fs::read(&emitted.cygwin_iso).unwrap(),
        media.cygwin_cd.to_vec().unwrap()
    );
    assert_eq!(emitted.scripts.len(), 3);
    for p in &emitted.scripts {
        assert!(p.is_file());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&emitted.answer_file), 0o600);
        assert_eq!(mode(&emitted.floppy), 0o600);
    }
    // The CD carries the scripts at its root too.
    let listing = xorriso_find(&emitted.cygwin_iso, "norock");
    assert!(
        listing.contains("/bootstrap.cmd") && listing.contains("/authorized_keys"),
        "{listing:?}"
    );
    assert!(!listing.iter().any(|p| p.contains("Autounattend")));
}

#[test]
fn install_media_for_windows_xp_needs_a_32_bit_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_mirror(dir.path());
    let mut settings = WindowsSettings::new(Profile::WindowsXp, Secret::new("xp"), TEST_KEY);
    settings.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".to_owned());
    let e = windows::build_install_media(&settings, &mirror_of(&m))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x86_64") && e.contains("x86"), "{e}");

    // An x86 mirror works.
    let pkgs: Vec<FakePackage> = fixture_packages();
    let ini = setup_ini(&pkgs).replace("x86_64", "x86");
    let root = dir.path().join("x86");
    let dir32 = root.join(MIRROR_NAME);
    std::fs::create_dir_all(dir32.join("x86")).unwrap();
    std::fs::write(dir32.join("x86/setup.ini"), &ini).unwrap();
    for p in &pkgs {
        let path = dir32.join(p.archive_path().replace("x86_64", "x86"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, p.contents()).unwrap();
    }
    std::fs::write(root.join("setup-x86.exe"), b"MZ").unwrap();
    let cyg = CygwinMirror {
        dir: dir32,
        setup_exe: root.join("setup-x86.exe"),
        arch: CygwinArch::X86,
    };
    let media = windows::build_install_media(&settings, &cyg).unwrap();
    assert_eq!(media.answer_file.name, "winnt.sif");
    assert_eq!(media.ssh_user, "Administrator");
}
