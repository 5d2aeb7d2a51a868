#!/usr/bin/python3 -S
# guestbox stand-in for Windows + Cygwin -- a TEST FIXTURE, NOT WINDOWS.
#
# One program, called by its name (argv[0]) or as `standin.py NAME ARGS`:
#   boot setup|installed     the stand-in's "Windows Setup" and its installed boot
#   net cmd netsh reg sc powercfg shutdown mode ...   Windows commands (strict syntax)
#   cygpath mount umount ssh-host-config cygrunsrv mkpasswd mkgroup   Cygwin's
# Every command accepts exactly the documented syntax of its namesake as far as guestbox's
# media use it and fails like its namesake otherwise; what the stand-in does not implement
# it refuses loudly instead of ignoring.
import sys

sys.path.extend(["/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload"])

import datetime  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

SERIAL = "/dev/ttyS0"
STATE = "/etc/standin"
WINDOWS_JSON = STATE + "/windows.json"
SERVICES = STATE + "/services"
REGISTRY = "/cygdrive/c/Windows/System32/config/standin-registry.json"
NETUSE = "/run/standin/netuse"
SETUP_FAILED = "STANDIN-SETUP-FAILED:"
BOOT_FAILED = "STANDIN-BOOT-FAILED:"
SETUP_STARTED = "STANDIN-SETUP-STARTED"
SSHD_READY = "STANDIN-SSHD-READY"
MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"
LIB = "/usr/local/lib/standin"

# Windows time zone ids the stand-in knows, with their IANA zone (the RTC is read as local
# time of that zone, as Windows keeps it) and Windows XP's index where there is one.
TIME_ZONES = {
    "utc": ("Etc/UTC", None),
    "greenwich standard time": ("Atlantic/Reykjavik", 90),
    "gmt standard time": ("Europe/London", 85),
    "w. europe standard time": ("Europe/Berlin", 110),
    "central europe standard time": ("Europe/Budapest", 95),
    "romance standard time": ("Europe/Paris", 105),
    "e. europe standard time": ("Europe/Chisinau", 115),
    "fle standard time": ("Europe/Kiev", 125),
    "russian standard time": ("Europe/Moscow", 145),
    "eastern standard time": ("America/New_York", 35),
    "central standard time": ("America/Chicago", 20),
    "mountain standard time": ("America/Denver", 10),
    "pacific standard time": ("America/Los_Angeles", 4),
    "alaskan standard time": ("America/Anchorage", 3),
    "hawaiian standard time": ("Pacific/Honolulu", 2),
    "china standard time": ("Asia/Shanghai", 210),
    "tokyo standard time": ("Asia/Tokyo", 235),
    "india standard time": ("Asia/Kolkata", 190),
    "aus eastern standard time": ("Australia/Sydney", 255),
}
XP_INDEX = {idx: zone for (zone, idx) in TIME_ZONES.values() if idx is not None}

# Cygwin programs the stand-in provides, with the file a package archive must hold for
# the program to be "installed" (as on Cygwin, where the program is that file).
CYGWIN_PROGRAMS = {
    "bash": "usr/bin/bash.exe",
    "cygpath": "usr/bin/cygpath.exe",
    "mount": "usr/bin/mount.exe",
    "umount": "usr/bin/umount.exe",
    "mkpasswd": "usr/bin/mkpasswd.exe",
    "mkgroup": "usr/bin/mkgroup.exe",
    "cygrunsrv": "usr/bin/cygrunsrv.exe",
    "ssh-host-config": "usr/bin/ssh-host-config",
    "sshd": "usr/sbin/sshd.exe",
}
# Windows programs every stand-in Windows has in System32 (and PowerShell for Vista+).
WINDOWS_PROGRAMS = ["cmd", "net", "netsh", "reg", "sc", "powercfg", "shutdown", "mode"]


# During setup a Windows command's syntax error stops the install (see Cmd.external);
# in SSH sessions the command fails as its namesake does and the caller decides.
STRICT = False
# Exit statuses that mean "syntax error" for each program, as the stand-in gives them.
SYNTAX_ERRORS = {"netsh": (1,), "reg": (1,), "sc": (1639, 87), "powercfg": (1,), "shutdown": (87,), "net": (1,), "powershell": (1,)}


class Reject(Exception):
    """What the real Windows or Cygwin would refuse; the message names the problem."""


def serial(line):
    try:
        with open(SERIAL, "w") as f:
            f.write(line + "\r\n")
    except OSError:
        print(line, file=sys.stderr, flush=True)


def power_off():
    os.sync()
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
    except OSError:
        pass
    time.sleep(60)


def run(argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode, (r.stderr or r.stdout).strip()))
    return r


def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def save_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def windows():
    w = load_json(WINDOWS_JSON, None)
    if w is None:
        raise Reject("the stand-in Windows is not installed (no %s)" % WINDOWS_JSON)
    return w


# ---------------------------------------------------------------- paths


def resolve_ci(unix_path):
    """unix_path with each component matched case-insensitively, as NTFS, FAT and CDFS
    (Joliet) look names up; None if a component does not exist."""
    parts = [p for p in unix_path.split("/") if p]
    cur = "/"
    for p in parts:
        cand = os.path.join(cur, p)
        if os.path.lexists(cand):
            cur = cand
            continue
        try:
            names = os.listdir(cur)
        except OSError:
            return None
        match = [n for n in names if n.lower() == p.lower()]
        if not match:
            return None
        cur = os.path.join(cur, match[0])
    return cur


DRIVE_RE = re.compile(r"^([A-Za-z]):([\\/].*)?$")


def win_to_unix(p, cwd="C:\\Windows\\System32"):
    """A Windows path (X:\\a\\b, X:/a, \\\\srv\\share\\p, relative) as the stand-in's
    Linux path (/cygdrive/x/a/b)."""
    if p.startswith("\\\\") or p.startswith("//"):
        rest = p[2:].replace("\\", "/")
        return "//" + rest
    m = DRIVE_RE.match(p)
    if m:
        rest = (m.group(2) or "").replace("\\", "/")
        return "/cygdrive/%s%s" % (m.group(1).lower(), rest.rstrip("/") if rest != "/" else "")
    if re.match(r"^[A-Za-z]:[^\\/]", p):
        raise Reject("drive-relative path %r: give X:\\path" % p)
    return win_to_unix(cwd.rstrip("\\") + "\\" + p)


# ---------------------------------------------------------------- batch files (cmd.exe)


class Exit(Exception):
    def __init__(self, code, whole=False):
        self.code = code
        self.whole = whole


class Goto(Exception):
    def __init__(self, label):
        self.label = label


