//! Input fuzzing (issue #6) of what guestbox reads from outside, without a VM: property
//! tests of base names given on the command line (`Store::resolve`) and base manifests
//! (`Store::load`). (`-v` and `-e` are parsed, and fuzzed, in the CLI.)
//!
//! - Nothing panics, whatever the input.
//! - A rejected base is `Error::Usage` (exit code 2) and its message names the input; a
//!   rejected manifest is an error naming the manifest file.
//! - What is accepted is sane (a loaded manifest is its directory's), and generated valid
//!   inputs give exactly what they say.

use std::fs;
use std::path::Path;

use guestbox::host::Dirs;
use guestbox::store::{Manifest, Store, MANIFEST};
use guestbox::Error;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

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

fn is_usage(e: &Error) -> bool {
    matches!(e, Error::Usage(_)) && e.exit_code() == 2
}

// ---------------------------------------------------------------------------------------
// Base manifests

/// A valid manifest as JSON (what bootstrap writes), for `id`.
fn manifest_json(id: String) -> impl Strategy<Value = Value> {
    let files = prop::collection::btree_map(
        text(12),
        (any::<u64>(), "[0-9a-f]{64}").prop_map(|(size, b)| json!({"size": size, "blake3": b})),
        0..10,
    );
    let pair = (
        select(vec!["kvm", "tcg"]),
        (text(16), text(16), text(40), text(40), text(30)),
        (any::<u64>(), any::<u32>(), any::<u64>()),
    )
        .prop_map(|(accel, (machine, cpu, ga, ca, rtc), (gm, gc, cm))| {
            json!({
                "accel": accel, "machine": machine, "cpu": cpu,
                "guest_memory_mib": gm, "guest_cpus": gc, "controller_memory_mib": cm,
                "guest_append": ga, "controller_append": ca, "rtc_base": rtc,
            })
        });
    (
        (
            any::<u32>(),
            text(30),
            text(12),
            json_value(),
            text(12),
            text(64),
        ),
        (
            any::<(u32, u32, u32)>(),
            pair,
            text(16),
            text(16),
            text(100),
        ),
        (
            prop::collection::btree_map(text(12), text(12), 0..10),
            files,
            prop::collection::btree_map(
                text(12),
                prop_oneof![
                    // What bootstrap records: seconds.
                    (0.0..10_000.0f64),
                    any::<f64>().prop_filter("JSON has no inf or NaN", |t| t.is_finite()),
                ],
                0..6,
            ),
        ),
    )
        .prop_map(
            move |(
                (format, created, profile, inputs, version, agent),
                (qemu, pair, gaddr, caddr, key),
                (packages, files, timings),
            )| {
                json!({
                    "format": format, "id": id, "created": created, "profile": profile,
                    "inputs": inputs, "guestbox_version": version, "agent": agent,
                    "qemu_version": [qemu.0, qemu.1, qemu.2], "pair": pair,
                    "guest_address": gaddr, "controller_address": caddr,
                    "guest_host_key": key, "guest_packages": packages, "files": files,
                    "timings": timings,
                })
            },
        )
}

/// JSON values (without floats: `inputs` is kept as read, and compared).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text(10).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text(8), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const ID: &str = "0123456789abcdef01234567";
const TOP_FIELDS: &[&str] = &[
    "format",
    "id",
    "created",
    "profile",
    "inputs",
    "guestbox_version",
    "agent",
    "qemu_version",
    "pair",
    "guest_address",
    "controller_address",
    "guest_host_key",
    "guest_packages",
    "files",
    "timings",
];

