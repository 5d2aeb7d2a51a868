//! CAS and ByteStream transfers: small blobs in batches, large ones streamed.
//! Every blob read is checked against its digest (SHA-256).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use prost::Message;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::error::LeaseError;
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::re::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::re::{
    batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest,
    FindMissingBlobsRequest,
};

/// Chunk size of ByteStream writes, and of file reads while hashing.
const CHUNK: usize = 1 << 20;
/// Digests per FindMissingBlobs request (keeps requests well under 4 MiB).
const FIND_MISSING_CHUNK: usize = 2000;

/// The SHA-256 digest of `data`.
pub(crate) fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: format!("{:x}", Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// `HASH/SIZE`, as digests are named in logs and resource names.
pub(crate) fn key(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// The SHA-256 digest of a file's contents, read in chunks.
pub(crate) async fn digest_file(path: &Path) -> Result<Digest, LeaseError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| LeaseError::io("cannot open output", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0i64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| LeaseError::io("cannot read output", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as i64;
    }
    Ok(Digest {
        hash: format!("{:x}", hasher.finalize()),
        size_bytes: size,
    })
}

/// What to upload: the bytes, or a file that has them.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Where a streamed read goes.
enum Sink<'a> {
    Memory(&'a mut Vec<u8>),
    File(&'a mut tokio::fs::File, &'a Path),
}

/// CAS access for one instance.
#[derive(Clone)]
pub(crate) struct Cas {
    cas: ContentAddressableStorageClient<Channel>,
    bytestream: ByteStreamClient<Channel>,
    instance: String,
    /// Blobs up to this size go in batches, and a batch holds at most this much.
    batch_limit: u64,
}

impl Cas {
    pub(crate) fn new(channel: Channel, instance: &str, batch_limit: u64) -> Self {
        // The batch limit keeps batch responses under it; ByteStream chunks are 1 MiB.
        // Both stay under tonic's 4 MiB default; this margin covers protobuf framing.
        let max = (batch_limit as usize).max(CHUNK) * 2 + (1 << 16);
        Cas {
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            bytestream: ByteStreamClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            instance: instance.to_string(),
            batch_limit,
        }
    }

    fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    pub(crate) fn is_small(&self, d: &Digest) -> bool {
        (d.size_bytes as u64) <= self.batch_limit
    }

    /// Reads small blobs in batches. Returns them by hash; a missing one fails the lot
    /// with [`LeaseError::MissingBlobs`].
    pub(crate) async fn read_batch(
        &self,
        digests: &[Digest],
    ) -> Result<HashMap<String, Vec<u8>>, LeaseError> {
        let mut out = HashMap::new();
        let mut seen = HashSet::new();
        let mut pending: Vec<Digest> = Vec::new();
        let mut pending_size = 0u64;
        let mut missing = Vec::new();
        let mut batches = Vec::new();
        for d in digests {
            if d.size_bytes == 0 {
                out.insert(d.hash.clone(), Vec::new());
                continue;
            }
            if !seen.insert(d.hash.clone()) {
                continue;
            }
            let size = d.size_bytes as u64;
            if !pending.is_empty() && pending_size + size > self.batch_limit {
                batches.push(std::mem::take(&mut pending));
                pending_size = 0;
            }
            pending.push(d.clone());
            pending_size += size;
        }
        if !pending.is_empty() {
            batches.push(pending);
        }
        for batch in batches {
            let resp = self
                .cas
                .clone()
                .batch_read_blobs(BatchReadBlobsRequest {
                    instance_name: self.instance.clone(),
                    digests: batch.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|source| LeaseError::Cas {
                    rpc: "ContentAddressableStorage.BatchReadBlobs",
                    source,
                })?
                .into_inner();
            for r in resp.responses {
                let Some(d) = r.digest else { continue };
                let code = r.status.as_ref().map_or(0, |s| s.code);
                if code == tonic::Code::NotFound as i32 {
                    missing.push(key(&d));
                    continue;
                }
                if code != 0 {
                    let msg = r.status.map(|s| s.message).unwrap_or_default();
                    return Err(LeaseError::Cas {
                        rpc: "ContentAddressableStorage.BatchReadBlobs",
                        source: tonic::Status::new(tonic::Code::from_i32(code), msg),
                    });
                }
                let got = digest_of(&r.data);
                if got.hash != d.hash || got.size_bytes != d.size_bytes {
                    return Err(LeaseError::Corrupt {
                        digest: key(&d),
                        got: key(&got),
                    });
                }
                out.insert(d.hash, r.data);
            }
        }
        for d in digests {
            if !out.contains_key(&d.hash) && !missing.contains(&key(d)) {
                missing.push(key(d));
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(LeaseError::MissingBlobs(missing))
        }
    }

    /// Streams one blob through ByteStream.Read into `sink`, checking its digest.
    async fn read_stream(&self, d: &Digest, sink: &mut Sink<'_>) -> Result<(), LeaseError> {
        let resource_name = format!(
            "{}blobs/{}/{}",
            self.resource_prefix(),
            d.hash,
            d.size_bytes
        );
        let status_err = |source: tonic::Status| {
            if source.code() == tonic::Code::NotFound {
                LeaseError::MissingBlobs(vec![key(d)])
            } else {
                LeaseError::Cas {
                    rpc: "ByteStream.Read",
                    source,
                }
            }
        };
        let mut stream = self
            .bytestream
            .clone()
            .read(ReadRequest {
                resource_name,
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let mut hasher = Sha256::new();
        let mut size = 0i64;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(status_err)?;
            hasher.update(&msg.data);
            size += msg.data.len() as i64;
            match sink {
                Sink::Memory(buf) => buf.extend_from_slice(&msg.data),
                Sink::File(f, path) => f
                    .write_all(&msg.data)
                    .await
                    .map_err(|e| LeaseError::io("cannot write input file", *path, e))?,
            }
        }
        let got = Digest {
            hash: format!("{:x}", hasher.finalize()),
            size_bytes: size,
        };
        if got.hash != d.hash || got.size_bytes != d.size_bytes {
            return Err(LeaseError::Corrupt {
                digest: key(d),
                got: key(&got),
            });
        }
        Ok(())
    }

    /// One blob into memory (batch or stream by size).
    pub(crate) async fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, LeaseError> {
        if self.is_small(d) {
            let mut m = self.read_batch(std::slice::from_ref(d)).await?;
            return m
                .remove(&d.hash)
                .ok_or_else(|| LeaseError::MissingBlobs(vec![key(d)]));
        }
        let mut buf = Vec::with_capacity(d.size_bytes as usize);
        self.read_stream(d, &mut Sink::Memory(&mut buf)).await?;
        Ok(buf)
    }

    /// One blob decoded as message `M`.
    pub(crate) async fn read_message<M: Message + Default>(
        &self,
        d: &Digest,
        what: &'static str,
    ) -> Result<M, LeaseError> {
        let data = self.read_blob(d).await?;
        M::decode(data.as_slice()).map_err(|source| LeaseError::Decode {
            digest: key(d),
            what,
            source,
        })
    }

    /// A large blob streamed into a new file at `path`.
    pub(crate) async fn read_to_file(&self, d: &Digest, path: &Path) -> Result<(), LeaseError> {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
            .map_err(|e| LeaseError::io("cannot create input file", path, e))?;
        self.read_stream(d, &mut Sink::File(&mut f, path)).await?;
        f.flush()
            .await
            .map_err(|e| LeaseError::io("cannot write input file", path, e))
    }

    /// Uploads what the CAS lacks of `blobs`.
    pub(crate) async fn upload(&self, blobs: Vec<(Digest, Source)>) -> Result<(), LeaseError> {
        let mut unique: HashMap<String, (Digest, Source)> = HashMap::new();
        for (d, s) in blobs {
            if d.size_bytes > 0 {
                unique.entry(d.hash.clone()).or_insert((d, s));
            }
        }
        if unique.is_empty() {
            return Ok(());
        }
        let all: Vec<Digest> = unique.values().map(|(d, _)| d.clone()).collect();
        let mut missing = Vec::new();
        for chunk in all.chunks(FIND_MISSING_CHUNK) {
            let resp = self
                .cas
                .clone()
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.to_vec(),
                    ..Default::default()
                })
                .await
                .map_err(|source| LeaseError::Cas {
                    rpc: "ContentAddressableStorage.FindMissingBlobs",
                    source,
                })?
                .into_inner();
            missing.extend(resp.missing_blob_digests);
        }
        let mut batch: Vec<batch_update_blobs_request::Request> = Vec::new();
        let mut batch_size = 0u64;
        for d in missing {
            let Some((d, source)) = unique.remove(&d.hash) else {
                continue;
            };
            if !self.is_small(&d) {
                self.write_stream(&d, &source).await?;
                continue;
            }
            let data = match source {
                Source::Bytes(b) => b,
                Source::File(p) => tokio::fs::read(&p)
                    .await
                    .map_err(|e| LeaseError::io("cannot read output", p, e))?,
            };
            if !batch.is_empty() && batch_size + data.len() as u64 > self.batch_limit {
                self.send_batch(std::mem::take(&mut batch)).await?;
                batch_size = 0;
            }
            batch_size += data.len() as u64;
            batch.push(batch_update_blobs_request::Request {
                digest: Some(d),
                data,
                ..Default::default()
            });
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    async fn send_batch(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<(), LeaseError> {
        let resp = self
            .cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                ..Default::default()
            })
            .await
            .map_err(|source| LeaseError::Cas {
                rpc: "ContentAddressableStorage.BatchUpdateBlobs",
                source,
            })?
            .into_inner();
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                return Err(LeaseError::Cas {
                    rpc: "ContentAddressableStorage.BatchUpdateBlobs",
                    source: tonic::Status::new(
                        tonic::Code::from_i32(s.code),
                        format!(
                            "blob {}: {}",
                            r.digest.as_ref().map(key).unwrap_or_default(),
                            s.message
                        ),
                    ),
                });
            }
        }
        Ok(())
    }

    /// One blob through ByteStream.Write, in 1 MiB chunks.
    async fn write_stream(&self, d: &Digest, source: &Source) -> Result<(), LeaseError> {
        let mut resource_name = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.resource_prefix(),
            uuid::Uuid::new_v4(),
            d.hash,
            d.size_bytes
        );
        let total = d.size_bytes;
        let (path, mut reader): (PathBuf, Box<dyn tokio::io::AsyncRead + Send + Unpin>) =
            match source {
                Source::Bytes(b) => (
                    PathBuf::from("(memory)"),
                    Box::new(std::io::Cursor::new(b.clone())),
                ),
                Source::File(p) => (
                    p.clone(),
                    Box::new(
                        tokio::fs::File::open(p)
                            .await
                            .map_err(|e| LeaseError::io("cannot open output", p, e))?,
                    ),
                ),
            };
        // A task reads the chunks into a channel that is the request stream; its read
        // error, if any, is reported instead of the server's complaint about a short write.
        let (mut tx, rx) = futures::channel::mpsc::channel::<WriteRequest>(2);
        let producer = tokio::spawn(async move {
            let mut offset = 0i64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    match reader.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(LeaseError::io("cannot read output", path, e)),
                    }
                }
                buf.truncate(n);
                let finish = n == 0 || offset + n as i64 >= total;
                let req = WriteRequest {
                    resource_name: if offset == 0 {
                        std::mem::take(&mut resource_name)
                    } else {
                        String::new()
                    },
                    write_offset: offset,
                    finish_write: finish,
                    data: buf,
                };
                offset += n as i64;
                if tx.send(req).await.is_err() || finish {
                    return Ok(());
                }
            }
        });
        let result = self.bytestream.clone().write(rx).await;
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LeaseError::Panic(e.to_string())),
        }
        let resp = result
            .map_err(|source| LeaseError::Cas {
                rpc: "ByteStream.Write",
                source,
            })?
            .into_inner();
        if resp.committed_size != d.size_bytes {
            return Err(LeaseError::Cas {
                rpc: "ByteStream.Write",
                source: tonic::Status::data_loss(format!(
                    "the server committed {} of {} bytes of {}",
                    resp.committed_size,
                    d.size_bytes,
                    key(d)
                )),
            });
        }
        Ok(())
    }
}
