//! Bootstrap scripts and the per-run script: syntax, content, and the run
//! script executed for real against stand-ins for the Windows commands.

mod common;

use std::path::Path;
use std::process::Command;

use common::{run, run_ok, tool, TEST_KEY};
use media::quote;
use media::windows::run::{run_script, RunSpec, ShareMount, SETUP_FAILED_EXIT};
use media::windows::{scripts, Profile, Secret, WindowsSettings};

const PASSWORD: &str = "never-in-scripts-0xC0FFEE";

fn settings(profile: Profile) -> WindowsSettings {
    let mut s = WindowsSettings::new(profile, Secret::new(PASSWORD), TEST_KEY);
    if profile == Profile::WindowsXp {
        s.product_key = Some("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".to_owned());
    }
    s
}

fn syntax_check(shell: &str, package: &str, script: &str) {
    let sh = tool(shell, package);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sh");
    std::fs::write(&path, script).unwrap();
    run_ok(Command::new(sh).arg("-n").arg(&path));
}

#[test]
fn bootstrap_sh_passes_bash_and_sh_syntax_checks() {
    for p in [Profile::Windows, Profile::WindowsXp] {
        let sh = scripts::bootstrap_sh(&settings(p)).unwrap();
        syntax_check("bash", "bash", &sh);
        syntax_check("dash", "dash", &sh);
        assert!(sh.contains("ssh-host-config --yes --port 22"));
        assert!(sh.contains("$HOME/.ssh/authorized_keys"));
        assert!(sh.contains("cygrunsrv --start"));
        assert!(!sh.contains('\r'));
    }
}

#[test]
fn bootstrap_cmd_installs_cygwin_offline_and_opens_the_firewall() {
    let cmd = scripts::bootstrap_cmd(&settings(Profile::Windows)).unwrap();
    for line in cmd.split_inclusive('\n') {
        assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
    }
    // The CD letter is found at run time, by the marker file.
    assert!(cmd.contains(
        "for %%D in (D E F G H I J K L M N O P Q R S T U V W X Y Z) do if not defined GB_CD if exist \"%%D:\\guestbox-cygwin.tag\" set \"GB_CD=%%D:\\\""
    ));
    assert!(cmd.contains(
        "\"%GB_CD%setup-x86_64.exe\" -q -n -N -d -L -l %GB_CD% -R C:\\cygwin -P openssh,cygrunsrv"
    ));
    assert!(cmd.contains("\"C:\\cygwin\\bin\\bash.exe\" --login \"%GB_HERE%bootstrap.sh\""));
    for port in ["localport=22", "localport=445"] {
        assert!(
            cmd.contains(&format!(
                "netsh advfirewall firewall add rule name=\"guestbox {}\" dir=in action=allow protocol=TCP {port} remoteip=192.168.0.2",
                if port.ends_with("22") { "ssh" } else { "smb" }
            )),
            "{port}"
        );
    }
    assert!(cmd.contains("sc config wuauserv start= disabled"));
    assert!(cmd.contains("sc config w32time start= disabled"));
    assert!(cmd.contains("shutdown /s /t 0"));
    assert!(cmd.contains("call :serial GUESTBOX-BOOTSTRAP-OK"));
    assert!(cmd.contains("DisableDelayedExpansion"));
}

#[test]
fn bootstrap_cmd_for_xp_uses_the_old_firewall_and_32_bit_cygwin() {
    let cmd = scripts::bootstrap_cmd(&settings(Profile::WindowsXp)).unwrap();
    assert!(!cmd.contains("advfirewall"));
    assert!(cmd.contains(
        "netsh firewall add portopening protocol=TCP port=22 name=guestbox-ssh mode=ENABLE scope=CUSTOM addresses=192.168.0.2/255.255.255.255"
    ));
    assert!(cmd.contains("port=445"));
    assert!(cmd.contains("\"%GB_CD%setup-x86.exe\" -q"));
    assert!(cmd.contains("shutdown -s -t 0"));
    assert!(!cmd.contains("powercfg"));
}

#[test]
fn the_password_is_only_in_the_answer_file() {
    for p in [Profile::Windows, Profile::WindowsXp] {
        let s = settings(p);
        for f in scripts::bootstrap_files(&s).unwrap() {
            let text = String::from_utf8(f.data).unwrap();
            assert!(!text.contains(PASSWORD), "{} holds the password", f.name);
        }
        let answer = media::windows::answer_file(&s).unwrap();
        assert!(String::from_utf8(answer.data).unwrap().contains(PASSWORD));
    }
}

