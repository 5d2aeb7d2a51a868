//! Input fuzzing (issue #6) of setup.ini, which comes from a Cygwin mirror, i.e. from
//! outside: property tests of `SetupIni::parse` and `SetupIni::closure`.
//!
//! - Whatever the text (arbitrary characters, setup.ini-like lines in any order, mutations
//!   of a valid file), parsing never panics; a rejection is a `Malformed` error whose
//!   message is non-empty and names a line of the input; an accepted text gives packages
//!   whose names, lines and install paths are sane.
//! - A well-formed generated setup.ini reads back exactly what was written, skipping
//!   `[prev]`/`[test]` versions and not mistaking multi-line `ldesc` text for stanzas.
//! - A bad line injected into a valid file is reported at that line, for that package.
//! - The closure matches a model (reachability through `requires:`/`depends2:`/`provides:`
//!   plus category Base), and a name it cannot resolve is named in the error, with the
//!   package that required it.

use std::collections::BTreeSet;

use media::cygwin::{CygwinError, InstallFile, Package, SetupIni};
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Cases per property: parsing a few kB is cheap, so many (the whole file runs in a few
/// seconds in debug builds).
const CASES: u32 = 3000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // Nothing written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Checks that hold for every input.

/// The lines as the parser numbers them (1-based: `lines[n - 1]`).
fn lines_of(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// The name an `@ name` line starts, if it is one.
fn stanza_name(line: &str) -> Option<&str> {
    line.trim().strip_prefix('@').map(str::trim)
}

/// No panic happened (we got here); an error is a clear `Malformed` naming a line of the
/// input; an accepted text gives sane packages.
fn check_parse(text: &str) -> Result<Option<SetupIni>, TestCaseError> {
    let result = SetupIni::parse(text);
    let lines = lines_of(text);
    match result {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.trim().is_empty(), "empty message for {e:?}");
            let CygwinError::Malformed {
                line,
                package,
                reason,
            } = &e
            else {
                return Err(TestCaseError::fail(format!(
                    "parse gave a non-Malformed error: {e:?}"
                )));
            };
            prop_assert!(
                (1..=lines.len()).contains(line),
                "line {line} is outside the input's {} lines: {msg}",
                lines.len()
            );
            prop_assert!(msg.contains(&format!("line {line}")), "{msg}");
            prop_assert!(!reason.trim().is_empty(), "{e:?}");
            if let Some(p) = package {
                // The package is one whose stanza started at or before the bad line.
                prop_assert!(
                    lines[..*line]
                        .iter()
                        .any(|l| stanza_name(l) == Some(p.as_str())),
                    "{msg}: package {p:?} has no '@' line before line {line}"
                );
                prop_assert!(msg.contains(&format!("{p:?}")), "{msg}");
            }
            Ok(None)
        }
        Ok(ini) => {
            for (key, value) in &ini.header {
                prop_assert!(
                    !key.is_empty() && !key.contains(char::is_whitespace),
                    "header key {key:?} = {value:?}"
                );
            }
            for (name, p) in &ini.packages {
                prop_assert_eq!(name, &p.name);
                prop_assert!(valid_name(name), "package name {:?}", name);
                prop_assert!((1..=lines.len()).contains(&p.line), "{p:?}");
                prop_assert_eq!(stanza_name(lines[p.line - 1]), Some(name.as_str()));
                for d in p.depends.iter().chain(&p.provides) {
                    prop_assert!(valid_name(d), "{name}: dependency {d:?}");
                }
                for c in &p.categories {
                    prop_assert!(!c.is_empty() && !c.contains(char::is_whitespace));
                }
                if let Some(inst) = &p.install {
                    prop_assert!(
                        !inst.path.starts_with('/')
                            && !inst.path.contains('\\')
                            && !inst.path.contains(char::is_whitespace)
                            && inst
                                .path
                                .split('/')
                                .all(|c| !c.is_empty() && c != "." && c != ".."),
                        "{name}: install path {:?}",
                        inst.path
                    );
                    prop_assert!((1..=lines.len()).contains(&inst.line), "{inst:?}");
                    let key = lines[inst.line - 1].split_once(':').map(|(k, _)| k.trim());
                    prop_assert_eq!(key, Some("install"), "{:?}", inst);
                }
            }
            Ok(Some(ini))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Arbitrary and setup.ini-like text.

fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..400).prop_map(String::from_iter)
}

/// Text over the characters that mean something to the parser, so that the interesting
/// paths are hit far more often than by arbitrary Unicode.
fn ini_alphabet_text() -> impl Strategy<Value = String> {
    let alphabet = vec![
        '@', '\n', '\n', '\n', '\r', '"', '"', ':', ':', '[', ']', '#', ' ', ' ', '\t', 'a', 'b',
        '1', '9', 'f', '/', '.', '(', ')', ',', '-', '+', 'é', '\0', '\u{2028}',
    ];
    prop::collection::vec(select(alphabet), 0..400).prop_map(String::from_iter)
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._+-]{1,12}"
}