def argv_split(s):
    """A command line split as CommandLineToArgvW and the MSVC runtime do."""
    args, i, n = [], 0, len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return args
        cur, inq = [], False
        while i < n:
            c = s[i]
            if c == "\\":
                j = i
                while j < n and s[j] == "\\":
                    j += 1
                nb = j - i
                if j < n and s[j] == '"':
                    cur.append("\\" * (nb // 2))
                    if nb % 2:
                        cur.append('"')
                        i = j + 1
                    else:
                        i = j
                    continue
                cur.append("\\" * nb)
                i = j
                continue
            if c == '"':
                if inq and i + 1 < n and s[i + 1] == '"':
                    cur.append('"')
                    i += 2
                    continue
                inq = not inq
                i += 1
                continue
            if c in " \t" and not inq:
                break
            cur.append(c)
            i += 1
        args.append("".join(cur))


class Cmd:
    """A strict interpreter of the batch language guestbox's scripts are written in."""

    def __init__(self, env, out=None):
        self.env = {k.upper(): v for k, v in env.items()}
        self.errorlevel = 0
        self.out = out  # default stdout file for echo and programs (None: inherit)
        self.stack = []  # setlocal snapshots

    # --- variables
    def getenv(self, name):
        u = name.upper()
        if u == "ERRORLEVEL" and u not in self.env:
            return str(self.errorlevel)
        if u == "DATE" and u not in self.env:
            return datetime.datetime.now().strftime("%a %m/%d/%Y")
        if u == "TIME" and u not in self.env:
            return datetime.datetime.now().strftime("%H:%M:%S.00")
        if u == "CD" and u not in self.env:
            return "C:\\Windows\\System32"
        return self.env.get(u)

    def expand(self, line, batch):
        """The percent phase: %VAR%, %0-%9, %~dp0, %*, %% (in batch files)."""
        out, i, n = [], 0, len(line)
        while i < n:
            c = line[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            if batch is not None:
                if line.startswith("%%", i):
                    out.append("%")
                    i += 2
                    continue
                m = re.match(r"%(~[a-z]*)?([0-9*])", line[i:])
                if m:
                    mods, which = m.group(1) or "", m.group(2)
                    if which == "*":
                        if mods:
                            raise Reject("%%~*%s is not valid" % mods)
                        out.append(batch["args_text"])
                    else:
                        arg = batch["args"][int(which)] if int(which) < len(batch["args"]) else ""
                        out.append(self.modifiers(arg, mods))
                    i += len(m.group(0))
                    continue
            j = line.find("%", i + 1)
            name = line[i + 1 : j] if j > 0 else None
            if name and re.match(r"^[A-Za-z_][A-Za-z0-9_#$'()*+,\-.?@\[\]`{}~ ]*$", name) and ":" not in name:
                v = self.getenv(name)
                if v is not None:
                    out.append(v)
                    i = j + 1
                    continue
                if batch is not None:  # undefined variables expand to nothing in batch files
                    i = j + 1
                    continue
            if name and ":" in name and self.getenv(name.split(":", 1)[0]) is not None:
                raise Reject("%%%s%%: variable substitution/substrings are not implemented by the stand-in" % name)
            if batch is not None:
                # A lone % in a batch file disappears.
                i += 1
                continue
            out.append(c)
            i += 1
        return "".join(out)

    @staticmethod
    def modifiers(arg, mods):
        a = arg.strip('"')
        if not mods:
            return arg
        if mods == "~":
            return a
        m = set(mods[1:])
        if not m <= set("dpnxf"):
            raise Reject("%%%s0: only the d, p, n, x and f modifiers are implemented" % mods)
        if "f" in m:
            return a
        d = a[:2] if DRIVE_RE.match(a) else ""
        rest = a[len(d) :]
        k = rest.rfind("\\")
        path, base = (rest[: k + 1], rest[k + 1 :]) if k >= 0 else ("", rest)
        stem, ext = os.path.splitext(base)
        r = ""
        if "d" in m:
            r += d
        if "p" in m:
            r += path
        if "n" in m:
            r += stem
        if "x" in m:
            r += ext
        return r

    # --- parsing
    @staticmethod
    def scan(text):
        """Splits a (percent-expanded) line into commands and operators, with carets and
        quotes as cmd.exe treats them. Returns [(op_before, text, redirections)]."""
        segs, cur, redirs, op = [], [], [], None
        i, n, inq = 0, len(text), False

        def word_at(k):
            while k < n and text[k] in " \t":
                k += 1
            w, q = [], False
            while k < n:
                ch = text[k]
                if ch == '"':
                    q = not q
                    w.append(ch)
                    k += 1
                    continue
                if not q and (ch in " \t&|<>"):
                    break
                if not q and ch == "^" and k + 1 < n:
                    w.append(text[k + 1])
                    k += 2
                    continue
                w.append(ch)
                k += 1
            return "".join(w), k

        while i < n:
            c = text[i]
            if inq:
                cur.append(c)
                if c == '"':
                    inq = False
                i += 1
                continue
            if c == '"':
                inq = True
                cur.append(c)
                i += 1
                continue
            if c == "^":
                if i + 1 >= n:
                    raise Reject("a caret at the end of a line continues it; the stand-in does not join lines")
                cur.append(text[i + 1])
                i += 2
                continue
            if c in "&|":
                two = text[i : i + 2]
                if two == "&&" or two == "||":
                    segs.append((op, "".join(cur), redirs))
                    op, cur, redirs = two, [], []
                    i += 2
                    continue
                if c == "|":
                    raise Reject("pipes between batch commands are not implemented by the stand-in")
                segs.append((op, "".join(cur), redirs))
                op, cur, redirs = "&", [], []
                i += 1
                continue
            m = re.match(r"([0-9])?(>>|>|<)(&[0-9])?", text[i:])
            if m and (m.group(1) is None or not cur or cur[-1] in " \t"):
                fd = int(m.group(1)) if m.group(1) else (0 if m.group(2) == "<" else 1)
                i += len(m.group(0))
                if m.group(3):
                    redirs.append((fd, ">&", int(m.group(3)[1:])))
                    continue
                target, i = word_at(i)
                if not target:
                    raise Reject("a redirection without a target")
                redirs.append((fd, m.group(2), target.strip('"')))
                continue
            cur.append(c)
            i += 1
        if inq:
            pass  # an unclosed quote runs to the end of the line, as in cmd
        segs.append((op, "".join(cur), redirs))
        return segs

    # --- running
    def run_batch(self, unix_file, win_name, args):
        with open(unix_file, "rb") as f:
            data = f.read()
        text = data.decode("cp1252" if b"\x00" not in data else "utf-16")
        if "\n" in text.replace("\r\n", ""):
            raise Reject("%s: a line ends in LF only; cmd.exe mis-parses labels and goto in such files (end every line with CRLF)" % win_name)
        lines = text.split("\r\n")
        batch = {
            "lines": lines,
            "args": [win_name] + args,
            "args_text": " ".join(args),
            "name": win_name,
        }
        return self.run_lines(batch, 0)

    def run_lines(self, batch, start):
        lines = batch["lines"]
        labels = {}
        for k, l in enumerate(lines):
            s = l.strip()
            if s.startswith(":") and not s.startswith("::"):
                labels[s[1:].split()[0].lower() if s[1:].split() else ""] = k
        pc = start
        saved_stack = len(self.stack)
        try:
            while pc < len(lines):
                raw = lines[pc]
                pc += 1
                try:
                    self.line(raw, batch)
                except Goto as g:
                    if g.label == "eof":
                        break
                    if g.label not in labels:
                        raise Reject("%s: goto %s: the label does not exist" % (batch["name"], g.label))
                    pc = labels[g.label] + 1
                except Reject as e:
                    raise Reject("%s line %d: %s" % (batch["name"], pc, e)) from None
        except Exit as e:
            if e.whole:
                raise
            self.errorlevel = e.code
        finally:
            # The end of a batch file or subroutine ends its setlocal scopes.
            if len(self.stack) > saved_stack:
                self.env = self.stack[saved_stack]
                del self.stack[saved_stack:]
        return self.errorlevel

    def line(self, raw, batch):
        s = raw.strip(" \t")
        if not s or s.startswith("::"):
            return
        if s.startswith(":"):
            return  # a label
        if re.match(r"^@?rem(\s|$)", s, re.I):
            return
        self.command_line(self.expand(s, batch), batch)

    def command_line(self, text, batch):
        s = text.strip(" \t")
        if s.startswith("@"):
            s = s[1:].lstrip()
        m = re.match(r"^for\s+%([A-Za-z])\s+in\s*\(([^)]*)\)\s*do\s+(.*)$", s, re.I | re.S)
        if m:
            var, items, body = m.group(1), m.group(2), m.group(3)
            for item in re.split(r"[\s,;]+", items.strip()):
                if not item:
                    continue
                if any(ch in item for ch in "*?"):
                    raise Reject("for with wildcards is not implemented by the stand-in")
                self.command_line(body.replace("%" + var, item), batch)
            return
        m = re.match(r"^if\s+(/i\s+)?(not\s+)?(exist|defined|errorlevel)\s+", s, re.I)
        if m:
            kind = m.group(3).lower()
            neg = bool(m.group(2))
            rest = s[m.end() :]
            arg, k = self.if_word(rest)
            body = rest[k:].strip()
            if not body:
                raise Reject("if without a command")
            if kind == "exist":
                cond = resolve_ci(win_to_unix(arg.strip('"'))) is not None
            elif kind == "defined":
                cond = self.getenv(arg) is not None
            else:
                if not re.match(r"^[0-9]+$", arg):
                    raise Reject("if errorlevel %r: a number is needed" % arg)
                cond = self.errorlevel >= int(arg)
            if cond != neg:
                self.command_line(body, batch)
            return
        m = re.match(r"^if\s+(/i\s+)?(not\s+)?", s, re.I)
        if m and re.match(r"^if\s", s, re.I):
            raise Reject("this form of if is not implemented by the stand-in: %s" % s)
        last = 0
        for op, seg, redirs in self.scan(s):
            if op == "&&" and last != 0:
                continue
            if op == "||" and last == 0:
                continue
            last = self.simple(seg, redirs, batch)
            self.errorlevel = last

    @staticmethod
    def if_word(rest):
        if rest.startswith('"'):
            j = rest.find('"', 1)
            if j < 0:
                raise Reject("unclosed quote in if")
            return rest[: j + 1], j + 1
        m = re.match(r"^\S+", rest)
        return m.group(0), m.end()

    def open_redirs(self, redirs):
        files = {}
        for fd, kind, target in redirs:
            if kind == ">&":
                files[fd] = ("dup", target)
                continue
            t = target.lower().rstrip(":")
            if t == "nul":
                path = "/dev/null"
            elif t == "com1":
                path = SERIAL
            elif re.match(r"^(com[2-9]|lpt[1-9]|con|prn|aux)$", t):
                raise Reject("redirection to %s: the stand-in has no such device" % target)
            else:
                path = win_to_unix(target)
                parent = resolve_ci(os.path.dirname(path))
                if parent is None:
                    raise Reject("the system cannot find the path specified: %s" % target)
                path = os.path.join(parent, os.path.basename(path))
            if kind == "<":
                files[fd] = ("file", open(path, "rb"))
            else:
                files[fd] = ("file", open(path, "ab" if kind == ">>" else "wb"))
        res = {}
        for fd in (0, 1, 2):
            if fd in files and files[fd][0] == "file":
                res[fd] = files[fd][1]
        for fd, v in files.items():
            if v[0] == "dup":
                src = v[1]
                res[fd] = res.get(src) if src in res else (self.out if src == 1 else None)
        return res

    def simple(self, seg, redirs, batch):
        s = seg.strip(" \t")
        if s.startswith("@"):
            s = s[1:].lstrip()
        if not s:
            if redirs:
                raise Reject("a redirection without a command")
            return self.errorlevel
        files = self.open_redirs(redirs)
        try:
            return self.dispatch(s, files, batch)
        finally:
            for f in set(files.values()):
                if f is not None and f is not self.out:
                    f.close()

    def write(self, files, fd, text):
        f = files.get(fd, self.out if fd == 1 else None)
        data = text.encode("cp1252", "replace")
        if f is None:
            (sys.stdout if fd == 1 else sys.stderr).buffer.write(data)
            (sys.stdout if fd == 1 else sys.stderr).flush()
        else:
            f.write(data)
            f.flush()

    def dispatch(self, s, files, batch):
        m = re.match(r'^("[^"]*"|[^\s"]+)(.*)$', s, re.S)
        name_raw, rest = m.group(1), m.group(2)
        name = name_raw.strip('"')
        low = name.lower()
        if low in ("echo", "echo."):
            text = rest[1:] if rest[:1] in (" ", "\t") else rest
            if low == "echo" and text.strip().lower() in ("off", "on"):
                return self.errorlevel
            if low == "echo" and not text.strip():
                raise Reject("echo without text prints ECHO is off.; not what a script wants")
            self.write(files, 1, text + "\r\n")
            return self.errorlevel
        if low == "set":
            t = rest.strip()
            if t.lower().startswith("/"):
                raise Reject("set %s is not implemented by the stand-in" % t.split()[0])
            if t.startswith('"'):
                j = t.rfind('"')
                if j <= 0:
                    raise Reject('set "...: unclosed quote')
                t = t[1:j]
            if "=" not in t or t.startswith("="):
                raise Reject("set %s: expected set \"NAME=value\"" % t)
            k, v = t.split("=", 1)
            if v == "":
                self.env.pop(k.upper(), None)
            else:
                self.env[k.upper()] = v
            return self.errorlevel
        if low == "setlocal":
            for opt in rest.split():
                o = opt.lower()
                if o == "enabledelayedexpansion":
                    raise Reject("setlocal EnableDelayedExpansion: the stand-in does not implement !var! expansion")
                if o not in ("enableextensions", "disabledelayedexpansion", "disableextensions"):
                    raise Reject("setlocal %s: not an option of setlocal" % opt)
            self.stack.append(dict(self.env))
            return self.errorlevel
        if low == "endlocal":
            if self.stack:
                self.env = self.stack.pop()
            return self.errorlevel
        if low == "goto":
            label = rest.strip().lstrip(":").split()
            if not label:
                raise Reject("goto without a label")
            raise Goto(label[0].lower())
        if low == "exit":
            a = rest.split()
            whole = True
            if a and a[0].lower() == "/b":
                whole = False
                a = a[1:]
            if len(a) > 1 or (a and not re.match(r"^-?[0-9]+$", a[0])):
                raise Reject("exit %s: expected exit [/b] [number]" % rest.strip())
            code = int(a[0]) if a else self.errorlevel
            raise Exit(code, whole)
        if low == "call":
            t = rest.strip()
            if t.startswith(":"):
                if batch is None:
                    raise Reject("call :label outside a batch file")
                label = t[1:].split()[0].lower()
                args_text = t[1 + len(label) :].strip()
                sub = dict(batch)
                sub["args"] = [":" + label] + argv_split(args_text)
                sub["args_text"] = args_text
                labels = [k for k, l in enumerate(batch["lines"]) if l.strip().lower().split()[:1] == [":" + label]]
                if not labels:
                    raise Reject("call :%s: the label does not exist" % label)
                return self.run_lines(sub, labels[0] + 1)
            return self.dispatch(t, files, batch)
        if low == "mode":
            return self.mode(argv_split(rest), files)
        return self.external(name, argv_split(rest), files, rest)

    def mode(self, args, files):
        if not args or args[0].upper() != "COM1:":
            raise Reject("mode %s: the stand-in only has COM1:" % " ".join(args))
        allowed = {
            "baud": r"^(110|150|300|600|1200|2400|4800|9600|19200|38400|57600|115200)$",
            "parity": r"^[noems]$",
            "data": r"^[5-8]$",
            "stop": r"^(1|1\.5|2)$",
            "to": r"^(on|off)$",
            "xon": r"^(on|off)$",
            "odsr": r"^(on|off)$",
            "octs": r"^(on|off)$",
            "dtr": r"^(on|off|hs)$",
            "rts": r"^(on|off|hs|tg)$",
            "idsr": r"^(on|off)$",
        }
        for a in args[1:]:
            k, _, v = a.partition("=")
            if k.lower() not in allowed or not re.match(allowed[k.lower()], v.lower()):
                if STRICT:
                    raise Reject("mode %s: Invalid parameter - %s" % (" ".join(args), a))
                self.write(files, 2, "Invalid parameter - %s\r\n" % a)
                return 1
        return 0

    def cmd_c(self, rest, files):
        """cmd.exe started from a command line: a new cmd runs the text after /c."""
        m = re.match(r"^\s*((?:/[dqsa]\s+|/e:(?:on|off)\s+)*)/c\s+(.*)$", rest, re.I | re.S)
        if not m:
            raise Reject("cmd %s: the stand-in implements cmd /c COMMAND only" % rest.strip())
        sub = Cmd(dict(self.env), self.out)
        try:
            sub.command_line(m.group(2), None)
        except Exit as e:
            return e.code
        return sub.errorlevel

    def external(self, name, args, files, raw_rest=""):
        base = name.replace("/", "\\").split("\\")[-1]
        low = base.lower()
        stem = low[:-4] if low.endswith((".exe", ".com", ".bat", ".cmd")) else low
        pathlike = "\\" in name or "/" in name or ":" in name
        if pathlike:
            unix = resolve_ci(win_to_unix(name))
            if unix is None or os.path.isdir(unix):
                self.write(files, 2, "'%s' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n" % name)
                return 9009
        else:
            unix = None
            found = False
            for d in self.getenv("PATH").split(";") if self.getenv("PATH") else []:
                for ext in ([""] if "." in low else [".com", ".exe", ".bat", ".cmd"]):
                    cand = resolve_ci(win_to_unix(d.rstrip("\\") + "\\" + base + ext))
                    if cand is not None:
                        unix = cand
                        found = True
                        break
                if found:
                    break
            if not found:
                self.write(files, 2, "'%s' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n" % name)
                return 9009
        if low.endswith((".bat", ".cmd")) or os.path.basename(unix).lower().endswith((".bat", ".cmd")):
            return self.run_batch(unix, name, args)
        if stem == "cmd":
            return self.cmd_c(raw_rest, files)
        prog = PROGRAMS.get(stem)
        if prog is None:
            raise Reject("%s: the stand-in has no such program" % name)
        out = files.get(1, self.out)
        err = files.get(2)
        code = prog(self, args, out, err, unix)
        if STRICT and code in SYNTAX_ERRORS.get(stem, ()):
            # The real command refuses this syntax too, and a script that ignores its
            # status would carry on half-configured: the stand-in stops here instead.
            raise Reject("%s %s: refused as a syntax error by %s (exit %d; its message is in the script's log)" % (name, " ".join(args), stem, code))
        return code


def emit(f, text, err=False):
    data = text.replace("\n", "\r\n").encode("cp1252", "replace")
    if f is None:
        s = sys.stderr if err else sys.stdout
        s.buffer.write(data)
        s.flush()
    else:
        f.write(data)
        f.flush()


# ---------------------------------------------------------------- Windows programs


def state(name, default):
    return load_json("/cygdrive/c/Windows/System32/config/standin-%s.json" % name, default)


def set_state(name, data):
    save_json("/cygdrive/c/Windows/System32/config/standin-%s.json" % name, data)


IP_RE = r"(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}"


def kv_args(args, what):
    out = {}
    for a in args:
        if "=" not in a:
            raise Reject("%s: %r is not name=value" % (what, a))
        k, v = a.split("=", 1)
        out[k.lower()] = v
    return out


def prog_netsh(sh, args, out, err, exe):
    w = windows()
    low = [a.lower() for a in args]
    if low[:4] == ["advfirewall", "firewall", "add", "rule"]:
        if w["profile"] == "windows-xp":
            emit(out, "The following command was not found: %s.\n" % " ".join(args))
            return 1
        kv = kv_args(args[4:], "netsh advfirewall firewall add rule")
        known = {"name", "dir", "action", "protocol", "localport", "remoteport", "localip", "remoteip", "profile", "program", "service", "description", "enable", "interfacetype", "edge", "security"}
        bad = set(kv) - known
        for req in ("name", "dir", "action"):
            if req not in kv:
                bad.add("(missing %s=)" % req)
        if bad:
            emit(out, "A specified value is not valid.\nUsage: add rule name=<string> dir=in|out action=allow|block|bypass [...]\n(%s)\n" % ", ".join(sorted(bad)))
            return 1
        ok = kv["dir"].lower() in ("in", "out") and kv["action"].lower() in ("allow", "block", "bypass")
        proto = kv.get("protocol", "any").lower()
        if not re.match(r"^(any|tcp|udp|icmpv4|icmpv6|[0-9]{1,3})$", proto):
            m = re.match(r"^(icmpv4|icmpv6):([0-9]{1,3}|any),([0-9]{1,3}|any)$", proto)
            ok = ok and bool(m)
        port_re = r"^(any|[0-9]{1,5}(-[0-9]{1,5})?(,[0-9]{1,5}(-[0-9]{1,5})?)*)$"
        for p in ("localport", "remoteport"):
            if p in kv:
                ok = ok and proto in ("tcp", "udp") and bool(re.match(port_re, kv[p]))
        for p in ("remoteip", "localip"):
            if p in kv:
                ok = ok and all(re.match(r"^(any|localsubnet|dns|dhcp|wins|defaultgateway|%s(/[0-9]{1,2}|/%s)?|%s-%s)$" % (IP_RE, IP_RE, IP_RE, IP_RE), x, re.I) for x in kv[p].split(","))
        if "profile" in kv:
            ok = ok and all(x in ("public", "private", "domain", "any") for x in kv["profile"].lower().split(","))
        if not ok:
            emit(out, "A specified value is not valid.\n")
            return 1
        rules = state("firewall", [])
        rules.append(kv)
        set_state("firewall", rules)
        emit(out, "Ok.\n\n")
        return 0
    if low[:3] == ["firewall", "add", "portopening"]:
        kv = kv_args(args[3:], "netsh firewall add portopening")
        known = {"protocol", "port", "name", "mode", "scope", "addresses", "profile", "interface"}
        ok = set(kv) <= known and all(k in kv for k in ("protocol", "port", "name"))
        ok = ok and kv.get("protocol", "").upper() in ("TCP", "UDP", "ALL")
        ok = ok and re.match(r"^[0-9]{1,5}$", kv.get("port", "x")) is not None and 1 <= int(kv.get("port", "0") or 0) <= 65535
        ok = ok and kv.get("mode", "ENABLE").upper() in ("ENABLE", "DISABLE")
        ok = ok and kv.get("scope", "ALL").upper() in ("ALL", "SUBNET", "CUSTOM")
        ok = ok and kv.get("profile", "CURRENT").upper() in ("CURRENT", "DOMAIN", "STANDARD", "ALL")
        if kv.get("scope", "").upper() == "CUSTOM":
            ok = ok and "addresses" in kv and all(re.match(r"^(%s(/(%s|[0-9]{1,2}))?|LocalSubnet)$" % (IP_RE, IP_RE), x, re.I) for x in kv["addresses"].split(","))
        if not ok:
            emit(out, "The syntax supplied for this command is not valid. Check help for the correct syntax.\n\nadd portopening\n      [ protocol = ] TCP|UDP|ALL\n      [ port = ] 1-65535\n      [ name = ] name\n      [ [ mode = ] ENABLE|DISABLE\n        [ scope = ] ALL|SUBNET|CUSTOM\n        [ addresses = ] addresses\n        [ profile = ] CURRENT|DOMAIN|STANDARD|ALL\n        [ interface = ] name ]\n")
            return 1
        rules = state("firewall", [])
        rules.append(kv)
        set_state("firewall", rules)
        if w["profile"] != "windows-xp":
            emit(out, '\nIMPORTANT: Command executed successfully.\nHowever, "netsh firewall" is deprecated;\nuse "netsh advfirewall firewall" instead.\n')
        else:
            emit(out, "Ok.\n\n")
        return 0
    emit(out, "The following command was not found: %s.\n" % " ".join(args))
    return 1


REG_ROOTS = {"HKLM": "HKLM", "HKEY_LOCAL_MACHINE": "HKLM", "HKCU": "HKCU", "HKEY_CURRENT_USER": "HKCU", "HKCR": "HKCR", "HKEY_CLASSES_ROOT": "HKCR", "HKU": "HKU", "HKEY_USERS": "HKU", "HKCC": "HKCC", "HKEY_CURRENT_CONFIG": "HKCC"}
REG_TYPES = {"REG_SZ", "REG_MULTI_SZ", "REG_EXPAND_SZ", "REG_DWORD", "REG_QWORD", "REG_BINARY", "REG_NONE"}


def reg_add(args):
    """Parses `reg add KEY ...` into (key, name, type, data) or raises Reject."""
    if not args:
        raise Reject("ERROR: Invalid syntax.")
    key = args[0]
    root, _, sub = key.partition("\\")
    if root.upper() not in REG_ROOTS or not sub or "\\\\" in key or key.endswith("\\"):
        raise Reject("ERROR: Invalid key name.")
    name, typ, data, force, seen = None, "REG_SZ", None, False, set()
    i = 1
    while i < len(args):
        o = args[i].lower()
        if o in seen and o != "/f":
            raise Reject("ERROR: Invalid syntax. (%s given twice)" % args[i])
        seen.add(o)
        if o in ("/v", "/t", "/d", "/s"):
            if i + 1 >= len(args):
                raise Reject("ERROR: Invalid syntax. (%s needs a value)" % args[i])
            v = args[i + 1]
            if o == "/v":
                name = v
            elif o == "/t":
                typ = v.upper()
                if typ not in REG_TYPES:
                    raise Reject("ERROR: Invalid syntax. (unknown type %s)" % v)
            elif o == "/d":
                data = v
            i += 2
            continue
        if o == "/ve":
            name = ""
        elif o == "/f":
            force = True
        elif o not in ("/reg:32", "/reg:64"):
            raise Reject("ERROR: Invalid syntax. (%s)" % args[i])
        i += 1
    if "/v" in seen and "/ve" in seen:
        raise Reject("ERROR: Invalid syntax. (/v and /ve)")
    if typ in ("REG_DWORD", "REG_QWORD"):
        lim = 2**32 if typ == "REG_DWORD" else 2**64
        if data is None or not re.match(r"^(0x[0-9a-fA-F]+|[0-9]+)$", data) or int(data, 0) >= lim:
            raise Reject("ERROR: Invalid syntax. (%s needs a number, got %r)" % (typ, data))
    if not force:
        raise Reject("reg add without /f would ask to overwrite; nobody answers in an unattended setup")
    return (REG_ROOTS[root.upper()] + "\\" + sub, name, typ, data)


def registry_set(key, name, typ, data):
    reg = load_json(REGISTRY, {})
    reg.setdefault(key.lower(), {})[(name or "").lower()] = [typ, data]
    save_json(REGISTRY, reg)


def registry_get(key, name):
    reg = load_json(REGISTRY, {})
    v = reg.get(key.lower(), {}).get(name.lower())
    return v[1] if v else None


def prog_reg(sh, args, out, err, exe):
    if not args or args[0].lower() != "add":
        raise Reject("reg %s: the stand-in implements reg add only" % " ".join(args[:1]))
    try:
        key, name, typ, data = reg_add(args[1:])
    except Reject as e:
        emit(err, '%s\nType "REG ADD /?" for usage.\n' % e, True)
        return 1
    registry_set(key, name, typ, data)
    emit(out, "The operation completed successfully.\n")
    return 0


def services():
    return state("services", {})


def prog_sc(sh, args, out, err, exe):
    if len(args) < 2 or args[0].lower() != "config":
        raise Reject("sc %s: the stand-in implements sc config only" % " ".join(args[:1]))
    svc = args[1]
    opts = args[2:]
    names = {"type=", "start=", "error=", "binpath=", "group=", "tag=", "depend=", "obj=", "displayname=", "password="}
    if not opts or len(opts) % 2:
        emit(out, "DESCRIPTION:\n        Modifies a service entry in the registry and Service Database.\nUSAGE:\n        sc <server> config [service name] <option1> <option2>...\n\nOPTIONS:\nNOTE: The option name includes the equal sign.\n      A space is required between the equal sign and the value.\n")
        return 1639
    changes = {}
    for k in range(0, len(opts), 2):
        o, v = opts[k].lower(), opts[k + 1]
        if o not in names:
            emit(out, "[SC] ChangeServiceConfig: %s is not an option (the option name includes the equal sign; a space is required between the equal sign and the value)\n" % opts[k])
            return 1639
        changes[o[:-1]] = v
    if "start" in changes and changes["start"].lower() not in ("boot", "system", "auto", "demand", "disabled", "delayed-auto"):
        emit(out, "[SC] ChangeServiceConfig FAILED 87:\n\nThe parameter is incorrect.\n")
        return 87
    sv = services()
    match = [k for k in sv if k.lower() == svc.lower()]
    if not match:
        emit(out, "[SC] OpenService FAILED 1060:\n\nThe specified service does not exist as an installed service.\n\n")
        return 1060
    sv[match[0]].update({k: v.lower() if k == "start" else v for k, v in changes.items()})
    set_state("services", sv)
    emit(out, "[SC] ChangeServiceConfig SUCCESS\n")
    return 0


def prog_powercfg(sh, args, out, err, exe):
    w = windows()
    low = [a.lower() for a in args]
    xp = w["profile"] == "windows-xp"
    if len(low) == 2 and low[0] in ("-hibernate", "/hibernate", "-h", "/h") and low[1] in ("on", "off"):
        return 0
    settings = ("monitor-timeout-ac", "monitor-timeout-dc", "disk-timeout-ac", "disk-timeout-dc", "standby-timeout-ac", "standby-timeout-dc", "hibernate-timeout-ac", "hibernate-timeout-dc")
    if not xp and len(low) == 3 and low[0] in ("-change", "/change", "-x", "/x") and low[1].lstrip("-/") in settings and low[1][:1] in "-/" and re.match(r"^[0-9]+$", low[2]):
        return 0
    if xp and len(low) == 4 and low[0] in ("/change", "-change", "/x", "-x") and low[2].lstrip("-/") in settings and re.match(r"^[0-9]+$", low[3]):
        return 0
    emit(err, "Invalid Parameters -- try \"/?\" for help\n", True)
    return 1


def prog_powershell(sh, args, out, err, exe):
    i, opts, command = 0, set(), None
    while i < len(args):
        a = args[i].lower()
        if a in ("-noprofile", "-noninteractive", "-nologo"):
            opts.add(a)
            i += 1
            continue
        if a == "-command":
            command = " ".join(args[i + 1 :])
            break
        raise Reject("powershell %s: not an option the stand-in implements" % args[i])
    if command is None:
        raise Reject("powershell without -Command would start an interactive shell")
    m = re.match(r"^Add-MpPreference -ExclusionPath '([A-Za-z]:\\[^']*)'$", command)
    if not m:
        raise Reject("powershell -Command %r: the stand-in implements Add-MpPreference -ExclusionPath 'X:\\path' only" % command)
    ex = state("defender", [])
    ex.append(m.group(1))
    set_state("defender", ex)
    return 0


def prog_shutdown(sh, args, out, err, exe):
    w = windows()
    low = [a.lower() for a in args]
    flags, t, k = set(), None, 0
    while k < len(low):
        a = low[k]
        if a[:1] not in "/-" or len(a) < 2:
            emit(err, "%s: invalid argument\n" % args[k], True)
            return 87
        if w["profile"] == "windows-xp" and a[0] == "/":
            emit(err, "Usage: shutdown [-i | -l | -s | -r | -a] [-f] [-m \\\\computername] [-t xx]\n", True)
            return 87
        o = a[1:]
        if o == "t":
            if k + 1 >= len(low) or not re.match(r"^[0-9]+$", low[k + 1]) or int(low[k + 1]) > 315360000:
                emit(err, "The -t option needs a number of seconds\n", True)
                return 87
            t = int(low[k + 1])
            k += 2
            continue
        if o not in ("s", "r", "f", "p"):
            raise Reject("shutdown %s: not implemented by the stand-in" % args[k])
        flags.add(o)
        k += 1
    if not ({"s", "r", "p"} & flags):
        emit(err, "shutdown: one of -s, -r or -p is needed\n", True)
        return 87
    with open("/run/standin/shutdown", "w") as f:
        f.write("reboot" if "r" in flags else "poweroff")
    return 0


def prog_net(sh, args, out, err, exe):
    if not args:
        emit(out, "The syntax of this command is:\n\nNET\n    [ ACCOUNTS | COMPUTER | CONFIG | CONTINUE | FILE | GROUP | HELP |\n      HELPMSG | LOCALGROUP | PAUSE | SESSION | SHARE | START |\n      STATISTICS | STOP | TIME | USE | USER | VIEW ]\n")
        return 1
    sub = args[0].lower()
    if sub == "use":
        return net_use(args[1:], out, err)
    if sub == "stop" and len(args) == 2:
        sv = services()
        match = [k for k in sv if k.lower() == args[1].lower() or sv[k].get("display", "").lower() == args[1].lower()]
        if not match:
            emit(out, "The service name is invalid.\n\nMore help is available by typing NET HELPMSG 2185.\n")
            return 2
        s = sv[match[0]]
        disp = s.get("display", match[0])
        if not s.get("running"):
            emit(out, "The %s service is not started.\n\nMore help is available by typing NET HELPMSG 3521.\n" % disp)
            return 2
        s["running"] = False
        set_state("services", sv)
        emit(out, "The %s service is stopping.\nThe %s service was stopped successfully.\n\n" % (disp, disp))
        return 0
    if sub == "accounts" and len(args) >= 2:
        for a in args[1:]:
            m = re.match(r"^/(maxpwage):(unlimited|[0-9]+)$|^/(minpwage|minpwlen|uniquepw):([0-9]+)$|^/forcelogoff:(no|[0-9]+)$", a, re.I)
            if not m or (m.group(2) and m.group(2).isdigit() and not 1 <= int(m.group(2)) <= 999):
                emit(out, "The syntax of this command is:\n\nNET ACCOUNTS\n[/FORCELOGOFF:{minutes | NO}] [/MINPWLEN:length]\n              [/MAXPWAGE:{days | UNLIMITED}] [/MINPWAGE:days]\n              [/UNIQUEPW:number] [/DOMAIN]\n")
                return 1
        emit(out, "The command completed successfully.\n\n")
        return 0
    raise Reject("net %s: not implemented by the stand-in" % " ".join(args))


NET_USE_SYNTAX = (
    "The syntax of this command is:\n\nNET USE\n"
    "[devicename | *] [\\\\computername\\sharename[\\volume] [password | *]]\n"
    "        [/USER:[domainname\\]username]\n"
    "        [/USER:[dotted domain name\\]username]\n"
    "        [/USER:[username@dotted domain name]\n"
    "        [/SMARTCARD]\n"
    "        [/SAVECRED]\n"
    "        [[/DELETE] | [/PERSISTENT:{YES | NO}]]\n\n"
    "NET USE {devicename | *} [password | *] /HOME\n\n"
    "NET USE [/PERSISTENT:{YES | NO}]\n"
)


def system_error(out, code, text):
    emit(out, "System error %d has occurred.\n\n%s\n\n" % (code, text))
    return 2


def net_use(args, out, err):
    """net use X: \\\\server\\share [password] [/user:NAME] [/persistent:yes|no] [/savecred];
    net use X: /delete [/y]; net use (a list)."""
    device = unc = password = user = persist = None
    delete = yes = False
    for a in args:
        low = a.lower()
        if low.startswith("/"):
            if low == "/delete" or low == "/d":
                delete = True
            elif low in ("/y", "/yes"):
                yes = True
            elif low in ("/n", "/no"):
                pass
            elif low.startswith("/user:") and len(a) > 6:
                user = a[6:]
            elif low in ("/persistent:yes", "/persistent:no", "/p:yes", "/p:no"):
                persist = low.endswith("yes")
            elif low == "/savecred":
                pass
            else:
                emit(out, NET_USE_SYNTAX)
                return 1
        elif device is None and unc is None and re.match(r"^([A-Za-z]:|\*)$", a):
            device = a.upper()
        elif unc is None and not delete and a.startswith("\\\\"):
            if not re.match(r"^\\\\[A-Za-z0-9.\-_]+\\[^\\/:*?\"<>|]+(\\[^\\/:*?\"<>|]+)*$", a):
                emit(out, NET_USE_SYNTAX)
                return 1
            unc = a
        elif unc is not None and password is None:
            password = a
        else:
            emit(out, NET_USE_SYNTAX)
            return 1
    mounts = load_json(NETUSE + ".json", {})
    if delete:
        if device is None or unc is not None or password is not None or user is not None or persist is not None:
            emit(out, NET_USE_SYNTAX)
            return 1
        d = device[0].lower()
        if device == "*" or d not in mounts:
            emit(out, "The network connection could not be found.\n\nMore help is available by typing NET HELPMSG 2250.\n\n")
            return 2
        r = run([UMOUNT, "/cygdrive/" + d], check=False)
        if r.returncode != 0:
            return system_error(out, 2404, "The device is being accessed by an active process.")
        del mounts[d]
        save_json(NETUSE + ".json", mounts)
        emit(out, "%s was deleted successfully.\n\n" % device)
        return 0
    if unc is None:
        if device is None and not args:
            emit(out, "New connections will be remembered.\n\n\nStatus       Local     Remote                    Network\n\n-------------------------------------------------------------------------------\n")
            for d, m in sorted(mounts.items()):
                emit(out, "OK           %-9s %-25s Microsoft Windows Network\n" % (d.upper() + ":", m["unc"]))
            emit(out, "The command completed successfully.\n\n")
            return 0
        emit(out, NET_USE_SYNTAX)
        return 1
    if device is None or device == "*":
        raise Reject("net use without a drive letter (or with *): the stand-in maps to a given letter only")
    if password == "*":
        raise Reject("net use with password *: would prompt; nobody answers")
    d = device[0].lower()
    if d in mounts or os.path.ismount("/cygdrive/" + d) or d in "abc":
        return system_error(out, 85, "The local device name is already in use.")
    w = windows()
    server, share = unc[2:].split("\\", 1)[0], unc[2:].split("\\", 1)[1]
    if not re.match("^" + IP_RE + "$", server):
        return system_error(out, 53, "The network path was not found.")
    creds = "/run/standin/cred-%s" % d
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        uname, dom = user or w["user"], None
        if uname and "\\" in uname:
            dom, uname = uname.split("\\", 1)
        f.write("username=%s\npassword=%s\n" % (uname, password or ""))
        if dom:
            f.write("domain=%s\n" % dom)
    # Windows 8+ speaks SMB 3; XP only SMB1 (NT1), without the Unix extensions.
    vers = "vers=1.0,nounix" if w["profile"] == "windows-xp" else "vers=3"
    target = "/cygdrive/" + d
    os.makedirs(target, exist_ok=True)
    opts = "credentials=%s,%s,iocharset=utf8,uid=0,gid=0,file_mode=0755,dir_mode=0755,noperm,echo_interval=10" % (creds, vers)
    r = run([MOUNT, "-t", "cifs", "//%s/%s" % (server, share.replace("\\", "/")), target, "-o", opts], check=False)
    os.unlink(creds)
    if r.returncode != 0:
        try:
            os.rmdir(target)
        except OSError:
            pass
        msg = r.stderr + r.stdout
        m = re.search(r"mount error\((\d+)\)", msg)
        code = int(m.group(1)) if m else 0
        sys.stderr.write("stand-in: mount.cifs: %s\n" % msg.strip())
        if code == 13:
            return system_error(out, 86, "The specified network password is not correct.")
        if code == 2:
            return system_error(out, 67, "The network name cannot be found.")
        return system_error(out, 53, "The network path was not found.")
    mounts[d] = {"unc": unc, "persistent": bool(persist)}
    save_json(NETUSE + ".json", mounts)
    emit(out, "The command completed successfully.\n\n")
    return 0


def prog_setup(sh, args, out, err, exe):
    return cygwin_setup(sh, args, out, err, exe)


def prog_bash(sh, args, out, err, exe):
    """Cygwin's bash.exe started from cmd: real bash, its arguments as Cygwin gets them
    (a Windows-form script path stays one: $0 is exactly what cmd passed)."""
    env = cygwin_env(sh)
    scratch = "/run/standin/winpaths"
    os.makedirs(scratch, exist_ok=True)
    argv = ["/usr/bin/bash"]
    for a in args:
        if DRIVE_RE.match(a) and not a.startswith("-"):
            # Cygwin's open() takes Windows paths: give bash a file of exactly that name.
            unix = resolve_ci(win_to_unix(a))
            if unix is None:
                emit(err, "/usr/bin/bash: %s: No such file or directory\n" % a, True)
                return 127
            link = os.path.join(scratch, a)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(unix, link)
        argv.append(a)
    r = subprocess.run(argv, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err if err is not None else out)
    return r.returncode


def cygwin_env(sh):
    w = windows()
    path = ["/usr/local/bin", "/usr/bin"]
    for d in (sh.getenv("PATH") or "").split(";"):
        if d:
            path.append(win_to_unix(d))
    home = "/home/" + w["user"]
    return {
        "PATH": ":".join(path),
        "HOME": home,
        "USER": w["user"],
        "USERNAME": w["user"],
        "LOGNAME": w["user"],
        "TERM": "dumb",
        "SYSTEMROOT": "C:\\Windows",
        "COMPUTERNAME": w["computer_name"],
        "LANG": "C.UTF-8",
        "TZ": w["tz"],
    }


PROGRAMS = {
    "netsh": prog_netsh,
    "reg": prog_reg,
    "sc": prog_sc,
    "net": prog_net,
    "powercfg": prog_powercfg,
    "powershell": prog_powershell,
    "shutdown": prog_shutdown,
    "setup-x86_64": prog_setup,
    "setup-x86": prog_setup,
    "bash": prog_bash,
}


# ---------------------------------------------------------------- Cygwin's setup


def parse_setup_ini(text):
    """setup.ini: header lines, then `@ name` stanzas; quoted values may span lines;
    [prev]/[test] versions are skipped. Returns {name: {...}}."""
    pkgs, cur, section, i = {}, None, None, 0
    lines = text.split("\n")
    while i < len(lines):
        line = lines[i].rstrip("\r")
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("@ "):
            name = line[2:].strip()
            if not re.match(r"^[A-Za-z0-9._+\-]+$", name):
                raise Reject("setup.ini line %d: %r is not a package name" % (i, name))
            cur = pkgs.setdefault(name, {"name": name, "line": i, "category": [], "requires": [], "depends2": [], "provides": []})
            section = None
            continue
        if re.match(r"^\[[a-z]+\]$", line):
            section = line
            continue
        m = re.match(r"^([a-z0-9\-]+):\s*(.*)$", line)
        if not m:
            raise Reject("setup.ini line %d: not key: value" % i)
        key, val = m.group(1), m.group(2)
        if val.startswith('"'):
            while not (len(val) > 1 and val.endswith('"')):
                if i >= len(lines):
                    raise Reject("setup.ini line %d: unclosed quote" % i)
                val += "\n" + lines[i].rstrip("\r")
                i += 1
        if cur is None or section is not None:
            continue
        if key == "category":
            cur["category"] = val.split()
        elif key in ("requires",):
            cur["requires"] = val.split()
        elif key == "depends2":
            cur["depends2"] = [re.sub(r"\s*\(.*\)$", "", d.strip()) for d in val.split(",") if d.strip()]
        elif key == "provides":
            cur["provides"] = [p.strip() for p in val.split(",") if p.strip()]
        elif key == "install":
            f = val.split()
            if len(f) != 3 or not f[1].isdigit() or not re.match(r"^[0-9a-f]{128}$", f[2]):
                raise Reject("setup.ini line %d: install: wants PATH SIZE SHA512" % i)
            cur["install"] = (f[0], int(f[1]), f[2], i)
    return pkgs


def closure(pkgs, requested):
    provided = {}
    for p in pkgs.values():
        for v in p["provides"]:
            provided.setdefault(v, p["name"])
    todo = [(n, None) for n in requested] + [(p["name"], None) for p in pkgs.values() if "Base" in p["category"]]
    seen, order = set(), []
    while todo:
        n, by = todo.pop(0)
        real = n if n in pkgs else provided.get(n)
        if real is None:
            raise Reject("package %r%s is not in setup.ini" % (n, " (required by %s)" % by if by else ""))
        if real in seen:
            continue
        seen.add(real)
        order.append(real)
        for d in pkgs[real]["requires"] + pkgs[real]["depends2"]:
            todo.append((d, real))
    return order


SETUP_VALUE_OPTS = {"-s": "site", "--site": "site", "-R": "root", "--root": "root", "-l": "local", "--local-package-dir": "local", "-P": "packages", "--packages": "packages", "-C": "categories", "--categories": "categories", "-x": "remove", "--remove-packages": "remove", "-c": "remove-cat", "--remove-categories": "remove-cat", "-p": "proxy", "--proxy": "proxy", "-a": "arch", "--arch": "arch", "-K": "pubkey", "--pubkey": "pubkey", "-S": "sexpr", "--sexpr-pubkey": "sexpr", "-T": "symlink-type", "--symlink-type": "symlink-type"}
SETUP_FLAGS = {"-q": "quiet", "--quiet-mode": "quiet", "-n": "no-shortcuts", "--no-shortcuts": "no-shortcuts", "-N": "no-startmenu", "--no-startmenu": "no-startmenu", "-d": "no-desktop", "--no-desktop": "no-desktop", "-L": "local-install", "--local-install": "local-install", "-D": "download", "--download": "download", "-O": "only-site", "--only-site": "only-site", "-X": "no-verify", "--no-verify": "no-verify", "-B": "no-admin", "--no-admin": "no-admin", "-g": "upgrade-also", "--upgrade-also": "upgrade-also", "-o": "delete-orphans", "--delete-orphans": "delete-orphans", "-A": "disable-buggy-antivirus", "--disable-buggy-antivirus": "disable-buggy-antivirus", "-W": "wait", "--wait": "wait", "-r": "no-replaceonreboot", "--no-replaceonreboot": "no-replaceonreboot", "--no-version-check": "no-version-check", "--allow-unsupported-windows": "allow-unsupported-windows", "--no-write-registry": "no-write-registry", "-f": "force-current", "--force-current": "force-current"}


def cygwin_setup(sh, args, out, err, exe):
    """Cygwin's setup-x86_64.exe / setup-x86.exe, local install only."""
    w = windows()
    log = []

    def fail(msg):
        emit(out, "setup: %s\n" % msg)
        # Cygwin's setup logs to /var/log/setup.log; the stand-in also says it on COM1.
        serial("STANDIN-CYGWIN-SETUP-FAILED: %s" % msg)
        return 1

    o, k = {}, 0
    while k < len(args):
        a = args[k]
        if a in SETUP_FLAGS:
            o[SETUP_FLAGS[a]] = True
            k += 1
            continue
        name, eq, val = a.partition("=")
        if name in SETUP_VALUE_OPTS and name.startswith("--") and eq:
            o[SETUP_VALUE_OPTS[name]] = val
            k += 1
            continue
        if a in SETUP_VALUE_OPTS:
            if k + 1 >= len(args) or args[k + 1].startswith("-"):
                return fail("option %s needs a value" % a)
            o[SETUP_VALUE_OPTS[a]] = args[k + 1]
            k += 2
            continue
        return fail("unknown option %s (setup's options are documented in setup --help)" % a)
    exe_arch = "x86_64" if os.path.basename(exe).lower().startswith("setup-x86_64") else "x86"
    if exe_arch == "x86_64" and w["arch"] != "amd64":
        emit(out, "This version of %s is not compatible with the version of Windows you're running.\n" % os.path.basename(exe))
        return 216
    arch = o.get("arch", exe_arch)
    if arch != exe_arch:
        return fail("-a %s does not match %s" % (arch, os.path.basename(exe)))
    if not o.get("quiet"):
        return fail("without -q setup opens its wizard and waits for clicks")
    if not o.get("local-install") or o.get("download"):
        return fail("the stand-in installs from a local directory only (-L); there is no network")
    if "local" not in o or "root" not in o:
        return fail("-L needs -l DIR and an unattended install needs -R ROOT")
    if not DRIVE_RE.match(o["root"]) or o["root"].endswith("\\") or " " in o["root"]:
        return fail("-R %s: give a drive path like C:\\cygwin" % o["root"])
    local = resolve_ci(win_to_unix(o["local"]))
    if local is None or not os.path.isdir(local):
        return fail("-l %s: no such directory" % o["local"])
    inis = sorted(glob.glob(os.path.join(local, "*", arch, "setup.ini")))
    if not inis:
        return fail("no mirror directory with %s/setup.ini in %s" % (arch, o["local"]))
    ini_path = inis[0]
    mirror = os.path.dirname(os.path.dirname(ini_path))
    sig = ini_path + ".sig"
    if not o.get("no-verify") and not os.path.isfile(sig):
        return fail("%s has no setup.ini.sig next to it; setup verifies setup.ini's signature (or pass -X)" % os.path.relpath(ini_path, local))
    try:
        with open(ini_path, encoding="utf-8") as f:
            pkgs = parse_setup_ini(f.read())
        requested = [p for p in re.split(r"[,\s]+", o.get("packages", "")) if p]
        for p in requested:
            if not re.match(r"^[A-Za-z0-9._+\-]+$", p):
                return fail("-P: %r is not a package name" % p)
        names = closure(pkgs, requested)
    except Reject as e:
        return fail(str(e))
    listings = {}
    for n in names:
        p = pkgs[n]
        if "install" not in p:
            return fail("package %s (setup.ini line %d) has no install: line" % (n, p["line"]))
        path, size, sha, line = p["install"]
        f = resolve_ci(os.path.join(mirror, path))
        if f is None:
            return fail("package %s: %s is missing from %s" % (n, path, o["local"]))
        actual = os.path.getsize(f)
        if actual != size:
            return fail("package %s: %s has %d bytes, setup.ini line %d says %d: the local copy is corrupt" % (n, path, actual, line, size))
        h = hashlib.sha512()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 16), b""):
                h.update(chunk)
        if h.hexdigest() != sha:
            return fail("package %s: %s fails its SHA-512 check (setup.ini line %d): the local copy is corrupt" % (n, path, line))
        r = run(["tar", "-t", "-f", f], check=False)
        if r.returncode != 0:
            return fail("package %s: %s is not a valid archive: %s" % (n, path, r.stderr.strip()[:200]))
        listings[n] = (os.path.basename(path), [x for x in r.stdout.split("\n") if x])
    # "Install": the root, the package database, and each program an archive brought.
    root = win_to_unix(o["root"])
    parent = resolve_ci(os.path.dirname(root))
    if parent is None:
        return fail("-R %s: the parent directory does not exist" % o["root"])
    if not os.path.lexists(root):
        os.symlink("/", root)
    os.makedirs("/etc/setup", exist_ok=True)
    with open("/etc/setup/installed.db", "w") as db:
        db.write("INSTALLED.DB 3\n")
        for n in sorted(listings):
            db.write("%s %s 0\n" % (n, listings[n][0]))
    files = set()
    for n, (_, lst) in listings.items():
        files.update(x.lstrip("./") for x in lst)
        with open("/etc/setup/%s.lst" % n, "w") as f:
            f.write("\n".join(lst) + "\n")
    for prog, need in CYGWIN_PROGRAMS.items():
        if need not in files and need.replace("usr/bin/", "bin/") not in files:
            continue
        if prog == "bash":
            if not os.path.lexists("/usr/bin/bash.exe"):
                os.symlink("bash", "/usr/bin/bash.exe")
            continue
        if prog == "sshd":
            continue
        dst = "/usr/local/bin/" + prog
        if not os.path.lexists(dst):
            os.symlink(LIB + "/standin.py", dst)
    with open("/etc/setup/setup.rc", "w") as f:
        f.write("last-cache\n\t%s\nlast-mirror\n\t%s\n" % (o["local"], os.path.basename(mirror)))
    with open("/etc/fstab.cygwin", "w") as f:
        f.write("none /cygdrive cygdrive binary,posix=0,user 0 0\n")
    emit(out, "setup: installed %d packages into %s: %s\n" % (len(names), o["root"], " ".join(sorted(names))))
    return 0


# ---------------------------------------------------------------- Cygwin programs


def cygwin_installed(prog):
    if not os.path.isfile("/etc/setup/installed.db"):
        sys.stderr.write("%s: command not found (Cygwin is not installed)\n" % prog)
        sys.exit(127)


def cyg_mounts():
    return load_json("/run/standin/cygmounts.json", {})


def cygpath_main(argv):
    cygwin_installed("cygpath")
    mode, absolute, pathlist, paths, k = "u", False, False, [], 0
    opts = {"-u": "u", "--unix": "u", "-w": "w", "--windows": "w", "-m": "m", "--mixed": "m"}
    while k < len(argv):
        a = argv[k]
        if a == "--":
            paths.extend(argv[k + 1 :])
            break
        if a in opts:
            mode = opts[a]
        elif a in ("-a", "--absolute"):
            absolute = True
        elif a in ("-p", "--path"):
            pathlist = True
        elif a.startswith("-") and len(a) > 1 and re.match(r"^-[uwmap]+$", a):
            for ch in a[1:]:
                if ch in "uwm":
                    mode = ch
                elif ch == "a":
                    absolute = True
                else:
                    pathlist = True
        elif a.startswith("-") and len(a) > 1:
            sys.stderr.write("cygpath: unknown option -- %s\nTry 'cygpath --help' for more information.\n" % a.lstrip("-"))
            return 1
        else:
            paths.append(a)
        k += 1
    if not paths:
        sys.stderr.write("cygpath: must provide a filename to convert\nTry 'cygpath --help' for more information.\n")
        return 1
    for p in paths:
        if p == "":
            sys.stderr.write("cygpath: can't convert empty path\n")
            return 1
        items = p.split(";" if mode == "u" else ":") if pathlist else [p]
        res = [cygpath_one(x, mode, absolute) for x in items]
        print((":" if mode == "u" else ";").join(res))
    return 0


def cygpath_one(p, mode, absolute):
    if mode == "u":
        if DRIVE_RE.match(p) or p.startswith("\\\\") or "\\" in p:
            if DRIVE_RE.match(p):
                d = p[0].lower()
                rest = p[2:].replace("\\", "/")
                root = cygwin_root_win()
                if p[:2].upper() + rest.replace("/", "\\").upper().rstrip("\\") == root.upper() or (p[:2] + rest.replace("/", "\\")).upper().startswith(root.upper() + "\\"):
                    sub = (p[:2] + rest.replace("/", "\\"))[len(root) :].replace("\\", "/")
                    sub = sub or "/"
                    if sub == "/bin" or sub.startswith("/bin/"):
                        sub = "/usr" + sub
                    if sub == "/lib" or sub.startswith("/lib/"):
                        sub = "/usr" + sub
                    return sub
                out = "/cygdrive/%s%s" % (d, rest)
                return out.rstrip("/") if rest not in ("", "/") else ("/cygdrive/%s" % d)
            if p.startswith("\\\\"):
                return "//" + p[2:].replace("\\", "/")
            return p.replace("\\", "/")
        return p
    # to Windows
    if DRIVE_RE.match(p):
        r = p[:2].upper() + p[2:].replace("/", "\\")
    elif p.startswith("//") and not p.startswith("///"):
        r = "\\\\" + p[2:].replace("/", "\\")
    elif p.startswith("/"):
        r = unix_to_win(os.path.normpath(p))
    else:
        if absolute:
            r = unix_to_win(os.path.normpath(os.path.join(os.getcwd(), p)))
        else:
            r = p.replace("/", "\\")
    return r.replace("\\", "/") if mode == "m" else r


def cygwin_root_win():
    root = load_json(WINDOWS_JSON, {}).get("cygwin_root") or "C:\\cygwin"
    return root


def unix_to_win(p):
    m = re.match(r"^/cygdrive/([a-z])(/.*)?$", p)
    if m:
        return m.group(1).upper() + ":\\" + (m.group(2) or "/")[1:].replace("/", "\\")
    best = None
    for mp, src in cyg_mounts().items():
        if p == mp or p.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, src)
    if best:
        sub = p[len(best[0]) :].lstrip("/")
        base = cygpath_one(best[1], "w", False)
        return base.rstrip("\\") + ("\\" + sub.replace("/", "\\") if sub else "")
    root = cygwin_root_win()
    for pre in ("/usr/bin", "/usr/lib"):
        if p == pre or p.startswith(pre + "/"):
            p = p[4:]
    return root + p.replace("/", "\\").rstrip("\\") if p != "/" else root


