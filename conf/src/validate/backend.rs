//! `[runtimes.backend]` and `[[runtimes.versions]]` backends: static pools, processes, sandboxes, microVMs.

use super::*;

pub(super) fn backend(
    errs: &mut Errors,
    path: &str,
    b: &FileBackend,
    base: &Path,
) -> Option<BackendSpec> {
    // Keys of one provider set on another are mistakes worth reporting, not ignoring.
    let keys = [
        ("command", b.command.is_some(), "process sandbox"),
        ("args", b.args.is_some(), "process sandbox"),
        ("env", b.env.is_some(), "process sandbox microvm"),
        (
            "ready_timeout_ms",
            b.ready_timeout_ms.is_some(),
            "process sandbox microvm",
        ),
        (
            "stop_timeout_ms",
            b.stop_timeout_ms.is_some(),
            "process sandbox microvm",
        ),
        (
            "warm_pool",
            b.warm_pool.is_some(),
            "process sandbox microvm",
        ),
        ("memory_mb", b.memory_mb.is_some(), "sandbox microvm"),
        ("cpu_percent", b.cpu_percent.is_some(), "sandbox"),
        ("max_pids", b.max_pids.is_some(), "sandbox"),
        ("read_only", b.read_only.is_some(), "sandbox"),
        ("egress", b.egress.is_some(), "sandbox microvm"),
        ("kernel", b.kernel.is_some(), "microvm"),
        ("initrd", b.initrd.is_some(), "microvm"),
        ("vcpus", b.vcpus.is_some(), "microvm"),
        ("accel", b.accel.is_some(), "microvm"),
        ("snapshot", b.snapshot.is_some(), "microvm"),
        ("qemu", b.qemu.is_some(), "microvm"),
        ("endpoints", b.endpoints.is_some(), "static"),
        (
            "sessions_per_endpoint",
            b.sessions_per_endpoint.is_some(),
            "static",
        ),
    ];
    let provider = b.provider.as_str();
    if !["process", "sandbox", "microvm", "static"].contains(&provider) {
        errs.push(
            format!("{path}.provider"),
            format!("`{provider}` is not one of process, sandbox, microvm, static"),
        );
        return None;
    }
    for (key, set, applies) in keys {
        if set && !applies.split(' ').any(|p| p == provider) {
            errs.push(
                format!("{path}.{key}"),
                format!("applies to {applies}, not `{provider}`"),
            );
        }
    }
    let ms = |errs: &mut Errors, key: &str, v: Option<u64>, default: u64| {
        Duration::from_millis(errs.range(
            &format!("{path}.{key}"),
            v.unwrap_or(default),
            10,
            600_000,
        ))
    };
    let stop_timeout = Duration::from_millis(errs.range(
        &format!("{path}.stop_timeout_ms"),
        b.stop_timeout_ms.unwrap_or(2_000),
        0,
        600_000,
    ));
    let warm_pool = errs.range(
        &format!("{path}.warm_pool"),
        b.warm_pool.unwrap_or(0).into(),
        0,
        64,
    ) as usize;
    let process = |errs: &mut Errors, default_args: fn() -> Vec<String>| {
        if b.command.as_deref() == Some("") {
            errs.push(format!("{path}.command"), "must not be empty");
        }
        ProcessSpec {
            command: b.command.as_ref().map(Into::into),
            args: b.args.clone().unwrap_or_else(default_args),
            env: b.env.clone().unwrap_or_default(),
            ready_timeout: ms(errs, "ready_timeout_ms", b.ready_timeout_ms, 10_000),
            stop_timeout,
            warm_pool,
            storage: None,
        }
    };
    match provider {
        "process" => Some(BackendSpec::Process(process(errs, default_agent_args))),
        "sandbox" => {
            let process = process(errs, || vec!["agent".to_owned()]);
            let read_only: Vec<PathBuf> = b
                .read_only
                .clone()
                .unwrap_or_else(|| {
                    ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
                        .map(String::from)
                        .to_vec()
                })
                .into_iter()
                .map(PathBuf::from)
                .collect();
            for (i, p) in read_only.iter().enumerate() {
                if !p.is_absolute() {
                    errs.push(
                        format!("{path}.read_only[{i}]"),
                        format!("`{}` is not an absolute path", p.display()),
                    );
                }
            }
            Some(BackendSpec::Sandbox(SandboxSpec {
                process,
                memory_mb: errs.range(
                    &format!("{path}.memory_mb"),
                    b.memory_mb.unwrap_or(1_024),
                    16,
                    1 << 20,
                ),
                cpu_percent: errs.range(
                    &format!("{path}.cpu_percent"),
                    b.cpu_percent.unwrap_or(100).into(),
                    1,
                    25_600,
                ) as u32,
                max_pids: errs.range(
                    &format!("{path}.max_pids"),
                    b.max_pids.unwrap_or(256).into(),
                    8,
                    1 << 20,
                ) as u32,
                read_only,
                egress: b.egress.unwrap_or(true),
                policy: None,
                ports: ContractPorts::default(),
            }))
        }
        "microvm" => {
            let accel = match b.accel.as_deref().unwrap_or("auto") {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                other => {
                    errs.push(
                        format!("{path}.accel"),
                        format!("`{other}` is not one of auto, kvm, tcg"),
                    );
                    Accel::Auto
                }
            };
            let env = b.env.clone().unwrap_or_default();
            for (k, v) in &env {
                // Upper case: kernel parameters are lower case, and the kernel keeps those.
                let key_ok = k.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !key_ok
                    || v.is_empty()
                    || v.chars()
                        .any(|c| c.is_whitespace() || c == '"' || !c.is_ascii_graphic())
                {
                    errs.push(
                        format!("{path}.env.{k}"),
                        "goes on the guest kernel's command line: a name of upper-case letters, digits and _, and a non-empty value without spaces or quotes",
                    );
                }
            }
            let mut file = |key: &str, v: &Option<String>| {
                let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                    errs.push(
                        format!("{path}.{key}"),
                        "a microvm needs it (build one with scripts/build-guest)",
                    );
                    return None;
                };
                Some(base.join(v))
            };
            let kernel = file("kernel", &b.kernel);
            let initrd = file("initrd", &b.initrd);
            Some(BackendSpec::Microvm(MicrovmSpec {
                qemu: b.qemu.as_deref().unwrap_or("qemu-system-x86_64").into(),
                memory_mb: errs.range(
                    &format!("{path}.memory_mb"),
                    b.memory_mb.unwrap_or(256),
                    96,
                    1 << 20,
                ),
                vcpus: errs.range(&format!("{path}.vcpus"), b.vcpus.unwrap_or(1).into(), 1, 64)
                    as u32,
                accel,
                snapshot: b.snapshot.unwrap_or(true),
                egress: b.egress.unwrap_or(true),
                policy: None,
                env,
                ready_timeout: ms(errs, "ready_timeout_ms", b.ready_timeout_ms, 120_000),
                stop_timeout,
                warm_pool,
                kernel: kernel?,
                initrd: initrd?,
                storage: None,
                ports: ContractPorts::default(),
            }))
        }
        _ => {
            let per = b.sessions_per_endpoint.unwrap_or(1);
            errs.range(
                &format!("{path}.sessions_per_endpoint"),
                per.into(),
                1,
                1_000_000,
            );
            let Some(list) = &b.endpoints else {
                errs.push(
                    format!("{path}.endpoints"),
                    "a static pool needs at least one endpoint",
                );
                return None;
            };
            if list.is_empty() {
                errs.push(
                    format!("{path}.endpoints"),
                    "a static pool needs at least one endpoint",
                );
                return None;
            }
            let mut seen = HashSet::new();
            let endpoints: Vec<Option<Endpoint>> = list
                .iter()
                .enumerate()
                .map(|(i, e)| endpoint(errs, &format!("{path}.endpoints[{i}]"), e, &mut seen))
                .collect();
            Some(BackendSpec::Static(StaticPool {
                endpoints: endpoints.into_iter().collect::<Option<_>>()?,
                sessions_per_endpoint: per,
            }))
        }
    }
}

pub(super) fn endpoint(
    errs: &mut Errors,
    path: &str,
    e: &FileEndpoint,
    seen: &mut HashSet<SocketAddr>,
) -> Option<Endpoint> {
    let mut one = |key: &str, v: &str| {
        let p = format!("{path}.{key}");
        let addr = errs.addr(&p, v)?;
        if !seen.insert(addr) {
            errs.push(p, format!("{addr} appears twice in the pool"));
        }
        Some(addr)
    };
    let http = one("http", &e.http);
    let mcp = e.mcp.as_deref().map(|v| one("mcp", v));
    let a2a = e.a2a.as_deref().map(|v| one("a2a", v));
    Some(Endpoint {
        http: http?,
        mcp: mcp.map_or(Some(None), |a| a.map(Some))?,
        a2a: a2a.map_or(Some(None), |a| a.map(Some))?,
    })
}
