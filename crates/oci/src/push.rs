//! Push: compress each part, HEAD it, mount or upload what the repository lacks (POST, PATCH
//! chunks, PUT), resuming sessions an earlier push left; then the config and the manifest.
//!
//! Why each part is a zstd frame rather than its data extents (SEEK_DATA/SEEK_HOLE, holes
//! skipped), measured with `examples/oci-measure.rs parts` on 2 busy cores, one core per
//! part, 256 MiB parts, file in the page cache:
//!
//! | file                                   | data extents | zstd -1            | zstd -3           |
//! |----------------------------------------|--------------|--------------------|-------------------|
//! | real guest.ram, 1 GiB, Debian guest    | 115.5 MiB    | 39.7 MiB, 974 MiB/s | 38.0 MiB, 872 MiB/s |
//! | synthetic 1 GiB: 48 MiB random, 32 MiB written zeros, 16 MiB text, rest hole | 96.0 MiB | 48.0 MiB, 1412 MiB/s | 48.0 MiB, 1795 MiB/s |
//! | real guest.qcow2, 199 MiB              | 197.9 MiB    | 59.0 MiB, 159 MiB/s | 51.0 MiB, 98 MiB/s |
//! | real controller.qcow2, 306 MiB         | 305.0 MiB    | 95.5 MiB, 181 MiB/s | 83.6 MiB, 76 MiB/s |
//!
//! zstd sends a third of what hole skipping would: a RAM file's pages the guest touched
//! and zeroed are allocated (not holes) and its data compresses ~3x, and a qcow2 has no
//! holes at all. Zero runs cost zstd next to nothing (GiB/s), so holes need no special
//! path; pull writes zero blocks as holes again. Whole push of a real 1.8 GiB base to a
//! loopback registry: level 1 sends 250.5 MiB, level 3 225.8 MiB, both in 4.0-4.1 s at
//! best (runs vary 2-4x with the load of the shared cores).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::client::{header, Session};
use crate::error::IoContext;
use crate::format::{
    self, Descriptor, ImageManifest, PartInfo, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE, PART_MEDIA_TYPE,
};
use crate::state::{State, Upload};
use crate::{Annotations, Base, Client, Error, Progress, Reference, Report, Result, Skip};

/// zstd level of parts. 3 over 1: 10% fewer bytes for a base (16% on disks, 4% on RAM),
/// at 60% of the compression speed. A base is pushed once and pulled many times, pulls pay
/// the bytes, and decompression is as fast at either level. Level 1 suits fast links.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Bytes per PATCH: a cut in the middle of a chunk costs that blob's session (distribution
/// then forgets it), a cut between chunks costs nothing, so chunks are well below a part.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Files are cut into parts of this many bytes (the last is shorter).
    pub part_size: u64,
    /// Bytes per PATCH request.
    pub chunk_size: u64,
    pub zstd_level: i32,
    /// Where to remember upload sessions (to resume them), part digests (so an unchanged
    /// base is not compressed again) and which repositories hold which blobs (to mount).
    /// None: remember nothing.
    pub state_dir: Option<PathBuf>,
    /// Other repositories of the same registry that may hold some of the blobs: those
    /// found there are mounted rather than uploaded.
    pub mount_from: Vec<String>,
    /// Set on the image manifest.
    pub annotations: Annotations,
}

impl PushOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        PushOptions {
            part_size: format::DEFAULT_PART_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            state_dir: Some(state_dir),
            mount_from: Vec::new(),
            annotations: Annotations::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub transferred: AtomicUsize,
    pub skipped: AtomicUsize,
    pub mounted: AtomicUsize,
    pub bytes: AtomicU64,
    pub resumed: AtomicU64,
}

impl Stats {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// One lock per digest: two parts with the same bytes move once.
#[derive(Default)]
pub(crate) struct Dedupe(Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>);

impl Dedupe {
    pub fn lock_for(&self, digest: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(digest.to_string()).or_default().clone()
    }
}

struct Ctx<'a> {
    session: Session,
    state: State,
    opts: &'a PushOptions,
    progress: &'a dyn Progress,
    stats: Stats,
    dedupe: Dedupe,
    attempts: u32,
}

struct Input {
    part: PartInfo,
    path: PathBuf,
    key: String,
}

