//! The stand-in rejects broken media the way Windows Setup and Cygwin's setup would: a
//! line on COM1 naming the problem, then it powers off.
mod common;

use std::time::Duration;

use common::*;
use media::windows::{floppy_image, MediaFile};

fn install_console(guest: &Guest) -> String {
    guest.create_disk();
    let mut run = guest.start(0);
    let (_, took) = run.wait_exit(Duration::from_secs(900));
    eprintln!("install ended after {:.1} s", took.as_secs_f64());
    guest.console(0)
}

/// A `windows` BIOS guest whose floppy holds `answer` instead of the generated answer file.
fn guest_with(answer: Option<Vec<u8>>, bootstrap_cmd: Option<String>) -> Guest {
    let iso = iso();
    let flavour = Flavour::Bios;
    let s = settings(flavour);
    let dir = tempfile::Builder::new()
        .prefix("standin-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut m = media(&s, &dir.path().join("mirror"));
    if let Some(a) = answer {
        m.answer_file.data = a;
    }
    if let Some(b) = bootstrap_cmd {
        for f in &mut m.scripts {
            if f.name == "bootstrap.cmd" {
                f.data = b.clone().into_bytes();
            }
        }
    }
    m.floppy = floppy_image(&m.answer_file, &m.scripts).unwrap();
    m.write_to_dir(dir.path()).unwrap();
    Guest::with_media(dir, s, &iso.path)
}

fn generated(name: &str) -> MediaFile {
    let s = settings(Flavour::Bios);
    let dir = tempfile::tempdir().unwrap();
    let m = media(&s, dir.path());
    std::iter::once(m.answer_file)
        .chain(m.scripts)
        .find(|f| f.name == name)
        .unwrap()
}

#[test]
fn a_malformed_answer_file_stops_setup_with_a_failed_line_naming_it() {
    let good = String::from_utf8(generated("Autounattend.xml").data).unwrap();
    let broken = good
        .replace("<AdministratorPassword>", "<AdminPassword>")
        .replace("</AdministratorPassword>", "</AdminPassword>");
    let _vm = vm_lock();
    let console = install_console(&guest_with(Some(broken.into_bytes()), None));
    let line = console
        .lines()
        .find(|l| l.contains(standin::SETUP_FAILED))
        .unwrap_or_else(|| panic!("no FAILED line:\n{}", tail(&console, 30)));
    assert!(
        line.contains("the administrator password is missing"),
        "{line}"
    );
    assert!(!console.contains(media::windows::BOOTSTRAP_OK));
}

#[test]
fn a_bootstrap_command_outside_its_grammar_stops_setup() {
    let good = String::from_utf8(generated("bootstrap.cmd").data).unwrap();
    // sc wants a space after "start=": without it the real sc prints its usage.
    let broken = good.replace("start= disabled", "start=disabled");
    assert_ne!(broken, good);
    let _vm = vm_lock();
    let console = install_console(&guest_with(None, Some(broken)));
    let line = console
        .lines()
        .find(|l| l.contains(standin::SETUP_FAILED))
        .unwrap_or_else(|| panic!("no FAILED line:\n{}", tail(&console, 30)));
    assert!(
        line.contains("bootstrap.cmd line") && line.contains("start=disabled"),
        "{line}"
    );
    assert!(!console.contains(media::windows::BOOTSTRAP_OK));
}

#[test]
fn a_corrupted_package_on_the_cd_fails_the_cygwin_step() {
    let iso = iso();
    let flavour = Flavour::Bios;
    let guest = Guest::new(flavour, &iso.path);
    // Flip one byte inside openssh's archive on the written CD: same size, other SHA-512.
    let mirror = guest
        .path()
        .join("mirror")
        .join(standin::mirror::MIRROR_NAME);
    let archive =
        std::fs::read(mirror.join("x86_64/release/openssh/openssh-1.0-1.tar.xz")).unwrap();
    let cd_path = guest.path().join(media::windows::CYGWIN_ISO_FILE);
    let mut cd = std::fs::read(&cd_path).unwrap();
    let at = cd
        .windows(archive.len())
        .position(|w| w == archive.as_slice())
        .expect("the archive is on the CD");
    cd[at + archive.len() / 2] ^= 0xff;
    std::fs::write(&cd_path, cd).unwrap();
    let _vm = vm_lock();
    let console = install_console(&guest);
    assert!(
        console.contains(&format!(
            "{}: installing Cygwin",
            media::windows::BOOTSTRAP_FAILED
        )),
        "{}",
        tail(&console, 30)
    );
    assert!(
        console.contains("package openssh") && console.contains("fails its SHA-512 check"),
        "{}",
        tail(&console, 30)
    );
    assert!(!console.contains(media::windows::BOOTSTRAP_OK));
}
