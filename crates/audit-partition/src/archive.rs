//! Where retention puts a partition's events before the partition is dropped.
//!
//! The manager streams a partition's rows into a gzip NDJSON file in the archive's staging directory, computing
//! its SHA-256 as it goes, then hands the finished file to an [`Archive`], which stores it with a manifest and
//! returns where. [`DirArchive`] stores into a local directory; an object-storage archive implements the same
//! trait (upload the staged file, then the manifest).

use std::fs::File;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use audit_core::{AuditError, AuditResult};
use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A boxed future, so that `Arc<dyn Archive>` works.
pub type ArchiveFuture<'a, T> = Pin<Box<dyn Future<Output = AuditResult<T>> + Send + 'a>>;

/// What an archive is asked to keep: one partition's events, already written to a local staged file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveManifest {
    /// Always `ndjson+gzip`: one event per line in the JSON form of `audit_core::StoredEvent` (the form of
    /// `audit-db query` and evidence packs), gzip-compressed.
    pub format: String,
    /// The partition the events came from.
    pub partition: String,
    /// Inclusive lower bound of the partition.
    pub range_from: DateTime<Utc>,
    /// Exclusive upper bound of the partition.
    pub range_to: DateTime<Utc>,
    /// Number of events (lines).
    pub rows: u64,
    /// Hex SHA-256 of the compressed file.
    pub sha256: String,
    /// Size of the compressed file, bytes.
    pub bytes: u64,
    /// The file's name inside the archive.
    pub file_name: String,
    /// The retention run that produced it.
    pub run_id: uuid::Uuid,
    /// When the archive was written.
    pub created_at: DateTime<Utc>,
}

/// Where an archive put a partition: recorded in the retention log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArchiveReceipt {
    /// Location of the data file (path or URL).
    pub location: String,
    /// Location of the manifest.
    pub manifest_location: String,
    /// Hex SHA-256 of the data file, as verified by the archive.
    pub sha256: String,
}

/// A place that keeps archived partitions. Implementations must only return `Ok` once the file and its manifest
/// are durable, because the partition is dropped right after.
pub trait Archive: Send + Sync + 'static {
    /// A local directory where the manager may write staged files (the same file system as the archive for a
    /// directory archive, so storing is a rename).
    fn staging_dir(&self) -> PathBuf;

    /// Stores the staged file at `staged` under `manifest.file_name`, plus the manifest, and says where.
    fn store<'a>(&'a self, staged: &'a Path, manifest: &'a ArchiveManifest) -> ArchiveFuture<'a, ArchiveReceipt>;

    /// Room left and whether a file can be written now (for the archive-disk metrics and alerts); `None` when the
    /// archive cannot tell (e.g. an object store).
    fn space(&self) -> Option<ArchiveSpace> {
        None
    }
}

/// What an archive can take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArchiveSpace {
    /// Bytes available to this process on the archive's file system.
    pub free_bytes: u64,
    /// Whether a probe file could be created and removed.
    pub writable: bool,
}

/// An archive in a local (or mounted) directory: `<dir>/<file_name>` and `<dir>/<file_name>.manifest.json`.
#[derive(Debug, Clone)]
pub struct DirArchive {
    dir: PathBuf,
}

impl DirArchive {
    /// An archive rooted at `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The archive's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn probe_writable(&self) -> bool {
        let probe = self.dir.join(format!(".audit-db-probe-{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir).and_then(|_| std::fs::write(&probe, b"probe"));
        let _ = std::fs::remove_file(&probe);
        written.is_ok()
    }
}

fn io_err(e: io::Error, what: &str, path: &Path) -> AuditError {
    AuditError::unavailable(format!("archive: {what} {}: {e}", path.display())).with_component("archive")
}

/// Hex SHA-256 of a file's contents, read back from disk.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Archive for DirArchive {
    fn staging_dir(&self) -> PathBuf {
        self.dir.join(".staging")
    }

    fn space(&self) -> Option<ArchiveSpace> {
        let writable = self.probe_writable();
        // The directory may not exist yet (created on first use): its nearest existing ancestor's file system.
        let existing = self.dir.ancestors().find(|p| p.exists())?;
        let vfs = rustix::fs::statvfs(existing).ok()?;
        Some(ArchiveSpace { free_bytes: vfs.f_bavail.saturating_mul(vfs.f_frsize), writable })
    }