CYG_MOUNT_OPTS = {"acl", "auto", "binary", "bind", "cygexec", "dos", "exec", "ihash", "noacl", "nosuid", "notexec", "nouser", "override", "posix=0", "posix=1", "sparse", "text", "user"}


def mount_main(argv):
    cygwin_installed("mount")
    force, opts, pos, k = False, [], [], 0
    while k < len(argv):
        a = argv[k]
        if a in ("-f", "--force"):
            force = True
        elif a in ("-o", "--options"):
            if k + 1 >= len(argv):
                sys.stderr.write("mount: option requires an argument -- 'o'\nTry 'mount --help' for more information.\n")
                return 1
            opts.extend(argv[k + 1].split(","))
            k += 1
        elif a.startswith("-o") and len(a) > 2:
            opts.extend(a[2:].split(","))
        elif a in ("-a", "--all", "-c", "--change-cygdrive-prefix", "-m", "--mount-entries", "-p", "--show-cygdrive-prefix"):
            sys.stderr.write("mount: %s is not implemented by the stand-in\n" % a)
            return 1
        elif a.startswith("-") and a != "-":
            sys.stderr.write("mount: unrecognized option '%s'\nTry 'mount --help' for more information.\n" % a)
            return 1
        else:
            pos.append(a)
        k += 1
    if not pos:
        for mp, src in sorted(cyg_mounts().items()):
            print("%s on %s type ntfs (binary,noacl,user)" % (src, mp))
        return 0
    if len(pos) != 2:
        sys.stderr.write("mount: Trailing characters on command line\nTry 'mount --help' for more information.\n" if len(pos) > 2 else "mount: only one path given; the stand-in implements WIN32PATH POSIXPATH\n")
        return 1
    for o in opts:
        if o not in CYG_MOUNT_OPTS:
            sys.stderr.write("mount: invalid option - '%s'\n" % o)
            return 1
    src, dst = pos
    if not dst.startswith("/") or "\\" in dst:
        sys.stderr.write("mount: %s: invalid mount point: give an absolute POSIX path\n" % dst)
        return 1
    if "bind" in opts:
        if not src.startswith("/") or "\\" in src:
            sys.stderr.write("mount: %s: with -o bind the source must be a POSIX path\n" % src)
            return 1
        real_src = src
    else:
        if not (DRIVE_RE.match(src) or src.startswith("\\\\") or src.startswith("//")):
            sys.stderr.write("mount: %s: invalid win32 path: give X:/path, X:\\path or \\\\server\\share\n" % src)
            return 1
        real_src = cygpath_one(src, "u", False)
    mounts = cyg_mounts()
    dst = os.path.normpath(dst)
    if dst in mounts:
        sys.stderr.write("mount: %s: Device or resource busy\n" % dst)
        return 1
    if not os.path.isdir(real_src):
        sys.stderr.write("mount: %s: No such file or directory\n" % src)
        return 1
    if not os.path.isdir(dst):
        if not force:
            sys.stderr.write("mount: warning - %s does not exist.\n" % dst)
        os.makedirs(dst, exist_ok=True)
    r = run([MOUNT, "--bind", real_src, dst], check=False)
    if r.returncode != 0:
        sys.stderr.write("mount: %s: %s\n" % (dst, r.stderr.strip()))
        return 1
    mounts[dst] = src if "bind" not in opts else cygpath_one(real_src, "w", False)
    save_json("/run/standin/cygmounts.json", mounts)
    return 0