fn hash_hex() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|b| media::cygwin::hex(&b))
}

/// One line that looks like (or nearly like) a setup.ini line.
fn ini_line() -> impl Strategy<Value = String> {
    let install = (
        "[a-z0-9./_-]{1,30}",
        any::<u64>(),
        hash_hex(),
        any::<bool>(),
    )
        .prop_map(|(path, size, hash, upper)| {
            let hash = if upper { hash.to_uppercase() } else { hash };
            format!("install: {path} {size} {hash}")
        });
    let names = || prop::collection::vec(name(), 0..4);
    prop_oneof![
        name().prop_map(|n| format!("@ {n}")),
        Just("@".to_owned()),
        "@[^\n]{0,12}",
        "version: [^\n]{0,12}",
        install,
        "install: [^\n]{0,60}",
        "install: [0-9a-fA-F ]{0,140}",
        names().prop_map(|n| format!("requires: {}", n.join(" "))),
        names().prop_map(|n| format!("depends2: {}", n.join(", (>= 1.0) "))),
        names().prop_map(|n| format!("provides: {}", n.join(","))),
        "category: (Base|Devel|Net| )*",
        "sdesc: \"[^\"\n]{0,20}\"",
        "ldesc: \"[^\"\n]{0,20}",
        "[^\"\n]{0,20}\"",
        Just("[prev]".to_owned()),
        Just("[curr]".to_owned()),
        Just("[test]".to_owned()),
        "\\[[^\n]{0,8}",
        "#[^\n]{0,12}",
        Just(String::new()),
        "[ \t\r]{0,3}",
        "[a-z0-9-]{0,10}:[^\n]{0,20}",
        "[^\n]{0,30}",
    ]
}

fn line_soup() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(ini_line(), 0..40),
        select(vec!["\n", "\r\n"]),
    )
        .prop_map(|(lines, sep)| lines.join(sep))
}

// ---------------------------------------------------------------------------------------
// Well-formed setup.ini, generated from a spec.

