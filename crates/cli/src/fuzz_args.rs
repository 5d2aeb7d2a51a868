//! Input fuzzing (issue #6) of `-v HOST:GUEST[:ro]` and `-e NAME=VALUE` as the command line
//! parses them: nothing panics, a refusal names the input (clap then exits 2), what is
//! accepted is sane, and generated valid inputs give exactly what they say.

use guestbox::run::Volume;
use proptest::prelude::*;
use proptest::sample::select;

use crate::cli::{parse_env, parse_volume};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Nothing written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any characters, control characters and NUL included.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Text over an alphabet that means something to `s`'s parser, plus anything.
fn alphabet_text(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => select(alphabet).prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------------------------------
// -v HOST:GUEST[:ro]

fn check_volume(s: &str) -> Result<Option<Volume>, TestCaseError> {
    match parse_volume(s) {
        Err(msg) => {
            prop_assert!(msg.contains(&format!("{s:?}")), "-v {s:?}: {msg}");
            Ok(None)
        }
        Ok(v) => {
            let host = v.host.to_str().expect("host came from a str");
            prop_assert!(!host.is_empty(), "-v {s:?}: {v:?}");
            let b = v.guest.as_bytes();
            let drive = b.len() == 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
            prop_assert!(drive || v.guest.starts_with('/'), "-v {s:?}: {v:?}");
            prop_assert!(
                drive
                    || !v.guest.contains(['\0', '\n', ':'])
                        && !v.guest.split('/').any(|c| c == ".."),
                "-v {s:?}: {v:?}"
            );
            // The spec is exactly HOST:GUEST, HOST:GUEST:ro or HOST:GUEST:rw (a drive
            // letter's colon may double as the mode's).
            let plain = format!("{host}:{}", v.guest);
            let short = format!("{host}:{}", &v.guest[..v.guest.len().min(1)]);
            let mut forms = if v.readonly {
                vec![format!("{plain}:ro")]
            } else {
                vec![plain.clone(), format!("{plain}:rw")]
            };
            if drive {
                forms.push(format!("{short}:{}", if v.readonly { "ro" } else { "rw" }));
            }
            prop_assert!(forms.contains(&s.to_owned()), "-v {s:?}: {v:?}");
            Ok(Some(v))
        }
    }
}

fn guest_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[^/:\\x00\\n]{0,8}",
            Just(".".to_owned()),
            Just(String::new()),
            Just("...".to_owned()),
        ],
        0..5,
    )
    .prop_map(|components| format!("/{}", components.join("/")))
    .prop_filter("no '..' component", |g| !g.split('/').any(|c| c == ".."))
}

fn mode() -> impl Strategy<Value = (&'static str, bool)> {
    select(vec![("", false), (":ro", true), (":rw", false)])
}

// ---------------------------------------------------------------------------------------
// -e NAME=VALUE

fn shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_env(s: &str) -> Result<Option<(String, String)>, TestCaseError> {
    match parse_env(s) {
        Err(msg) => {
            prop_assert!(!msg.trim().is_empty());
            // The input, or (for a NUL in the value, which no terminal shows) its name.
            let name = s.split_once('=').map(|(k, _)| k).unwrap_or(s);
            prop_assert!(
                msg.contains(&format!("{s:?}")) || (s.contains('\0') && msg.contains(name)),
                "-e {s:?}: {msg}"
            );
            Ok(None)
        }
        Ok((k, v)) => {
            prop_assert!(shell_name(&k), "-e {s:?}: name {k:?}");
            prop_assert!(
                !k.contains('=') && !v.contains('\0'),
                "-e {s:?}: {k:?}={v:?}"
            );
            prop_assert_eq!(format!("{k}={v}"), s);
            Ok(Some((k, v)))
        }
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn volume_arbitrary_text(s in text(60)) {
        check_volume(&s)?;
    }

    #[test]
    fn volume_volume_like_text(
        s in alphabet_text(&[":", ":", "/", "/", ".", "..", "ro", "rw", ":ro", "a", "\0", "\n", " ", "é"], 16),
    ) {
        check_volume(&s)?;
    }

    #[test]
    fn volume_valid_specs_parse_to_what_they_say(
        host in text(20).prop_filter("non-empty", |h| !h.is_empty()),
        guest in guest_path(),
        (suffix, readonly) in mode(),
    ) {
        let s = format!("{host}:{guest}{suffix}");
        let v = check_volume(&s)?.ok_or_else(|| TestCaseError::fail(format!("-v {s:?} refused: {:?}", parse_volume(&s))))?;
        prop_assert_eq!(v, Volume { host: host.into(), guest, readonly });
    }

    #[test]
    fn volume_bad_guest_paths_are_refused(
        host in "[a-z/.]{1,10}",
        guest in prop_oneof![
            // relative (one letter with a mode is a drive: HOST:S:ro)
            "[^/:\\x00\\n][^:\\x00\\n]{0,10}".prop_filter("not a drive letter", |g| !(g.len() == 1 && g.as_bytes()[0].is_ascii_alphabetic())),
            (guest_path(), guest_path()).prop_map(|(a, b)| format!("{a}/..{b}")), // ..
            (guest_path(), select(vec!["\0", "\n"]), "[a-z]{0,4}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
            Just(String::new()),
        ],
        (suffix, _) in mode(),
    ) {
        let s = format!("{host}:{guest}{suffix}");
        prop_assert!(check_volume(&s)?.is_none(), "-v {:?} accepted", s);
    }

    #[test]
    fn env_arbitrary_text(s in text(60)) {
        check_env(&s)?;
    }

    #[test]
    fn env_env_like_text(s in alphabet_text(&["=", "=", "A", "z", "_", "0", "9", "-", " ", "\0", "é", "$"], 12)) {
        check_env(&s)?;
    }

    #[test]
    fn env_valid_assignments_parse_to_what_they_say(
        k in "[A-Za-z_][A-Za-z0-9_]{0,15}",
        v in text(40).prop_map(|v| v.replace('\0', "")),
    ) {
        let s = format!("{k}={v}");
        prop_assert_eq!(check_env(&s)?, Some((k, v)));
    }

    #[test]
    fn env_bad_names_are_refused(
        k in text(12).prop_filter("not a shell name", |k| !shell_name(k) && !k.contains('=')),
        v in text(12),
    ) {
        let s = format!("{k}={v}");
        prop_assert!(check_env(&s)?.is_none(), "-e {:?} accepted", s);
    }

    #[test]
    fn env_nul_in_values_is_refused(
        k in "[A-Za-z_][A-Za-z0-9_]{0,15}",
        (a, b) in (text(12), text(12)),
    ) {
        let s = format!("{k}={a}\0{b}");
        prop_assert!(check_env(&s)?.is_none(), "-e {:?} accepted", s);
    }
}