def umount_main(argv):
    cygwin_installed("umount")
    pos = []
    for a in argv:
        if a in ("-U", "--remove-user-mounts"):
            sys.stderr.write("umount: -U is not implemented by the stand-in\n")
            return 1
        if a.startswith("-"):
            sys.stderr.write("umount: unrecognized option '%s'\nTry 'umount --help' for more information.\n" % a)
            return 1
        pos.append(a)
    if len(pos) != 1:
        sys.stderr.write("umount: Trailing characters on command line\n" if pos else "umount: not enough arguments\n")
        return 1
    mounts = cyg_mounts()
    p = os.path.normpath(pos[0])
    if p not in mounts:
        sys.stderr.write("umount: %s: Invalid argument\n" % pos[0])
        return 1
    r = run([UMOUNT, p], check=False)
    if r.returncode != 0:
        sys.stderr.write("umount: %s: Device or resource busy\n" % pos[0])
        return 1
    del mounts[p]
    save_json("/run/standin/cygmounts.json", mounts)
    return 0


SSHD_CONFIG = """# guestbox stand-in (NOT Cygwin): sshd_config as ssh-host-config writes it, plus the
# stand-in's rules: the controller's key only, no passwords, only the Windows account.
Port {port}
HostKey /etc/ssh_host_rsa_key
HostKey /etc/ssh_host_ecdsa_key
HostKey /etc/ssh_host_ed25519_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin prohibit-password
AllowUsers {user}
UsePAM no
StrictModes yes
PidFile /run/sshd.pid
SetEnv PATH=/usr/local/bin:/usr/bin:/bin:/cygdrive/c/Windows/system32:/cygdrive/c/Windows
Subsystem sftp /usr/lib/openssh/sftp-server
#UseDNS no
"""