impl Client {
    /// Pushes `base` as one artifact tagged `reference` and returns what it did. Blobs the
    /// repository has are not sent again; an interrupted push resumes from `state_dir`.
    pub async fn push(
        &self,
        reference: &Reference,
        base: &Base,
        opts: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<Report> {
        let started = Instant::now();
        let Some(tag) = reference.tag().filter(|_| reference.digest().is_none()) else {
            return Err(Error::Usage(format!(
                "cannot push to {reference}: a push needs a tag (REGISTRY/REPOSITORY:TAG), \
                 the digest is computed from what is pushed"
            )));
        };
        if opts.chunk_size < 4096 || opts.part_size < opts.chunk_size {
            return Err(Error::Usage(format!(
                "chunk size {} and part size {}: the chunk must be at least 4096 bytes and \
                 no larger than a part",
                opts.chunk_size, opts.part_size
            )));
        }
        if !(1..=22).contains(&opts.zstd_level) {
            return Err(Error::Usage(format!(
                "zstd level {} is not 1-22",
                opts.zstd_level
            )));
        }
        let inputs = plan(base, opts)?;
        let state = State::open(opts.state_dir.as_deref())?;
        let mut also_pull = opts.mount_from.clone();
        also_pull.extend(state.repositories(reference.registry()));
        also_pull.sort();
        also_pull.dedup();
        let session = self.session(reference, "pull,push", &also_pull).await?;
        let ctx = Ctx {
            session,
            state,
            opts,
            progress,
            stats: Stats::default(),
            dedupe: Dedupe::default(),
            attempts: self.options.attempts,
        };
        let parts: Vec<PartInfo> = inputs.iter().map(|i| i.part.clone()).collect();
        progress.begin(&parts);
        let bytes_files = base_size(&inputs);

        // The futures made first, not in a `map` closure: a closure there makes the whole
        // push future fail `Send` checks (higher-ranked lifetimes), and callers spawn it.
        // Unordered: `buffered` holds a finished part's slot until every earlier part is
        // done, so one slow part (a disk's, compressing) left cores idle behind it.
        let jobs: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| ctx.push_numbered(i, input))
            .collect();
        let mut numbered: Vec<(usize, Descriptor)> = futures::stream::iter(jobs)
            .buffer_unordered(self.options.concurrency)
            .try_collect()
            .await?;
        numbered.sort_by_key(|(i, _)| *i);
        let layers: Vec<Descriptor> = numbered.into_iter().map(|(_, d)| d).collect();

        let config_digest = format::sha256_digest(&base.config);
        ctx.push_small(&config_digest, Bytes::from(base.config.clone()))
            .await?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.into(),
                digest: config_digest.clone(),
                size: base.config.len() as u64,
                annotations: Default::default(),
            },
            layers,
            annotations: opts.annotations.clone(),
        };
        let body = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
            what: "encoding the image manifest".into(),
            source,
        })?;
        let digest = format::sha256_digest(&body);
        let url = ctx.session.url(&format!("manifests/{tag}"));
        let resp = ctx
            .session
            .send(
                Method::PUT,
                &url,
                header("content-type", MANIFEST_MEDIA_TYPE),
                Some(Bytes::from(body)),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(ctx.session.fail(&Method::PUT, &url, resp).await);
        }
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs != digest {
                return Err(Error::Digest {
                    digest: digest.clone(),
                    actual: theirs.to_string(),
                    what: "the image manifest, as the registry stored it".into(),
                });
            }
        }
        let mut all: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
        all.push(&config_digest);
        ctx.state
            .record_blobs(reference.registry(), reference.repository(), all)?;

        let s = &ctx.stats;
        Ok(Report {
            reference: reference.to_string(),
            digest,
            blobs: manifest.layers.len() + 1,
            blobs_transferred: s.transferred.load(Ordering::Relaxed),
            blobs_skipped: s.skipped.load(Ordering::Relaxed),
            blobs_mounted: s.mounted.load(Ordering::Relaxed),
            bytes_transferred: s.bytes.load(Ordering::Relaxed),
            bytes_resumed: s.resumed.load(Ordering::Relaxed),
            bytes_blobs: manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size,
            bytes_files,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn base_size(inputs: &[Input]) -> u64 {
    inputs
        .iter()
        .filter(|i| i.part.index == 0)
        .map(|i| i.part.file_size)
        .sum()
}

fn plan(base: &Base, opts: &PushOptions) -> Result<Vec<Input>> {
    let mut seen = std::collections::HashSet::new();
    let mut inputs = Vec::new();
    for f in &base.files {
        format::check_file_name(&f.name).map_err(Error::Usage)?;
        if !seen.insert(f.name.as_str()) {
            return Err(Error::Usage(format!("file {} is listed twice", f.name)));
        }
        let meta = std::fs::metadata(&f.path).at("reading", &f.path)?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "{} is not a regular file",
                f.path.display()
            )));
        }
        for part in format::plan_parts(&f.name, meta.len(), opts.part_size) {
            // Bases are immutable: the same file (inode, size, mtime) at the same cut and
            // level compresses to the same blob, so its digest can be remembered.
            let key = format!(
                "{}:{}:{}:{}.{}:{}+{}:z{}",
                meta.dev(),
                meta.ino(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                part.offset,
                part.length,
                opts.zstd_level
            );
            inputs.push(Input {
                part,
                path: f.path.clone(),
                key,
            });
        }
    }
    Ok(inputs)
}

