//! Quoting for the languages the install media speak: bash, cmd.exe batch
//! files, Windows argv (`CommandLineToArgvW`), XML and winnt.sif.
//!
//! Every function either returns text that the target reads back as exactly
//! the input, or an error: a value that cannot be carried (a NUL byte in a
//! bash word, a newline in a batch line) is refused rather than mangled.
//! Errors give the position, never the value, since values may be passwords.

use std::fmt;

/// Where a quoted value is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Bash,
    Cmd,
    Argv,
    Xml,
    WinntSif,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Bash => "bash",
            Target::Cmd => "a cmd.exe batch file",
            Target::Argv => "a Windows command line",
            Target::Xml => "XML",
            Target::WinntSif => "winnt.sif",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot quote for {target}: {reason} at character {position}")]
pub struct QuoteError {
    pub target: Target,
    pub reason: &'static str,
    /// Zero-based index of the offending character.
    pub position: usize,
}

fn refuse(target: Target, reason: &'static str, position: usize) -> QuoteError {
    QuoteError {
        target,
        reason,
        position,
    }
}

/// Characters that need no quoting in bash, in argv, and in the arguments
/// of external programs on a cmd.exe line (`,` separates only for cmd's
/// builtins, `=` would make a bash assignment, so it is not here).
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '+' | '@' | ',')
}

