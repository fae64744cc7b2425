//! Session storage inside an isolation: the gateway copies a session's files in (`unpack`) when
//! its backend gets its session and out (`pack`) before it stops, as a tar stream over the exec
//! socket. They live on a tmpfs of the quota's size at the mount path — mounted here in a
//! microVM guest, by bubblewrap for a sandbox — so a session that writes past its quota gets
//! `ENOSPC`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

/// Mount paths this process has put a tmpfs on.
static MOUNTED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Reads a tar stream from `input` (to its end) into `path`, first mounting a tmpfs of `size_mb`
/// there when given; answers `ok` or `error …` on `output`.
pub async fn unpack<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut input: R,
    mut output: W,
    path: &Path,
    size_mb: Option<u64>,
) -> io::Result<()> {
    let result = async {
        if let Some(size_mb) = size_mb {
            mount_tmpfs(path, size_mb)?;
        }
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-f")
            .arg("-")
            .arg("-C")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = tar
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        tokio::io::copy(&mut input, &mut stdin).await?;
        drop(stdin);
        let out = tar.wait_with_output().await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }
    .await;
    let answer = match result {
        Ok(()) => "ok\n".to_owned(),
        Err(e) => format!("error {e}\n"),
    };
    output.write_all(answer.as_bytes()).await?;
    output.shutdown().await
}

/// Writes `path`'s contents as a tar stream to `output`, then closes it.
pub async fn pack<W: AsyncWrite + Unpin>(mut output: W, path: &Path) -> io::Result<()> {
    let mut tar = Command::new("tar")
        .arg("-c")
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(path)
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = tar
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    tokio::io::copy(&mut stdout, &mut output).await?;
    if !tar.wait().await?.success() {
        // Closing without the rest tells the gateway the copy failed (its tar sees a cut stream).
        return Err(io::Error::other("tar -c failed"));
    }
    output.shutdown().await
}

fn mount_tmpfs(path: &Path, size_mb: u64) -> io::Result<()> {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if mounted.contains(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    let target =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let options =
        std::ffi::CString::new(format!("size={size_mb}m,mode=0777")).map_err(io::Error::other)?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    mounted.insert(path.to_owned());
    Ok(())
}