/// Input bytes per zstd frame of a part. A part is a run of frames, each compressed in one
/// call on a contiguous buffer: zstd's streaming mode (data fed in pieces into its own
/// window buffer, its slower "extDict" match finders) took 12-17% more CPU for the disks
/// and RAM files of the default base here, for 1.2% more bytes. The window at the default
/// level is 2 MiB, so 32 MiB frames lose nothing measurable to 256 MiB ones (0.2%);
/// a frame buffer of 32 MiB per part in flight bounds memory.
pub const FRAME_INPUT: usize = 32 << 20;

/// Compares in blocks against this many zero bytes.
const ZERO_BLOCK: usize = 64 << 10;
static ZEROS: [u8; ZERO_BLOCK] = [0u8; ZERO_BLOCK];

fn all_zero(buf: &[u8]) -> bool {
    buf.chunks(ZERO_BLOCK).all(|c| c == &ZEROS[..c.len()])
}

/// The frame zstd makes of `n` zero bytes at `level`, made once per process: a RAM file's
/// untouched memory is mostly whole frames of zeros, which then cost a compare instead
/// of a compression (1 GiB of zeros took 0.54 CPU-s to compress here). The bytes are
/// exactly what compressing the zeros gives, so blobs are the same either way.
///
/// A pull that finds this frame knows its content without decoding it.
pub(crate) fn zeros_frame(level: i32, n: usize) -> std::io::Result<Arc<Vec<u8>>> {
    type Frames = Mutex<HashMap<(i32, usize), Arc<Vec<u8>>>>;
    static FRAMES: std::sync::OnceLock<Frames> = std::sync::OnceLock::new();
    let frames = FRAMES.get_or_init(Default::default);
    if let Some(f) = frames
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(level, n))
    {
        return Ok(f.clone());
    }
    // A compressor set as a push's (compress_frames) is.
    let mut comp = zstd::bulk::Compressor::new(level)?;
    comp.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    let frame = Arc::new(comp.compress(&vec![0u8; n])?);
    frames
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((level, n), frame.clone());
    Ok(frame)
}

/// Compresses `length` bytes at `offset` of `path` into zstd frames of [`FRAME_INPUT`]
/// bytes each (the decoder reads them as one stream).
pub fn compress_part(path: &Path, offset: u64, length: u64, level: i32) -> Result<Vec<u8>> {
    Ok(compress_frames(path, offset, length, level, FRAME_INPUT)?.0)
}