/// A dependency: an index into the universe of names (the packages' own names, virtual
/// names some of them provide, and names nobody has).
const VIRTUAL: &[&str] = &["v-mta", "v-perl", "v-editor"];
const UNKNOWN: &[&str] = &["no-such-pkg", "gone+old"];
const CATEGORIES: &[&str] = &[
    "Base",
    "Devel",
    "Libs",
    "Net",
    "Shells",
    "Utils",
    "_obsolete",
];
const CONSTRAINTS: &[&str] = &["", " (>= 1.2)", "(= 3.0-1)", " (<< 2)"];

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    version: String,
    sdesc: String,
    /// One or more lines.
    ldesc: Vec<String>,
    categories: Vec<String>,
    requires: Vec<Index>,
    depends2: Vec<(Index, &'static str)>,
    provides: Vec<Index>,
    /// size, SHA-512, written in upper case.
    install: Option<(u64, Vec<u8>, bool)>,
    /// An older version in `[prev]` (before or after the current one), to be skipped.
    prev: Option<(String, bool)>,
    /// A `[test]` section with another version, to be skipped.
    test: bool,
    comment: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    let version = "[0-9][0-9A-Za-z.+~_:-]{0,10}";
    let text_line = "[^\"\r\n]{0,30}";
    (
        (
            name(),
            version,
            text_line,
            prop::collection::vec(text_line, 1..4),
            prop::collection::vec(select(CATEGORIES), 0..3),
        ),
        (
            prop::collection::vec(any::<Index>(), 0..4),
            prop::collection::vec((any::<Index>(), select(CONSTRAINTS)), 0..4),
            prop::collection::vec(any::<Index>(), 0..2),
        ),
        (
            prop::option::weighted(
                0.9,
                (
                    any::<u64>(),
                    prop::collection::vec(any::<u8>(), 64),
                    any::<bool>(),
                ),
            ),
            prop::option::of((version, any::<bool>())),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, version, sdesc, ldesc, categories),
                (requires, depends2, provides),
                (install, prev, test, comment),
            )| Spec {
                name,
                version,
                sdesc,
                ldesc,
                categories: categories.into_iter().map(str::to_owned).collect(),
                requires,
                depends2,
                provides,
                install,
                prev,
                test,
                comment,
            },
        )
}

/// Specs with distinct names.
fn specs(max: usize) -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(spec(), 0..max).prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|s| seen.insert(s.name.clone()))
            .collect()
    })
}

/// The names dependencies are drawn from.
fn universe(specs: &[Spec], with_unknown: bool) -> Vec<String> {
    let mut u: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    u.extend(VIRTUAL.iter().map(|s| s.to_string()));
    if with_unknown {
        u.extend(UNKNOWN.iter().map(|s| s.to_string()));
    }
    u
}

fn install_path(name: &str, version: &str) -> String {
    format!("x86_64/release/p-{name}/{name}-{version}.tar.xz")
}

/// The text, its lines (without separators), and the packages it must parse to.
#[derive(Debug, Clone)]
struct Rendered {
    text: String,
    lines: Vec<String>,
    expected: Vec<Package>,
}

