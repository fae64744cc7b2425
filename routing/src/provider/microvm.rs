//! The `microvm` provider: one QEMU `-M microvm` guest per session.
//!
//! The guest boots an uncompressed Debian cloud `vmlinux` through its PVH entry and an
//! initramfs made by `scripts/build-guest` (busybox, the virtio modules, the static
//! `sessiongate-agent` or a command of the user's). The gateway reaches the guest's contract
//! ports through user-mode networking, forwarded to three loopback ports of its choosing; the
//! guest never reaches the host's loopback (see [`super::guest_net`]: restricted QEMU slirp
//! without egress, passt with it). Readiness is a real `GET /ping` (a forwarded port accepts
//! connections long before the guest listens).
//!
//! With `snapshot` (the default) one template guest is booted and saved (QMP `migrate` to a
//! file) the first time it is needed; every session's guest is then restored from it with
//! `-incoming`, which on software emulation is ~10× faster than a boot. A restored clone gets,
//! over its serial port, fresh entropy (credited and reseeded at once), the clock and its session
//! id before its first request — clones of one template never share random numbers.
//!
//! Acceleration: KVM only when it really works. `/dev/kvm` alone proves nothing (a PVM host has
//! it and cannot run ordinary guests), so `auto` needs `vmx`/`svm` and then a canary boot that
//! must answer within a deadline; otherwise QEMU's software emulation (TCG) runs the guests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conf::{Accel, MicrovmSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::child::{ChildLease, Remains, guard, state_root, wait_ready};
use super::guest_net::{GuestNet, inherit};
use super::process::reserve_endpoint;
use super::{Addrs, Backend, Lease, PlacementError};

/// How long a canary boot may take to prove KVM works.
const CANARY_DEADLINE: Duration = Duration::from_secs(10);
/// x86's `COMMAND_LINE_SIZE`: a longer kernel command line is cut without a word.
const KERNEL_COMMAND_LINE: usize = 2048;
/// How long a guest may take to apply its session config.
const CONFIG_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct MicrovmProvider {
    spec: MicrovmSpec,
    accel: OnceCell<Accel>,
    /// The saved template, once made; `None` if making it failed (guests then boot cold).
    template: OnceCell<Option<Template>>,
}

/// A booted-and-saved guest every clone restores from. Its directory goes with the provider.
#[derive(Debug)]
struct Template {
    state: PathBuf,
    _remains: Remains,
}

impl MicrovmProvider {
    pub fn new(spec: &MicrovmSpec) -> Self {
        Self {
            spec: spec.clone(),
            accel: OnceCell::new(),
            template: OnceCell::new(),
        }
    }