/// A bash word that expands to exactly `s`.
///
/// Plain words stay as they are; anything else is single-quoted, with `'`
/// written as `'\''`. Inside single quotes bash interprets nothing.
pub fn bash(s: &str) -> Result<String, QuoteError> {
    if let Some(pos) = s.chars().position(|c| c == '\0') {
        return Err(refuse(
            Target::Bash,
            "NUL cannot be passed to a program",
            pos,
        ));
    }
    if !s.is_empty() && s.chars().all(is_plain) {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

/// One argument as `CommandLineToArgvW` and the MSVC runtime split it.
///
/// Backslashes are literal except before a `"`: there, 2n backslashes
/// give n, and 2n+1 give n plus a literal quote.
pub fn argv(s: &str) -> Result<String, QuoteError> {
    if let Some(pos) = s.chars().position(|c| c == '\0') {
        return Err(refuse(
            Target::Argv,
            "NUL cannot be passed to a program",
            pos,
        ));
    }
    if !s.is_empty() && s.chars().all(|c| is_plain(c) || c == '\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut backslashes = 0usize;
    for c in s.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                // Double the run of backslashes and escape the quote.
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    // Backslashes before the closing quote must be doubled.
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    Ok(out)
}

/// One argument of an external program on a line of a batch file.
///
/// Quoted for argv first, then every cmd.exe metacharacter (quotes
/// included) is escaped with `^`, so cmd never enters its quoted state and
/// the escaping holds wherever a `"` falls; `%` is doubled since the
/// percent phase of a batch file runs before carets. The batch file must
/// run with delayed expansion off (`setlocal DisableDelayedExpansion`),
/// or `!` would still expand.
pub fn cmd(s: &str) -> Result<String, QuoteError> {
    for (pos, c) in s.chars().enumerate() {
        match c {
            '\0' => {
                return Err(refuse(
                    Target::Cmd,
                    "NUL cannot be passed to a program",
                    pos,
                ))
            }
            '\r' | '\n' => return Err(refuse(Target::Cmd, "a line break ends a batch line", pos)),
            _ => {}
        }
    }
    let quoted = argv(s)?;
    let mut out = String::with_capacity(quoted.len() + 8);
    for c in quoted.chars() {
        match c {
            '%' => out.push_str("%%"),
            '^' | '&' | '|' | '<' | '>' | '(' | ')' | '"' => {
                out.push('^');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Text for XML character data or a quoted attribute value.
pub fn xml(s: &str) -> Result<String, QuoteError> {
    let mut out = String::with_capacity(s.len());
    for (pos, c) in s.chars().enumerate() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {
                return Err(refuse(
                    Target::Xml,
                    "control characters are not allowed in XML 1.0",
                    pos,
                ))
            }
            '\u{FFFE}' | '\u{FFFF}' => {
                return Err(refuse(
                    Target::Xml,
                    "U+FFFE and U+FFFF are not allowed in XML",
                    pos,
                ))
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// A quoted winnt.sif value: `"value"`.
///
/// Setup's INF parser has no escape for `"` that text-mode setup and GUI
/// setup agree on, so a quote inside the value is refused, as are line
/// breaks and control characters.
pub fn winnt_sif(s: &str) -> Result<String, QuoteError> {
    for (pos, c) in s.chars().enumerate() {
        if c == '"' {
            return Err(refuse(
                Target::WinntSif,
                "winnt.sif values cannot contain '\"'",
                pos,
            ));
        }
        if c.is_control() {
            return Err(refuse(
                Target::WinntSif,
                "control characters are not allowed",
                pos,
            ));
        }
    }
    Ok(format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The awkward characters the brief names, plus a few more.
    const NASTY: &[&str] = &[
        "",
        "plain",
        "two words",
        "it's",
        "say \"hi\"",
        "100%",
        "%PATH%",
        "a^b",
        "a&b",
        "$HOME",
        "${x}$(id)`id`",
        "C:\\Program Files\\",
        "trailing\\",
        "\\\\server\\share",
        "back\\\"slash",
        "pipe|less<more>",
        "(paren)",
        "bang!",
        "tab\there",
        "ünïcödé ✓",
        "'",
        "\"",
        "\\",
        "\\\\\"",
        ";,=",
    ];

    #[test]
    fn bash_plain_words_stay_plain() {
        assert_eq!(bash("openssh").unwrap(), "openssh");
        assert_eq!(bash("/usr/bin/env").unwrap(), "/usr/bin/env");
        assert_eq!(bash("").unwrap(), "''");
    }

    #[test]
    fn bash_quotes_specials() {
        assert_eq!(bash("two words").unwrap(), "'two words'");
        assert_eq!(bash("it's").unwrap(), "'it'\\''s'");
        assert_eq!(bash("$HOME").unwrap(), "'$HOME'");
        assert_eq!(bash("a\\b").unwrap(), "'a\\b'");
        assert_eq!(bash("100%").unwrap(), "'100%'");
        assert_eq!(bash("a^b&c").unwrap(), "'a^b&c'");
    }

    #[test]
    fn bash_refuses_nul() {
        let e = bash("a\0b").unwrap_err();
        assert_eq!(e.position, 1);
        assert_eq!(e.target, Target::Bash);
    }

    #[test]
    fn argv_examples() {
        assert_eq!(argv("simple").unwrap(), "simple");
        assert_eq!(argv("C:\\x\\y").unwrap(), "C:\\x\\y");
        assert_eq!(argv("").unwrap(), "\"\"");
        assert_eq!(argv("a b").unwrap(), "\"a b\"");
        assert_eq!(argv("say \"hi\"").unwrap(), "\"say \\\"hi\\\"\"");
        // Trailing backslash doubled so it does not escape the closing quote.
        assert_eq!(
            argv("C:\\dir with space\\").unwrap(),
            "\"C:\\dir with space\\\\\""
        );
        // Backslashes before a quote: 2n+1.
        assert_eq!(argv("a\\\"b").unwrap(), "\"a\\\\\\\"b\"");
    }

    #[test]
    fn cmd_examples() {
        assert_eq!(cmd("X:").unwrap(), "X:");
        assert_eq!(cmd("/user:guestbox").unwrap(), "/user:guestbox");
        assert_eq!(cmd("a&b").unwrap(), "^\"a^&b^\"");
        assert_eq!(cmd("100%").unwrap(), "^\"100%%^\"");
        assert_eq!(cmd("a^b").unwrap(), "^\"a^^b^\"");
        assert_eq!(cmd("two words").unwrap(), "^\"two words^\"");
        assert_eq!(cmd("$x").unwrap(), "^\"$x^\"");
        assert_eq!(cmd("say \"hi\"").unwrap(), "^\"say \\^\"hi\\^\"^\"");
        assert!(cmd("a\nb").is_err());
        assert!(cmd("a\rb").is_err());
    }

    /// What cmd.exe does to one line of a batch file before it hands the
    /// rest of the line to the program: the percent phase (`%%` becomes
    /// `%`; our output has no other `%`), then the caret phase outside
    /// quotes. Good enough for the subset `cmd` emits.
    fn cmd_unescape(line: &str) -> String {
        let percent = line.replace("%%", "%");
        let mut out = String::new();
        let mut in_quotes = false;
        let mut chars = percent.chars();
        while let Some(c) = chars.next() {
            if c == '^' && !in_quotes {
                if let Some(n) = chars.next() {
                    out.push(n);
                    continue;
                }
            }
            if c == '"' {
                in_quotes = !in_quotes;
            }
            out.push(c);
        }
        out
    }

    /// `CommandLineToArgvW` for arguments after the program name.
    fn argv_split(line: &str) -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        let mut args = Vec::new();
        let mut i = 0;
        loop {
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
            if i >= chars.len() {
                break;
            }
            let mut arg = String::new();
            let mut in_quotes = false;
            while i < chars.len() {
                let c = chars[i];
                if !in_quotes && (c == ' ' || c == '\t') {
                    break;
                }
                if c == '\\' {
                    let mut n = 0;
                    while i < chars.len() && chars[i] == '\\' {
                        n += 1;
                        i += 1;
                    }
                    if i < chars.len() && chars[i] == '"' {
                        arg.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            arg.push('"');
                            i += 1;
                        }
                    } else {
                        arg.extend(std::iter::repeat_n('\\', n));
                    }
                    continue;
                }
                if c == '"' {
                    if in_quotes && i + 1 < chars.len() && chars[i + 1] == '"' {
                        arg.push('"');
                        i += 2;
                        continue;
                    }
                    in_quotes = !in_quotes;
                    i += 1;
                    continue;
                }
                arg.push(c);
                i += 1;
            }
            args.push(arg);
        }
        args
    }

    #[test]
    fn argv_round_trips() {
        for s in NASTY {
            let line = format!("{} {}", argv(s).unwrap(), argv("next").unwrap());
            assert_eq!(
                argv_split(&line),
                vec![s.to_string(), "next".to_string()],
                "{s:?}"
            );
        }
    }

    #[test]
    fn cmd_round_trips() {
        for s in NASTY {
            let line = format!("{} {}", cmd(s).unwrap(), cmd("x y").unwrap());
            let after_cmd = cmd_unescape(&line);
            assert_eq!(
                argv_split(&after_cmd),
                vec![s.to_string(), "x y".to_string()],
                "{s:?} -> {line}"
            );
        }
    }

    #[test]
    fn cmd_leaves_no_live_metacharacter() {
        // After the caret phase, no unescaped & | < > may remain outside
        // quotes: check the raw line, every metachar is preceded by ^.
        for s in NASTY {
            let q = cmd(s).unwrap();
            let mut prev = ' ';
            for c in q.chars() {
                if matches!(c, '&' | '|' | '<' | '>' | '(' | ')') {
                    assert_eq!(prev, '^', "{s:?} -> {q}");
                }
                prev = if prev == '^' && c == '^' { ' ' } else { c };
            }
        }
    }

    #[test]
    fn xml_escapes() {
        assert_eq!(xml("a<b>&\"c'").unwrap(), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(xml("100% ^$\\").unwrap(), "100% ^$\\");
        assert!(xml("bell\u{7}").is_err());
    }

    #[test]
    fn winnt_sif_quotes() {
        assert_eq!(winnt_sif("Pa ss;w%rd").unwrap(), "\"Pa ss;w%rd\"");
        let e = winnt_sif("a\"b").unwrap_err();
        assert_eq!(e.position, 1);
        assert!(winnt_sif("a\nb").is_err());
    }

    #[test]
    fn errors_do_not_leak_values() {
        let e = bash("secret\0password").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
}