#[derive(Debug, Clone)]
enum JsonMutation {
    Remove(Index),
    Replace(Index, Value),
    ReplacePairField(Index, Value),
    SetId(String),
    Add(String, Value),
    /// The manifest inside something else.
    Wrap,
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    let id = prop_oneof![
        text(30),
        "[0-9a-f]{0,30}",
        // This base's id with one character changed, dropped or added.
        (any::<Index>(), any::<char>()).prop_map(|(i, c)| {
            let mut s: Vec<char> = ID.chars().collect();
            let n = i.index(s.len());
            s[n] = c;
            String::from_iter(s)
        }),
        Just(ID[..12].to_owned()),
        Just(format!("{ID}0")),
        Just(ID.to_uppercase()),
    ];
    prop_oneof![
        any::<Index>().prop_map(JsonMutation::Remove),
        (any::<Index>(), json_value()).prop_map(|(i, v)| JsonMutation::Replace(i, v)),
        (any::<Index>(), json_value()).prop_map(|(i, v)| JsonMutation::ReplacePairField(i, v)),
        id.prop_map(JsonMutation::SetId),
        (text(10), json_value()).prop_map(|(k, v)| JsonMutation::Add(k, v)),
        Just(JsonMutation::Wrap),
    ]
}

fn apply_json(mut v: Value, mutations: &[JsonMutation]) -> Value {
    for m in mutations {
        if let JsonMutation::Wrap = m {
            v = json!({ "manifest": v });
            continue;
        }
        let Value::Object(obj) = &mut v else {
            continue;
        };
        match m {
            JsonMutation::Remove(i) => {
                obj.remove(TOP_FIELDS[i.index(TOP_FIELDS.len())]);
            }
            JsonMutation::Replace(i, x) => {
                obj.insert(TOP_FIELDS[i.index(TOP_FIELDS.len())].into(), x.clone());
            }
            JsonMutation::ReplacePairField(i, x) => {
                if let Some(Value::Object(pair)) = obj.get_mut("pair") {
                    let keys: Vec<String> = pair.keys().cloned().collect();
                    if !keys.is_empty() {
                        pair.insert(keys[i.index(keys.len())].clone(), x.clone());
                    }
                }
            }
            JsonMutation::SetId(id) => {
                obj.insert("id".into(), Value::from(id.clone()));
            }
            JsonMutation::Add(k, x) => {
                obj.insert(k.clone(), x.clone());
            }
            JsonMutation::Wrap => unreachable!(),
        }
    }
    v
}

#[derive(Debug, Clone)]
enum ByteMutation {
    Set(Index, u8),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Truncate(Index),
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        select(vec![
            b"{".to_vec(),
            b"}".to_vec(),
            b"\"".to_vec(),
            b",".to_vec(),
            b"\\".to_vec(),
            b"\\u00".to_vec(),
            b"\\ud800".to_vec(),
            b"1e999".to_vec(),
            b"-1".to_vec(),
            b"18446744073709551616".to_vec(),
            b"null".to_vec(),
            vec![0xff, 0xfe],
            "é".as_bytes().to_vec(),
        ]),
    ];
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteMutation::Set(i, b)),
        (any::<Index>(), 1..20usize).prop_map(|(i, n)| ByteMutation::Delete(i, n)),
        (any::<Index>(), bytes).prop_map(|(i, b)| ByteMutation::Insert(i, b)),
        any::<Index>().prop_map(ByteMutation::Truncate),
    ]
}

fn apply_bytes(mut b: Vec<u8>, mutations: &[ByteMutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            ByteMutation::Set(i, x) if !b.is_empty() => {
                let n = i.index(b.len());
                b[n] = *x;
            }
            ByteMutation::Delete(i, n) if !b.is_empty() => {
                let at = i.index(b.len());
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            ByteMutation::Insert(i, x) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            ByteMutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            ByteMutation::Set(..) | ByteMutation::Delete(..) => {}
        }
    }
    b
}

/// A store under a temporary GUESTBOX_HOME.
struct TestStore {
    _home: tempfile::TempDir,
    store: Store,
}

fn test_store() -> TestStore {
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(&Dirs::under(home.path().to_path_buf()));
    store.create().unwrap();
    TestStore { _home: home, store }
}

thread_local! {
    /// One store per test (each runs in its own thread, whose exit removes it): cases
    /// overwrite the manifest instead of making a new home each time.
    static STORE: TestStore = test_store();
}

fn with_store<R>(f: impl FnOnce(&Store) -> R) -> R {
    STORE.with(|t| f(&t.store))
}