    /// `kvm` or `tcg` once decided (after the first placement).
    pub fn accel_in_use(&self) -> Option<&'static str> {
        self.accel.get().map(|a| match a {
            Accel::Kvm => "kvm",
            _ => "tcg",
        })
    }

    pub async fn place(&self) -> Result<Backend, PlacementError> {
        let accel = *self.accel.get_or_init(|| self.decide_accel()).await;
        let template = if self.spec.snapshot {
            self.template
                .get_or_init(|| async {
                    match self.make_template(accel).await {
                        Ok(t) => Some(t),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot snapshot a template guest; guests boot cold");
                            None
                        }
                    }
                })
                .await
                .as_ref()
        } else {
            None
        };
        let vm = Vm::start(&self.spec, accel, template.map(|t| t.state.as_path()), true).await?;
        vm.ready(&self.spec, self.spec.ready_timeout).await
    }

    /// A suspended guest restored from its own snapshot ([`snapshot`]), with fresh entropy and
    /// the clock as after a template restore.
    pub async fn resume(&self, state: &Path) -> Result<Backend, PlacementError> {
        let accel = *self.accel.get_or_init(|| self.decide_accel()).await;
        let vm = Vm::start(&self.spec, accel, Some(state), true).await?;
        vm.ready(&self.spec, self.spec.ready_timeout).await
    }

    async fn decide_accel(&self) -> Accel {
        let accel = match self.spec.accel {
            Accel::Tcg => Accel::Tcg,
            Accel::Kvm => Accel::Kvm,
            Accel::Auto => match kvm_usable() {
                Err(why) => {
                    tracing::info!(reason = %why, "microVMs run under software emulation (TCG)");
                    Accel::Tcg
                }
                Ok(()) => match self.canary().await {
                    Ok(()) => Accel::Kvm,
                    Err(e) => {
                        tracing::warn!(error = %e, "KVM canary boot failed; microVMs run under software emulation (TCG)");
                        Accel::Tcg
                    }
                },
            },
        };
        tracing::info!(
            accel = if accel == Accel::Kvm { "kvm" } else { "tcg" },
            "microVM acceleration"
        );
        accel
    }

    async fn canary(&self) -> Result<(), PlacementError> {
        let vm = Vm::start(&self.spec, Accel::Kvm, None, false).await?;
        let backend = vm.ready(&self.spec, CANARY_DEADLINE).await?;
        backend.release().await;
        Ok(())
    }

    /// Boots a guest, saves it running (a state saved paused would restore paused), stops it.
    async fn make_template(&self, accel: Accel) -> Result<Template, PlacementError> {
        let started = std::time::Instant::now();
        let mut vm = Vm::start(&self.spec, accel, None, true).await?;
        let http = vm.addrs.http.clone();
        wait_ready(&mut vm.child, &http, self.spec.ready_timeout).await?;
        let state = vm.dir.join("template.state");
        let qmp = vm.dir.join("qmp.sock");
        save(&qmp, &state).await.map_err(PlacementError::Guest)?;
        let _ = tokio::time::timeout(Duration::from_secs(5), vm.child.wait()).await;
        // Keep the saved state; everything else of the template guest goes.
        let keep = vm.remains.dir.take().unwrap_or_default();
        drop(vm);
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0),
            "microVM template saved"
        );
        Ok(Template {
            state,
            _remains: Remains::in_dir(keep),
        })
    }
}

/// A guest being started.
struct Vm {
    child: Child,
    addrs: Addrs,
    dir: PathBuf,
    remains: Remains,
    restored: bool,
}

impl Vm {
    async fn start(
        spec: &MicrovmSpec,
        accel: Accel,
        restore_from: Option<&Path>,
        with_qmp: bool,
    ) -> Result<Self, PlacementError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = state_root()
            .map_err(PlacementError::Isolation)?
            .join(format!("vm-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).map_err(PlacementError::Isolation)?;
        let mut remains = Remains::in_dir(dir.clone());
        let mut reserved = reserve_endpoint().map_err(PlacementError::Ports)?;
        let exec = reserved.reserve_exec().map_err(PlacementError::Ports)?;
        let ports = reserved.0;
        remains.ports = Some(reserved);
        let gate = match &spec.policy {
            Some(policy) => {
                let path = dir.join("egress.sock");
                let gate = egress::Gate::new(policy.clone(), &policy.runtime);
                let listener =
                    tokio::net::UnixListener::bind(&path).map_err(PlacementError::Isolation)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(PlacementError::Isolation)?;
                gate.serve_unix(listener);
                remains.egress = Some(gate);
                Some(path)
            }
            None => None,
        };
        let net = GuestNet::new(spec.egress, &ports, spec.ports, exec, gate.as_deref())
            .map_err(PlacementError::Isolation)?;
        let machine = machine_args(spec, accel);
        if let Some(line) = machine.iter().skip_while(|a| *a != "-append").nth(1)
            && line.len() >= KERNEL_COMMAND_LINE
        {
            return Err(PlacementError::Guest(format!(
                "the guest's kernel command line (its env, and the egress CA with credentials) is {} bytes; the kernel takes {}",
                line.len(),
                KERNEL_COMMAND_LINE - 1
            )));
        }
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(machine)
            .args([
                "-netdev",
                &net.netdev,
                "-device",
                "virtio-net-device,netdev=n0",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=off",
                dir.join("serial.sock").display()
            ))
            .args(["-serial", "chardev:ser0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if with_qmp {
            cmd.arg("-qmp").arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ));
        }
        if let Some(state) = restore_from {
            cmd.arg("-incoming")
                .arg(format!("exec:cat {}", shell_quote(state)));
        }
        if let Some(fd) = net.qemu_fd() {
            // SAFETY: runs in the forked child before exec; one fcntl(2), async-signal-safe.
            unsafe {
                cmd.pre_exec(move || inherit(fd));
            }
        }
        guard(&mut cmd);
        let child = super::child::spawn(cmd)
            .await
            .map_err(PlacementError::Spawn)?;
        // Dropping `child` on an early return kills QEMU (kill_on_drop), and passt with it.
        remains.helper = net
            .start_helper(child.id().unwrap_or(0))
            .await
            .map_err(PlacementError::Isolation)?;
        Ok(Self {
            child,
            addrs: Addrs {
                exec: Some(super::BackendAddr::Tcp(exec)),
                ..Addrs::from(ports)
            },
            dir,
            remains,
            restored: restore_from.is_some(),
        })
    }