    fn store<'a>(&'a self, staged: &'a Path, manifest: &'a ArchiveManifest) -> ArchiveFuture<'a, ArchiveReceipt> {
        let dir = self.dir.clone();
        let staged = staged.to_path_buf();
        let manifest = manifest.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| io_err(e, "creating", &dir))?;
                // Read back what is on disk: the checksum recorded is that of the bytes we keep.
                let actual = sha256_file(&staged).map_err(|e| io_err(e, "reading", &staged))?;
                if actual != manifest.sha256 {
                    return Err(AuditError::integrity(format!(
                        "archive: staged file {} has SHA-256 {actual}, expected {}",
                        staged.display(),
                        manifest.sha256
                    )));
                }
                let target = dir.join(&manifest.file_name);
                std::fs::rename(&staged, &target).map_err(|e| io_err(e, "moving into place", &target))?;
                let manifest_path = dir.join(format!("{}.manifest.json", manifest.file_name));
                let written = (|| {
                    let body = serde_json::to_vec_pretty(&manifest)
                        .map_err(|e| AuditError::permanent(format!("archive: encoding manifest: {e}")))?;
                    let mut f = File::create(&manifest_path).map_err(|e| io_err(e, "creating", &manifest_path))?;
                    f.write_all(&body).map_err(|e| io_err(e, "writing", &manifest_path))?;
                    f.sync_all().map_err(|e| io_err(e, "syncing", &manifest_path))?;
                    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io_err(e, "syncing", &dir))
                })();
                if let Err(e) = written {
                    // The partition is not dropped: an archive file without its manifest (disk full) is an orphan no
                    // run would complete, holding space; remove both.
                    let _ = std::fs::remove_file(&manifest_path);
                    let _ = std::fs::remove_file(&target);
                    return Err(e);
                }
                Ok(ArchiveReceipt {
                    location: target.display().to_string(),
                    manifest_location: manifest_path.display().to_string(),
                    sha256: actual,
                })
            })
            .await
            .map_err(|e| AuditError::permanent(format!("archive task failed: {e}")))?
        })
    }
}

/// Passes bytes through while hashing and counting them (the hash of the compressed stream).
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip NDJSON file being written to staging, hashed as it is written.
pub(crate) struct StagedWriter {
    enc: GzEncoder<HashingWriter<BufWriter<File>>>,
    path: PathBuf,
    rows: u64,
    line: Vec<u8>,
}

impl StagedWriter {
    /// Creates the staged file (and its directory).
    pub(crate) fn create(path: PathBuf) -> AuditResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err(e, "creating", parent))?;
        }
        let file = File::create(&path).map_err(|e| io_err(e, "creating", &path))?;
        let hw = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
        Ok(Self { enc: GzEncoder::new(hw, Compression::default()), path, rows: 0, line: Vec::new() })
    }

    /// Appends `value` as one JSON line.
    pub(crate) fn write_json<T: Serialize>(&mut self, value: &T) -> AuditResult<()> {
        // One write per line: the encoder pays per call, serde_json writes token by token.
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)
            .map_err(|e| AuditError::permanent(format!("archive: encoding a line of {}: {e}", self.path.display())))?;
        self.line.push(b'\n');
        self.enc.write_all(&self.line).map_err(|e| io_err(e, "writing", &self.path))?;
        self.rows += 1;
        Ok(())
    }

    /// Finishes the gzip stream, syncs the file, and returns (path, rows, hex SHA-256, bytes).
    pub(crate) fn finish(self) -> AuditResult<(PathBuf, u64, String, u64)> {
        let path = self.path;
        let hw = self.enc.finish().map_err(|e| io_err(e, "finishing", &path))?;
        let HashingWriter { inner, hasher, bytes } = hw;
        let file = inner.into_inner().map_err(|e| io_err(e.into_error(), "flushing", &path))?;
        file.sync_all().map_err(|e| io_err(e, "syncing", &path))?;
        Ok((path, self.rows, hex::encode(hasher.finalize()), bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn dir_archive_keeps_the_file_and_a_matching_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new(dir.path().join("arch"));
        let staged_path = archive.staging_dir().join("p.ndjson.gz.part");
        let mut w = StagedWriter::create(staged_path.clone()).unwrap();
        for v in [serde_json::json!({"a": 1}), serde_json::json!({"a": 2})] {
            w.write_json(&v).unwrap();
        }
        let (path, rows, sha, bytes) = w.finish().unwrap();
        assert_eq!(rows, 2);
        assert_eq!(sha256_file(&path).unwrap(), sha);
        let manifest = ArchiveManifest {
            format: "ndjson+gzip".into(),
            partition: "audit_log_2019_01".into(),
            range_from: Utc::now(),
            range_to: Utc::now(),
            rows,
            sha256: sha.clone(),
            bytes,
            file_name: "p.ndjson.gz".into(),
            run_id: uuid::Uuid::new_v4(),
            created_at: Utc::now(),
        };
        let receipt = archive.store(&path, &manifest).await.unwrap();
        assert_eq!(receipt.sha256, sha);
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&receipt.location).unwrap()).read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        let m: ArchiveManifest = serde_json::from_slice(&std::fs::read(&receipt.manifest_location).unwrap()).unwrap();
        assert_eq!(m, manifest);

        // A staged file that does not match its manifest is refused.
        let mut w = StagedWriter::create(archive.staging_dir().join("q.part")).unwrap();
        w.write_json(&serde_json::json!({})).unwrap();
        let (path, ..) = w.finish().unwrap();
        let bad = ArchiveManifest { file_name: "q.ndjson.gz".into(), ..manifest };
        assert_eq!(archive.store(&path, &bad).await.unwrap_err().class(), audit_core::ErrorClass::Integrity);
    }
}