/// Writes `bytes` as base `id`'s manifest and loads it: an error must name the manifest
/// file; a loaded base must be sane. Returns the manifest if loaded.
fn load_manifest(store: &Store, id: &str, bytes: &[u8]) -> Result<Option<Manifest>, TestCaseError> {
    let dir = store.base_dir(id);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(MANIFEST);
    fs::write(&path, bytes).unwrap();
    let result = store.load(id);
    match result {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.contains(&path.display().to_string()),
                "the error does not name {}: {msg}",
                path.display()
            );
            Ok(None)
        }
        Ok(base) => {
            let m = &base.manifest;
            prop_assert_eq!(&base.dir, &dir);
            // Messages show ids shortened, `rm` renames the directory by it.
            prop_assert_eq!(&m.id, id, "loaded a manifest of another base");
            prop_assert!(m.id.is_char_boundary(12.min(m.id.len())));
            // What a run does first with a base: must not panic, whatever the manifest.
            if let Err(e) = guestbox::run::compat::check_agent(&base) {
                prop_assert!(is_usage(&e), "{e:?}");
            }
            Ok(Some(base.manifest))
        }
    }
}

/// A manifest as bootstrap writes it: sealed.
fn sealed(json: Value) -> Result<Manifest, TestCaseError> {
    let m: Manifest = serde_json::from_value(json)
        .map_err(|e| TestCaseError::fail(format!("the test's manifest does not parse: {e}")))?;
    m.sealed()
        .map_err(|e| TestCaseError::fail(format!("sealing: {e}")))
}

/// The JSON of a valid manifest of base `ID`, sealed.
fn valid_manifest() -> impl Strategy<Value = Value> {
    manifest_json(ID.to_owned())
        .prop_map(|v| serde_json::to_value(sealed(v).expect("a valid manifest")).unwrap())
}

/// Seals `v` again if it still reads as a manifest: damage that a seal cannot catch (a
/// manifest written wrong, or by hand).
fn reseal(v: Value) -> Value {
    match sealed(v.clone()) {
        Ok(m) => serde_json::to_value(m).unwrap(),
        Err(_) => v,
    }
}

// ---------------------------------------------------------------------------------------