/// [`compress_part`] with frames of `frame` input bytes, and the sha256 digest of the
/// result, computed as each frame is made (no second pass over the blob).
pub fn compress_frames(
    path: &Path,
    offset: u64,
    length: u64,
    level: i32,
    frame: usize,
) -> Result<(Vec<u8>, String)> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).at("opening", path)?;
    let zerr = |source| Error::Zstd {
        what: format!("compressing {}", path.display()),
        source,
    };
    let mut comp = zstd::bulk::Compressor::new(level).map_err(zerr)?;
    comp.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
        .map_err(zerr)?;
    let frame = frame.max(1);
    let mut input = vec![0u8; frame.min(usize::try_from(length).unwrap_or(frame))];
    let mut out: Vec<u8> = Vec::new();
    let mut hasher = Sha256::new();
    let mut pos = offset;
    let end = offset + length;
    // An empty part is one empty frame, as before.
    loop {
        let n = frame.min(usize::try_from(end - pos).unwrap_or(frame));
        let start = out.len();
        if is_hole(&file, pos, n as u64) {
            // Not read at all: reading a hole makes the kernel zero-fill page-cache pages,
            // 2 CPU-s per GiB here, and fills the cache with them.
            out.extend_from_slice(&zeros_frame(level, n).map_err(zerr)?);
        } else {
            let buf = &mut input[..n];
            if let Err(e) = file.read_exact_at(buf, pos) {
                return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::Usage(format!(
                        "{} shrank while being pushed; bases must not change",
                        path.display()
                    ))
                } else {
                    Error::Io {
                        what: "reading",
                        path: path.to_path_buf(),
                        source: e,
                    }
                });
            }
            if all_zero(buf) {
                out.extend_from_slice(&zeros_frame(level, n).map_err(zerr)?);
            } else {
                out.reserve(zstd::zstd_safe::compress_bound(n));
                let mut cursor = std::io::Cursor::new(&mut out);
                cursor.set_position(start as u64);
                comp.compress_to_buffer(buf, &mut cursor).map_err(zerr)?;
            }
        }
        hasher.update(&out[start..]);
        pos += n as u64;
        if pos == end {
            break;
        }
    }
    Ok((out, format!("sha256:{:x}", hasher.finalize())))
}

/// True if `len` bytes at `pos` of `file` are a hole (read as zeros, stored as nothing),
/// and within the file. False when unsure (a filesystem without SEEK_DATA): then read.
fn is_hole(file: &File, pos: u64, len: u64) -> bool {
    if len == 0 {
        return false;
    }
    let inside = file.metadata().is_ok_and(|m| m.len() >= pos + len);
    inside
        && match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(data) => data >= pos + len,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => true,
            Err(_) => false,
        }
}