#[test]
fn bash_quoting_round_trips_through_a_real_bash() {
    let bash = tool("bash", "bash");
    let words = [
        "plain",
        "",
        "two words",
        "it's",
        "say \"hi\"",
        "100%",
        "%PATH%",
        "a^b&c|d",
        "$HOME ${x} $(id) `id`",
        "back\\slash\\",
        "new\nline",
        "tab\t*?[glob]",
        "ünï ✓",
        "!bang",
        "~tilde",
        "-n",
    ];
    let quoted: Vec<String> = words.iter().map(|w| quote::bash(w).unwrap()).collect();
    let script = format!("printf '%s\\0' {}", quoted.join(" "));
    let out = run(Command::new(bash).arg("-c").arg(&script));
    assert!(out.status.success());
    let got: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    // printf's trailing NUL leaves one empty piece at the end.
    assert_eq!(&got[..got.len() - 1], &words.map(str::to_owned)[..]);
}

/// cmd.exe's percent and caret phases for a line `quote::cmd` produced.
fn cmd_unescape(line: &str) -> String {
    let percent = line.replace("%%", "%");
    let mut out = String::new();
    let mut chars = percent.chars();
    while let Some(c) = chars.next() {
        if c == '^' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// CommandLineToArgvW.
fn argv_split(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let (mut args, mut i) = (Vec::new(), 0);
    loop {
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        if i >= chars.len() {
            return args;
        }
        let (mut arg, mut quoted) = (String::new(), false);
        while i < chars.len() && (quoted || chars[i] != ' ') {
            match chars[i] {
                '\\' => {
                    let start = i;
                    while i < chars.len() && chars[i] == '\\' {
                        i += 1;
                    }
                    let n = i - start;
                    if i < chars.len() && chars[i] == '"' {
                        arg.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            arg.push('"');
                            i += 1;
                        }
                    } else {
                        arg.extend(std::iter::repeat_n('\\', n));
                    }
                }
                '"' => {
                    quoted = !quoted;
                    i += 1;
                }
                c => {
                    arg.push(c);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Runs a run script with bash functions standing in for the Windows
/// commands; returns (status, stdout, stderr).
fn run_with_stubs(script: &str, stub_dir: &Path, cmd_status: i32) -> (i32, String, String) {
    let bash = tool("bash", "bash");
    let path = stub_dir.join("run.sh");
    std::fs::write(&path, script).unwrap();
    let harness = r#"
cmd() { cp -- "$2" "$STUB_DIR/map.cmd"; printf '%s' "$2" >"$STUB_DIR/map.path"; return "$STUB_CMD_STATUS"; }
cygpath() { printf '%s\n' "$2"; }
mount() { printf '%s\n' "$*" >>"$STUB_DIR/mounts"; }
umount() { return 1; }
export -f cmd cygpath mount umount
exec bash "$1"
"#;
    let out = run(Command::new(bash)
        .arg("-c")
        .arg(harness)
        .arg("harness")
        .arg(&path)
        .env("STUB_DIR", stub_dir)
        .env("STUB_CMD_STATUS", cmd_status.to_string()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMB_PASSWORD: &str = "s3cr&t %x% ^!<a> (b)|c $d \\e";
const AWKWARD_ARG: &str = "it's $HOME & 100% ^ \"q\" \\back\\";

fn spec(stub_dir: &Path) -> RunSpec {
    let work = stub_dir.join("build dir");
    std::fs::create_dir_all(&work).unwrap();
    let mut r = RunSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "printf '%s|%s|%s\\n' \"$(pwd)\" \"$FOO\" \"$1\"; exit 7".into(),
        "argv0".into(),
        AWKWARD_ARG.into(),
    ]);
    r.smb_user = "guest user".into();
    r.smb_password = Secret::new(SMB_PASSWORD);
    r.shares = vec![
        ShareMount {
            drive: 's',
            share: "nixstore".into(),
            mount_point: "/nix/store".into(),
        },
        ShareMount {
            drive: 'X',
            share: "xchg".into(),
            mount_point: "/xchg".into(),
        },
    ];
    r.workdir = Some(work.to_str().unwrap().to_owned());
    r.env = vec![("FOO".into(), "a b $c 'd'".into())];
    r.exit_code_file = Some(stub_dir.join("in-vm-exit").to_str().unwrap().to_owned());
    r
}

#[test]
fn run_script_passes_syntax_checks() {
    let dir = tempfile::tempdir().unwrap();
    let script = run_script(&spec(dir.path())).unwrap();
    syntax_check("bash", "bash", &script);
    syntax_check("dash", "dash", &script);
}

#[test]
fn run_script_maps_mounts_runs_and_returns_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let r = spec(dir.path());
    let script = run_script(&r).unwrap();
    let (status, stdout, stderr) = run_with_stubs(&script, dir.path(), 0);
    assert_eq!(status, 7, "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}|a b $c 'd'|{AWKWARD_ARG}\n",
            r.workdir.as_deref().unwrap()
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("in-vm-exit")).unwrap(),
        "7\n"
    );

    let mounts = std::fs::read_to_string(dir.path().join("mounts")).unwrap();
    assert_eq!(
        mounts,
        "-f -o binary,noacl S:/ /nix/store\n-f -o binary,noacl X:/ /xchg\n"
    );

    // The batch file cmd.exe got: CRLF lines, and net use arguments that
    // decode, through cmd's and the runtime's rules, to the exact values.
    let batch = std::fs::read_to_string(dir.path().join("map.cmd")).unwrap();
    assert!(batch.ends_with("\r\n"));
    let lines: Vec<&str> = batch.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "@echo off");
    assert_eq!(lines[1], "setlocal DisableDelayedExpansion");
    let net_use: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("/persistent:yes"))
        .collect();
    assert_eq!(net_use.len(), 2);
    let line = net_use[0].strip_suffix(" || exit /b 1").unwrap();
    let args = argv_split(&cmd_unescape(line));
    assert_eq!(
        args,
        [
            "net",
            "use",
            "S:",
            "\\\\192.168.0.2\\nixstore",
            SMB_PASSWORD,
            "/user:guest user",
            "/persistent:yes"
        ]
    );
    assert!(lines.contains(&"net use X: /delete /y >nul 2>&1"));
    // The temporary batch file is gone.
    let tmp = std::fs::read_to_string(dir.path().join("map.path")).unwrap();
    assert!(
        tmp.starts_with("/tmp/guestbox-map.") && tmp.ends_with(".cmd"),
        "{tmp}"
    );
    assert!(!Path::new(&tmp).exists(), "{tmp} left behind");
}

#[test]
fn run_script_fails_with_125_when_mapping_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = spec(dir.path());
    let marker = dir.path().join("ran");
    r.argv = vec!["touch".into(), marker.to_str().unwrap().into()];
    let (status, _, stderr) = run_with_stubs(&run_script(&r).unwrap(), dir.path(), 1);
    assert_eq!(status, SETUP_FAILED_EXIT);
    assert!(stderr.contains("mapping the SMB shares failed"), "{stderr}");
    assert!(!marker.exists(), "the command ran although mapping failed");
}

#[test]
fn run_script_without_shares_makes_a_missing_workdir_and_fails_on_one_it_cannot_make() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = RunSpec::new(vec!["true".into()]);
    // Made if missing, as Docker does.
    let missing = dir.path().join("missing");
    r.workdir = Some(missing.to_str().unwrap().to_owned());
    let script = run_script(&r).unwrap();
    assert!(!script.contains("net use"));
    let (status, _, stderr) = run_with_stubs(&script, dir.path(), 0);
    assert_eq!(status, 0, "{stderr}");
    assert!(missing.is_dir());
    // Below a plain file it cannot be made: the setup failed, the command did not run.
    std::fs::write(dir.path().join("file"), "").unwrap();
    r.workdir = Some(dir.path().join("file/sub").to_str().unwrap().to_owned());
    let (status, _, stderr) = run_with_stubs(&run_script(&r).unwrap(), dir.path(), 0);
    assert_eq!(status, SETUP_FAILED_EXIT);
    assert!(stderr.contains("cannot enter"), "{stderr}");
}

#[test]
fn run_script_validates_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let base = spec(dir.path());
    let bad = |f: &dyn Fn(&mut RunSpec)| {
        let mut r = base.clone();
        f(&mut r);
        run_script(&r).unwrap_err().to_string()
    };
    assert!(bad(&|r| r.argv.clear()).contains("argv"));
    assert!(bad(&|r| r.workdir = Some("relative".into())).contains("workdir"));
    assert!(bad(&|r| r.shares[1].drive = 'C').contains("drive"));
    assert!(bad(&|r| r.shares[1].drive = 'S').contains("twice"));
    assert!(bad(&|r| r.shares[0].share = "a b".into()).contains("share"));
    assert!(bad(&|r| r.shares[0].mount_point = "/".into()).contains("mount point"));
    assert!(bad(&|r| r.env.push(("1BAD".into(), "x".into()))).contains("env"));
    let e = bad(&|r| r.smb_password = Secret::new("with\"quote"));
    assert!(e.contains("smb_password") && !e.contains("with"), "{e}");
    assert!(bad(&|r| r.smb_password = Secret::new("/option")).contains("smb_password"));
    assert!(bad(&|r| r.argv.push("nul\0byte".into())).contains("argv"));
}