proptest! {
    // Each case writes and loads a manifest file: fewer cases.
    #![proptest_config(config(1000))]

    #[test]
    fn manifest_valid_round_trips(
        (id, json) in "[0-9a-f]{24}".prop_flat_map(|id| (Just(id.clone()), manifest_json(id))),
        pretty in any::<bool>(),
    ) {
        let want = sealed(json)?;
        let bytes = if pretty { serde_json::to_vec_pretty(&want) } else { serde_json::to_vec(&want) }.unwrap();
        let (got, err) = with_store(|store| {
            let got = load_manifest(store, &id, &bytes);
            let err = store.load(&id).err();
            fs::remove_dir_all(store.base_dir(&id)).unwrap();
            (got, err)
        });
        let got = got?;
        prop_assert_eq!(got.as_ref(), Some(&want), "refused: {:?}", err);
    }

    #[test]
    fn manifest_arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(with_store(|store| load_manifest(store, ID, &bytes))?.is_none());
    }

    #[test]
    fn manifest_mutated_json_is_refused_or_sane(
        valid in valid_manifest(),
        json_mutations in prop::collection::vec(json_mutation(), 0..4),
        resealed in any::<bool>(),
        byte_mutations in prop::collection::vec(byte_mutation(), 0..4),
    ) {
        let mut v = apply_json(valid, &json_mutations);
        if resealed {
            v = reseal(v);
        }
        let bytes = apply_bytes(serde_json::to_vec_pretty(&v).unwrap(), &byte_mutations);
        with_store(|store| load_manifest(store, ID, &bytes))?;
    }

    #[test]
    fn manifest_of_another_base_is_refused(
        valid in valid_manifest(),
        dir_id in prop_oneof![
            "[0-9a-f]{24}",
            "[0-9a-f]{1,11}",
            "[0-9A-Za-z._-]{12,30}",
            "[^/\\x00]{1,20}".prop_filter("a file name", |n| n != "." && n != ".." && n != "names"),
        ],
        same_id in any::<bool>(),
    ) {
        // Either the manifest is another base's, or the directory is not named like a base:
        // `rm` would rename and delete by that id, messages cut it at 12 bytes.
        let valid_dir = dir_id.len() >= 12 && dir_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        prop_assume!(!(same_id && valid_dir) && dir_id != ID);
        let mut v = valid;
        if same_id {
            v["id"] = Value::from(dir_id.clone());
            v = reseal(v);
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        let got = with_store(|store| {
            let got = load_manifest(store, &dir_id, &bytes);
            fs::remove_dir_all(store.base_dir(&dir_id)).unwrap();
            got
        })?;
        prop_assert!(got.is_none(), "loaded base {:?} from directory {:?}", v["id"], dir_id);
    }

    #[test]
    fn manifest_deeply_nested_inputs_do_not_overflow_the_stack(
        valid in valid_manifest(),
        depth in prop_oneof![0..200usize, 200..5_000usize],
        array in any::<bool>(),
    ) {
        let (open, close) = if array { ("[", "]") } else { ("{\"a\":", "}") };
        let nested = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        // Sealed if serde_json can read it at all (its nesting limit is 128).
        let text = match serde_json::from_str::<Value>(&nested) {
            Ok(inputs) => {
                let mut v = valid;
                v["inputs"] = inputs;
                serde_json::to_string(&reseal(v)).unwrap()
            }
            Err(_) => {
                let mut v = valid;
                v["inputs"] = Value::from("@NESTED@");
                serde_json::to_string(&v).unwrap().replace("\"@NESTED@\"", &nested)
            }
        };
        let got = with_store(|store| load_manifest(store, ID, text.as_bytes()))?;
        if depth < 100 {
            prop_assert!(got.is_some(), "depth {} refused", depth);
        }
    }

    #[test]
    fn base_arbitrary_names_resolve_or_are_usage_errors(what in prop_oneof![
        text(30),
        alphabet_text(&["0123", "4567", "89ab", "cdef", "mybase", "/", "..", ".", "names", "*"], 8),
        Just(String::new()),
    ]) {
        let resolved = with_store(|store| {
            // One good base, named "mybase".
            if store.load(ID).is_err() {
                let mut runner = TestRunner::deterministic();
                let valid = valid_manifest().new_tree(&mut runner).unwrap().current();
                load_manifest(store, ID, &serde_json::to_vec(&valid).unwrap())?
                    .ok_or_else(|| TestCaseError::fail("the good base did not load"))?;
                store.set_name("mybase", ID).unwrap();
            }
            Ok::<_, TestCaseError>(store.resolve(&what))
        })?;
        match resolved {
            Ok(base) => {
                prop_assert_eq!(&base.manifest.id, ID);
                prop_assert!(what == "mybase" || (!what.is_empty() && ID.starts_with(&what)), "{:?} resolved", what);
            }
            Err(e) => {
                prop_assert!(is_usage(&e), "{:?}: {:?}", what, e);
                prop_assert!(e.to_string().contains(&format!("{what:?}")), "{}", e);
                prop_assert!(what != "mybase" && (what.is_empty() || !ID.starts_with(&what)));
            }
        }
    }
}

#[test]
fn a_missing_or_unreadable_manifest_is_named() {
    let t = test_store();
    for (id, make) in [
        (ID, None),
        ("abcdefabcdefabcdefabcdef", Some(true)),
        ("fedcbafedcbafedcbafedcba", Some(false)),
    ] {
        let dir = t.store.base_dir(id);
        let path = dir.join(MANIFEST);
        match make {
            None => {}
            // manifest.json a directory
            Some(true) => fs::create_dir_all(&path).unwrap(),
            // manifest.json unreadable: a dangling symlink
            Some(false) => {
                fs::create_dir_all(&dir).unwrap();
                std::os::unix::fs::symlink(Path::new("nowhere"), &path).unwrap();
            }
        }
        let e = t.store.load(id).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
