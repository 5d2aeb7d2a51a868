//! Builds (or finds) the **stand-in** install media in the cache directory given as the
//! only argument and prints what `guestbox bootstrap --profile windows` takes: the ISO (a
//! small Linux playing Windows Setup, never real Windows) and the 64-bit and 32-bit Cygwin
//! mirrors. For figures on a Windows-model base where no Windows media exist, e.g.
//! `guestbox bench --only windows` (see the README's benchmarks).
fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: media CACHE_DIR"))?;
    let dir = std::path::Path::new(&dir);
    let iso = standin::ensure_install_iso(dir)?;
    println!(
        "--iso {}   (stand-in; built: {}, {:.1} s)",
        iso.path.display(),
        iso.built,
        iso.took.as_secs_f64()
    );
    for (arch, sub) in [
        (media::cygwin::CygwinArch::X86_64, "mirror-x86_64"),
        (media::cygwin::CygwinArch::X86, "mirror-x86"),
    ] {
        let mirror = standin::mirror::cygwin_mirror(&dir.join(sub), arch)?;
        println!(
            "--cygwin-mirror {}   (stand-in, {})",
            mirror.dir.display(),
            arch.dir()
        );
    }
    Ok(())
}