def ssh_host_config_main(argv):
    cygwin_installed("ssh-host-config")
    w = windows()
    o, k = {}, 0
    flags = {"-y": "yes", "--yes": "yes", "-n": "no", "--no": "no", "-d": "debug", "--debug": "debug", "--privileged": "privileged"}
    vals = {"-c": "cygwin", "--cygwin": "cygwin", "-N": "name", "--name": "name", "-p": "port", "--port": "port", "-u": "user", "--user": "user", "-w": "pwd", "--pwd": "pwd"}
    while k < len(argv):
        a = argv[k]
        if a in flags:
            o[flags[a]] = True
            k += 1
        elif a in vals:
            if k + 1 >= len(argv):
                print("*** Query: option %s needs a value" % a, file=sys.stderr)
                return 1
            o[vals[a]] = argv[k + 1]
            k += 2
        elif a in ("-h", "--help"):
            print("Usage: ssh-host-config [OPTION]...")
            return 0
        else:
            print("*** ERROR: Invalid option: %s" % a, file=sys.stderr)
            return 1
    if not o.get("yes") and not o.get("no"):
        print("*** Query: Should StrictModes be used? (yes/no) -- no terminal to answer (use --yes)", file=sys.stderr)
        return 1
    port = o.get("port", "22")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        print("*** ERROR: Invalid port: %s" % port, file=sys.stderr)
        return 1
    if "openssh" not in open("/etc/setup/installed.db").read().split():
        print("*** ERROR: openssh is not installed", file=sys.stderr)
        return 1
    for t in ("rsa", "ecdsa", "ed25519"):
        key = "/etc/ssh_host_%s_key" % t
        if not os.path.exists(key):
            print("*** Info: Generating missing SSH host keys")
            run(["ssh-keygen", "-q", "-t", t, "-N", "", "-C", "", "-f", key])
    with open("/etc/sshd_config", "w") as f:
        f.write(SSHD_CONFIG.format(port=port, user=w["user"]))
    os.chmod("/etc/sshd_config", 0o644)
    name = o.get("name", "cygsshd")
    sv = load_json(SERVICES + ".json", {})
    sv[name] = {"path": "/usr/sbin/sshd", "args": ["-D", "-e", "-f", "/etc/sshd_config"], "start": "auto", "display": "CYGWIN " + name}
    save_json(SERVICES + ".json", sv)
    print("*** Info: The sshd service has been installed under the LocalSystem account")
    print("*** Info: Host configuration finished. Have fun!")
    return 0