impl Ctx<'_> {
    async fn compress(&self, input: &Input) -> Result<(Bytes, String)> {
        let (path, offset, length, level) = (
            input.path.clone(),
            input.part.offset,
            input.part.length,
            self.opts.zstd_level,
        );
        let (data, digest) = tokio::task::spawn_blocking(move || {
            compress_frames(&path, offset, length, level, FRAME_INPUT)
        })
        .await
        .map_err(|source| Error::Task { source })??;
        Ok((Bytes::from(data), digest))
    }

    async fn push_numbered(&self, i: usize, input: &Input) -> Result<(usize, Descriptor)> {
        Ok((i, self.push_part(input).await?))
    }

    async fn push_part(&self, input: &Input) -> Result<Descriptor> {
        let part = &input.part;
        let (digest, size, mut data) = match self.state.digest(&input.key) {
            Some((d, s)) => (d, s, None),
            None => {
                let (data, digest) = self.compress(input).await?;
                self.state
                    .set_digest(input.key.clone(), &digest, data.len() as u64)?;
                (digest, data.len() as u64, Some(data))
            }
        };
        let lock = self.dedupe.lock_for(&digest);
        let mut done = lock.lock().await;
        let descriptor = Descriptor {
            media_type: PART_MEDIA_TYPE.into(),
            digest: digest.clone(),
            size,
            annotations: part.annotations(),
        };
        if *done {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            self.progress.part_skipped(part, &Skip::Duplicate);
            return Ok(descriptor);
        }
        if let Some(skip) = self.skip(&digest).await? {
            *done = true;
            self.progress.part_skipped(part, &skip);
            return Ok(descriptor);
        }
        let data = match data.take() {
            Some(d) => d,
            None => {
                let (d, again) = self.compress(input).await?;
                if again != digest {
                    self.state.forget_digest(&input.key)?;
                    return Err(Error::Usage(format!(
                        "{} changed since an earlier push compressed it (inode, size and \
                         mtime are the same); bases must not change: push again",
                        input.path.display()
                    )));
                }
                d
            }
        };
        self.upload(&digest, data, Some(part)).await?;
        *done = true;
        self.progress.part_finished(part);
        Ok(descriptor)
    }

    /// The config blob: small, no progress.
    async fn push_small(&self, digest: &str, data: Bytes) -> Result<()> {
        if self.skip(digest).await?.is_none() {
            self.upload(digest, data, None).await?;
        }
        Ok(())
    }

    /// Some(why) when `digest` needs no upload: present here, or mounted from a repository
    /// known or said to hold it.
    async fn skip(&self, digest: &str) -> Result<Option<Skip>> {
        let s = &self.session;
        if self.blob_exists(&s.repository, digest).await? {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Skip::Present));
        }
        let mut candidates = self.state.holders(&s.registry, digest, &s.repository);
        for hint in &self.opts.mount_from {
            if !candidates.contains(hint) && *hint != s.repository {
                candidates.push(hint.clone());
            }
        }
        for from in candidates {
            // HEAD first: a failed mount would open an upload session for nothing.
            if !self.blob_exists(&from, digest).await.unwrap_or(false) {
                continue;
            }
            let url = format!("{}?mount={digest}&from={from}", s.url("blobs/uploads/"));
            let resp = s.send(Method::POST, &url, HeaderMap::new(), None).await?;
            match resp.status() {
                StatusCode::CREATED => {
                    self.stats.mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Skip::Mounted { from }));
                }
                StatusCode::ACCEPTED => {
                    // Not mounted (e.g. no read access to `from`): drop the session it opened.
                    if let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                        let loc = s.absolute(loc);
                        let _ = s.send(Method::DELETE, &loc, HeaderMap::new(), None).await;
                    }
                }
                _ => return Err(s.fail(&Method::POST, &url, resp).await),
            }
        }
        Ok(None)
    }

    async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool> {
        let s = &self.session;
        let url = format!("{}/v2/{repository}/blobs/{digest}", s.base);
        let resp = s.send(Method::HEAD, &url, HeaderMap::new(), None).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(s.fail(&Method::HEAD, &url, resp).await),
        }
    }

    /// Uploads one blob, resuming a session an earlier push left, retrying cut transfers.
    async fn upload(&self, digest: &str, data: Bytes, part: Option<&PartInfo>) -> Result<()> {
        let mut attempt = 1;
        self.stats.transferred.fetch_add(1, Ordering::Relaxed);
        loop {
            match self.upload_once(digest, &data, part).await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::warn!("uploading {digest} (attempt {attempt}): {e}; resuming");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn upload_once(&self, digest: &str, data: &Bytes, part: Option<&PartInfo>) -> Result<()> {
        let s = &self.session;
        let len = data.len() as u64;
        let (mut location, mut offset) = match self.resume(digest, len).await? {
            Some(at) => at,
            None => (self.open_session().await?, 0),
        };
        if offset > 0 {
            self.stats.resumed.fetch_add(offset, Ordering::Relaxed);
            tracing::info!("resuming {digest} at byte {offset} of {len}");
        }
        if let Some(p) = part {
            self.progress.part_started(p, len, offset);
        }
        while offset < len {
            let end = (offset + self.opts.chunk_size).min(len);
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from(end - offset));
            if let Ok(v) = HeaderValue::from_str(&format!("{offset}-{}", end - 1)) {
                headers.insert(CONTENT_RANGE, v);
            }
            let chunk = data.slice(offset as usize..end as usize);
            let resp = s
                .send(Method::PATCH, &location, headers, Some(chunk))
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                let err = s.fail(&Method::PATCH, &location, resp).await;
                // A session the registry lost or refuses: start this blob over next time.
                self.state
                    .forget_upload(&s.registry, &s.repository, digest)?;
                return Err(err);
            }
            location = next_location(s, &resp, &location);
            let acked = acked_end(resp.headers()).unwrap_or(end);
            self.stats.add_bytes(acked.saturating_sub(offset));
            offset = acked;
            self.state.save_upload(&Upload {
                registry: s.registry.clone(),
                repository: s.repository.clone(),
                digest: digest.to_string(),
                location: location.clone(),
                offset,
            })?;
            if let Some(p) = part {
                self.progress.part_bytes(p, offset, len);
            }
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
        let resp = s.send(Method::PUT, &url, headers, None).await?;
        self.state
            .forget_upload(&s.registry, &s.repository, digest)?;
        if resp.status() != StatusCode::CREATED {
            return Err(s.fail(&Method::PUT, &url, resp).await);
        }
        Ok(())
    }

    async fn open_session(&self) -> Result<String> {
        let s = &self.session;
        let url = s.url("blobs/uploads/");
        let resp = s.send(Method::POST, &url, HeaderMap::new(), None).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(s.fail(&Method::POST, &url, resp).await);
        }
        match resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
            Some(loc) => Ok(s.absolute(loc)),
            None => Err(Error::Registry {
                method: "POST".into(),
                url,
                status: resp.status().as_u16(),
                detail: ": no Location for the upload session".into(),
            }),
        }
    }

    /// The session and acknowledged offset of an earlier push of `digest`, if the
    /// registry still has it.
    async fn resume(&self, digest: &str, len: u64) -> Result<Option<(String, u64)>> {
        let s = &self.session;
        let Some(saved) = self.state.upload(&s.registry, &s.repository, digest) else {
            return Ok(None);
        };
        let resp = s
            .send(Method::GET, &saved.location, HeaderMap::new(), None)
            .await?;
        let at = if resp.status() == StatusCode::NO_CONTENT {
            let location = next_location(s, &resp, &saved.location);
            acked_end(resp.headers())
                .filter(|&end| end <= len)
                .map(|end| (location, end))
        } else {
            // Typically 404 BLOB_UPLOAD_UNKNOWN: the session died (a chunk was cut midway,
            // or the registry purged it). Start the blob over.
            tracing::info!(
                "upload session of {digest} is gone ({}); starting it over",
                resp.status()
            );
            None
        };
        if at.is_none() {
            self.state
                .forget_upload(&s.registry, &s.repository, digest)?;
        }
        Ok(at)
    }
}