    /// Waits for `/ping`, hands the guest its session config, and leases it.
    async fn ready(
        mut self,
        spec: &MicrovmSpec,
        timeout: Duration,
    ) -> Result<Backend, PlacementError> {
        let started = std::time::Instant::now();
        wait_ready(&mut self.child, &self.addrs.http, timeout).await?;
        let answered = started.elapsed();
        let configured = configure(&self.dir.join("serial.sock")).await;
        tracing::debug!(
            restored = self.restored,
            ping_ms = answered.as_millis() as u64,
            configured_ms = started.elapsed().as_millis() as u64,
            "microVM ready"
        );
        match configured {
            Ok(()) => {}
            // A clone that did not take fresh entropy would share the template's: refuse it.
            Err(e) if self.restored => return Err(PlacementError::Guest(e)),
            Err(e) => tracing::warn!(error = %e, "guest did not take its session config"),
        }
        let Vm {
            child,
            addrs,
            remains,
            ..
        } = self;
        let storage = match (&spec.storage, &addrs.exec) {
            (Some(s), Some(exec)) => Some(super::Storage::Guest(
                super::storage::GuestStorage::in_guest(s, exec.clone()),
            )),
            _ => None,
        };
        Ok(Backend {
            addrs,
            lease: Lease::Microvm(ChildLease::new(child, spec.stop_timeout, remains)),
            storage,
        })
    }
}

/// The command line every guest of a provider shares (a restore needs the same machine).
fn machine_args(spec: &MicrovmSpec, accel: Accel) -> Vec<String> {
    let mut append = String::from("console=ttyS0 quiet panic=-1 reboot=t");
    // The kernel hands `KEY=value` parameters it does not know to init's environment, which the
    // agent inherits (config validation keeps keys upper-case, clear of kernel parameters).
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(policy) = &spec.policy {
        // The guest's init turns these into its resolver, proxy variables and trust store
        // (scripts/build-guest); the CA is the certificate only (DER, base64), never a key.
        env.push("SESSIONGATE_EGRESS=proxy".into());
        if !policy.credentials.is_empty()
            && let Ok(ca) = egress::Ca::get()
        {
            use base64::Engine;
            let der = base64::engine::general_purpose::STANDARD.encode(ca.der());
            env.push(format!("SESSIONGATE_CA={der}"));
        }
    }
    let (machine, accel_args): (&str, &[&str]) = if accel == Accel::Kvm {
        (
            "microvm,x-option-roms=off,rtc=off",
            &["-enable-kvm", "-cpu", "host"],
        )
    } else {
        // Without these the kernel hangs calibrating a TSC it cannot measure (microvm has no
        // HPET or PM timer); rtc=on is faster under emulation.
        let khz = tsc_khz();
        append.push_str(&format!(" tsc_early_khz={khz} lpj={}", khz * 4));
        (
            "microvm,x-option-roms=off,rtc=on",
            &["-accel", "tcg", "-cpu", "max"],
        )
    };
    let mut a: Vec<String> = ["-M", machine]
        .iter()
        .chain(accel_args)
        .map(|s| (*s).to_owned())
        .collect();
    a.extend([
        "-m".into(),
        spec.memory_mb.to_string(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        if env.is_empty() {
            append
        } else {
            format!("{append} {}", env.join(" "))
        },
        "-device".into(),
        "virtio-rng-device".into(),
    ]);
    a
}

/// The host's TSC rate in kHz, as the guest should assume it (read once).
fn tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(read_tsc_khz)
}