def start_service(name, svc):
    r = run(["/usr/sbin/sshd", "-t"] + svc["args"][2:], check=False) if svc["path"].endswith("sshd") else None
    if r is not None and r.returncode != 0:
        raise RuntimeError("sshd -t: %s" % r.stderr.strip())
    log = open("/run/standin/%s.log" % name, "ab")
    p = subprocess.Popen([svc["path"]] + svc["args"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open("/run/standin/%s.pid" % name, "w") as f:
        f.write(str(p.pid))
    return p


def service_pid(name):
    try:
        pid = int(open("/run/standin/%s.pid" % name).read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cygrunsrv_main(argv):
    cygwin_installed("cygrunsrv")
    sv = load_json(SERVICES + ".json", {})
    if len(argv) == 2 and argv[0] in ("-Q", "--query"):
        s = sv.get(argv[1])
        if s is None:
            print("cygrunsrv: Error querying a service: OpenService:  Win32 error 1060:\nThe specified service does not exist as an installed service.", file=sys.stderr)
            return 1
        print("Service             : %s\nDisplay name        : %s\nCurrent State       : %s\nCommand             : %s %s" % (argv[1], s["display"], "Running" if service_pid(argv[1]) else "Stopped", s["path"], " ".join(s["args"])))
        return 0
    if len(argv) == 2 and argv[0] in ("-S", "--start"):
        s = sv.get(argv[1])
        if s is None:
            print("cygrunsrv: Error starting a service: OpenService:  Win32 error 1060:\nThe specified service does not exist as an installed service.", file=sys.stderr)
            return 1
        if service_pid(argv[1]):
            print("cygrunsrv: Error starting a service: StartService:  Win32 error 1056:\nAn instance of the service is already running.", file=sys.stderr)
            return 1
        try:
            start_service(argv[1], s)
        except RuntimeError as e:
            print("cygrunsrv: Error starting a service: QueryServiceStatus:  Win32 error 1062:\nThe service has not been started. (%s)" % e, file=sys.stderr)
            return 1
        return 0
    if len(argv) == 2 and argv[0] in ("-E", "--stop"):
        pid = service_pid(argv[1])
        if argv[1] not in sv:
            print("cygrunsrv: Error stopping a service: OpenService:  Win32 error 1060:\nThe specified service does not exist as an installed service.", file=sys.stderr)
            return 1
        if pid:
            os.kill(pid, 15)
        return 0
    if len(argv) == 1 and argv[0] in ("-L", "--list"):
        for n in sorted(sv):
            print(n)
        return 0
    print("cygrunsrv: the stand-in implements --query, --start, --stop and --list; got: %s\nTry `cygrunsrv --help' for more information." % " ".join(argv), file=sys.stderr)
    return 1


def mkpasswd_main(argv, group=False):
    cygwin_installed("mkgroup" if group else "mkpasswd")
    for a in argv:
        if a not in ("-l", "--local", "-c", "--current"):
            print("%s: unknown option %s (the stand-in implements -l and -c)" % ("mkgroup" if group else "mkpasswd", a), file=sys.stderr)
            return 1
    w = windows()
    if group:
        print("Administrators:S-1-5-32-544:544:")
    else:
        print("%s:*:197108:197121:U-%s\\%s,S-1-5-21-0-0-0-500:/home/%s:/bin/bash" % (w["user"], w["computer_name"], w["user"], w["user"]))
    return 0


def cmd_main(argv):
    """cmd.exe as Cygwin starts it: cmd /c "COMMAND LINE" (also /C, with /d /q /s /e:on)."""
    k = 0
    while k < len(argv) and argv[k].lower() in ("/d", "/q", "/s", "/e:on", "/e:off", "/v:off", "/a", "/u"):
        k += 1
    if k >= len(argv) or argv[k].lower() not in ("/c", "/k"):
        print("stand-in cmd: only cmd /c COMMAND is implemented (an interactive cmd would wait for input)", file=sys.stderr)
        return 1
    if argv[k].lower() == "/k":
        print("stand-in cmd: /k would keep cmd waiting for input", file=sys.stderr)
        return 1
    rest = argv[k + 1 :]
    if not rest:
        return 0
    # Cygwin passes each argument quoted only if it needs it; cmd then sees one line.
    line = " ".join('"%s"' % a if (" " in a or "\t" in a) and not a.startswith('"') else a for a in rest)
    if line.startswith('"'):
        # cmd /?: the quotes stay only if there are exactly two, nothing special between
        # them, some whitespace, and they enclose the name of a program; otherwise the
        # first and the last quote are removed.
        inner = line[1:-1] if line.endswith('"') else line[1:]
        keep = (
            line.count('"') == 2
            and line.endswith('"')
            and not any(ch in inner for ch in "&<>()@^|")
            and any(ch in inner for ch in " \t")
            and names_a_file(inner)
        )
        if not keep:
            k = line.rfind('"')
            line = line[1:k] + line[k + 1 :] if k > 0 else line[1:]
    sh = Cmd(windows_env())
    try:
        sh.command_line(sh.expand(line, None), None)
    except Reject as e:
        print("stand-in cmd: %s" % e, file=sys.stderr)
        return 255
    except Exit as e:
        return e.code
    return sh.errorlevel


def names_a_file(p):
    try:
        return resolve_ci(win_to_unix(p)) is not None
    except Reject:
        return False


def windows_env():
    w = load_json(WINDOWS_JSON, {})
    return {
        "PATH": "C:\\Windows\\system32;C:\\Windows;C:\\Windows\\System32\\Wbem;C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\",
        "SystemRoot": "C:\\Windows",
        "windir": "C:\\Windows",
        "SystemDrive": "C:",
        "COMPUTERNAME": w.get("computer_name", "GUESTBOX"),
        "USERNAME": w.get("user", "Administrator"),
        "USERPROFILE": "C:\\Users\\" + w.get("user", "Administrator"),
        "PATHEXT": ".COM;.EXE;.BAT;.CMD",
        "ComSpec": "C:\\Windows\\system32\\cmd.exe",
        "OS": "Windows_NT",
    }


# ---------------------------------------------------------------- answer files


UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"


def parse_autounattend(data):
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise Reject("Autounattend.xml is not well-formed XML: %s" % e)
    q = lambda t: "{%s}%s" % (UNATTEND_NS, t)  # noqa: E731
    if root.tag != q("unattend"):
        raise Reject("Autounattend.xml: the root element is %s, not unattend in namespace %s" % (root.tag, UNATTEND_NS))
    passes = {}
    for s in root:
        if s.tag != q("settings"):
            raise Reject("Autounattend.xml: unexpected element %s under unattend" % s.tag)
        p = s.get("pass")
        if p not in ("windowsPE", "offlineServicing", "generalize", "specialize", "auditSystem", "auditUser", "oobeSystem"):
            raise Reject("Autounattend.xml: settings pass=%r is not a configuration pass" % p)
        comps = passes.setdefault(p, {})
        for c in s:
            if c.tag != q("component"):
                raise Reject("Autounattend.xml: unexpected element %s in pass %s" % (c.tag, p))
            name = c.get("name")
            want = {"publicKeyToken": "31bf3856ad364e35", "language": "neutral", "versionScope": "nonSxS"}
            for k, v in want.items():
                if c.get(k) != v:
                    raise Reject("Autounattend.xml: component %s in pass %s: %s=%r, Setup wants %r" % (name, p, k, c.get(k), v))
            arch = c.get("processorArchitecture")
            if arch not in ("amd64", "x86", "arm64"):
                raise Reject("Autounattend.xml: component %s: processorArchitecture=%r" % (name, arch))
            comps[(name, arch)] = c

    def text(el, path, what, required=True):
        cur = el
        for part in path.split("/"):
            nxt = cur.find(q(part)) if cur is not None else None
            cur = nxt
        if cur is None or cur.text is None or not cur.text.strip():
            if required:
                raise Reject("Autounattend.xml: %s is missing (%s)" % (what, path))
            return None
        return cur.text.strip()

    arches = {a for comps in passes.values() for (_, a) in comps}
    if len(arches) != 1:
        raise Reject("Autounattend.xml: components for several architectures (%s)" % ", ".join(sorted(arches)))
    arch = arches.pop()
    if arch != "amd64":
        raise Reject("Autounattend.xml: processorArchitecture=%s, but this stand-in Windows is 64-bit (amd64); Setup ignores components of another architecture" % arch)

    def comp(p, name, required=True):
        c = passes.get(p, {}).get((name, arch))
        if c is None and required:
            raise Reject("Autounattend.xml: pass %s has no %s component" % (p, name))
        return c

    s = {"profile": "windows", "arch": arch}
    setup = comp("windowsPE", "Microsoft-Windows-Setup")
    comp("windowsPE", "Microsoft-Windows-International-Core-WinPE")
    disk = setup.find(q("DiskConfiguration") + "/" + q("Disk"))
    if disk is None:
        raise Reject("Autounattend.xml: windowsPE has no DiskConfiguration/Disk: Setup would stop at the disk page")
    if text(disk, "DiskID", "the disk id") != "0" or text(disk, "WillWipeDisk", "WillWipeDisk").lower() != "true":
        raise Reject("Autounattend.xml: Disk 0 must be wiped (WillWipeDisk true) for an unattended install")
    parts = []
    for cp in disk.findall(q("CreatePartitions") + "/" + q("CreatePartition")):
        t = text(cp, "Type", "CreatePartition/Type")
        if t not in ("Primary", "EFI", "MSR", "Extended", "Logical"):
            raise Reject("Autounattend.xml: CreatePartition Type %r" % t)
        size, extend = text(cp, "Size", "Size", False), text(cp, "Extend", "Extend", False)
        if (size is None) == (extend is None) or (size is not None and not size.isdigit()) or (extend not in (None, "true")):
            raise Reject("Autounattend.xml: CreatePartition %s needs exactly one of Size (MB) or Extend true" % t)
        parts.append(t)
    if parts == ["Primary"]:
        s["layout"] = "bios"
    elif parts == ["EFI", "MSR", "Primary"]:
        s["layout"] = "uefi"
    else:
        raise Reject("Autounattend.xml: partitions %s: the stand-in knows the BIOS (Primary) and UEFI (EFI, MSR, Primary) layouts" % parts)
    mods = disk.findall(q("ModifyPartitions") + "/" + q("ModifyPartition"))
    formats = {text(m, "PartitionID", "PartitionID"): (text(m, "Format", "Format", False), text(m, "Active", "Active", False), text(m, "Letter", "Letter", False)) for m in mods}
    win_id = str(len(parts))
    if formats.get(win_id, (None,))[0] != "NTFS" or formats[win_id][2] != "C":
        raise Reject("Autounattend.xml: the Windows partition %s must be formatted NTFS with letter C" % win_id)
    if s["layout"] == "bios" and formats[win_id][1] != "true":
        raise Reject("Autounattend.xml: on BIOS the Windows partition must be Active, or the disk does not boot")
    if s["layout"] == "uefi" and formats.get("1", (None,))[0] != "FAT32":
        raise Reject("Autounattend.xml: the EFI system partition must be formatted FAT32")
    md = setup.find(q("ImageInstall") + "/" + q("OSImage") + "/" + q("InstallFrom") + "/" + q("MetaData"))
    if md is None:
        raise Reject("Autounattend.xml: no ImageInstall/OSImage/InstallFrom/MetaData: Setup would ask which edition to install")
    key, val = text(md, "Key", "the image key"), text(md, "Value", "the image value")
    if key == "/IMAGE/INDEX":
        if not val.isdigit() or int(val) < 1:
            raise Reject("Autounattend.xml: /IMAGE/INDEX %r is not a positive number" % val)
    elif key != "/IMAGE/NAME":
        raise Reject("Autounattend.xml: MetaData Key %r: Setup knows /IMAGE/INDEX, /IMAGE/NAME, /IMAGE/DESCRIPTION" % key)
    s["image"] = "%s=%s" % (key, val)
    it = setup.find(q("ImageInstall") + "/" + q("OSImage") + "/" + q("InstallTo"))
    if it is None or text(it, "DiskID", "InstallTo/DiskID") != "0" or text(it, "PartitionID", "InstallTo/PartitionID") != win_id:
        raise Reject("Autounattend.xml: InstallTo must name disk 0, partition %s (the Windows partition)" % win_id)
    if text(setup, "UserData/AcceptEula", "UserData/AcceptEula").lower() != "true":
        raise Reject("Autounattend.xml: UserData/AcceptEula is not true: Setup would show the license")
    s["full_name"] = text(setup, "UserData/FullName", "UserData/FullName")
    s["run_windowspe"] = run_sync(setup, q, text)
    shell_sp = comp("specialize", "Microsoft-Windows-Shell-Setup")
    cn = text(shell_sp, "ComputerName", "specialize ComputerName")
    if len(cn) > 15 or not re.match(r"^[A-Za-z0-9-]+$", cn) or cn.isdigit() or cn.startswith("-"):
        raise Reject("Autounattend.xml: ComputerName %r is not a valid NetBIOS name" % cn)
    s["computer_name"] = cn
    tz = text(shell_sp, "TimeZone", "specialize TimeZone")
    tcp = comp("specialize", "Microsoft-Windows-TCPIP")
    ifs = tcp.findall(q("Interfaces") + "/" + q("Interface"))
    if len(ifs) != 1:
        raise Reject("Autounattend.xml: Microsoft-Windows-TCPIP needs exactly one Interface (has %d)" % len(ifs))
    iface = ifs[0]
    if text(iface, "Ipv4Settings/DhcpEnabled", "Ipv4Settings/DhcpEnabled").lower() != "false":
        raise Reject("Autounattend.xml: DHCP is on: the private link has no DHCP server")
    mac = text(iface, "Identifier", "the interface Identifier")
    if not re.match(r"^([0-9A-F]{2}-){5}[0-9A-F]{2}$", mac):
        raise Reject("Autounattend.xml: Identifier %r is not a MAC address like 52-54-00-12-34-56" % mac)
    ips = iface.findall(q("UnicastIpAddresses") + "/" + q("IpAddress"))
    if len(ips) != 1 or ips[0].get("{%s}keyValue" % WCM_NS) != "1" or ips[0].get("{%s}action" % WCM_NS) != "add":
        raise Reject("Autounattend.xml: UnicastIpAddresses needs one IpAddress with wcm:action=add wcm:keyValue=1")
    m = re.match(r"^(%s)/([0-9]{1,2})$" % IP_RE, (ips[0].text or "").strip())
    if not m or not 1 <= int(m.group(5)) <= 32:
        raise Reject("Autounattend.xml: IpAddress %r is not ADDRESS/PREFIX" % ips[0].text)
    s["ip"], s["prefix"], s["mac"] = m.group(1), int(m.group(5)), mac.replace("-", ":").lower()
    if iface.find(q("Routes")) is not None:
        s["gateway"] = True
    dep = comp("specialize", "Microsoft-Windows-Deployment", False)
    s["run_specialize"] = run_sync(dep, q, text) if dep is not None else []
    oobe = comp("oobeSystem", "Microsoft-Windows-Shell-Setup")
    comp("oobeSystem", "Microsoft-Windows-International-Core")
    tz2 = text(oobe, "TimeZone", "oobeSystem TimeZone")
    if tz2 != tz:
        raise Reject("Autounattend.xml: the TimeZone of specialize (%r) and oobeSystem (%r) differ" % (tz, tz2))
    s["timezone"] = tz
    admin = text(oobe, "UserAccounts/AdministratorPassword/Value", "the administrator password")
    if text(oobe, "UserAccounts/AdministratorPassword/PlainText", "AdministratorPassword/PlainText") not in ("true", "false"):
        raise Reject("Autounattend.xml: AdministratorPassword/PlainText must be true or false")
    s["admin_password"] = admin
    accounts = oobe.findall(q("UserAccounts") + "/" + q("LocalAccounts") + "/" + q("LocalAccount"))
    if len(accounts) != 1:
        raise Reject("Autounattend.xml: needs one LocalAccount (the one guestbox logs in as), has %d" % len(accounts))
    acc = accounts[0]
    user = text(acc, "Name", "LocalAccount/Name")
    if text(acc, "Group", "LocalAccount/Group") != "Administrators":
        raise Reject("Autounattend.xml: LocalAccount %s is not in Administrators" % user)
    text(acc, "Password/Value", "the password of LocalAccount %s" % user)
    al_user = text(oobe, "AutoLogon/Username", "AutoLogon/Username")
    if al_user != user or text(oobe, "AutoLogon/Enabled", "AutoLogon/Enabled") != "true":
        raise Reject("Autounattend.xml: AutoLogon must be enabled for %s (it is %r): the first-logon commands run at that logon" % (user, al_user))
    if text(oobe, "AutoLogon/Password/Value", "the AutoLogon password") != text(acc, "Password/Value", "the account password"):
        raise Reject("Autounattend.xml: the AutoLogon password is not %s's password: the logon would fail" % user)
    count = text(oobe, "AutoLogon/LogonCount", "AutoLogon/LogonCount")
    if not count.isdigit() or int(count) < 1:
        raise Reject("Autounattend.xml: AutoLogon/LogonCount %r" % count)
    s["user"] = user
    cmds = oobe.findall(q("FirstLogonCommands") + "/" + q("SynchronousCommand"))
    if not cmds:
        raise Reject("Autounattend.xml: no FirstLogonCommands: nothing runs the bootstrap")
    fl = []
    for c in sorted(cmds, key=lambda c: int(text(c, "Order", "SynchronousCommand/Order"))):
        fl.append(text(c, "CommandLine", "SynchronousCommand/CommandLine"))
    if not any("bootstrap.cmd" in c.lower() for c in fl):
        raise Reject("Autounattend.xml: no FirstLogonCommand runs bootstrap.cmd")
    s["first_logon"] = fl
    ob = oobe.find(q("OOBE"))
    if ob is None or text(ob, "SkipMachineOOBE", "OOBE/SkipMachineOOBE", False) != "true" and text(ob, "HideEULAPage", "OOBE/HideEULAPage", False) != "true":
        raise Reject("Autounattend.xml: OOBE pages are not skipped: Setup would wait at them")
    s["product_key"] = text(setup, "UserData/ProductKey/Key", "ProductKey", False)
    return s


def run_sync(comp, q, text):
    out = []
    rs = comp.find(q("RunSynchronous"))
    if rs is None:
        return out
    for c in rs.findall(q("RunSynchronousCommand")):
        out.append((int(text(c, "Order", "RunSynchronousCommand/Order")), text(c, "Path", "RunSynchronousCommand/Path")))
    return [p for _, p in sorted(out)]


def parse_inf(text):
    """winnt.sif's grammar (Setup's INF parser): [section] lines, key=value, ';' comments,
    values optionally in double quotes. Returns {section_lower: {key_lower: value}}."""
    if "\n" in text.replace("\r\n", ""):
        raise Reject("winnt.sif: a line ends in LF only; Setup's INF parser wants CRLF")
    secs, cur = {}, None
    for n, line in enumerate(text.split("\r\n"), 1):
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        m = re.match(r"^\[([^\]]+)\]$", s)
        if m:
            name = m.group(1).strip().lower()
            if name in secs:
                raise Reject("winnt.sif line %d: section [%s] appears twice" % (n, m.group(1)))
            cur = secs[name] = {}
            continue
        if cur is None:
            raise Reject("winnt.sif line %d: a key outside any section" % n)
        m = re.match(r'^([A-Za-z0-9_.]+)\s*=\s*(.*)$', s)
        if not m:
            raise Reject("winnt.sif line %d: not key=value: %r" % (n, s))
        k, v = m.group(1).lower(), m.group(2).strip()
        if v.startswith('"'):
            if not v.endswith('"') or len(v) < 2:
                raise Reject("winnt.sif line %d: unclosed quote" % n)
            v = v[1:-1].replace('""', '"')
        elif '"' in v:
            raise Reject("winnt.sif line %d: a quote inside an unquoted value" % n)
        if k in cur:
            raise Reject("winnt.sif line %d: key %s appears twice in its section" % (n, m.group(1)))
        cur[k] = v
    return secs


def parse_winnt_sif(data):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = data.decode("cp1252")
    secs = parse_inf(text)
    for need in ("Data", "Unattended", "GuiUnattended", "UserData", "Networking", "GuiRunOnce", "Identification"):
        if need.lower() not in secs:
            raise Reject("winnt.sif: no [%s] section" % need)

    def get(sec, key, what=None):
        v = secs.get(sec.lower(), {}).get(key.lower())
        if v is None or v == "":
            raise Reject("winnt.sif: [%s] %s is missing%s" % (sec, key, " (%s)" % what if what else ""))
        return v

    if get("Data", "UnattendedInstall").lower() != "yes" or get("Unattended", "UnattendMode").lower() != "fullunattended":
        raise Reject("winnt.sif: not a full unattended install ([Data] UnattendedInstall=Yes, [Unattended] UnattendMode=FullUnattended)")
    if get("Data", "MsDosInitiated") != "0":
        raise Reject("winnt.sif: [Data] MsDosInitiated must be 0 when booting from CD")
    if get("Unattended", "OemSkipEula").lower() != "yes":
        raise Reject("winnt.sif: [Unattended] OemSkipEula=Yes is needed, or Setup stops at the license")
    s = {"profile": "windows-xp", "arch": "x86", "layout": "bios", "user": "Administrator"}
    s["admin_password"] = get("GuiUnattended", "AdminPassword", "the administrator password")
    if len(s["admin_password"]) > 127:
        raise Reject("winnt.sif: AdminPassword longer than 127 characters")
    if get("GuiUnattended", "AutoLogon").lower() != "yes":
        raise Reject("winnt.sif: [GuiUnattended] AutoLogon=Yes is needed: [GuiRunOnce] runs at that logon")
    tzi = get("GuiUnattended", "TimeZone")
    if not tzi.isdigit() or int(tzi) not in XP_INDEX:
        raise Reject("winnt.sif: TimeZone %r is not an XP time zone index the stand-in knows" % tzi)
    s["timezone_index"] = int(tzi)
    s["timezone"] = [k for k, (z, i) in TIME_ZONES.items() if i == int(tzi)][0]
    pk = get("UserData", "ProductKey", "Setup stops without one")
    if not re.match(r"^([A-Z0-9]{5}-){4}[A-Z0-9]{5}$", pk):
        raise Reject("winnt.sif: ProductKey %r is not XXXXX-XXXXX-XXXXX-XXXXX-XXXXX" % pk)
    s["product_key"] = pk
    s["full_name"] = get("UserData", "FullName")
    cn = get("UserData", "ComputerName")
    if len(cn) > 15 or not re.match(r"^[A-Za-z0-9-]+$", cn) or cn.startswith("-"):
        raise Reject("winnt.sif: ComputerName %r is not a valid NetBIOS name" % cn)
    s["computer_name"] = cn
    ad = secs.get("netadapters", {})
    if list(ad.keys()) != ["adapter01"]:
        raise Reject("winnt.sif: [NetAdapters] must name exactly Adapter01")
    p_ad = secs.get(ad["adapter01"].lower())
    if p_ad is None or p_ad.get("infid") != "*":
        raise Reject("winnt.sif: [%s] INFID=* (the first adapter) is missing" % ad["adapter01"])
    proto = secs.get("netprotocols", {}).get("ms_tcpip")
    if not proto or proto.lower() not in secs:
        raise Reject("winnt.sif: [NetProtocols] MS_TCPIP and its parameter section are missing")
    tcp = secs[proto.lower()]
    asec = tcp.get("adaptersections")
    if not asec or asec.lower() not in secs:
        raise Reject("winnt.sif: [%s] AdapterSections names no section" % proto)
    a = secs[asec.lower()]
    if a.get("specificto", "").lower() != "adapter01":
        raise Reject("winnt.sif: [%s] SpecificTo=Adapter01 is missing" % asec)
    if a.get("dhcp", "").lower() != "no":
        raise Reject("winnt.sif: DHCP is on: the private link has no DHCP server")
    ip, mask = a.get("ipaddress", ""), a.get("subnetmask", "")
    if not re.match("^%s$" % IP_RE, ip) or not re.match("^%s$" % IP_RE, mask):
        raise Reject("winnt.sif: IPAddress %r / SubnetMask %r are not addresses" % (ip, mask))
    bits = "".join("{:08b}".format(int(x)) for x in mask.split("."))
    if "01" in bits:
        raise Reject("winnt.sif: SubnetMask %s is not contiguous" % mask)
    s["ip"], s["prefix"], s["mac"] = ip, bits.count("1"), None
    if "defaultgateway" in a:
        s["gateway"] = True
    run_once = secs["guirunonce"]
    cmds = [v for k, v in sorted(run_once.items())]
    if not cmds or not any("bootstrap.cmd" in c.lower() for c in cmds):
        raise Reject("winnt.sif: [GuiRunOnce] runs no bootstrap.cmd")
    for k in run_once:
        if not re.match(r"^command[0-9]+$", k):
            raise Reject("winnt.sif: [GuiRunOnce] key %s: Setup wants Command0, Command1, ..." % k)
    s["first_logon"] = cmds
    s["run_windowspe"] = []
    s["run_specialize"] = []
    return s


# ---------------------------------------------------------------- setup


def modprobe(*mods):
    for m in mods:
        run(["modprobe", m], check=False)


def find_floppy():
    modprobe("floppy", "vfat", "nls_cp437", "nls_ascii", "nls_utf8")
    for _ in range(50):
        if os.path.exists("/dev/fd0"):
            break
        time.sleep(0.1)
    if not os.path.exists("/dev/fd0"):
        raise Reject("no floppy drive: Setup finds no answer file (q35 needs an isa-fdc)")
    os.makedirs("/run/standin/a", exist_ok=True)
    r = run([MOUNT, "-t", "vfat", "-o", "ro,codepage=437,iocharset=utf8,shortname=mixed", "/dev/fd0", "/run/standin/a"], check=False)
    if r.returncode != 0:
        raise Reject("the floppy has no FAT file system Windows can read: %s" % r.stderr.strip())
    return "/run/standin/a"


def disk_device(profile):
    """The one hard disk, and which controller it is on; Windows XP has no AHCI driver,
    and the stand-in's Windows 11 expects the AHCI disk of a q35 machine."""
    disks = [d for d in sorted(os.listdir("/sys/block")) if d.startswith("sd")]
    if len(disks) != 1:
        raise Reject("expected exactly one hard disk, found %s" % (disks or "none"))
    d = disks[0]
    real = os.path.realpath("/sys/block/%s/device" % d)
    drv = None
    cur = real
    while cur != "/":
        link = os.path.join(cur, "driver")
        if os.path.islink(link):
            name = os.path.basename(os.path.realpath(link))
            if name in ("ahci", "ata_piix"):
                drv = name
                break
        cur = os.path.dirname(cur)
    if profile == "windows-xp" and drv != "ata_piix":
        raise Reject("the disk is on %s; Windows XP only drives IDE (PIIX) disks (STOP 0x0000007B)" % drv)
    if profile == "windows" and drv != "ahci":
        raise Reject("the disk is on %s; the stand-in Windows expects the q35 AHCI controller" % drv)
    return "/dev/" + d, drv


def nic_for(s):
    """The NIC the answer file names: by MAC (Autounattend.xml), or the first adapter
    (winnt.sif's INFID=*); and the Windows driver check."""
    want = {"windows": ("e1000e",), "windows-xp": ("8139too", "8139cp")}[s["profile"]]
    modprobe(*want)
    for _ in range(50):
        nics = []
        for n in sorted(os.listdir("/sys/class/net")):
            if n == "lo" or not os.path.exists("/sys/class/net/%s/device" % n):
                continue
            drv = os.path.basename(os.path.realpath("/sys/class/net/%s/device/driver" % n))
            mac = open("/sys/class/net/%s/address" % n).read().strip()
            nics.append((n, drv, mac))
        if nics:
            break
        time.sleep(0.1)
    mine = [x for x in nics if x[1] in want]
    if not mine:
        raise Reject("no network adapter %s has a driver for (it drives %s; found %s)" % ("Windows XP" if s["profile"] == "windows-xp" else "this Windows", "/".join(want), nics or "none"))
    if s["mac"]:
        by_mac = [x for x in mine if x[2] == s["mac"]]
        if not by_mac:
            raise Reject("no adapter has the MAC %s the answer file's TCPIP Identifier names (adapters: %s)" % (s["mac"], mine))
        return by_mac[0]
    return mine[0]


def configure_network(s):
    n, drv, mac = nic_for(s)
    run(["ip", "link", "set", n, "up"])
    run(["ip", "addr", "flush", "dev", n])
    run(["ip", "addr", "add", "%s/%d" % (s["ip"], s["prefix"]), "dev", n])
    return n, drv, mac


def efi_secure_boot():
    for f in glob.glob("/sys/firmware/efi/efivars/SecureBoot-*"):
        try:
            return open(f, "rb").read()[-1] == 1
        except OSError:
            return False
    return False


def tpm2_present():
    return os.path.exists("/sys/class/tpm/tpm0") and open("/sys/class/tpm/tpm0/tpm_version_major").read().strip() == "2"


def hardware_checks(s):
    uefi = os.path.isdir("/sys/firmware/efi")
    if s["layout"] == "uefi" and not uefi:
        raise Reject("the answer file partitions for UEFI (EFI, MSR, Primary) but the machine booted from BIOS: Windows cannot be installed to this disk")
    if s["layout"] == "bios" and uefi:
        raise Reject("the answer file partitions for BIOS (MBR) but the machine booted from UEFI: on EFI systems Windows can only be installed to GPT disks")
    if s["profile"] != "windows":
        return
    lab = "HKLM\\SYSTEM\\Setup\\LabConfig"
    need = []
    if registry_get(lab, "BypassTPMCheck") != "1" and not tpm2_present():
        need.append("a TPM 2.0")
    if registry_get(lab, "BypassSecureBootCheck") != "1" and not (uefi and efi_secure_boot()):
        need.append("UEFI with Secure Boot on")
    mem = int([l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal:")][0]) // 1024
    if registry_get(lab, "BypassRAMCheck") != "1" and mem < 3700:
        need.append("4 GB of RAM (has %d MiB)" % mem)
    if registry_get(lab, "BypassCPUCheck") != "1" and os.cpu_count() < 2:
        need.append("2 CPUs")
    if need:
        raise Reject("This PC doesn't currently meet Windows 11 system requirements: it needs %s (or the LabConfig bypass keys)" % ", ".join(need))
    s["needs_tpm"] = registry_get(lab, "BypassTPMCheck") != "1"
    s["needs_secure_boot"] = registry_get(lab, "BypassSecureBootCheck") != "1"


def cdroms():
    """The CD-ROMs in the order Windows gives them letters: D:, E:, ..."""
    modprobe("sr_mod", "isofs")
    return sorted(glob.glob("/dev/sr[0-9]*"), key=lambda p: int(p[7:]))


GRUB_CFG = """# guestbox stand-in (NOT Windows): the installed stand-in's boot
set timeout=0
search --no-floppy --fs-uuid --set=root {uuid}
linux /boot/vmlinuz standin.mode=installed standin.root=UUID={uuid} console=ttyS0,115200 quiet loglevel=3 panic=10
initrd /boot/initrd.img
boot
"""
ESP_CFG = """search --no-floppy --fs-uuid --set=root {uuid}
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
"""


def install_disk(dev):
    """The stand-in's own layout, bootable from BIOS and UEFI alike: GPT with a BIOS boot
    partition (GRUB's core), an ESP (Debian's signed shim and GRUB) and the root."""
    run(["sgdisk", "--zap-all", dev], check=False)
    run(["sgdisk", "-n1:0:+1M", "-t1:ef02", "-c1:biosboot", "-n2:0:+64M", "-t2:ef00", "-c2:System", "-n3:0:+4G", "-t3:0700", "-c3:Windows", dev])
    run(["partx", "-u", dev], check=False)
    for _ in range(50):
        if os.path.exists(dev + "3"):
            break
        time.sleep(0.1)
    uuid = run(["cat", "/proc/sys/kernel/random/uuid"]).stdout.strip()
    run(["mkfs.vfat", "-F", "32", "-n", "SYSTEM", dev + "2"])
    run(["mkfs.ext4", "-q", "-F", "-L", "Windows", "-U", uuid, "-E", "lazy_itable_init=1,lazy_journal_init=1", dev + "3"])
    c = "/run/standin/disk"
    os.makedirs(c, exist_ok=True)
    run([MOUNT, "-t", "ext4", "-o", "noinit_itable", dev + "3", c])
    med = "/standin/medium"
    os.makedirs(c + "/standin/upper", exist_ok=True)
    os.makedirs(c + "/standin/work", exist_ok=True)
    os.makedirs(c + "/boot/grub", exist_ok=True)
    shutil.copyfile(med + "/standin/root.sfs", c + "/standin/root.sfs")
    shutil.copyfile(med + "/boot/vmlinuz", c + "/boot/vmlinuz")
    shutil.copyfile(med + "/boot/initrd.img", c + "/boot/initrd.img")
    os.makedirs(c + "/.disk", exist_ok=True)
    with open(c + "/.disk/info", "w") as f:
        f.write("guestbox stand-in installed disk (not Windows)\n")
    with open(c + "/boot/grub/grub.cfg", "w") as f:
        f.write(GRUB_CFG.format(uuid=uuid))
    run(["grub-install", "--target=i386-pc", "--boot-directory=" + c + "/boot", "--modules=part_gpt ext2 search", dev])
    e = "/run/standin/esp"
    os.makedirs(e, exist_ok=True)
    run([MOUNT, "-t", "vfat", dev + "2", e])
    for d in ("EFI/BOOT", "EFI/debian"):
        os.makedirs(os.path.join(e, d), exist_ok=True)
        with open(os.path.join(e, d, "grub.cfg"), "w") as f:
            f.write(ESP_CFG.format(uuid=uuid))
    shutil.copyfile("/usr/lib/shim/shimx64.efi.signed", e + "/EFI/BOOT/BOOTX64.EFI")
    shutil.copyfile("/usr/lib/shim/mmx64.efi.signed", e + "/EFI/BOOT/mmx64.efi")
    shutil.copyfile("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", e + "/EFI/BOOT/grubx64.efi")
    run([UMOUNT, e])
    return c, uuid


def user_account(root, user):
    """The Windows administrator as the stand-in's account: uid 0 (an administrator with a
    full token, as UAC is off), listed first so uid 0 is called by that name."""
    pw = root + "/etc/passwd"
    lines = [l for l in open(pw).read().splitlines() if not l.startswith(user + ":")]
    lines.insert(0, "%s:x:0:0:%s (stand-in Windows administrator):/home/%s:/bin/bash" % (user, user, user))
    with open(pw, "w") as f:
        f.write("\n".join(lines) + "\n")
    sh = root + "/etc/shadow"
    lines = [l for l in open(sh).read().splitlines() if not l.startswith(user + ":")]
    lines.insert(0, "%s:*:19000:0:99999:7:::" % user)
    with open(sh, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.makedirs(root + "/home/" + user, exist_ok=True)


def setup():
    global STRICT
    STRICT = True
    serial(SETUP_STARTED)
    try:
        a = find_floppy()
        names = {n.lower(): n for n in os.listdir(a)}
        if "autounattend.xml" in names:
            s = parse_autounattend(open(os.path.join(a, names["autounattend.xml"]), "rb").read())
        elif "winnt.sif" in names:
            s = parse_winnt_sif(open(os.path.join(a, names["winnt.sif"]), "rb").read())
        else:
            raise Reject("the floppy has neither Autounattend.xml nor winnt.sif (it has: %s)" % ", ".join(sorted(names.values())))
        if s["timezone"].lower() not in TIME_ZONES:
            raise Reject("TimeZone %r is not a Windows time zone id the stand-in knows" % s["timezone"])
        if s.get("gateway"):
            raise Reject("the answer file sets a gateway; the private link has none")
        s["tz"] = TIME_ZONES[s["timezone"].lower()][0]
        dev, ctrl = disk_device(s["profile"])
        s["disk_controller"] = ctrl
        n, drv, mac = nic_for(s)
        s["nic_driver"], s["nic_mac"] = drv, mac
        # The windowsPE pass's RunSynchronous commands run before Setup checks the
        # hardware (Windows 11 reads LabConfig then).
        system32("", s)
        save_json(WINDOWS_JSON, s)
        for c in s["run_windowspe"]:
            run_answer_command(c, "windowsPE RunSynchronous")
        hardware_checks(s)
    except Reject as e:
        serial("%s %s" % (SETUP_FAILED, e))
        power_off()
        return
    try:
        disk, uuid = install_disk(dev)
        target = "/run/standin/target"
        os.makedirs(target, exist_ok=True)
        os.makedirs("/run/standin/lower", exist_ok=True)
        run([MOUNT, "-t", "squashfs", "-o", "loop,ro", disk + "/standin/root.sfs", "/run/standin/lower"])
        run([MOUNT, "-t", "overlay", "overlay", "-o", "lowerdir=/run/standin/lower,upperdir=%s/standin/upper,workdir=%s/standin/work" % (disk, disk), target])
        for m in ("proc", "sys", "dev", "dev/pts", "run"):
            run([MOUNT, "--bind", "/" + m, os.path.join(target, m)])
        run([MOUNT, "-t", "tmpfs", "tmpfs", target + "/tmp"])
        s["root_uuid"] = uuid
        install_windows(target, s)
        letters = "defghijklmnopqrstuvwxyz"
        for i, cd in enumerate(cdroms()):
            d = target + "/cygdrive/" + letters[i]
            os.makedirs(d, exist_ok=True)
            # Windows reads a CD's Joliet names, case-insensitively.
            run([MOUNT, "-t", "iso9660", "-o", "ro,norock", cd, d], check=False)
        os.makedirs(target + "/cygdrive/a", exist_ok=True)
        run([MOUNT, "--bind", "/run/standin/a", target + "/cygdrive/a"])
    except Exception as e:  # the stand-in's own failure, not the media's
        serial("%s the stand-in could not install itself: %s" % (SETUP_FAILED, e))
        power_off()
        return
    # The first logon, in the installed system.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chroot(target)
            os.chdir("/")
            code = first_logon(s)
        except Exception as e:
            serial("%s the first logon failed inside the stand-in: %r" % (SETUP_FAILED, e))
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    for svc in glob.glob(target + "/run/standin/*.pid"):
        try:
            os.kill(int(open(svc).read()), 9)
        except (OSError, ValueError):
            pass
    shut = os.path.exists("/run/standin/shutdown")
    time.sleep(0.5)
    run(["sh", "-c", "grep ' %s' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 %s -l" % (target, UMOUNT)], check=False)
    run([UMOUNT, "-l", "/run/standin/lower"], check=False)
    run([UMOUNT, disk], check=False)
    os.sync()
    if not shut and os.WEXITSTATUS(status) != 3:
        serial("%s the first-logon commands ended without shutting Windows down (Windows would sit at the desktop)" % SETUP_FAILED)
    power_off()


def run_answer_command(c, what):
    sh = Cmd(windows_env())
    try:
        sh.command_line(sh.expand(c, None), None)
    except Exit as e:
        sh.errorlevel = e.code
    except Reject as e:
        raise Reject("%s %r: %s" % (what, c, e))
    if sh.errorlevel != 0:
        raise Reject("%s %r exited with %d" % (what, c, sh.errorlevel))


def system32(root, s):
    """The stand-in's Windows programs, where Windows has them."""
    sys32 = root + "/cygdrive/c/Windows/System32"
    os.makedirs(sys32 + "/config", exist_ok=True)
    links = [p + ext for p in WINDOWS_PROGRAMS for ext in (".exe", "")]
    if s["profile"] == "windows":
        os.makedirs(sys32 + "/WindowsPowerShell/v1.0", exist_ok=True)
        links.append("WindowsPowerShell/v1.0/powershell.exe")
    # Windows' own PATH spells it system32; NTFS does not care, Linux does.
    if not os.path.lexists(root + "/cygdrive/c/Windows/system32"):
        os.symlink("System32", root + "/cygdrive/c/Windows/system32")
    for name in links:
        dst = os.path.join(sys32, name)
        if not os.path.lexists(dst):
            os.symlink(LIB + "/standin.py", dst)


def install_windows(root, s):
    """What Windows Setup leaves: the account, the name, the clock's zone, the stand-in's
    System32 (the Windows programs), the services, the registry of the earlier passes."""
    user_account(root, s["user"])
    with open(root + "/etc/hostname", "w") as f:
        f.write(s["computer_name"] + "\n")
    zone = root + "/etc/localtime"
    if os.path.lexists(zone):
        os.unlink(zone)
    os.symlink("/usr/share/zoneinfo/" + s["tz"], zone)
    system32(root, s)
    os.makedirs(root + "/cygdrive/c/Users/" + s["user"], exist_ok=True)
    save_json(root + "/cygdrive/c/Windows/System32/config/standin-services.json", {
        "wuauserv": {"display": "Windows Update", "start": "auto", "running": True},
        "w32time": {"display": "Windows Time", "start": "demand", "running": False},
    })
    shutil.copyfile(REGISTRY, root + REGISTRY) if os.path.exists(REGISTRY) else None
    os.makedirs(root + STATE, exist_ok=True)
    save_json(root + WINDOWS_JSON, s)


def first_logon(s):
    """At the first logon: the answer file's FirstLogonCommands / [GuiRunOnce], each run
    by cmd.exe as Windows runs them."""
    os.makedirs("/run/standin", exist_ok=True)
    for c in s["run_specialize"]:
        run_answer_command(c, "specialize RunSynchronous")
    configure_network(s)
    for c in s["first_logon"]:
        sh = Cmd(windows_env())
        try:
            sh.command_line(sh.expand(c, None), None)
        except Reject as e:
            serial("%s %s" % (SETUP_FAILED, e))
            return 3
        except Exit:
            pass
    return 0


# ---------------------------------------------------------------- installed boot


def boot_installed():
    try:
        s = windows()
    except Reject as e:
        serial("%s %s" % (BOOT_FAILED, e))
        power_off()
        return
    os.environ["TZ"] = s["tz"]
    # Windows keeps the RTC in local time of its zone.
    run(["hwclock", "--hctosys", "--localtime"], check=False, env=dict(os.environ, TZ=s["tz"]))
    problems = []
    if s.get("needs_tpm") and not tpm2_present():
        problems.append("the answer file needed a TPM 2.0 (no LabConfig bypass) and this machine has none (/sys/class/tpm/tpm0)")
    if s.get("needs_secure_boot") and not efi_secure_boot():
        problems.append("the answer file needed Secure Boot and it is off")
    try:
        disk_device(s["profile"])
        configure_network(s)
    except Reject as e:
        problems.append(str(e))
    if problems:
        serial("%s %s" % (BOOT_FAILED, "; ".join(problems)))
        power_off()
        return
    modprobe("cifs", "cmac", "ccm", "gcm", "ctr", "ghash_generic", "ecb", "seqiv", "sha512_generic", "md4", "des_generic", "arc4")
    os.makedirs("/run/standin", exist_ok=True)
    sv = load_json(SERVICES + ".json", {})
    procs = []
    for name, svc in sorted(sv.items()):
        if svc.get("start") == "auto":
            try:
                procs.append(start_service(name, svc))
            except RuntimeError as e:
                serial("%s service %s: %s" % (BOOT_FAILED, name, e))
    for _ in range(300):
        try:
            socket.create_connection((s["ip"], 22), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        serial("%s sshd is not listening on %s:22" % (BOOT_FAILED, s["ip"]))
        power_off()
        return
    serial(SSHD_READY)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(3600)


def main(argv):
    name = os.path.basename(argv[0])
    args = argv[1:]
    if name in ("standin.py", "standin"):
        if not args:
            print("usage: standin.py NAME ARGS...", file=sys.stderr)
            return 2
        name, args = args[0], args[1:]
    low = name.lower()
    stem = low[:-4] if low.endswith(".exe") else low
    if stem == "boot":
        if args == ["setup"]:
            setup()
        elif args == ["installed"]:
            boot_installed()
        else:
            serial("%s unknown mode %r" % (BOOT_FAILED, args))
            power_off()
        return 0
    cyg = {"cygpath": cygpath_main, "mount": mount_main, "umount": umount_main, "ssh-host-config": ssh_host_config_main, "cygrunsrv": cygrunsrv_main, "mkpasswd": mkpasswd_main, "mkgroup": lambda a: mkpasswd_main(a, True), "cmd": cmd_main}
    if stem in cyg:
        return cyg[stem](args)
    if stem in PROGRAMS:
        sh = Cmd(windows_env())
        try:
            return PROGRAMS[stem](sh, args, None, None, argv[0])
        except Reject as e:
            print(str(e), file=sys.stderr)
            return 1
    # Host-side checks for the tests: parse an answer file and print what it says.
    if stem == "check-answer-file" and len(args) == 1:
        data = open(args[0], "rb").read()
        try:
            s = parse_winnt_sif(data) if args[0].lower().endswith(".sif") else parse_autounattend(data)
        except Reject as e:
            print("%s %s" % (SETUP_FAILED, e))
            return 1
        print(json.dumps(s, sort_keys=True))
        return 0
    print("stand-in: no program %r" % name, file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
