//! Session storage (`[[runtimes.filesystems]] kind = "session_storage"`): a session's files,
//! kept when its backend stops and found again by the next backend with the same session id
//! and principal.
//!
//! A session's files are kept in `<root>/<runtime>/v<version>/<key>`, `key` being a SHA-256 of
//! the principal and the session id, so another principal using the same id finds nothing and a
//! new version starts empty. When a backend is given its session they are *checked out* to it,
//! and when it stops *checked in* again, in one of two ways:
//!
//! - a `process` backend gets a *slot*, an empty directory under `<root>/.slots/` whose path is
//!   in its `SESSIONGATE_STORAGE` from its start (warm pools included); checking out renames
//!   every entry of the key dir into the slot, checking in renames them back — no copying,
//!   whatever the size, and no hard quota (the process shares the host's filesystem);
//! - a sandbox or microVM backend gets [`GuestStorage`]: the files are copied onto a tmpfs of
//!   the quota's size inside its isolation, so writing past the quota is `ENOSPC` there.
//!
//! Two `flock`s keep this safe across processes: a slot's lock is held for as long as its
//! backend may write to it (by the process running it, a keeper after a graceful upgrade
//! included), and a key's lock while it is checked out, either way (a new backend for the same
//! id waits for the old one's check-in). A slot whose lock nobody holds any more (its process crashed) is
//! checked in by [`recover`]. Storage unused for `expiry` is deleted, and storage over its quota
//! reported, by [`expire`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use conf::SessionStorage;
use sha2::{Digest, Sha256};

/// What a `process` backend's environment names its storage by.
pub const STORAGE_ENV: &str = "SESSIONGATE_STORAGE";
/// How long a check-out waits for the previous backend of the same session to check in.
const CHECK_IN_WAIT: Duration = Duration::from_secs(15);

/// A backend's storage slot.
#[derive(Debug)]
pub struct Slot {
    dir: PathBuf,
    spec: SessionStorage,
    _lock: File,
    checked_out: Mutex<Option<CheckedOut>>,
}

#[derive(Debug)]
struct CheckedOut {
    key: PathBuf,
    _lock: File,
}