fn read_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("cpu MHz")?
                    .split(':')
                    .nth(1)?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// Whether KVM can run ordinary guests here: `/dev/kvm` and hardware virtualisation (`vmx` or
/// `svm`). A PVM host has `/dev/kvm` without either and runs only PVM-enabled guest kernels.
pub fn kvm_usable() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(|e| e.to_string())?;
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw {
        return Ok(());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is PVM (no vmx/svm): only PVM guest kernels run on it".into());
    }
    Err("the CPU has no vmx/svm flag".into())
}

/// Tells a guest its session id (`/run/session-id` inside), in the background.
pub(super) fn send_session(serial: PathBuf, session: String) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let line = format!("sessiongate-config session={session}\n");
        if let Err(e) = talk(&serial, &line).await {
            tracing::debug!(error = %e, "guest did not take its session id");
        }
    });
}

/// Sends the session config over the guest's serial port and waits for its acknowledgement.
async fn configure(serial: &Path) -> Result<(), String> {
    let mut seed = [0u8; 32];
    getrandom(&mut seed)?;
    let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let clock = crate::directory::now_ms();
    talk(
        serial,
        &format!("sessiongate-config seed={seed} clock={clock} tcp=reset\n"),
    )
    .await
}

/// One config line to the guest, answered by `sessiongate-config-ok` (or `-error …`).
async fn talk(serial: &Path, line: &str) -> Result<(), String> {
    let talk = async {
        let stream = UnixStream::connect(serial)
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(read).lines();
        while let Some(l) = lines.next_line().await.map_err(|e| e.to_string())? {
            if l.contains("sessiongate-config-ok") {
                return Ok(());
            }
            if let Some(err) = l.split("sessiongate-config-error").nth(1) {
                return Err(format!("the guest refused its config:{err}"));
            }
        }
        Err("the guest's serial port closed".to_owned())
    };
    tokio::time::timeout(CONFIG_DEADLINE, talk)
        .await
        .map_err(|_| format!("no answer on the serial port within {CONFIG_DEADLINE:?}"))?
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    // SAFETY: fills `buf` within its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() == Some(buf.len()) {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Saves the running guest whose state dir is `dir` to `state` and ends it: the memory it
/// touched (QEMU's stream writes untouched pages as zero-page markers) and its devices. Returns
/// the snapshot's size.
pub(super) async fn snapshot(dir: &Path, state: &Path) -> Result<u64, String> {
    save(&dir.join("qmp.sock"), state).await?;
    std::fs::metadata(state)
        .map(|m| m.len())
        .map_err(|e| e.to_string())
}

/// Saves a running guest to `state` over QMP and quits it.
async fn save(qmp: &Path, state: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(qmp)
        .await
        .map_err(|e| format!("qmp: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut call = async |cmd: serde_json::Value| -> Result<serde_json::Value, String> {
        write
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        while let Some(l) = lines.next_line().await.map_err(|e| e.to_string())? {
            let v: serde_json::Value = serde_json::from_str(&l).map_err(|e| e.to_string())?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("qmp {cmd}: {e}"));
            }
            // greetings and events: skip
        }
        Err("qmp closed".into())
    };
    call(serde_json::json!({"execute": "qmp_capabilities"})).await?;
    // QEMU's "completed" means it wrote everything into `cat`'s pipe, not that `cat` wrote it
    // all to the file: `cat` renames the file into place when it has, and that is awaited.
    let part = state.with_extension("part");
    let _ = std::fs::remove_file(state);
    let uri = format!(
        "exec:cat > {part} && mv {part} {state}",
        part = shell_quote(&part),
        state = shell_quote(state)
    );
    call(serde_json::json!({"execute": "migrate", "arguments": {"uri": uri}})).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = call(serde_json::json!({"execute": "query-migrate"})).await?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => break,
            Some("failed" | "cancelled") => return Err(format!("migration: {r}")),
            _ if tokio::time::Instant::now() >= deadline => {
                return Err("migration did not complete within 60 s".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _ = call(serde_json::json!({"execute": "quit"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        if tokio::time::Instant::now() >= deadline {
            return Err("the saved state was not complete within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
