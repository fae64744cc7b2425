//! Graceful upgrades of the all-in-one (`--upgrade`, then SIGQUIT to the running process): the
//! new process takes every session, each on the backend it had, and the old one keeps its
//! backends (its children) until the new one stops them.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;

/// A process started with `--upgrade` on `old`'s sockets, its stderr in `log`.
pub(super) struct Upgraded {
    child: Child,
    log: std::path::PathBuf,
}

impl Upgraded {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A gateway whose upgrade socket is in `dir`, logging at info (the tests read its log).
pub(super) fn start_upgradable(dir: &TempDir, config: &str) -> Gateway {
    let socket = dir.0.join("upgrade.sock");
    let config = format!(
        "[server]\nupgrade_socket = \"{}\"\n{config}",
        socket.display()
    );
    Gateway::start_with(&config, &[("RUST_LOG", "info")])
}

/// Starts a new process on `args`' sockets, then SIGQUITs `old_pid`, and waits until the old
/// process has handed everything over and stopped serving (it logs that it keeps backends, or
/// exits when it keeps none).
pub(super) fn upgrade(
    args: &[String],
    dir: &TempDir,
    n: usize,
    old_pid: u32,
    old_log: impl Fn() -> String,
) -> Upgraded {
    let log = dir.0.join(format!("upgraded-{n}.log"));
    let child = Command::new(bin())
        .args(args)
        .arg("--upgrade")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(old_pid as i32, libc::SIGQUIT) };
    assert!(
        eventually(Duration::from_secs(30), || {
            old_log().contains("keeping the handed-over backends") || !alive(old_pid)
        }),
        "the old process did not finish handing over:\n{}",
        old_log()
    );
    Upgraded { child, log }
}