fn render(specs: &[Spec], with_unknown: bool, crlf: bool, final_newline: bool) -> Rendered {
    let universe = universe(specs, with_unknown);
    let pick = |i: &Index| universe[i.index(universe.len())].clone();
    let mut lines: Vec<String> = vec![
        "# This file was automatically generated at 2024-06-01 12:00:00 UTC.".into(),
        "release: cygwin".into(),
        "arch: x86_64".into(),
        "setup-timestamp: 1717243200".into(),
        String::new(),
    ];
    let mut expected = Vec::new();
    for s in specs {
        let mut p = Package {
            name: s.name.clone(),
            ..Package::default()
        };
        lines.push(format!("@ {}", s.name));
        p.line = lines.len();
        let prev = |lines: &mut Vec<String>, v: &str| {
            lines.push("[prev]".into());
            lines.push(format!("version: {v}"));
            lines.push(format!(
                "install: {} 1234 {}",
                install_path(&s.name, v),
                "0".repeat(128)
            ));
            lines.push("requires: only-in-prev".into());
        };
        if let Some((v, true)) = &s.prev {
            prev(&mut lines, v);
            lines.push("[curr]".into());
        }
        lines.push(format!("sdesc: \"{}\"", s.sdesc));
        p.sdesc = Some(s.sdesc.clone());
        // The parser trims the value on the key's own line, so the first line of a
        // multi-line string loses trailing blanks; the others are kept as they are.
        let mut ldesc = s.ldesc.clone();
        if ldesc.len() > 1 {
            ldesc[0] = ldesc[0].trim_end().to_owned();
        }
        let n = ldesc.len();
        for (i, l) in ldesc.iter().enumerate() {
            let open = if i == 0 { "ldesc: \"" } else { "" };
            let close = if i == n - 1 { "\"" } else { "" };
            lines.push(format!("{open}{l}{close}"));
        }
        p.ldesc = Some(ldesc.join("\n"));
        if s.comment {
            lines.push("# a comment".into());
            lines.push("   ".into());
        }
        lines.push(format!("category: {}", s.categories.join(" ")));
        p.categories = s.categories.clone();
        let requires: Vec<String> = s.requires.iter().map(pick).collect();
        if !requires.is_empty() {
            lines.push(format!("requires: {}", requires.join(" ")));
        }
        let depends2: Vec<(String, &str)> = s.depends2.iter().map(|(i, c)| (pick(i), *c)).collect();
        if !depends2.is_empty() {
            let entries: Vec<String> = depends2.iter().map(|(n, c)| format!("{n}{c}")).collect();
            lines.push(format!("depends2: {}", entries.join(", ")));
        }
        p.depends = requires;
        p.depends.extend(depends2.into_iter().map(|(n, _)| n));
        let provides: Vec<String> = s
            .provides
            .iter()
            .map(|i| VIRTUAL[i.index(VIRTUAL.len())].to_owned())
            .collect();
        if !provides.is_empty() {
            lines.push(format!("provides: {}", provides.join(", ")));
        }
        p.provides = provides;
        lines.push(format!("version: {}", s.version));
        p.version = Some(s.version.clone());
        if let Some((size, hash, upper)) = &s.install {
            let path = install_path(&s.name, &s.version);
            let hex = media::cygwin::hex(hash);
            let hex = if *upper { hex.to_uppercase() } else { hex };
            lines.push(format!("install: {path} {size} {hex}"));
            p.install = Some(InstallFile {
                path,
                size: *size,
                sha512: hash.as_slice().try_into().unwrap(),
                line: lines.len(),
            });
        }
        if let Some((v, false)) = &s.prev {
            prev(&mut lines, v);
        }
        if s.test {
            lines.push("[test]".into());
            lines.push("version: 99.0-test".into());
            lines.push("ldesc: \"a test version".into());
            lines.push("@ not-a-package".into());
            lines.push("\"".into());
        }
        lines.push(String::new());
        expected.push(p);
    }
    if !final_newline {
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
    }
    let sep = if crlf { "\r\n" } else { "\n" };
    Rendered {
        text: lines.join(sep),
        lines,
        expected,
    }
}

fn rendered(max: usize, with_unknown: bool) -> impl Strategy<Value = (Vec<Spec>, Rendered)> {
    (specs(max), any::<bool>(), any::<bool>()).prop_map(move |(specs, crlf, nl)| {
        let r = render(&specs, with_unknown, crlf, nl);
        (specs, r)
    })
}

// ---------------------------------------------------------------------------------------
// Closure model.

fn resolve<'a>(ini: &'a SetupIni, name: &str) -> Option<&'a Package> {
    // Documented: the package itself, or the first package (by name) providing it.
    ini.packages.get(name).or_else(|| {
        ini.packages
            .values()
            .find(|p| p.provides.iter().any(|v| v == name))
    })
}

/// Everything reachable from `requested` and category Base: (resolved packages, names
/// that resolve to nothing).
fn model_closure(ini: &SetupIni, requested: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut todo: Vec<String> = requested.to_vec();
    todo.extend(
        ini.packages
            .values()
            .filter(|p| p.categories.iter().any(|c| c.eq_ignore_ascii_case("base")))
            .map(|p| p.name.clone()),
    );
    let (mut seen, mut found, mut missing) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        match resolve(ini, &name) {
            Some(p) => {
                if found.insert(p.name.clone()) {
                    todo.extend(p.depends.iter().cloned());
                }
            }
            None => {
                missing.insert(name);
            }
        }
    }
    (found, missing)
}

#[derive(Debug, Clone)]
enum Request {
    Known(Index),
    Raw(String),
}