fn next_location(s: &Session, resp: &reqwest::Response, old: &str) -> String {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| s.absolute(l))
        .unwrap_or_else(|| old.to_string())
}

/// The end (exclusive) of what the registry says it holds: `Range: 0-<last byte>`.
/// distribution writes `0-0` for an empty session too; chunks are never 1 byte, so 0.
fn acked_end(headers: &HeaderMap) -> Option<u64> {
    let range = headers.get("range")?.to_str().ok()?;
    let last: u64 = range
        .trim()
        .trim_start_matches("bytes=")
        .split_once('-')?
        .1
        .parse()
        .ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of zero frames, data frames and a short tail; the blob is what compressing
    /// each frame gives (the zero shortcut changes nothing), and reads back as one stream.
    #[test]
    fn frames_compress_as_one_stream_and_zero_frames_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let frame = 1 << 20;
        let mut data = vec![0u8; 5 * frame + 12345];
        for (i, b) in data[frame..frame + 70_000].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        data[4 * frame + 3] = 1;
        std::fs::write(&path, &data).unwrap();
        let (blob, digest) = compress_frames(&path, 0, data.len() as u64, 3, frame).unwrap();
        assert_eq!(digest, format!("sha256:{:x}", Sha256::digest(&blob)));
        let mut expected = Vec::new();
        let mut comp = zstd::bulk::Compressor::new(3).unwrap();
        comp.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
            .unwrap();
        for chunk in data.chunks(frame) {
            expected.extend(comp.compress(chunk).unwrap());
        }
        assert_eq!(blob, expected);
        assert_eq!(zstd::stream::decode_all(&blob[..]).unwrap(), data);
        // A part in the middle of the file, and an empty one.
        let (mid, _) = compress_frames(&path, 1000, 3 * frame as u64, 3, frame).unwrap();
        assert_eq!(
            zstd::stream::decode_all(&mid[..]).unwrap(),
            &data[1000..1000 + 3 * frame]
        );
        let (empty, _) = compress_frames(&path, 0, 0, 3, frame).unwrap();
        assert!(zstd::stream::decode_all(&empty[..]).unwrap().is_empty());
        // A sparse file: its holes are not read, and give the same bytes.
        let sparse = dir.path().join("sparse");
        let f = File::create(&sparse).unwrap();
        f.set_len(data.len() as u64).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&data[frame..frame + 70_000], frame as u64)
            .unwrap();
        f.write_all_at(&data[4 * frame..4 * frame + 4], 4 * frame as u64)
            .unwrap();
        drop(f);
        let (holey, _) = compress_frames(&sparse, 0, data.len() as u64, 3, frame).unwrap();
        assert_eq!(holey, expected);
        // Asking for more than the file has is an error, not a short part.
        let err = compress_frames(&path, 0, data.len() as u64 + 1, 3, frame).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