/// How many requests a process that handed over relayed (from its log).
fn relayed(log: &str) -> usize {
    log.lines()
        .filter_map(|l| l.split("relayed=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

/// Requests in every session (and, every fifth round, one that starts a new session) until
/// `stop`: returns how many succeeded and the failures.
fn load(gw: &Gateway, sids: &[String], stop: &AtomicBool) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    for round in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let fresh = (round % 5 == 0).then_some(None);
        for sid in sids.iter().map(Some).chain(fresh) {
            let r = gw.invoke(sid.map(String::as_str), "{}");
            if r.status == 200 {
                ok += 1;
            } else {
                failed.push(format!("{} {}", r.status, r.body_text()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (ok, failed)
}

#[test]
fn graceful_upgrade_keeps_every_session_on_its_backend() {
    let dir = TempDir::new();
    let old = start_upgradable(&dir, "[limits]\nmax_sessions_per_anonymous_address = 500\n");
    let old_pid = old.pid();
    let sids: Vec<String> = (0..3).map(|i| session_id(&format!("upgrade{i}"))).collect();
    let pids: Vec<u32> = sids
        .iter()
        .map(|sid| {
            assert_eq!(old.invoke(Some(sid), "{}").status, 200);
            old.backend_pid(sid).unwrap()
        })
        .collect();
    // An MCP session without a runtime session id: found by its Mcp-Session-Id alone.
    let init = mcp_call(&old, &[], INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();

    // Two upgrades in a row under load: the second process hands on what it adopted.
    let stop = AtomicBool::new(false);
    let (first, second, (ok, failed)) = std::thread::scope(|s| {
        let load = s.spawn(|| load(&old, &sids, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let first = upgrade(&old.args(), &dir, 1, old_pid, || old.log());
        std::thread::sleep(Duration::from_millis(300));
        let second = upgrade(&old.args(), &dir, 2, first.pid(), || first.log());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (first, second, load.join().unwrap())
    });
    assert!(ok > 20, "only {ok} requests succeeded");
    assert!(
        failed.is_empty(),
        "requests failed during the upgrades: {failed:?}"
    );
    assert!(
        second.log().contains("adopted the old process's sessions"),
        "{}",
        second.log()
    );
    // Requests that reached an old process after it handed over went to the new one.
    assert!(
        relayed(&old.log()) + relayed(&first.log()) > 0,
        "no request was relayed"
    );

    // Every session is on its backend, served by the newest process, which the old ones keep.
    for (sid, pid) in sids.iter().zip(&pids) {
        assert_eq!(old.backend_pid(sid), Some(*pid), "session {sid} moved");
        assert!(alive(*pid));
        let r = old.invoke(Some(sid), "{}");
        assert_eq!(r.status, 200);
        assert_eq!(r.header(SESSION_HEADER), Some(sid.as_str()));
    }
    assert!(
        pids.iter().all(|p| children(old_pid).contains(p)),
        "the first process keeps its backends"
    );
    let call = mcp_call(&old, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
    assert_eq!(call.status, 200, "{}", call.body_text());
    assert!(call.body_text().contains("hi"), "{}", call.body_text());

    // Stopping a session stops its backend in the process that keeps it.
    let r = curl(&[
        "-X",
        "DELETE",
        &format!("http://{}/sessions/{}", old.admin, sids[0]),
    ]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        eventually(Duration::from_secs(10), || !alive(pids[0])),
        "the stopped session's backend lives on"
    );

    // Stopping the serving process stops every backend; the keepers then exit.
    unsafe { libc::kill(second.pid() as i32, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(20), || !alive(second.pid())
            && !alive(first.pid())
            && !alive(old_pid)),
        "a process is left: second {} first {} old {}\n{}",
        alive(second.pid()),
        alive(first.pid()),
        alive(old_pid),
        old.log()
    );
    for pid in pids {
        assert!(!alive(pid), "backend {pid} outlived every gateway");
    }
}

#[test]
fn a_keeper_nobody_drives_stops_its_backends_and_exits() {
    let dir = TempDir::new();
    let old = start_upgradable(
        &dir,
        "[[runtimes]]\nname = \"default\"\n\
         [runtimes.backend]\nprovider = \"process\"\nwarm_pool = 2\n",
    );
    let old_pid = old.pid();
    let sid = session_id("orphan");
    assert_eq!(old.invoke(Some(&sid), "{}").status, 200);
    let pid = old.backend_pid(&sid).unwrap();
    let new = upgrade(&old.args(), &dir, 1, old_pid, || old.log());
    assert_eq!(
        old.backend_pid(&sid),
        Some(pid),
        "the new process has the session"
    );
    assert!(alive(pid));
    // The keeper keeps the session's backend and no warm one (the new process has its own).
    assert!(
        eventually(Duration::from_secs(10), || children(old_pid)
            == [pid].into()),
        "the keeper's children: {:?}",
        children(old_pid)
    );
    // The new process dies without handing anything on: nobody drives the kept backend.
    unsafe { libc::kill(new.pid() as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(20), || !alive(old_pid)),
        "the keeper did not exit:\n{}",
        old.log()
    );
    assert!(!alive(pid), "the orphaned backend lives on");
}

#[test]
fn sigterm_to_a_keeper_stops_its_backends() {
    let dir = TempDir::new();
    let old = start_upgradable(&dir, "");
    let old_pid = old.pid();
    let sid = session_id("keeperterm");
    assert_eq!(old.invoke(Some(&sid), "{}").status, 200);
    let pid = old.backend_pid(&sid).unwrap();
    let new = upgrade(&old.args(), &dir, 1, old_pid, || old.log());
    unsafe { libc::kill(old_pid as i32, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(10), || !alive(old_pid) && !alive(pid)),
        "SIGTERM did not stop the keeper and its backend"
    );
    // The new process learns that the backend is gone: the session ends, and its id starts a
    // fresh one on a new backend.
    let r = old.invoke(Some(&sid), "{}");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let fresh = old.backend_pid(&sid).unwrap();
    assert_ne!(fresh, pid);
    assert!(children(new.pid()).contains(&fresh));
}

#[test]
fn a_sandboxed_session_keeps_its_sandbox_across_an_upgrade() {
    let dir = TempDir::new();
    let old = start_upgradable(
        &dir,
        "[[runtimes]]\nname = \"default\"\n\
         [runtimes.backend]\nprovider = \"sandbox\"\n",
    );
    let old_pid = old.pid();
    let sid = session_id("sandboxed");
    let first = old.invoke(Some(&sid), "{}");
    assert_eq!(first.status, 200, "{}", first.body_text());
    let described = |gw: &Gateway| {
        gw.sessions()
            .iter()
            .find(|s| s["id"] == sid)
            .map(|s| (s["backend"].clone(), s["http"].clone()))
    };
    let before = described(&old).unwrap();
    let new = upgrade(&old.args(), &dir, 1, old_pid, || old.log());
    assert_eq!(described(&old), Some(before.clone()), "the sandbox moved");
    let again = old.invoke(Some(&sid), "{}");
    assert_eq!(again.status, 200, "{}", again.body_text());
    assert_eq!(again.json()["instance"], first.json()["instance"]);
    // Stopping the new process stops the sandbox (its socket directory goes) and the keeper.
    let socket_path = before
        .1
        .as_str()
        .unwrap()
        .trim_start_matches("unix:")
        .to_owned();
    unsafe { libc::kill(new.pid() as i32, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(20), || !alive(old_pid)),
        "the keeper did not exit:\n{}",
        old.log()
    );
    assert!(
        !std::path::Path::new(&socket_path).exists(),
        "{socket_path} is left behind"
    );
}

/// The output of `command` run in session `sid` (its event stream, as text).
fn run(gw: &Gateway, sid: &str, command: &str) -> String {
    let body = serde_json::json!({ "command": command }).to_string();
    let r = gw.post("/runtimes/default/commands", Some(sid), &body, &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.body_text()
}

#[test]
fn sandboxed_session_storage_is_copied_back_by_the_keeper_after_an_upgrade() {
    let dir = TempDir::new();
    let root = dir.0.join("storage");
    let old = start_upgradable(
        &dir,
        &format!(
            "[sessions]\nstorage_root = \"{}\"\n\
             [[runtimes]]\nname = \"default\"\n\
             [runtimes.backend]\nprovider = \"sandbox\"\n\
             [[runtimes.filesystems]]\nkind = \"session_storage\"\nmount_path = \"/mnt/data\"\n",
            root.display()
        ),
    );
    let old_pid = old.pid();
    let sid = session_id("stored-upgrade");
    let written = run(&old, &sid, "echo before > /mnt/data/f");
    assert!(written.contains(r#""exitCode":0"#), "{written}");
    let new = upgrade(&old.args(), &dir, 1, old_pid, || old.log());
    // The new process drives the kept sandbox: written to after the upgrade, then stopped
    // (its keeper copies the files back before the sandbox ends), then a new sandbox.
    let appended = run(&old, &sid, "echo after >> /mnt/data/f");
    assert!(appended.contains(r#""exitCode":0"#), "{appended}");
    let first = old.sessions().iter().find(|s| s["id"] == sid).cloned();
    let stopped = old.post(
        "/runtimes/default/stopruntimesession",
        Some(&sid),
        "{}",
        &[],
    );
    assert_eq!(stopped.status, 200, "{}", stopped.body_text());
    let read = run(&old, &sid, "cat /mnt/data/f");
    assert!(read.contains(r#""stdout":"before\nafter\n""#), "{read}");
    let second = old.sessions().iter().find(|s| s["id"] == sid).cloned();
    assert_ne!(
        first.map(|s| s["backend"].clone()),
        second.map(|s| s["backend"].clone())
    );
    drop(new);
}
