//! Builds (or finds) the stand-in ISO in the cache directory given as the only argument and
//! prints its path.
fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: build-iso CACHE_DIR"))?;
    let iso = standin::ensure_install_iso(std::path::Path::new(&dir))?;
    println!(
        "{} (built: {}, {:.1} s)",
        iso.path.display(),
        iso.built,
        iso.took.as_secs_f64()
    );
    Ok(())
}