fn requests() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<Index>().prop_map(Request::Known),
            1 => "\\PC{0,10}".prop_map(Request::Raw),
        ],
        0..5,
    )
}

fn check_closure(ini: &SetupIni, requested: &[String]) -> Result<(), TestCaseError> {
    let (found, missing) = model_closure(ini, requested);
    match ini.closure(requested) {
        Ok(pkgs) => {
            prop_assert!(
                missing.is_empty(),
                "accepted, yet {missing:?} resolve to nothing"
            );
            let names: Vec<String> = pkgs.iter().map(|p| p.name.clone()).collect();
            let want: Vec<String> = found.into_iter().collect();
            prop_assert_eq!(names, want, "closure of {:?}", requested);
        }
        Err(e) => {
            let msg = e.to_string();
            let CygwinError::MissingPackage { name, required_by } = &e else {
                return Err(TestCaseError::fail(format!("closure gave {e:?}")));
            };
            prop_assert!(
                missing.contains(name),
                "{msg}; the model misses only {missing:?}"
            );
            prop_assert!(msg.contains(&format!("{name:?}")), "{msg}");
            match required_by {
                None => prop_assert!(requested.contains(name), "{msg}"),
                Some((by, line)) => {
                    let p = &ini.packages[by];
                    prop_assert!(p.depends.contains(name), "{msg}");
                    prop_assert_eq!(*line, p.line);
                    prop_assert!(msg.contains(&format!("{by:?}")), "{msg}");
                    prop_assert!(msg.contains(&format!("line {line}")), "{msg}");
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bad lines injected into a valid file.

/// A bad line, and whether its error names the package whose stanza holds it.
fn bad_line() -> impl Strategy<Value = (String, bool)> {
    let hash = "ab".repeat(64);
    let in_stanza = prop_oneof![
        "[a-z]{1,8}".prop_map(|w| format!("install: a/{w}.tar.xz {w} {}", "ab".repeat(64))),
        Just(format!("install: a.tar.xz 18446744073709551616 {hash}")),
        Just(format!("install: a.tar.xz -1 {hash}")),
        Just("install: a.tar.xz 12".to_owned()),
        Just(format!("install: a.tar.xz 12 {hash} extra")),
        Just("install:".to_owned()),
        Just(format!("install: /abs/a.tar.xz 12 {hash}")),
        Just(format!("install: a/../b.tar.xz 12 {hash}")),
        Just(format!("install: a//b.tar.xz 12 {hash}")),
        Just(format!("install: ./b.tar.xz 12 {hash}")),
        Just(format!("install: a\\b.tar.xz 12 {hash}")),
        Just(format!(
            "install: a.tar.xz 12 {}",
            "0123456789abcdef".repeat(2)
        )),
        "[0-9a-f]{0,127}".prop_map(|h| format!("install: a.tar.xz 12 {h}")),
        "[g-zé]{128}".prop_map(|h| format!("install: a.tar.xz 12 {h}")),
        "[a-z]{1,5}[!$%&*;<>?|~é]".prop_map(|n| format!("requires: ok {n}")),
        Just("depends2: ok, (>= 1.0)".to_owned()),
        "[a-z]{1,5}[!$%&*;<>?|~é]".prop_map(|n| format!("provides: ok, {n}")),
        Just("bad key: value".to_owned()),
        Just(": value".to_owned()),
        "[A-Za-z0-9 ]{1,20}".prop_map(|s| format!("no colon {s}")),
        Just("[unclosed".to_owned()),
    ];
    // A bad `@` line is no package's.
    let stanza = prop_oneof![
        "[a-z]{1,5}[ /]?[!$%&*;<>?|~é][a-z]{0,3}".prop_map(|n| format!("@ {n}")),
        "[a-z]{1,5} [a-z]{1,5}".prop_map(|n| format!("@ {n}")),
        Just("@".to_owned()),
    ];
    prop_oneof![
        6 => in_stanza.prop_map(|l| (l, true)),
        1 => stanza.prop_map(|l| (l, false)),
    ]
}

// ---------------------------------------------------------------------------------------
// Mutations of a valid file.

#[derive(Debug, Clone)]
enum Mutation {
    DeleteChar(Index),
    InsertChar(Index, char),
    ReplaceLine(Index, String),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let chars = prop_oneof![
        select(vec![
            '"', '@', ':', '[', ']', '\n', '\r', '#', ' ', '/', '\0'
        ]),
        any::<char>(),
    ];
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::DeleteChar),
        3 => (any::<Index>(), chars).prop_map(|(i, c)| Mutation::InsertChar(i, c)),
        2 => (any::<Index>(), ini_line()).prop_map(|(i, l)| Mutation::ReplaceLine(i, l)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        let mut lines: Vec<String> = String::from_iter(&chars)
            .split('\n')
            .map(str::to_owned)
            .collect();
        let mut lines_changed = true;
        match m {
            Mutation::DeleteChar(i) if !chars.is_empty() => {
                chars.remove(i.index(chars.len()));
                lines_changed = false;
            }
            Mutation::InsertChar(i, c) => {
                chars.insert(i.index(chars.len() + 1), *c);
                lines_changed = false;
            }
            Mutation::ReplaceLine(i, l) => {
                let n = lines.len();
                lines[i.index(n)] = l.clone();
            }
            Mutation::DuplicateLine(i) => {
                let n = i.index(lines.len());
                let l = lines[n].clone();
                lines.insert(n, l);
            }
            Mutation::SwapLines(a, b) => {
                let n = lines.len();
                lines.swap(a.index(n), b.index(n));
            }
            Mutation::Truncate(i) => {
                chars.truncate(i.index(chars.len() + 1));
                lines_changed = false;
            }
            Mutation::DeleteChar(_) => lines_changed = false,
        }
        if lines_changed {
            chars = lines.join("\n").chars().collect();
        }
    }
    String::from_iter(chars)
}

// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in any_text()) {
        check_parse(&text)?;
    }

    #[test]
    fn ini_alphabet_text_never_panics(text in ini_alphabet_text()) {
        check_parse(&text)?;
    }

    #[test]
    fn setup_ini_like_lines_never_panic(text in line_soup()) {
        if let Some(ini) = check_parse(&text)? {
            // Whatever was accepted, the closure of anything never panics either.
            let names: Vec<String> = ini.packages.keys().take(3).cloned().collect();
            check_closure(&ini, &names)?;
        }
    }

    #[test]
    fn well_formed_setup_ini_round_trips((specs, r) in rendered(10, true)) {
        let ini = check_parse(&r.text)?
            .ok_or_else(|| TestCaseError::fail(format!("rejected: {:?}", SetupIni::parse(&r.text))))?;
        prop_assert_eq!(ini.header.get("release").map(String::as_str), Some("cygwin"));
        prop_assert_eq!(ini.header.get("arch").map(String::as_str), Some("x86_64"));
        prop_assert_eq!(ini.header.get("setup-timestamp").map(String::as_str), Some("1717243200"));
        prop_assert_eq!(ini.header.len(), 3);
        prop_assert_eq!(ini.packages.len(), specs.len());
        for want in &r.expected {
            let got = ini.packages.get(&want.name);
            prop_assert_eq!(got, Some(want), "package {} (line {}: {:?})",
                want.name, want.line, r.lines.get(want.line - 1));
        }
    }

    #[test]
    fn closure_matches_the_model(
        (specs, r) in rendered(10, true),
        requests in requests(),
    ) {
        let ini = SetupIni::parse(&r.text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let universe = universe(&specs, true);
        let requested: Vec<String> = requests
            .iter()
            .map(|q| match q {
                Request::Known(i) => universe[i.index(universe.len())].clone(),
                Request::Raw(s) => s.clone(),
            })
            .collect();
        check_closure(&ini, &requested)?;
    }

    #[test]
    fn closure_names_an_unknown_request(
        (_specs, r) in rendered(8, false),
        unknown in "\\PC{0,12}",
    ) {
        let ini = SetupIni::parse(&r.text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assume!(resolve(&ini, &unknown).is_none());
        // Requests are looked at first, so the error is about this one.
        match ini.closure(&[unknown.as_str()]) {
            Err(e @ CygwinError::MissingPackage { required_by: None, .. }) => {
                let msg = e.to_string();
                let CygwinError::MissingPackage { name, .. } = e else { unreachable!() };
                prop_assert_eq!(&name, &unknown);
                prop_assert!(msg.contains(&format!("{unknown:?}")), "{}", msg);
            }
            other => prop_assert!(false, "closure of unknown {:?} gave {:?}", unknown, other.map(|v| v.len())),
        }
    }

    #[test]
    fn a_bad_line_is_reported_where_it_is(
        (specs, r) in rendered(6, true),
        which in any::<Index>(),
        (bad, names_package) in bad_line(),
        crlf in any::<bool>(),
    ) {
        prop_assume!(!specs.is_empty());
        let pkg = &r.expected[which.index(specs.len())];
        // Right after the package's '@' line, i.e. inside its stanza, before any quoted
        // string.
        let mut lines = r.lines.clone();
        lines.insert(pkg.line, bad.clone());
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        match SetupIni::parse(&text) {
            Err(e @ CygwinError::Malformed { .. }) => {
                let msg = e.to_string();
                let CygwinError::Malformed { line, package, .. } = e else { unreachable!() };
                prop_assert_eq!(line, pkg.line + 1, "{}", msg);
                let want = names_package.then(|| pkg.name.clone());
                prop_assert_eq!(package, want, "{}", msg);
                prop_assert!(msg.contains(&format!("line {line}")), "{}", msg);
            }
            other => prop_assert!(false, "{:?} in package {} gave {:?}", bad, pkg.name, other.map(|_| ())),
        }
    }

    #[test]
    fn an_unclosed_string_or_a_second_definition_is_reported(
        (specs, r) in rendered(6, true),
        which in any::<Index>(),
        unclosed in any::<bool>(),
        trailing in prop::collection::vec(prop_oneof![
            select(vec!["@ foo", "[prev]", "[curr]", "x: y", "", "version: 1", "# c"]).prop_map(str::to_owned),
            "x: [^\"\n]{0,10}",
        ], 0..4),
    ) {
        prop_assume!(!specs.is_empty());
        let mut lines = r.lines.clone();
        let (added, package) = if unclosed {
            lines.push("ldesc: \"never closed".to_owned());
            (lines.len(), r.expected.last().unwrap().name.clone())
        } else {
            let name = r.expected[which.index(specs.len())].name.clone();
            lines.push(format!("@ {name}"));
            (lines.len(), name)
        };
        // Lines that a quoted string would swallow, or the second stanza's own lines.
        lines.extend(trailing);
        let text = lines.join("\n");
        match SetupIni::parse(&text) {
            Err(e @ CygwinError::Malformed { .. }) => {
                let msg = e.to_string();
                let CygwinError::Malformed { line, package: p, reason } = e else { unreachable!() };
                prop_assert_eq!(line, added, "{}", msg);
                prop_assert_eq!(p.as_deref(), Some(package.as_str()), "{}", msg);
                if unclosed {
                    prop_assert!(reason.contains("never closed"), "{}", msg);
                } else {
                    let first = r.expected.iter().find(|p| p.name == package).unwrap().line;
                    prop_assert!(reason.contains(&format!("line {first}")), "{}", msg);
                }
            }
            other => prop_assert!(false, "gave {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn mutated_setup_ini_never_panics(
        (_specs, r) in rendered(5, true),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let text = mutate(&r.text, &mutations);
        if let Some(ini) = check_parse(&text)? {
            let names: Vec<String> = ini.packages.keys().cloned().collect();
            check_closure(&ini, &names)?;
        }
    }
}