impl Slot {
    /// A new, empty slot for a backend about to start.
    pub fn create(spec: &SessionStorage) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let slots = spec.root.join(".slots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&slots)?;
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = slots.join(&name);
        let lock = lock_file(&slots.join(format!("{name}.lock")))?;
        if !try_lock(&lock)? {
            return Err(io::Error::other(
                "a fresh slot is locked by another process",
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self {
            dir,
            spec: spec.clone(),
            _lock: lock,
            checked_out: Mutex::new(None),
        })
    }

    /// Where the backend sees its storage from outside (a process uses it as is).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the session's files into the slot. Waits for a previous backend of the same
    /// session to check in first.
    pub async fn check_out(&self, principal: &str, session: &str) -> io::Result<()> {
        let (key, lock) = take_key(&self.spec, principal, session).await?;
        std::fs::write(self.record(), key.as_os_str().as_encoded_bytes())?;
        move_entries(&key, &self.dir)?;
        *self.checked_out.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(CheckedOut { key, _lock: lock });
        Ok(())
    }

    /// Moves the session's files back (its backend has stopped). Idempotent.
    pub fn check_in(&self) {
        let taken = self
            .checked_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = taken {
            if let Err(e) = check_in(&self.dir, &c.key) {
                tracing::error!(slot = %self.dir.display(), key = %c.key.display(), error = %e, "session storage check-in failed; recover() retries it");
                return;
            }
            let _ = std::fs::remove_file(self.record());
        }
    }

    /// The slot's record of what it holds: `<slot>.key`, the key dir.
    fn record(&self) -> PathBuf {
        self.dir.with_extension("key")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.check_in();
        if self.record().exists() {
            return; // not checked in: left for recover()
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("lock"));
    }
}

/// Session storage inside an isolation (a microVM guest, a sandbox): copied onto a tmpfs of the
/// quota's size at the mount path (so writing past it is `ENOSPC`) when the backend gets its
/// session, and back before it stops, as tar streams over its exec socket. Unlike a slot, what
/// is stored stays as it was at check-out until the check-in replaces it whole: a backend that
/// dies loses what it wrote since, never more.
#[derive(Debug)]
pub struct GuestStorage {
    spec: SessionStorage,
    exec: super::BackendAddr,
    /// True when the exec server mounts the tmpfs itself (a guest); a sandbox's bubblewrap
    /// mounts it before the agent starts.
    mounts: bool,
    checked_out: tokio::sync::Mutex<Option<CheckedOut>>,
}

/// A connection to an exec server.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

impl GuestStorage {
    /// Storage for a microVM guest, whose exec server mounts the tmpfs.
    pub fn in_guest(spec: &SessionStorage, exec: super::BackendAddr) -> Self {
        Self::new(spec, exec, true)
    }

    /// Storage for a sandbox, on the tmpfs bubblewrap mounted at `mount_path`.
    pub fn in_sandbox(spec: &SessionStorage, exec: super::BackendAddr) -> Self {
        Self::new(spec, exec, false)
    }

    fn new(spec: &SessionStorage, exec: super::BackendAddr, mounts: bool) -> Self {
        Self {
            spec: spec.clone(),
            exec,
            mounts,
            checked_out: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> io::Result<Box<dyn Conn>> {
        Ok(match &self.exec {
            super::BackendAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            super::BackendAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(&**p).await?),
            super::BackendAddr::Relay(_) => {
                return Err(io::Error::other(
                    "session storage is copied only on its host",
                ));
            }
        })
    }

    pub async fn check_out(&self, principal: &str, session: &str) -> io::Result<()> {
        let (key, lock) = take_key(&self.spec, principal, session).await?;
        // A guest just resumed from a snapshot may still hold a closed connection of its
        // previous network's whose ports the new one reuses: that first connection is reset.
        // The copy starts over on a fresh one (an unpack replaces what it wrote).
        let mut attempt = 0;
        loop {
            match self.send(&key).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        *self.checked_out.lock().await = Some(CheckedOut { key, _lock: lock });
        Ok(())
    }

    /// Sends the stored files at `key` to the backend.
    async fn send(&self, key: &Path) -> io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut line = serde_json::json!({ "unpack": self.spec.mount_path });
        if self.mounts {
            line["size_mb"] = (self.spec.quota_bytes >> 20).into();
        }
        let mut conn = self.connect().await?;
        conn.write_all(format!("{line}\n").as_bytes()).await?;
        let mut tar = tokio::process::Command::new("tar")
            .args(["-c", "-f", "-", "-C"])
            .arg(key)
            .arg(".")
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = tar
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("tar: no stdout"))?;
        tokio::io::copy(&mut out, &mut conn).await?;
        if !tar.wait().await?.success() {
            return Err(io::Error::other("tar -c of the session's storage failed"));
        }
        conn.shutdown().await?;
        let mut answer = String::new();
        tokio::io::BufReader::new(conn)
            .read_line(&mut answer)
            .await?;
        if answer.trim() != "ok" {
            return Err(io::Error::other(format!("the backend: {}", answer.trim())));
        }
        Ok(())
    }

    /// Copies the guest's files back over what was checked out (while it still runs).
    pub async fn check_in(&self) {
        let Some(c) = self.checked_out.lock().await.take() else {
            return;
        };
        if let Err(e) = self.copy_back(&c.key).await {
            tracing::warn!(key = %c.key.display(), error = %e, "session storage not copied back; the stored files stay as they were at check-out");
        }
    }

    async fn copy_back(&self, key: &Path) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut conn = self.connect().await?;
        let line = serde_json::json!({ "pack": self.spec.mount_path });
        conn.write_all(format!("{line}\n").as_bytes()).await?;
        let fresh = key.with_extension("in");
        let _ = std::fs::remove_dir_all(&fresh);
        std::fs::DirBuilder::new().mode(0o700).create(&fresh)?;
        let mut tar = tokio::process::Command::new("tar")
            .args(["-x", "-f", "-", "-C"])
            .arg(&fresh)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut stdin = tar
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("tar: no stdin"))?;
        tokio::io::copy(&mut conn, &mut stdin).await?;
        drop(stdin);
        if !tar.wait().await?.success() {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(io::Error::other("the backend's tar stream was cut short"));
        }
        // Swap whole: the old copy goes only once the new one is complete.
        let old = key.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(key, &old)?;
        std::fs::rename(&fresh, key)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// The session's key dir, made if new, and its lock (waiting for a previous backend's check-in).
async fn take_key(
    spec: &SessionStorage,
    principal: &str,
    session: &str,
) -> io::Result<(PathBuf, File)> {
    let key = key_dir(spec, principal, session);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&key)?;
    let lock = wait_for_key(&key).await?;
    Ok((key, lock))
}

/// Takes a session's key lock, waiting for a previous backend's check-in.
async fn wait_for_key(key: &Path) -> io::Result<File> {
    let lock = lock_file(&key.with_extension("lock"))?;
    let deadline = tokio::time::Instant::now() + CHECK_IN_WAIT;
    while !try_lock(&lock)? {
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::other(
                "the session's storage is still in use by its previous backend",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(lock)
}

/// `<root>/<runtime>/v<version>/<sha256(principal NUL session)>`.
fn key_dir(spec: &SessionStorage, principal: &str, session: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(principal.as_bytes());
    h.update([0]);
    h.update(session.as_bytes());
    spec.root
        .join(&spec.runtime)
        .join(format!("v{}", spec.version))
        .join(hex::encode(h.finalize()))
}

fn check_in(slot: &Path, key: &Path) -> io::Result<()> {
    move_entries(slot, key)?;
    // The key dir's mtime is its last use (what expiry goes by).
    File::open(key)?.set_modified(SystemTime::now())?;
    Ok(())
}

/// Renames every entry of `from` into `to` (same filesystem).
fn move_entries(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if target.symlink_metadata().is_ok() {
            // Left over from an interrupted move: the newer copy (the source) wins.
            remove_any(&target)?;
        }
        std::fs::rename(entry.path(), target)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    if p.symlink_metadata()?.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

fn du(p: &Path) -> u64 {
    let Ok(meta) = p.symlink_metadata() else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

/// Checks in what crashed processes left checked out (slots whose lock is free).
pub fn recover(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(".slots")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        let Ok(lock) = lock_file(&path) else { continue };
        if !try_lock(&lock).unwrap_or(false) {
            continue; // its backend's process still holds it
        }
        let slot = path.with_extension("");
        let record = path.with_extension("key");
        if let Ok(key) = std::fs::read(&record) {
            let key = PathBuf::from(std::ffi::OsString::from(
                String::from_utf8_lossy(&key).into_owned(),
            ));
            if check_in(&slot, &key).is_err() {
                continue;
            }
            tracing::info!(key = %key.display(), "session storage recovered from an orphaned slot");
            let _ = std::fs::remove_file(&record);
        }
        let _ = std::fs::remove_dir_all(&slot);
        let _ = std::fs::remove_file(&path);
    }
}

/// How recently checked-in storage is measured against its quota by [`expire`] (it runs every
/// 30 s: twice that, so none is missed).
const MEASURE_WINDOW: Duration = Duration::from_secs(60);

/// Deletes the storage of this runtime version's sessions unused for longer than its expiry,
/// and measures what was checked in lately against the quota (a warning when over). Runs off
/// the request path, periodically (the gateway's lifecycle service).
pub fn expire(spec: &SessionStorage) {
    let dir = spec
        .root
        .join(&spec.runtime)
        .join(format!("v{}", spec.version));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() || path.extension().is_some() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok());
        if age.is_some_and(|a| a <= MEASURE_WINDOW) {
            let used = du(&path);
            if used > spec.quota_bytes {
                tracing::warn!(key = %path.display(), used, quota = spec.quota_bytes, "a session's storage is over its quota");
            }
        }
        if age.is_none_or(|a| a <= spec.expiry) {
            continue;
        }
        let Ok(lock) = lock_file(&path.with_extension("lock")) else {
            continue;
        };
        if try_lock(&lock).unwrap_or(false) {
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_file(path.with_extension("lock"));
            tracing::info!(key = %path.display(), "expired session storage deleted");
        }
    }
}

fn lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Takes an exclusive `flock` without waiting; false when another holder has it.
fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
